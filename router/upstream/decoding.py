"""Upstream bodies a Content-Encoding compressed, decoded as they stream in, within a limit.

Upstreams are asked for `Accept-Encoding: identity`; one that compresses
anyway has its body decoded here, a step at a time: each call inflates at
most STEP bytes, so a bomb (1 MiB of gzip inflating to 1 GiB) is never held
in memory, never holds the event loop for more than a step, and is given up
as soon as the decoded size passes the limit. Everything after this (checks,
the cache, the client) sees identity bytes. gzip (several members too) and
deflate (zlib-wrapped or raw) are decoded; any other coding (br, zstd,
compress, a chain such as "gzip, gzip") is refused, so the attempt fails over.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

STEP = 256 * 1024                  # decoded bytes per inflate call, at most
SUPPORTED = frozenset({"gzip", "x-gzip", "deflate"})
_GZIP = 16 + zlib.MAX_WBITS
_BETWEEN = object()                # after a stream ended


class DecodeError(Exception):
    """The body does not decode, or decodes past the limit."""


def coding_of(content_encoding: str | None) -> str | None:
    """The coding to undo, or None for identity; DecodeError for one not supported."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in SUPPORTED:
        raise DecodeError(f"Content-Encoding {coding[:40]!r} is not supported "
                          "(identity was asked for)")
    return coding


class BodyDecoder:
    """Inflates one gzip or deflate body chunk by chunk, refusing more than `limit` bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.decoded = 0
        self._pending = b""            # deflate: the first bytes, until its header is known
        self._inflater: Any = zlib.decompressobj(_GZIP) if coding != "deflate" else None
        self._open = False             # a stream has begun and not yet ended
        self._ended = False            # at least one stream ended
        self._padding = False          # only zero bytes may follow

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces, of at most STEP bytes each, for one chunk of the encoded body."""
        if self._inflater is None:
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            self._pending = b""
            # "deflate" means zlib-wrapped; some servers send raw deflate.
            wrapped = (data[0] & 0x0F) == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        while data:
            if self._inflater is _BETWEEN:          # a gzip member ended: another, or padding
                if data[0] == 0 or self._padding:
                    if data.strip(b"\0"):
                        raise self._error("has data after its end")
                    self._padding = True
                    return
                self._inflater = zlib.decompressobj(_GZIP)
            self._open = True
            inflater = self._inflater
            while True:
                try:
                    piece = inflater.decompress(data, STEP)
                except zlib.error as exc:
                    raise self._error(f"does not decode ({exc})") from None
                data = inflater.unconsumed_tail
                if piece:
                    self.decoded += len(piece)
                    if self.decoded > self.limit:
                        raise self._error(f"decodes to more than the {self.limit}-byte limit")
                    yield piece
                if inflater.eof:
                    break
                if not data and len(piece) < STEP:
                    return             # all input taken, no output pending
            self._open, self._ended = False, True
            data = inflater.unused_data     # (unconsumed_tail may repeat it: not used)
            if self.coding == "deflate":
                if data.strip(b"\0"):
                    raise self._error("has data after its end")
                self._inflater = _BETWEEN
                self._padding = True
                return
            self._inflater = _BETWEEN

    def finish(self) -> None:
        """The body ended: so must its last stream have."""
        if self._open or self._pending or not self._ended:
            raise self._error("does not decode (cut short)")

    def _error(self, problem: str) -> DecodeError:
        return DecodeError(f"{self.coding} body {problem}")
