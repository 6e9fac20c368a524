"""ZipStreamHash: the hash of a zip read as it streams is hash_zip's, or it falls back to it."""

from __future__ import annotations

import io
import os
import random
import struct
import zipfile
from pathlib import Path

import pytest

from goproxy_router.protocol.dirhash import DirhashError, hash1, hash_zip
from goproxy_router.protocol.ziphash import ZipStreamHash
from tests.support.modtree import Module


class Unseekable(io.RawIOBase):
    """A write-only stream without seek: zipfile then writes data descriptors, as Go's writer does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


FILES = {
    "example.com/m@v1.0.0/go.mod": b"module example.com/m\n",
    "example.com/m@v1.0.0/m.go": b"package m\n" * 500,
    "example.com/m@v1.0.0/data/random.bin": random.Random(7).randbytes(300_000),
    "example.com/m@v1.0.0/empty.txt": b"",
}


def make_zip(*, streamed: bool, method: int = zipfile.ZIP_DEFLATED, force_zip64: bool = False) -> bytes:
    out: io.BytesIO | Unseekable = Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as archive:  # type: ignore[arg-type]
        for name, content in FILES.items():
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            with archive.open(info, "w", force_zip64=force_zip64) as entry:
                entry.write(content)
    return bytes(out.data) if isinstance(out, Unseekable) else out.getvalue()


def stream_hash(data: bytes, pieces: list[int] | None = None, seed: int = 0) -> ZipStreamHash:
    """Feed `data` in random pieces (or the sizes given), then finish over the whole."""
    hasher = ZipStreamHash()
    rng = random.Random(seed)
    at = 0
    sizes = iter(pieces or [])
    while at < len(data):
        n = next(sizes, None) or rng.choice([1, 3, 29, 1000, 65536])
        hasher.feed(data[at:at + n])
        at += n
    return hasher


@pytest.mark.parametrize("streamed", [False, True], ids=["sizes in header", "data descriptors"])
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED], ids=["deflated", "stored"])
@pytest.mark.parametrize("force_zip64", [False, True], ids=["zip32", "zip64"])
def test_streamed_hash_is_hash_zip(streamed: bool, method: int, force_zip64: bool) -> None:
    data = make_zip(streamed=streamed, method=method, force_zip64=force_zip64)
    expected = hash_zip(data)
    for seed in range(3):
        hasher = stream_hash(data, seed=seed)
        assert hasher.finish(io.BytesIO(data)) == expected
        # A stored entry whose sizes follow its data has no findable end: the file is re-read.
        if streamed and method == zipfile.ZIP_STORED:
            assert not hasher.streamed and "sizes after its data" in hasher.reason
        else:
            assert hasher.streamed, hasher.reason


def test_generated_module_zips_stream() -> None:
    for version in ("v1.0.0", "v1.3.4-pre"):
        module = Module("example.com/Upper/m", version)
        hasher = stream_hash(module.zip, seed=1)
        assert hasher.finish(io.BytesIO(module.zip)) == hash_zip(module.zip)
        assert hasher.streamed, hasher.reason


def test_one_byte_at_a_time() -> None:
    data = make_zip(streamed=True)
    hasher = stream_hash(data, pieces=[1] * len(data))
    assert hasher.finish(io.BytesIO(data)) == hash_zip(data)
    assert hasher.streamed, hasher.reason


def test_the_central_directory_names_the_files_as_the_go_command_reads_them() -> None:
    """Go's zip reader takes names from the central directory and only the lengths from the
    local header: a local header naming another file must not decide the hash."""
    data = bytearray(make_zip(streamed=False))
    # Rename m.go to n.go in the central directory only (same length).
    at = data.index(b"m@v1.0.0/m.go", data.index(b"PK\x01\x02"))
    data[at:at + len(b"m@v1.0.0/m.go")] = b"m@v1.0.0/n.go"
    renamed = {name.replace("/m.go", "/n.go"): content for name, content in FILES.items()}
    hasher = stream_hash(bytes(data))
    assert hasher.finish(io.BytesIO(bytes(data))) == hash1(renamed.items())
    assert hasher.streamed, hasher.reason


def test_a_central_entry_at_an_offset_not_read_falls_back() -> None:
    data = bytearray(make_zip(streamed=False))
    central = data.index(b"PK\x01\x02")
    offset_at = central + 42                      # the first central entry's local header offset
    struct.pack_into("<I", data, offset_at, struct.unpack_from("<I", data, offset_at)[0] + 1)
    hasher = stream_hash(bytes(data))
    with pytest.raises(DirhashError):             # no entry there: the go command refuses it too
        hasher.finish(io.BytesIO(bytes(data)))
    assert not hasher.streamed and "not the entry read at its offset" in hasher.reason


def test_bytes_before_the_first_entry_fall_back() -> None:
    data = b"#!junk\n" + make_zip(streamed=False)
    hasher = stream_hash(data)
    assert hasher.finish(io.BytesIO(data)) == hash_zip(data) and not hasher.streamed
    assert "no local entry header" in hasher.reason


def test_a_descriptor_that_disagrees_falls_back() -> None:
    data = bytearray(make_zip(streamed=True))
    at = data.index(b"PK\x07\x08")
    crc = struct.unpack_from("<I", data, at + 4)[0]
    struct.pack_into("<I", data, at + 4, crc ^ 1)
    hasher = stream_hash(bytes(data))
    assert "descriptor disagrees" in hasher.reason
    assert hasher.finish(io.BytesIO(bytes(data))) == hash_zip(bytes(data))
    assert not hasher.streamed


def test_a_truncated_zip_is_refused_as_hash_zip_refuses_it() -> None:
    data = make_zip(streamed=True)[:-30]
    hasher = stream_hash(data)
    with pytest.raises(DirhashError):
        hasher.finish(io.BytesIO(data))


def test_an_empty_zip() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w"):
        pass
    data = out.getvalue()
    hasher = stream_hash(data)
    assert hasher.finish(io.BytesIO(data)) == hash_zip(data) and hasher.streamed


def test_a_large_zip_from_disk(tmp_path: Path) -> None:
    """Incompressible content deflated (stored blocks inside deflate), fed in 64 KiB chunks."""
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("example.com/big@v1.0.0/blob.bin", os.urandom(3 << 20))
        archive.writestr("example.com/big@v1.0.0/go.mod", b"module example.com/big\n")
    hasher = ZipStreamHash()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            hasher.feed(chunk)
        assert hasher.finish(f) == hash_zip(path.read_bytes())
    assert hasher.streamed, hasher.reason
