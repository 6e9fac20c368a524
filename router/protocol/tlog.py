"""The checksum database's transparency log (golang.org/x/mod/sumdb/tlog), pure.

The log is a Merkle tree (RFC 6962) of records: a record's hash is SHA-256(0x00,
text), a node's SHA-256(0x01, left, right), a tree of N records splits at the
largest power of two below N. A tree head is the note text ``go.sum database
tree\\n<N>\\n<base64 hash>\\n``. The database serves the tree's stored hashes in
tiles: ``tile/H/L/NNN[.p/W]`` lists W hashes of tree level L*H from index N*2^H
(NNN in 3-digit elements, all but the last prefixed ``x``; ``.p/W`` for a partial
tile), and the levels above are rehashed from them. `record_proof_tiles` names the
tiles a record's inclusion proof needs, `record_proof` reads the proof out of them
and `check_record` checks it against a tree head; `check_tree` checks that one tree
extends another. Every refusal raises TlogError with a reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "HASH_SIZE", "TILE_HEIGHT", "Tile", "TlogError", "Tree", "check_record", "check_tree",
    "format_tree", "hash_from_tile", "node_hash", "parse_lookup", "parse_tile_path", "parse_tree",
    "record_hash", "record_proof", "record_proof_tiles", "tree_hash", "tree_proof", "tree_proof_tiles",
]

HASH_SIZE = 32
TILE_HEIGHT = 8                          # what sum.golang.org and the go command use
_TREE_PREFIX = "go.sum database tree\n"
_TILE_NUMBER = re.compile(r"^\d{3}$")


class TlogError(Exception):
    """A malformed tree head, tile or record, or a proof that does not check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def record_hash(data: bytes) -> bytes:
    """The leaf hash of a record's text."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two below `size` (> 1): where a tree of `size` leaves splits."""
    return 1 << ((size - 1).bit_length() - 1)


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """The root hash of a tree whose record hashes are `leaves` (the empty tree: SHA-256 of nothing)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


# --- tree heads and records -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tree:
    """A tree head: the number of records and the root hash."""

    size: int
    hash: bytes


def format_tree(tree: Tree) -> bytes:
    """The note text of a tree head."""
    return f"{_TREE_PREFIX}{tree.size}\n{base64.b64encode(tree.hash).decode()}\n".encode()


def parse_tree(text: str | bytes) -> Tree:
    """Parse a tree head's note text; lines after the third are ignored (forward compatible)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.startswith(_TREE_PREFIX) or text.count("\n") < 3 or len(text) > 1_000_000:
        raise TlogError("malformed tree note: not 'go.sum database tree', a size and a hash")
    lines = text.split("\n", 3)
    if not lines[1].isdigit() or lines[1] != str(int(lines[1])):
        raise TlogError(f"malformed tree note: size {lines[1][:40]!r}")
    try:
        digest = base64.b64decode(lines[2], validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != HASH_SIZE:
        raise TlogError(f"malformed tree note: hash {lines[2][:60]!r}")
    return Tree(int(lines[1]), digest)


def _valid_record_text(text: bytes) -> bool:
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return (s.endswith("\n") and "\n\n" not in s
            and not any(c < " " and c != "\n" for c in s))


def parse_lookup(body: bytes) -> tuple[int, bytes, bytes]:
    """Split a ``/lookup/`` answer into the record id, the record text and the signed tree note."""
    first, nl, rest = body.partition(b"\n")
    if not nl or not first.isdigit() or first != str(int(first)).encode():
        raise TlogError("malformed lookup answer: no record id")
    end = rest.find(b"\n\n")
    if end < 0:
        raise TlogError("malformed lookup answer: the record is not followed by a blank line")
    text, note = rest[:end + 1], rest[end + 2:]
    if not _valid_record_text(text):
        raise TlogError("malformed lookup answer: invalid record text")
    return int(first), text, note


# --- tiles ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tile:
    """W hashes of tree level L*H from index N*2^H (L = -1: record data, not hashes)."""

    height: int
    level: int
    number: int
    width: int

    @property
    def path(self) -> str:
        """``tile/H/L/NNN[.p/W]``, NNN in 3-digit elements, all but the last x-prefixed."""
        n, elems = self.number, [f"{self.number % 1000:03d}"]
        while n >= 1000:
            n //= 1000
            elems.insert(0, f"x{n % 1000:03d}")
        partial = f".p/{self.width}" if self.width != 1 << self.height else ""
        level = "data" if self.level == -1 else str(self.level)
        return f"tile/{self.height}/{level}/{'/'.join(elems)}{partial}"


def parse_tile_path(path: str) -> Tile:
    """Parse a tile path (``tile/8/0/x001/234.p/5``); only the canonical spelling is accepted."""
    f = path.split("/")
    bad = TlogError(f"malformed tile path {path[:200]!r}")
    if len(f) < 4 or f[0] != "tile" or not f[1].isdigit() or not 1 <= int(f[1]) <= 30:
        raise bad
    height = int(f[1])
    if f[2] == "data":
        level = -1
    elif f[2].isdigit() and int(f[2]) <= 63:
        level = int(f[2])
    else:
        raise bad
    width = 1 << height
    elems = f[3:]
    if len(elems) > 1 and elems[-2].endswith(".p"):
        if not elems[-1].isdigit() or not 0 < int(elems[-1]) < width:
            raise bad
        width, elems = int(elems[-1]), [*elems[:-2], elems[-2][:-2]]
    number = 0
    for e in elems:
        digits = e[1:] if e.startswith("x") else e
        if not _TILE_NUMBER.match(digits):
            raise bad
        number = number * 1000 + int(digits)
    tile = Tile(height, level, number, width)
    if tile.path != path:
        raise bad
    return tile


def _tile_for(tree_size: int, level: int, index: int, height: int) -> tuple[Tile, int, int]:
    """The tile of a tree of `tree_size` holding the stored hash (level, index), and the
    span [start, end) of its hashes that rehash into it."""
    tile_level, sub = divmod(level, height)
    first = index << sub                           # at tree level tile_level*height
    number = first >> height
    stored = tree_size >> (tile_level * height)    # hashes the tree has at that level
    width = min(1 << height, stored - (number << height))
    start = first - (number << height)
    if width < start + (1 << sub):
        raise TlogError(f"no hash at level {level}, index {index} in a tree of {tree_size}")
    return Tile(height, tile_level, number, width), start, start + (1 << sub)


def hash_from_tile(tile: Tile, data: bytes, level: int, index: int) -> bytes:
    """The stored hash (level, index), rehashed from `data`, the hashes of `tile`."""
    if len(data) != tile.width * HASH_SIZE:
        raise TlogError(f"{tile.path}: {len(data)} bytes, not {tile.width} hashes")
    tile_level, sub = divmod(level, tile.height)
    first = (index << sub) - (tile.number << tile.height)
    if tile_level != tile.level or first < 0 or first + (1 << sub) > tile.width:
        raise TlogError(f"{tile.path} does not hold the hash at level {level}, index {index}")
    row = [data[i * HASH_SIZE:(i + 1) * HASH_SIZE] for i in range(first, first + (1 << sub))]
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


Reader = Callable[[int, int], bytes]


def _range_hash(lo: int, hi: int, read: Reader) -> bytes:
    """The hash of the subtree of records [lo, hi), from stored hashes (level, index)."""
    size = hi - lo
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return read(level, lo >> level)
    k = _split(size)
    return node_hash(_range_hash(lo, lo + k, read), _range_hash(lo + k, hi, read))


def _leaf_proof(lo: int, hi: int, n: int, read: Reader) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if n < lo + k:
        return [*_leaf_proof(lo, lo + k, n, read), _range_hash(lo + k, hi, read)]
    return [*_leaf_proof(lo + k, hi, n, read), _range_hash(lo, lo + k, read)]


def _sub_proof(lo: int, hi: int, n: int, read: Reader) -> list[bytes]:
    """Proof that records [lo, n) are a prefix of [lo, hi)."""
    if n == hi:
        return [] if lo == 0 else [_range_hash(lo, hi, read)]
    k = _split(hi - lo)
    if n <= lo + k:
        return [*_sub_proof(lo, lo + k, n, read), _range_hash(lo + k, hi, read)]
    return [*_sub_proof(lo + k, hi, n, read), _range_hash(lo, lo + k, read)]


def _tiles_read(tree_size: int, height: int,
                run: Callable[[Reader], object]) -> list[Tile]:
    """The tiles `run` reads stored hashes from, in first-use order."""
    tiles: dict[Tile, None] = {}

    def note(level: int, index: int) -> bytes:
        tiles.setdefault(_tile_for(tree_size, level, index, height)[0])
        return bytes(HASH_SIZE)

    run(note)
    return list(tiles)


def _tile_reader(tree_size: int, tiles: Mapping[Tile, bytes], height: int) -> Reader:
    def read(level: int, index: int) -> bytes:
        tile = _tile_for(tree_size, level, index, height)[0]
        if tile not in tiles:
            raise TlogError(f"tile {tile.path} missing")
        return hash_from_tile(tile, tiles[tile], level, index)
    return read


def _check_index(tree_size: int, index: int) -> None:
    if not 0 <= index < tree_size:
        raise TlogError(f"record {index} is not in a tree of {tree_size} records")


def record_proof_tiles(tree_size: int, index: int, height: int = TILE_HEIGHT) -> list[Tile]:
    """The tiles (of this tree size) that record `index`'s inclusion proof is read from."""
    _check_index(tree_size, index)
    return _tiles_read(tree_size, height, lambda read: _leaf_proof(0, tree_size, index, read))


def record_proof(tree_size: int, index: int, tiles: Mapping[Tile, bytes],
                 height: int = TILE_HEIGHT) -> list[bytes]:
    """Record `index`'s inclusion proof (sibling hashes, bottom up), read from `tiles`."""
    _check_index(tree_size, index)
    return _leaf_proof(0, tree_size, index, _tile_reader(tree_size, tiles, height))


def check_record(proof: Sequence[bytes], tree: Tree, index: int, leaf: bytes) -> None:
    """Raise TlogError unless `proof` shows the record hash `leaf` at `index` of `tree`."""
    _check_index(tree.size, index)
    steps = list(proof)

    def run(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf
        if not steps:
            raise TlogError("invalid inclusion proof: too short")
        sibling = steps.pop()
        k = _split(hi - lo)
        if index < lo + k:
            return node_hash(run(lo, lo + k), sibling)
        return node_hash(sibling, run(lo + k, hi))

    root = run(0, tree.size)
    if steps:
        raise TlogError("invalid inclusion proof: too long")
    if root != tree.hash:
        raise TlogError(f"record {index} is not in the signed tree of {tree.size} records "
                        f"(the record or a tile was altered)")


def tree_proof_tiles(tree_size: int, old_size: int, height: int = TILE_HEIGHT) -> list[Tile]:
    """The tiles (of the newer tree) a consistency proof from `old_size` is read from."""
    _check_sizes(tree_size, old_size)
    return _tiles_read(tree_size, height, lambda read: _sub_proof(0, tree_size, old_size, read))


def tree_proof(tree_size: int, old_size: int, tiles: Mapping[Tile, bytes],
               height: int = TILE_HEIGHT) -> list[bytes]:
    """The proof that the tree of `old_size` records is a prefix of the one of `tree_size`."""
    _check_sizes(tree_size, old_size)
    return _sub_proof(0, tree_size, old_size, _tile_reader(tree_size, tiles, height))


def _check_sizes(tree_size: int, old_size: int) -> None:
    if not 0 < old_size <= tree_size:
        raise TlogError(f"no consistency proof from {old_size} to {tree_size} records")


def check_tree(proof: Sequence[bytes], tree: Tree, old: Tree) -> None:
    """Raise TlogError unless `proof` shows `tree` extends `old` (append-only)."""
    _check_sizes(tree.size, old.size)
    steps = list(proof)

    def run(lo: int, hi: int) -> tuple[bytes, bytes]:
        if old.size == hi:
            if lo == 0:
                return old.hash, old.hash
            if not steps:
                raise TlogError("invalid consistency proof: too short")
            h = steps.pop()
            return h, h
        if not steps:
            raise TlogError("invalid consistency proof: too short")
        sibling = steps.pop()
        k = _split(hi - lo)
        if old.size <= lo + k:
            old_hash, new_hash = run(lo, lo + k)
            return old_hash, node_hash(new_hash, sibling)
        old_hash, new_hash = run(lo + k, hi)
        return node_hash(sibling, old_hash), node_hash(sibling, new_hash)

    old_hash, new_hash = run(0, tree.size)
    if steps:
        raise TlogError("invalid consistency proof: too long")
    if old_hash != old.hash or new_hash != tree.hash:
        raise TlogError(f"the tree of {tree.size} records does not extend the one of {old.size} "
                        f"(a fork of the log, or an altered tile)")
