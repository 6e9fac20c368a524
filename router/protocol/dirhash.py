"""go.sum hashes (``h1:``), computed as the go command does (golang.org/x/mod/sumdb/dirhash).

Hash1 of a file list: for each file, sorted by name (as bytes), the line
``<hex SHA-256 of its content>  <name>\\n``; the hash is ``h1:`` and the base64
SHA-256 of those lines. A module zip's hash is Hash1 over its entries, named as
in the zip (``<module>@<version>/...``); a go.mod's hash (the ``/go.mod`` line of
go.sum) is Hash1 of the single file named ``go.mod``. Compression, times and
other zip metadata never count. Pure: bytes or an open binary file in, a string out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterable
from typing import BinaryIO

__all__ = ["DirhashError", "Hash1Builder", "hash1", "hash_go_mod", "hash_zip", "raw_zip_name"]

_CHUNK = 1 << 16


class DirhashError(Exception):
    """The files cannot be hashed (a name with a newline, a zip that cannot be read)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Hash1Builder:
    """Hash1, fed one file digest at a time, in any order (sorted at the end)."""

    def __init__(self) -> None:
        self._lines: dict[bytes, bytes] = {}

    def add(self, name: bytes, sha256: bytes) -> None:
        """Record the file `name` with the SHA-256 `sha256` of its content."""
        if b"\n" in name:
            raise DirhashError(f"file name {name!r} contains a newline")
        if name in self._lines:
            raise DirhashError(f"file name {name!r} appears twice")
        self._lines[name] = sha256

    def result(self) -> str:
        """The ``h1:`` hash of every file added."""
        summary = hashlib.sha256()
        for name in sorted(self._lines):
            summary.update(self._lines[name].hex().encode() + b"  " + name + b"\n")
        return "h1:" + base64.b64encode(summary.digest()).decode()


def hash1(files: Iterable[tuple[str | bytes, bytes]]) -> str:
    """Hash1 of ``(name, content)`` pairs."""
    builder = Hash1Builder()
    for name, content in files:
        builder.add(name.encode() if isinstance(name, str) else name, hashlib.sha256(content).digest())
    return builder.result()


def hash_go_mod(data: bytes) -> str:
    """The go.sum hash of a go.mod file (the ``<module> <version>/go.mod`` line)."""
    return hash1([("go.mod", data)])


def raw_zip_name(info: zipfile.ZipInfo) -> bytes:
    """The entry's name as stored: Go reads zip names as raw bytes, Python decodes them."""
    if info.flag_bits & 0x800:
        return info.filename.encode("utf-8")
    return info.orig_filename.encode("cp437")


def hash_zip(source: bytes | BinaryIO) -> str:
    """The go.sum hash of a module zip: its bytes, or a seekable binary file the caller opened.

    Entries are read one chunk at a time, so a large zip is never held whole.
    """
    target: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    builder = Hash1Builder()
    try:
        with zipfile.ZipFile(target) as archive:
            for info in archive.infolist():
                digest = hashlib.sha256()
                with archive.open(info) as entry:
                    while chunk := entry.read(_CHUNK):
                        digest.update(chunk)
                builder.add(raw_zip_name(info), digest.digest())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as e:
        raise DirhashError(f"cannot read the zip: {e}") from e
    return builder.result()
