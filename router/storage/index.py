"""What this process knows is in the cache directory, and eviction to keep ``max_size``.

``ArtifactIndex`` (DiskCache's base class) holds the LRU-ordered index of
artifacts with their sizes and inodes, the bytes writers have reserved, the
leases that keep a file being served, and the small-file memory tier.
Eviction takes least recently used, unleased artifacts until the indexed
and reserved bytes fit in ``max_size`` again; their files are unlinked on
DiskCache's namespace thread, only if the name still holds the evicted
inode, and their ``@v/list`` is rewritten afterwards. Event-loop thread
only, except ``_unlink_all`` (namespace thread).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goproxy_router.base.logs import log_event
from goproxy_router.storage import fileops
from goproxy_router.storage.entry import CacheEntry, Lease, stat_etag

__all__ = ["ArtifactIndex", "IndexRecord"]

log = logging.getLogger("router.cache")


@dataclasses.dataclass(slots=True)
class IndexRecord:
    """Index record: the entry (without data) and the inode, to unlink only that file."""

    entry: CacheEntry
    ino: int


class ArtifactIndex:
    """The in-process index of a cache directory: LRU order, sizes, leases, memory tier.

    ``max_size`` (None: unbounded) bounds ``size`` plus ``reserved``; files
    of at most DiskCache's ``small_max_bytes`` are also kept in memory, up to
    ``small_cache_bytes`` in total (LRU). Eviction never takes a file under a
    ``Lease`` nor the one just committed, adopted or reserved for.

    Counters: ``size``, ``files``, ``evictions``, ``evicted_bytes``,
    ``memory_size``, ``reserved``.
    """

    root: Path

    if TYPE_CHECKING:   # provided by DiskCache
        _namespace: concurrent.futures.Executor

        def _submit(self, executor: concurrent.futures.Executor, fn: Callable[..., Any],
                    *args: Any) -> concurrent.futures.Future[Any]: ...

        def _refresh_lists_of(self, keys: Iterable[str]) -> None: ...

    def __init__(self, max_size: int | None, small_cache_bytes: int) -> None:
        self.max_size = max_size
        self.small_cache_bytes = small_cache_bytes
        self._index: OrderedDict[str, IndexRecord] = OrderedDict()      # oldest first
        self._memory: OrderedDict[str, CacheEntry] = OrderedDict()  # entries with data
        self._leases: dict[str, int] = {}
        # Keys of evicted files whose unlink is still queued (with a count, as a key
        # may be evicted again meanwhile): a miss must not re-adopt such a file.
        self._unlinking: dict[str, int] = {}
        self._unlinking_lock = threading.Lock()
        self.size = 0
        self.files = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.memory_size = 0
        self.reserved = 0        # bytes open writers reserved against max_size

    def lease(self, entry: CacheEntry) -> Lease:
        """Protect ``entry``'s file from eviction until the lease is released."""
        self._leases[entry.key] = self._leases.get(entry.key, 0) + 1
        return Lease(self, entry)

    def discard(self, entry: CacheEntry) -> None:
        """Forget an entry whose file turned out to be gone (e.g. another process
        evicted it); the file itself is not touched. A newer file committed
        under the same name since ``entry`` was found stays indexed."""
        item = self._index.get(entry.key)
        if item is None or item.entry.etag == entry.etag:
            self._forget(entry.key)

    def __contains__(self, key: object) -> bool:
        """Whether a relative path (``artifact_relpath``) is indexed."""
        return key in self._index

    def _reserve(self, n: int, key: str) -> None:
        """Count ``n`` more bytes in flight for ``key`` and evict to keep the bound.

        A re-fill of an indexed key replaces it at commit, so its bytes count as
        freed here (and it is not evicted for its own reservation)."""
        self.reserved += n
        item = self._index.get(key)
        self._evict(protect=key, replacing=item.entry.size if item is not None else 0)

    def _unreserve(self, n: int) -> None:
        self.reserved -= n
        assert self.reserved >= 0, "released more reserved bytes than were reserved"

    # -- internals --------------------------------------------------------------

    def _item(self, key: str, st: os.stat_result) -> IndexRecord:
        entry = CacheEntry(key, self.root / key, st.st_size, st.st_mtime, stat_etag(st))
        return IndexRecord(entry, st.st_ino)

    def _insert(self, key: str, st: os.stat_result) -> IndexRecord:
        self._forget(key)
        item = self._index[key] = self._item(key, st)
        self.size += st.st_size
        self.files += 1
        return item

    def _forget(self, key: str) -> None:
        item = self._index.pop(key, None)
        if item is not None:
            self.size -= item.entry.size
            self.files -= 1
        mem = self._memory.pop(key, None)
        if mem is not None:
            self.memory_size -= mem.size

    def _remember(self, entry: CacheEntry) -> None:
        """Put a small entry (with data) into the memory tier, LRU-bounded."""
        old = self._memory.pop(entry.key, None)
        if old is not None:
            self.memory_size -= old.size
        self._memory[entry.key] = entry
        self.memory_size += entry.size
        while self.memory_size > self.small_cache_bytes:
            _, dropped = self._memory.popitem(last=False)
            self.memory_size -= dropped.size

    def _release(self, key: str) -> None:
        n = self._leases.get(key, 0) - 1
        if n > 0:
            self._leases[key] = n
        else:
            self._leases.pop(key, None)
            self._evict()

    def _evict(self, *, protect: str | None = None, background: bool = True,
               replacing: int = 0) -> None:
        """Evict least recently used, unleased artifacts until size + reserved <= max_size.

        ``protect`` is the artifact just committed, adopted or being reserved for:
        never the victim of its own eviction pass, so the entry handed back can
        be served even when everything else is leased or it alone exceeds the
        bound (then the next reservation, commit or lease release evicts it, if
        still over). ``replacing``: bytes of ``protect`` a commit will replace.
        """
        if self.max_size is None:
            return
        excess = self.size + self.reserved - replacing - self.max_size
        if excess <= 0:
            return
        victims: list[tuple[str, IndexRecord]] = []
        for key, item in self._index.items():
            if excess <= 0:
                break
            if key in self._leases or key == protect:
                continue
            victims.append((key, item))
            excess -= item.entry.size
        doomed: list[tuple[str, Path, int]] = []
        for key, item in victims:
            self._forget(key)
            self.evictions += 1
            self.evicted_bytes += item.entry.size
            doomed.append((key, item.entry.path, item.ino))
            log_event(log, logging.INFO, "cache eviction", key=key, size=item.entry.size,
                      reason="max_size", cache_size=self.size, max_size=self.max_size)
        if not doomed:
            return
        if background:
            with self._unlinking_lock:
                for key, _, _ in doomed:
                    self._unlinking[key] = self._unlinking.get(key, 0) + 1
            try:
                self._submit(self._namespace, self._unlink_all, doomed)
                return
            except RuntimeError:  # executor shut down
                with self._unlinking_lock:
                    for key, _, _ in doomed:
                        self._unlinked(key)
        for _, path, ino in doomed:
            fileops.unlink_same(path, ino)
        self._refresh_lists_of(key for key, _, _ in doomed)

    def _unlink_all(self, doomed: list[tuple[str, Path, int]]) -> None:
        """Background eviction (namespace thread)."""
        for key, path, ino in doomed:
            try:
                fileops.unlink_same(path, ino)
            finally:
                with self._unlinking_lock:
                    self._unlinked(key)
        self._refresh_lists_of(key for key, _, _ in doomed)

    def _unlinked(self, key: str) -> None:
        n = self._unlinking[key] - 1
        if n:
            self._unlinking[key] = n
        else:
            del self._unlinking[key]
