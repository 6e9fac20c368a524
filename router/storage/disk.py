"""The disk cache of immutable artifacts: lookups, the memory tier, sweep and eviction.

``DiskCache`` keeps ``.info``/``.mod``/``.zip`` of canonical versions, which
never change, in the layout of Go's own download cache (router/storage/layout.py),
with the checksum-database answers that never change (full tiles and lookups,
``sumdb/<name>/<path the go command asks a proxy for>``), all
bounded by ``max_size`` with LRU eviction, and keeps ``<module>/@v/list``
current (router/storage/listing.py). Small artifacts are also kept in a
bounded in-memory LRU, so a hit on a ``.info`` costs a dict lookup rather
than open/stat/sendfile. Writing goes through ``CacheWriter``
(router/storage/writer.py), free space and write errors through
``DiskHealth`` (router/storage/health.py).

Several processes may share one directory: commits are atomic renames of
identical immutable content, so two writers of one artifact are harmless
(the last rename wins, a reader always sees one whole file). Each process
keeps its own size/LRU index: ``get()`` adopts a file another process
committed (one ``stat`` on an index miss, which is a miss path anyway), and a
file another process evicted is noticed when serving it fails (call
``discard()``); the size bound is exact per process and approximate across
processes sharing a directory. (Across processes, an eviction racing a
re-commit of the same artifact can delete the fresh copy; the cost is one
refetch, never a partial file.)

The few syscalls left on the loop are cheap: ``get()`` reads a small
(<= 64 KiB) file once before the memory tier holds it, and ``stat``-s once
on an index miss; ``abort()`` unlinks a temp file; ``admits()`` calls
``statvfs`` at most once a second (``min_free``); renames and eviction
unlinks run on one thread of the cache's own.

Threading: every method must be called from the thread running the event
loop (``sweep()`` before serving starts, or via ``asyncio.to_thread`` while
nothing else uses the cache).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from goproxy_router.protocol.paths import escape_path
from goproxy_router.storage import fileops
from goproxy_router.storage.budget import WRITE_BUDGET_BYTES, WriteBudget
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheUnavailable
from goproxy_router.storage.health import DiskHealth
from goproxy_router.storage.index import ArtifactIndex, IndexRecord
from goproxy_router.storage.layout import (
    ARTIFACT_EXTS,
    SUMDB_DIR,
    TEMP_PREFIX,
    artifact_relpath,
    is_sumdb_relpath,
    sumdb_relpath,
)
from goproxy_router.storage.listing import LIST_NAME, LISTED_EXTS, rewrite_list
from goproxy_router.storage.writer import CacheWriter

__all__ = ["DiskCache", "SweepReport"]

class SweepReport(NamedTuple):
    """What ``DiskCache.sweep`` found and did."""

    removed_temp: int   # leftover .tmp-* files deleted
    busy_temp: int      # .tmp-* files still locked by a live writer, kept
    files: int          # artifacts indexed
    size: int           # their total size in bytes
    evicted: int        # artifacts removed because the index exceeded max_size
    lists: int = 0      # @v/list files rewritten (or removed) to match the directory


class DiskCache(ArtifactIndex, DiskHealth):
    """Immutable Go module artifacts on disk, with an LRU size bound and a memory tier.

    ``max_size`` bounds the total bytes of indexed artifacts plus the bytes
    reserved by fills in progress (``reserved``; None: unbounded): a writer
    reserves its declared size up front, or its bytes as they come, and least
    recently used artifacts are evicted to make room before the bytes are
    written; a declared size larger than ``max_size`` is refused
    (CacheUnavailable). Eviction never takes a file under a ``Lease`` nor the
    one just committed (so the entry ``commit`` returns can always be served;
    the bound may be exceeded until the next reservation, commit or lease
    release). ``min_free``: while the cache's filesystem has less free space
    (``os.statvfs``, looked at most every ``free_check_interval`` seconds),
    ``admits()`` says no and new fills are to be served uncached. A failed
    write (ENOSPC, EIO...) raises CacheWriteError, counted in ``write_errors``
    by errno; either condition makes the cache ``degraded`` (a reason, for
    /readyz and metrics) until free space is back, respectively until a commit
    succeeds. Files of at most ``small_max_bytes`` are also
    kept in memory, up to ``small_cache_bytes`` in total (LRU). ``fsync=False`` skips
    the fsyncs (tests, or a cache on tmpfs); kill -9 safety does not need
    them, power-loss safety does. Call ``sweep()`` once before serving
    (``DiskCache.open`` does both), ``await drain()`` / ``close()`` at shutdown.
    ``write_budget_bytes`` bounds the body bytes all writers together hold in
    memory before they reach the disk (``write_budget``, a WriteBudget; one
    DiskCache per process, so a process-wide bound); a writer over it waits.

    Counters for metrics: ``size``, ``files``, ``evictions``, ``evicted_bytes``,
    ``memory_size``, ``hits``, ``memory_hits``, ``misses``, ``commits``,
    ``rejected`` (failed integrity checks), ``swept`` (temp files removed),
    ``lists_written`` (``@v/list`` files rewritten or removed), ``reserved``,
    ``write_errors`` (a Counter by errno name).
    """

    def __init__(
        self,
        root: Path,
        max_size: int | None,
        small_max_bytes: int = 64 * 1024,
        small_cache_bytes: int = 64 * 1024 * 1024,
        *,
        fsync: bool = True,
        write_buffer_bytes: int = 1024 * 1024,
        io_threads: int = 4,
        write_budget_bytes: int | None = WRITE_BUDGET_BYTES,
        min_free: int = 0,
        free_check_interval: float = 1.0,
    ) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must be >= 0 or None")
        DiskHealth.__init__(self, min_free, free_check_interval)
        self.root = Path(root).absolute()
        ArtifactIndex.__init__(self, max_size, small_cache_bytes)
        self.small_max_bytes = small_max_bytes
        self.fsync = fsync
        # A flushed file is never small, so a small body is always whole in memory at commit.
        self.write_buffer_bytes = max(write_buffer_bytes, small_max_bytes + 1)
        # Bytes all writers together hold until they are on disk (None: unbounded).
        self.write_budget = WriteBudget(write_budget_bytes)
        # Data I/O (writes, checks, fsync) on a small pool; every change to the
        # artifact namespace (commit renames, eviction unlinks) on one thread, so
        # an unlink's "is it still that inode?" check and its unlink can never
        # interleave with a rename onto the same name by this process.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=io_threads, thread_name_prefix="cache-io")
        self._namespace = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cache-rename")
        self._background: set[concurrent.futures.Future[Any]] = set()
        self.hits = 0
        self.memory_hits = 0
        self.misses = 0
        self.commits = 0
        self.rejected = 0
        self.swept = 0
        self.lists_written = 0   # @v/list rewrites and removals (namespace thread, sweep)

    @classmethod
    def open(cls, root: Path, max_size: int | None, **kwargs: Any) -> DiskCache:
        """A DiskCache whose startup ``sweep()`` has run."""
        cache = cls(root, max_size, **kwargs)
        cache.sweep()
        return cache

    # -- lookups --------------------------------------------------------------

    def path_for(self, module: str, version: str, ext: str) -> Path:
        """Where the artifact lives (or would live) on disk."""
        return self.root / artifact_relpath(module, version, ext)

    def list_path(self, module: str) -> Path:
        """Where ``module``'s ``@v/list`` lives (ProtocolError for an invalid path)."""
        return self.root / escape_path(module) / "@v" / LIST_NAME

    def get(self, module: str, version: str, ext: str) -> CacheEntry | None:
        """The cached artifact, or None; a hit becomes the most recently used.

        A small artifact comes with ``data`` (read from disk once, then from
        memory). A file committed by another process sharing the directory is
        adopted into the index (one ``stat`` on an index miss).
        """
        return self._get(artifact_relpath(module, version, ext))

    def get_sumdb(self, name: str, tail: str) -> CacheEntry | None:
        """A kept checksum-database answer (``sumdb_relpath``: a lookup or full tile), or None."""
        return self._get(sumdb_relpath(name, tail))

    def _get(self, key: str) -> CacheEntry | None:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            if key in self._index:
                self._index.move_to_end(key)
            self.hits += 1
            self.memory_hits += 1
            return entry
        item = self._index.get(key)
        if item is None:
            item = self._adopt(key)
            if item is None:
                self.misses += 1
                return None
        else:
            self._index.move_to_end(key)
        entry = item.entry
        if entry.size <= self.small_max_bytes and entry.size <= self.small_cache_bytes:
            try:
                with open(entry.path, "rb") as f:
                    data = f.read(entry.size + 1)
            except FileNotFoundError:  # evicted by another process
                self._forget(key)
                self.misses += 1
                return None
            if len(data) == entry.size:
                entry = dataclasses.replace(entry, data=data)
                self._remember(entry)
        self.hits += 1
        return entry

    # -- writing --------------------------------------------------------------

    def writer(self, module: str, version: str, ext: str, size: int | None = None) -> CacheWriter:
        """A writer for one artifact; no I/O until the first ~1 MiB or commit.

        ``async with cache.writer(m, v, "zip") as w: ...; await w.commit(n)``;
        leaving the block without a commit aborts. ``size``, when known (a
        Content-Length), is reserved against ``max_size`` at once (evicting
        first); a size that can never fit raises CacheUnavailable.
        """
        return self._writer(artifact_relpath(module, version, ext), module, version, str(ext), size)

    def sumdb_writer(self, name: str, tail: str, size: int | None = None) -> CacheWriter:
        """A writer for a checksum-database answer that never changes (``sumdb_relpath``);
        the caller checks the body (router/protocol/sumdbanswers.py) before writing it."""
        return self._writer(sumdb_relpath(name, tail), "", "", "sumdb", size)

    def _writer(self, key: str, module: str, version: str, ext: str,
                size: int | None) -> CacheWriter:
        if size is not None and self.max_size is not None and size > self.max_size:
            raise CacheUnavailable(f"{key}: {size} bytes can never fit in max_size "
                                   f"({self.max_size} bytes); not cached")
        writer = CacheWriter(self, key, module, version, ext)
        if size:
            writer._reserve(size)
        return writer

    # -- startup and shutdown ---------------------------------------------------

    def sweep(self) -> SweepReport:
        """Delete unlocked ``.tmp-*`` leftovers and rebuild the index by scanning.

        Access order is seeded by mtime (oldest is evicted first); then evicts
        down to ``max_size`` and brings every ``@v/list`` in line with its
        directory. Blocking: call before serving, or in a thread while
        nothing else uses this cache.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[int, str, IndexRecord]] = []
        version_dirs: list[str] = []
        removed = busy = 0
        for dirpath, _dirs, names in os.walk(self.root):
            in_v = os.path.basename(dirpath) == "@v"
            if in_v:
                version_dirs.append(dirpath)
            for name in names:
                full = os.path.join(dirpath, name)
                if name.startswith(TEMP_PREFIX):
                    if fileops.remove_unlocked(full):
                        removed += 1
                    else:
                        busy += 1
                    continue
                key = os.path.relpath(full, self.root)
                if not (in_v and name.rpartition(".")[2] in ARTIFACT_EXTS
                        or is_sumdb_relpath(key)):
                    continue  # Go's own .lock/.ziphash/list files, or strangers
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                found.append((st.st_mtime_ns, key, self._item(key, st)))
        found.sort(key=lambda t: (t[0], t[1]))
        self._index = OrderedDict((key, item) for _, key, item in found)
        self._memory.clear()
        self.memory_size = 0
        self.size = sum(item.entry.size for item in self._index.values())
        self.files = len(self._index)
        self.swept += removed
        before, lists_before = self.evictions, self.lists_written
        self._evict(background=False)
        # After the evictions; also repairs lists a crash or an older release left behind.
        for d in version_dirs:
            self._refresh_list(Path(d))
        return SweepReport(removed, busy, self.files, self.size, self.evictions - before,
                           self.lists_written - lists_before)

    async def drain(self) -> None:
        """Wait for background unlinks and deferred temp-file cleanups."""
        while self._background:
            pending = [asyncio.shield(asyncio.wrap_future(f)) for f in self._background.copy()]
            await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        """Finish background jobs and stop the I/O threads."""
        self._executor.shutdown(wait=True)
        self._namespace.shutdown(wait=True)

    # -- internals --------------------------------------------------------------

    def _adopt(self, key: str) -> IndexRecord | None:
        # Checked before the stat: the unlink may happen while we stat, but no new
        # one can be queued (only this thread queues them).
        with self._unlinking_lock:
            if key in self._unlinking:
                return None   # we evicted it and are about to unlink it
        try:
            st = os.stat(self.root / key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        item = self._insert(key, st)
        self._evict(protect=key)
        return item

    def _committed(self, key: str, st: os.stat_result, data: bytes | None) -> CacheEntry:
        """Index a file a writer just renamed into place; evict if over the bound."""
        item = self._insert(key, st)
        self.commits += 1
        self._write_failure = None               # writing works again
        entry = item.entry
        if data is not None and len(data) == entry.size and entry.size <= self.small_cache_bytes:
            entry = dataclasses.replace(entry, data=data)
            self._remember(entry)
        self._evict(protect=key)
        return entry

    def _refresh_lists_of(self, keys: Iterable[str]) -> None:
        """Rewrite the ``@v/list`` of every module whose ``.info`` or ``.mod`` changed."""
        dirs = {key.rpartition("/")[0] for key in keys
                if key.rpartition(".")[2] in LISTED_EXTS and not key.startswith(SUMDB_DIR + "/")}
        for d in sorted(dirs):
            self._refresh_list(self.root / d)

    def _refresh_list(self, version_dir: Path) -> bool:
        """Bring ``<version_dir>/list`` in line with its directory (``rewrite_list``),
        counting a rewrite or removal in ``lists_written``. Blocking (namespace
        thread, or sweep); a failure is logged, never raised."""
        if not rewrite_list(version_dir):
            return False
        self.lists_written += 1
        return True

    def _submit(self, executor: concurrent.futures.Executor, fn: Callable[..., Any],
                *args: Any) -> concurrent.futures.Future[Any]:
        fut = executor.submit(fn, *args)
        self._track(fut)
        return fut

    def _track(self, fut: concurrent.futures.Future[Any]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
