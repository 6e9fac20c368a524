"""A module zip's go.sum hash computed while its bytes arrive, checked against its end.

`protocol/dirhash.hash_zip` must read the zip's central directory first, so it
can only start once the whole zip is on disk: for a large zip that is a
second pass over every byte, after the download. `ZipStreamHash` instead
reads the entries' local headers and data as they stream (stored, or deflated
with or without a data descriptor, zip64 included), hashing each file's
content on the way. Once the zip is complete, `finish` holds that work against
the central directory, which is what the go command reads: every central
entry must point at a local entry hashed here, with the same sizes, method
and CRC-32 (its name is the central directory's, as the go command reads
it). Anything this reader does not follow (an unknown method, encryption,
bytes before the first entry, a central directory that disagrees with the
local headers) makes `finish` fall back to `hash_zip` over the complete
file, so the result is always `hash_zip`'s. Pure: bytes in, a hash out;
the caller decides on which thread it runs.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from goproxy_router.protocol.dirhash import DirhashError, Hash1Builder, hash_zip, raw_zip_name

__all__ = ["ZipStreamHash"]

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
END_SIG = b"PK\x05\x06"
END64_SIG = b"PK\x06\x06"
DESCRIPTOR_SIG = b"PK\x07\x08"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")    # 30 bytes
ZIP64_EXTRA = 0x0001
FLAG_ENCRYPTED = 0x1
FLAG_DESCRIPTOR = 0x8
STORED, DEFLATED = 0, 8
OUT_LIMIT = 1 << 20                 # bytes of inflated output per step: bounds memory on a bomb
MAX_UNZIPPED = 500 << 20            # the go command's limit on a module's files (modzip)


class _State(enum.Enum):
    HEADER = "header"
    DEFLATED = "deflated"
    STORED = "stored"
    DESCRIPTOR = "descriptor"
    DONE = "done"                   # the central directory began: every local entry was read
    GAVE_UP = "gave up"


@dataclass(slots=True)
class _Entry:
    """One local entry as read from the stream."""

    offset: int
    name: bytes
    method: int
    zip64: bool
    csize: int = 0
    usize: int = 0
    crc: int = 0
    digest: bytes = b""


class ZipStreamHash:
    """Feed a zip's bytes in order with `feed`; `finish` gives its go.sum ``h1:`` hash.

    `streamed` says afterwards whether the hash came from the streamed entries
    (True) or from re-reading the file (False, with `reason` saying why).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0                       # absolute offset of _buf[0] in the zip
        self._state = _State.HEADER
        self._entries: dict[int, _Entry] = {}
        self._entry: _Entry | None = None
        self._sha = hashlib.sha256()
        self._crc = 0
        self._inflater: zlib._Decompress | None = None
        self._entry_in = 0                  # compressed bytes given to this entry so far
        self._entry_out = 0                 # its content bytes hashed so far
        self._flags = 0                     # its local header's flags
        self._stored_left = 0
        self._unzipped = 0
        self.streamed = False
        self.reason = ""

    # -- streaming --------------------------------------------------------------------------

    def feed(self, chunk: bytes | memoryview) -> None:
        """Take the next bytes of the zip. Never raises: what it cannot follow, it gives up on."""
        if self._state in (_State.DONE, _State.GAVE_UP) or not chunk:
            return
        self._buf += chunk
        try:
            while self._step():
                pass
        except (zlib.error, struct.error, ValueError) as e:
            self._give_up(f"unreadable entry data: {e}")

    def _give_up(self, reason: str) -> None:
        self._state, self.reason = _State.GAVE_UP, reason
        self._buf.clear()
        self._inflater = None

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._pos += n
        return data

    def _step(self) -> bool:
        """Advance as far as the buffered bytes allow one state; False: wait for more."""
        if self._state is _State.HEADER:
            return self._header()
        if self._state is _State.DEFLATED:
            return self._deflated()
        if self._state is _State.STORED:
            return self._stored()
        if self._state is _State.DESCRIPTOR:
            return self._descriptor()
        return False

    def _header(self) -> bool:
        if len(self._buf) < 4:
            return False
        signature = bytes(self._buf[:4])
        if signature in (CENTRAL_SIG, END_SIG, END64_SIG):
            self._state = _State.DONE
            self._buf.clear()
            return False
        if signature != LOCAL_SIG:
            self._give_up(f"no local entry header at offset {self._pos}")
            return False
        if len(self._buf) < LOCAL_HEADER.size:
            return False
        (_, _, flags, method, _, _, _, csize, usize, name_len,
         extra_len) = LOCAL_HEADER.unpack_from(self._buf)
        if len(self._buf) < LOCAL_HEADER.size + name_len + extra_len:
            return False
        if flags & FLAG_ENCRYPTED or method not in (STORED, DEFLATED):
            self._give_up(f"entry at offset {self._pos}: method {method}, flags {flags:#x}")
            return False
        offset = self._pos
        header = self._take(LOCAL_HEADER.size + name_len + extra_len)
        name = header[LOCAL_HEADER.size:LOCAL_HEADER.size + name_len]
        zip64_sizes = _zip64_sizes(header[LOCAL_HEADER.size + name_len:], usize, csize)
        entry = _Entry(offset, name, method, zip64=zip64_sizes is not None)
        if zip64_sizes is not None:
            usize, csize = zip64_sizes
        self._entry, self._sha, self._crc = entry, hashlib.sha256(), 0
        self._entry_in = self._entry_out = 0
        self._flags = flags
        if method == DEFLATED:
            self._inflater = zlib.decompressobj(-15)
            self._state = _State.DEFLATED
        elif flags & FLAG_DESCRIPTOR:
            # A stored entry whose size comes after its data: its end cannot be found.
            self._give_up(f"stored entry at offset {offset} with its sizes after its data")
            return False
        else:
            self._stored_left = csize
            self._state = _State.STORED
        return True

    def _content(self, data: bytes) -> bool:
        """Hash a piece of the current file's content; False (after giving up) past the limit."""
        self._sha.update(data)
        self._crc = zlib.crc32(data, self._crc)
        self._entry_out += len(data)
        self._unzipped += len(data)
        if self._unzipped > MAX_UNZIPPED:
            self._give_up(f"more than {MAX_UNZIPPED} bytes unzipped")
            return False
        return True

    def _deflated(self) -> bool:
        assert self._inflater is not None
        if not self._buf:
            return False
        pending = self._take(len(self._buf))
        self._entry_in += len(pending)
        while pending and not self._inflater.eof:
            if not self._content(self._inflater.decompress(pending, OUT_LIMIT)):
                return False
            pending = self._inflater.unconsumed_tail
        if not self._inflater.eof:
            return False
        rest = self._inflater.unused_data
        self._buf[:0] = rest
        self._pos -= len(rest)
        self._entry_in -= len(rest)
        return self._end_data(self._entry_in)

    def _stored(self) -> bool:
        n = min(self._stored_left, len(self._buf))
        if n and not self._content(self._take(n)):
            return False
        self._stored_left -= n
        self._entry_in += n
        return self._end_data(self._entry_in) if self._stored_left == 0 else False

    def _end_data(self, csize: int) -> bool:
        entry = self._entry
        assert entry is not None
        entry.csize, entry.usize, entry.crc = csize, self._entry_out, self._crc
        entry.digest = self._sha.digest()
        self._inflater = None
        if self._flags & FLAG_DESCRIPTOR:
            self._state = _State.DESCRIPTOR
        else:
            self._keep(entry)
        return True

    def _descriptor(self) -> bool:
        """The data descriptor after a deflated entry: its CRC and sizes must be what was read."""
        entry = self._entry
        assert entry is not None
        if len(self._buf) < 24:     # the longest descriptor; a central header (46) follows anyway
            return False
        start = 4 if bytes(self._buf[:4]) == DESCRIPTOR_SIG else 0
        for wide in ((True, False) if entry.zip64 else (False, True)):
            size = struct.Struct("<IQQ" if wide else "<III")
            crc, csize, usize = size.unpack_from(self._buf, start)
            if (crc, csize, usize) == (entry.crc, entry.csize, entry.usize):
                self._take(start + size.size)
                self._keep(entry)
                return True
        self._give_up(f"entry at offset {entry.offset}: its data descriptor disagrees")
        return False

    def _keep(self, entry: _Entry) -> None:
        self._entries[entry.offset] = entry
        self._entry = None
        self._state = _State.HEADER

    # -- the end -----------------------------------------------------------------------------

    def finish(self, source: BinaryIO) -> str:
        """The go.sum hash of the complete zip in `source` (a seekable file of the bytes fed).

        Raises DirhashError if the zip cannot be read, as `hash_zip` does.
        """
        if self._state is not _State.DONE and not self.reason:
            self.reason = f"the stream ended in state {self._state.value}"
        if self._state is _State.DONE:
            result = self._from_central(source)
            if result is not None:
                self.streamed = True
                return result
        source.seek(0)
        return hash_zip(source)

    def _from_central(self, source: BinaryIO) -> str | None:
        source.seek(0)
        try:
            with zipfile.ZipFile(source) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
            raise DirhashError(f"cannot read the zip: {e}") from e
        builder = Hash1Builder()
        for info in infos:
            entry = self._entries.get(info.header_offset)
            name = raw_zip_name(info)
            # The name is the central directory's (the go command reads only the lengths from
            # a local header); the data must be the entry read at that offset, as it says.
            if entry is None or (entry.method, entry.csize, entry.usize, entry.crc) != (
                    info.compress_type, info.compress_size, info.file_size, info.CRC):
                self.reason = f"the central directory's {name!r} is not the entry read at its offset"
                return None
            builder.add(name, entry.digest)
        return builder.result()


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int] | None:
    """(uncompressed, compressed) from a local header's zip64 extra field, if it has one."""
    at = 0
    while at + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4:at + 4 + size]
        if tag == ZIP64_EXTRA:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            return usize, csize
        at += 4 + size
    return None
