"""One cached artifact as the cache hands it out, and the lease that keeps its file.

A ``CacheEntry`` is immutable and names one byte sequence: its ETag is
strong, from the stat of the committed file (``<mtime_ns>-<size>`` in hex),
the same value aiohttp's FileResponse computes, so an answer from the
memory tier and one sent with sendfile carry the same ETag. A file under an
artifact name is never modified in place, only created whole by an atomic
rename, so (mtime_ns, size) names one byte sequence. It costs nothing (the
cache stats anyway), survives restarts, and is the same in every worker
sharing the directory. A content hash would be stable across regions too,
but would need every file read at startup (20 GB) or a sidecar per
artifact; the go command does not revalidate, so a mismatch between regions
costs only a spurious revalidation by a CDN, never a wrong 304.

A ``Lease`` keeps an entry's file from eviction while it is served.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goproxy_router.storage.index import ArtifactIndex

__all__ = ["CacheEntry", "Lease", "stat_etag"]


def stat_etag(st: os.stat_result) -> str:
    """aiohttp's FileResponse ETag (unquoted), so memory-tier and sendfile answers agree."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


@dataclasses.dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached artifact, as found by ``DiskCache.get`` or made by ``commit``.

    ``key`` is the path relative to the cache root; ``data`` holds the whole
    body when it is small enough for the memory tier (serve it directly),
    else None (serve ``path``, under a ``DiskCache.lease``).
    """

    key: str
    path: Path
    size: int
    mtime: float
    etag: str
    data: bytes | None = None


class Lease:
    """Protects one artifact from eviction while it is served, until released.

    Use as ``with cache.lease(entry) as entry: ...`` or call ``release()``
    (idempotent). Take it right after ``get()``, before any ``await``: in
    between, nothing in this process can evict the file. Once the file is
    open, POSIX keeps its bytes readable even if another process deletes it.
    """

    __slots__ = ("_cache", "entry", "_released")

    def __init__(self, cache: ArtifactIndex, entry: CacheEntry) -> None:
        self._cache = cache
        self.entry = entry
        self._released = False

    def release(self) -> None:
        """Allow eviction again (and evict now if the cache is over its bound)."""
        if not self._released:
            self._released = True
            self._cache._release(self.entry.key)

    def __enter__(self) -> CacheEntry:
        return self.entry

    def __exit__(self, *exc: object) -> None:
        self.release()
