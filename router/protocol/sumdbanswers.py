"""What a checksum database's answer must look like before the edge keeps it.

Pure: the kind of a ``/sumdb/<name>/`` tail (which answers never change) and a
minimal check of a body, so that an error page served as 200 (a captive
portal's login page) or a truncated tile is never cached for good. Tile
format (golang.org/x/mod/sumdb/tlog): ``tile/H/L/NNN`` is a full tile; a hash
tile (numeric level L) holds 2^H hashes of 32 bytes, a partial one
(``.p/W``) the first W; a data tile (level ``data``) holds records of any size.
"""

from __future__ import annotations

import enum

from goproxy_router.protocol.integrity import BodyVerdict
from goproxy_router.protocol.tlog import HASH_SIZE, TlogError, parse_tile_path

__all__ = ["SumdbKind", "sumdb_answer_problem", "sumdb_kind", "sumdb_verdict"]


class SumdbKind(enum.StrEnum):
    """What a /sumdb/ tail asks for, and so how long its answer may be kept."""

    LOOKUP = "lookup"           # one module@version's record: never changes
    TILE = "tile"               # a full tile: never changes
    PARTIAL = "partial_tile"    # ``.p/W``: kept for a short TTL
    LATEST = "latest"           # the signed tree head: kept for a short TTL

    @property
    def immutable(self) -> bool:
        return self in (SumdbKind.LOOKUP, SumdbKind.TILE)


def sumdb_kind(tail: str) -> SumdbKind | None:
    """The kind of a validated tail (router/protocol/requests.py), or None (``supported``)."""
    if tail == "latest":
        return SumdbKind.LATEST
    if tail.startswith("lookup/"):
        return SumdbKind.LOOKUP
    if tail.startswith("tile/"):
        return SumdbKind.PARTIAL if ".p/" in tail else SumdbKind.TILE
    return None


def sumdb_answer_problem(tail: str, body: bytes) -> str | None:
    """Why ``body`` is not a plausible answer for ``tail``, or None.

    Every answer is non-empty; a full hash tile has exactly its 32 * 2^H
    bytes; a lookup record is text, never markup (an HTML page).
    """
    if not body:
        return "empty answer"
    if tail.startswith("tile/"):
        try:
            tile = parse_tile_path(tail)
        except TlogError as exc:
            return str(exc)
        # Data tiles vary; a partial tile is kept only for a short TTL: non-empty will do.
        if tile.level == -1 or tile.width != 1 << tile.height:
            return None
        want = HASH_SIZE << tile.height
        if len(body) != want:
            return f"a full hash tile of height {tile.height} has {want} bytes, not {len(body)}"
        return None
    if tail.startswith("lookup/") and body.lstrip()[:1] == b"<":
        return "a markup page, not a lookup record"
    return None


def sumdb_verdict(tail: str, body: bytes) -> BodyVerdict:
    """The forwarder's view: an empty body is no answer (the next URL is asked); an
    implausible one is doubtful: other URLs are asked, and it is served, never kept,
    when none has better (a go command checks what it gets; the cache must not keep it)."""
    if not body:
        return BodyVerdict("empty answer")
    problem = sumdb_answer_problem(tail, body)
    return BodyVerdict(doubt=problem) if problem is not None else BodyVerdict()
