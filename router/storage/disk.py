"""Storage for the request path: immutable artifacts on disk, metadata in memory,
and single-flight fetches. Pure storage and concurrency; no aiohttp objects.

Three independent pieces, each usable and testable alone:

``DiskCache``
    ``.info``/``.mod``/``.zip`` of canonical versions, which never change, in
    the layout of Go's own module download cache (``$GOMODCACHE/cache/download``):
    ``<root>/<case-escaped module>/@v/<case-escaped version>.<ext>``. An
    operator can therefore point a client straight at the directory with
    ``GOPROXY=file:///<root>`` when every upstream is gone. Small artifacts
    are also kept in a bounded in-memory LRU, so a hit on a ``.info`` costs a
    dict lookup rather than open/stat/sendfile.

``<module>/@v/list`` in the same directory
    The versions the cache can resolve: those whose ``.info`` and ``.mod``
    are both on disk, one per line in semver order (pseudo-versions
    included), as Go's own download cache writes it; so ``go get m@latest``
    works against ``GOPROXY=file://<root>``, not only pinned downloads. It
    describes the cache, not an upstream: an upstream's list names versions
    the cache may lack, and once every upstream is gone the go command would
    pick one of those and fail on its missing ``.info``. It is rewritten
    (temp file, rename) after every commit of a ``.info``/``.mod``, after
    evictions, and checked by ``sweep()``; each rewrite rebuilds it from a
    directory listing while holding an exclusive ``flock`` on the ``@v``
    directory, so the last rewrite always saw every rename and unlink that
    preceded it, in any process. It is not an artifact (not indexed, not
    counted against ``max_size``) and no ``@latest`` file is written: the go
    command falls back to the list's pseudo-versions itself.

``MetadataCache``
    ``@v/list``, ``@latest`` and non-canonical ``.info`` answers with a short
    TTL, negative answers (404/410) with a shorter one, and the last good
    answer kept beyond its TTL (stale-if-error), keyed by (route, upstream
    path) so one route's answer is never served to another.

``Coalescer``
    Single-flight: concurrent requests for one key share one fetch, which is
    shielded from any single caller's cancellation.

Crash safety of ``DiskCache`` (kill -9 at any instant)
    A body is written to ``.tmp-<random>-<name>.part`` in the artifact's own
    directory, checked, fsynced and only then ``os.replace``-d onto its final
    name, and the directory is fsynced. A final name therefore either does
    not exist or holds a complete, checked file: after ``kill -9`` (or a
    power loss) at most a ``.tmp-*`` file is left behind. Such a name can never
    be requested by the go command (a version never starts with a dot) and
    ``sweep()`` removes it at the next start. Writers hold an exclusive
    ``flock`` on their temporary file for its whole life, and the sweep only
    removes temporary files whose lock it can take, so a worker process that
    starts (and sweeps) while another worker writes into the same directory
    never deletes a live download; the kernel drops the lock of a killed
    process, so its leftover is removable at once.

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

Blocking I/O stays off the event loop: chunk writes are buffered and each
~1 MiB batch is written by one of the cache's own threads while the next
accumulates; at ``commit`` the final write, the checks and fsync take one
thread hop, the rename and directory fsync another (one thread for every
rename and eviction unlink). The few syscalls left on the loop are cheap:
``get()`` reads a small (<= 64 KiB) file once before the memory tier holds
it, and ``stat``-s once on an index miss; ``abort()`` unlinks a temp file;
``admits()`` calls ``statvfs`` at most once a second (``min_free``). The
timings behind this are in docs/ARCHITECTURE.md.

ETag
    Strong, from the stat of the committed file: ``<mtime_ns>-<size>`` (hex),
    the same value aiohttp's FileResponse computes, so an answer from the
    memory tier and one sent with sendfile carry the same ETag. A file under
    an artifact name is never modified in place, only created whole by an
    atomic rename, so (mtime_ns, size) names one byte sequence. It costs
    nothing (we stat anyway), survives restarts, and is the same in every
    worker sharing the directory. A content
    hash would be stable across regions too, but would need every file read
    at startup (20 GB) or a sidecar per artifact; the go command does not
    revalidate, so a mismatch between regions costs only a spurious
    revalidation by a CDN, never a wrong 304.

Threading: every method of these classes must be called from the thread
running the event loop (``sweep()`` before serving starts, or via
``asyncio.to_thread`` while nothing else uses the cache).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import functools
import logging
import math
import os
import secrets
import stat
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, NamedTuple, TypeVar

from cachetools import TTLCache

from goproxy_router.base.logs import log_event
from goproxy_router.protocol.integrity import info_problem, zip_problem
from goproxy_router.protocol.paths import (
    ProtocolError,
    escape_path,
    escape_version,
    is_canonical,
    unescape_version,
)

__all__ = [
    "ARTIFACT_EXTS",
    "CacheEntry",
    "CacheError",
    "CacheIntegrityError",
    "CacheUnavailable",
    "CacheWriteError",
    "CacheWriter",
    "Coalescer",
    "DiskCache",
    "LIST_NAME",
    "Lease",
    "MetadataCache",
    "NegativeAnswer",
    "SweepReport",
    "TEMP_PREFIX",
    "WriteBudget",
    "artifact_relpath",
    "list_body",
]

log = logging.getLogger("router.cache")

ARTIFACT_EXTS = frozenset({"info", "mod", "zip"})
"""The immutable artifacts a DiskCache stores (for canonical versions only)."""

TEMP_PREFIX = ".tmp-"
"""Prefix of in-progress files; ``sweep()`` removes unlocked ones."""

LIST_NAME = "list"
"""``<module>/@v/list``: the versions whose ``.info`` and ``.mod`` are both cached."""

_LISTED_EXTS = frozenset({"info", "mod"})

_TEMP_SUFFIX = ".part"
_IOV_MAX = 1024

WRITE_BUDGET_BYTES = 32 * 1024 * 1024
"""Default bound on the bytes all of a DiskCache's writers buffer together (WriteBudget)."""
_INFO_MAX_BYTES = 1 << 20  # a .info is ~100 bytes; anything this large is not one


class CacheError(Exception):
    """A cache write failed (I/O error, misuse); nothing was published."""


class CacheIntegrityError(CacheError):
    """A body failed a check (size, .info version, zip structure); nothing was published."""


class CacheUnavailable(CacheError):
    """The cache cannot keep this body now (its disk is full or failing, or the body
    can never fit in ``max_size``): the cache's problem, not the body's, so the
    caller serves it uncached. Nothing was published."""


class CacheWriteError(CacheUnavailable):
    """Writing the cache file failed (ENOSPC, EDQUOT, EIO, EROFS...); ``errno`` names it."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno = errno_name


@functools.lru_cache(maxsize=65536)
def artifact_relpath(module: str, version: str, ext: str) -> str:
    """``<escaped module>/@v/<escaped version>.<ext>``, Go's download-cache path.

    Raises ProtocolError for an invalid module path or version and ValueError
    for a non-canonical version or an extension other than info/mod/zip
    (those answers change over time and belong in MetadataCache). Memoised:
    escaping validates the path, which costs ~7 us, on every cache hit.
    """
    ext = str(ext)
    if ext not in ARTIFACT_EXTS:
        raise ValueError(f"not a cacheable artifact extension: {ext!r} (want info, mod or zip)")
    if not is_canonical(version):
        raise ValueError(f"{module}@{version}: only canonical versions name immutable artifacts")
    return f"{escape_path(module)}/@v/{escape_version(version)}.{ext}"


def list_body(names: Iterable[str]) -> bytes:
    """The ``@v/list`` for an ``@v`` directory holding ``names``: every canonical
    version with both a ``.info`` (to resolve it) and a ``.mod`` (to build with
    it), one per line in semver order, as Go's download cache lists them."""
    found: dict[str, set[str]] = {}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if dot and ext in _LISTED_EXTS and not name.startswith("."):
            found.setdefault(stem, set()).add(ext)
    versions = []
    for stem, exts in found.items():
        if exts != _LISTED_EXTS:
            continue
        try:
            version = unescape_version(stem)
        except ProtocolError:
            continue
        if is_canonical(version):
            versions.append(version)
    versions.sort(key=_semver_key)
    return "".join(f"{v}\n" for v in versions).encode()


def _semver_key(version: str) -> tuple[Any, ...]:
    """Sort key for a canonical version: semver precedence (a release after its
    pre-releases, numeric identifiers before alphanumeric ones)."""
    core, _, pre = version[1:].partition("+")[0].partition("-")
    major, minor, patch = (int(n) for n in core.split("."))
    if not pre:
        return (major, minor, patch, 1, ())
    ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split("."))
    return (major, minor, patch, 0, ids)


def _etag(st: os.stat_result) -> str:
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


@dataclasses.dataclass(slots=True)
class _Item:
    """Index record: the entry (without data) and the inode, to unlink only that file."""

    entry: CacheEntry
    ino: int


class SweepReport(NamedTuple):
    """What ``DiskCache.sweep`` found and did."""

    removed_temp: int   # leftover .tmp-* files deleted
    busy_temp: int      # .tmp-* files still locked by a live writer, kept
    files: int          # artifacts indexed
    size: int           # their total size in bytes
    evicted: int        # artifacts removed because the index exceeded max_size
    lists: int = 0      # @v/list files rewritten (or removed) to match the directory


class Lease:
    """Protects one artifact from eviction while it is served, until released.

    Use as ``with cache.lease(entry) as entry: ...`` or call ``release()``
    (idempotent). Take it right after ``get()``, before any ``await``: in
    between, nothing in this process can evict the file. Once the file is
    open, POSIX keeps its bytes readable even if another process deletes it.
    """

    __slots__ = ("_cache", "entry", "_released")

    def __init__(self, cache: DiskCache, entry: CacheEntry) -> None:
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


class WriteBudget:
    """A bound on the bytes all writers of one DiskCache hold in memory together.

    A writer takes budget for every chunk it accepts and gives it back once
    those bytes are on disk (its thread write finished) or dropped (abort).
    ``acquire`` waits while the bytes held plus the chunk would exceed
    ``limit``, which back-pressures the writer's caller (the upstream read of
    a fill and the client it streams to). Waiters are served first come,
    first served, so small chunks cannot starve a large one; a chunk larger
    than the whole limit proceeds once nothing else is held.

    No deadlock: a writer about to wait first sends its own buffered bytes to
    disk, and when anyone waits, every writer holding buffered bytes it has
    not yet handed to a thread (e.g. one whose upstream or client is slow) is
    asked to hand them over (``hold``/``drop`` register such writers); so
    every held byte is either on its way to disk, where the thread frees it
    unconditionally, or belongs to a writer that is not waiting. Must be used
    from the event loop's thread. Counters: ``used``, ``peak``, ``waits``.
    """

    __slots__ = ("limit", "used", "peak", "waits", "_waiters", "_holders")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("a write budget must be >= 1 byte, or None for no bound")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._holders: dict[object, Callable[[], None]] = {}

    @property
    def pressed(self) -> bool:
        """Someone is waiting: buffered bytes should go to disk now rather than later."""
        return bool(self._waiters)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes if that needs no wait (and nobody waits before us)."""
        if self._waiters or not self._fits(n):
            return False
        self._take(n)
        return True

    async def acquire(self, n: int) -> None:
        """Take ``n`` bytes, waiting (in turn) until they fit; nothing is held if cancelled."""
        if self.try_acquire(n):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, granted)
        self._waiters.append(entry)
        self.waits += 1
        for flush in list(self._holders.values()):
            flush()
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release(n)            # granted as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()              # those behind us may fit now
            raise

    def release(self, n: int) -> None:
        """Give back ``n`` bytes (on disk or dropped) and wake whoever now fits."""
        self.used -= n
        assert self.used >= 0, "write budget released more than was taken"
        self._grant()

    def hold(self, key: object, flush: Callable[[], None]) -> None:
        """``key`` holds bytes not yet handed to a thread; ``flush()`` hands them over."""
        self._holders[key] = flush

    def drop(self, key: object) -> None:
        """``key`` no longer holds such bytes."""
        self._holders.pop(key, None)

    def _fits(self, n: int) -> bool:
        return self.limit is None or self.used + n <= self.limit or self.used == 0

    def _take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters:
            n, granted = waiters[0]
            if granted.done():             # cancelled while queued
                waiters.popleft()
                continue
            if not self._fits(n):
                return
            waiters.popleft()
            self._take(n)
            granted.set_result(None)


class DiskCache:
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
        if min_free < 0:
            raise ValueError("min_free must be >= 0")
        self.min_free = min_free
        self.free_check_interval = free_check_interval
        self._free_checked = -math.inf     # monotonic time of the last statvfs
        self._low_space: str | None = None       # why free space is too low, if it is
        self._write_failure: str | None = None   # the last write error, until a commit works
        self.root = Path(root).absolute()
        self.max_size = max_size
        self.small_max_bytes = small_max_bytes
        self.small_cache_bytes = small_cache_bytes
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
        self._index: OrderedDict[str, _Item] = OrderedDict()      # oldest first
        self._memory: OrderedDict[str, CacheEntry] = OrderedDict()  # entries with data
        self._leases: dict[str, int] = {}
        self._background: set[concurrent.futures.Future[Any]] = set()
        # Keys of evicted files whose unlink is still queued (with a count, as a key
        # may be evicted again meanwhile): a miss must not re-adopt such a file.
        self._unlinking: dict[str, int] = {}
        self._unlinking_lock = threading.Lock()
        self.size = 0
        self.files = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.memory_size = 0
        self.hits = 0
        self.memory_hits = 0
        self.misses = 0
        self.commits = 0
        self.rejected = 0
        self.swept = 0
        self.lists_written = 0   # @v/list rewrites and removals (namespace thread, sweep)
        self.reserved = 0        # bytes open writers reserved against max_size
        self.write_errors: Counter[str] = Counter()   # failed cache writes, by errno name

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
        key = artifact_relpath(module, version, ext)
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

    # -- writing --------------------------------------------------------------

    def writer(self, module: str, version: str, ext: str, size: int | None = None) -> CacheWriter:
        """A writer for one artifact; no I/O until the first ~1 MiB or commit.

        ``async with cache.writer(m, v, "zip") as w: ...; await w.commit(n)``;
        leaving the block without a commit aborts. ``size``, when known (a
        Content-Length), is reserved against ``max_size`` at once (evicting
        first); a size that can never fit raises CacheUnavailable.
        """
        key = artifact_relpath(module, version, ext)
        if size is not None and self.max_size is not None and size > self.max_size:
            raise CacheUnavailable(f"{key}: {size} bytes can never fit in max_size "
                                   f"({self.max_size} bytes); not cached")
        writer = CacheWriter(self, key, module, version, str(ext))
        if size:
            writer._reserve(size)
        return writer

    # -- disk space -------------------------------------------------------------

    def admits(self) -> bool:
        """Whether a new fill may be cached: not while the filesystem's free space is
        below ``min_free`` (one statvfs at most every ``free_check_interval`` s)."""
        if time.monotonic() - self._free_checked >= self.free_check_interval:
            self.check_free()
        return self._low_space is None

    def check_free(self) -> None:
        """Look at the filesystem's free space now (one statvfs, cheap); log changes."""
        self._free_checked = time.monotonic()
        low = None
        if self.min_free:
            try:
                st = os.statvfs(self.root)
            except OSError:
                return      # a missing or unreadable directory is /readyz's to report
            free = st.f_bavail * st.f_frsize
            if free < self.min_free:
                low = (f"{free} bytes free on the cache's filesystem, "
                       f"below cache.min_free ({self.min_free})")
        if low is not None and self._low_space is None:
            log_event(log, logging.WARNING, "cache degraded: low disk space, new fills are "
                      "served uncached", dir=str(self.root), reason=low)
        elif low is None and self._low_space is not None:
            log_event(log, logging.INFO, "cache free space is back above cache.min_free",
                      dir=str(self.root))
        self._low_space = low

    @property
    def degraded(self) -> str | None:
        """Why the cache is degraded (low free space, a failed write), or None."""
        reasons = [r for r in (self._low_space, self._write_failure) if r is not None]
        return "; ".join(reasons) or None

    def _write_failed(self, key: str, exc: OSError) -> CacheWriteError:
        """Count and log a failed write (loop thread); the caller serves the body uncached."""
        name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        self.write_errors[name] += 1
        self._write_failure = f"the last cache write failed: {name} ({exc.strerror or exc})"
        self._free_checked = -math.inf          # look at the free space before the next fill
        log_event(log, logging.ERROR, "cache write failed; the body is served uncached",
                  key=key, errno=name, error=str(exc))
        return CacheWriteError(f"{key}: writing the cache file failed: {exc}", name)

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

    # -- startup and shutdown ---------------------------------------------------

    def sweep(self) -> SweepReport:
        """Delete unlocked ``.tmp-*`` leftovers and rebuild the index by scanning.

        Access order is seeded by mtime (oldest is evicted first); then evicts
        down to ``max_size`` and brings every ``@v/list`` in line with its
        directory. Blocking: call before serving, or in a thread while
        nothing else uses this cache.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[int, str, _Item]] = []
        version_dirs: list[str] = []
        removed = busy = 0
        for dirpath, _dirs, names in os.walk(self.root):
            in_v = os.path.basename(dirpath) == "@v"
            if in_v:
                version_dirs.append(dirpath)
            for name in names:
                full = os.path.join(dirpath, name)
                if name.startswith(TEMP_PREFIX):
                    if _remove_unlocked(full):
                        removed += 1
                    else:
                        busy += 1
                    continue
                if not in_v or name.rpartition(".")[2] not in ARTIFACT_EXTS:
                    continue  # Go's own .lock/.ziphash/list files, or strangers
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = os.path.relpath(full, self.root)
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

    def _item(self, key: str, st: os.stat_result) -> _Item:
        entry = CacheEntry(key, self.root / key, st.st_size, st.st_mtime, _etag(st))
        return _Item(entry, st.st_ino)

    def _adopt(self, key: str) -> _Item | None:
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

    def _insert(self, key: str, st: os.stat_result) -> _Item:
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
        victims: list[tuple[str, _Item]] = []
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
            _unlink_same(path, ino)
        self._refresh_lists_of(key for key, _, _ in doomed)

    def _unlink_all(self, doomed: list[tuple[str, Path, int]]) -> None:
        """Background eviction (namespace thread)."""
        for key, path, ino in doomed:
            try:
                _unlink_same(path, ino)
            finally:
                with self._unlinking_lock:
                    self._unlinked(key)
        self._refresh_lists_of(key for key, _, _ in doomed)

    def _refresh_lists_of(self, keys: Iterable[str]) -> None:
        """Rewrite the ``@v/list`` of every module whose ``.info`` or ``.mod`` changed."""
        dirs = {key.rpartition("/")[0] for key in keys if key.rpartition(".")[2] in _LISTED_EXTS}
        for d in sorted(dirs):
            self._refresh_list(self.root / d)

    def _refresh_list(self, version_dir: Path) -> bool:
        """Make ``<version_dir>/list`` match the directory (``list_body``); True if
        it was rewritten or removed. Blocking (namespace thread, or sweep).

        Under an exclusive flock on the directory itself, so rewrites by every
        process sharing the cache are serialised and the last one listed the
        directory after every change that preceded it. The new list is a
        locked temp file renamed into place: a reader sees the old list or the
        new one, never a part. An empty list is removed. Not fsynced: a list is
        derived data, and the next start's ``sweep()`` rewrites any list (one a
        power loss left empty, say) that does not match its directory. A
        failure is logged, never raised: the artifact is committed all the same.
        """
        try:
            dir_fd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            log.warning("cache: could not update %s/%s: %s", version_dir, LIST_NAME, e)
            return False
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            body = list_body(os.listdir(dir_fd))
            path = version_dir / LIST_NAME
            try:
                current: bytes | None = path.read_bytes()
            except FileNotFoundError:
                current = None
            if current == body or (current is None and not body):
                return False
            if not body:
                os.unlink(path)
            else:
                fd, tmp = _create_locked_temp(version_dir, LIST_NAME)
                try:
                    _write_all(fd, [body])
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
                finally:
                    os.close(fd)
            self.lists_written += 1
            return True
        except OSError as e:
            log.warning("cache: could not update %s/%s: %s", version_dir, LIST_NAME, e)
            return False
        finally:
            os.close(dir_fd)   # drops the lock

    def _unlinked(self, key: str) -> None:
        n = self._unlinking[key] - 1
        if n:
            self._unlinking[key] = n
        else:
            del self._unlinking[key]

    def _submit(self, executor: concurrent.futures.Executor, fn: Callable[..., Any],
                *args: Any) -> concurrent.futures.Future[Any]:
        fut = executor.submit(fn, *args)
        self._track(fut)
        return fut

    def _track(self, fut: concurrent.futures.Future[Any]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)


def _unlink_same(path: Path, ino: int) -> None:
    """Unlink path if it is still the same file (a re-commit since the eviction survives)."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cache: could not evict %s: %s", path, e)


def _remove_unlocked(path: str) -> bool:
    """Delete a temp file unless a live writer holds its lock; True if gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError as e:  # a symlink, FIFO or unreadable file: not ours, leave it
        log.warning("cache sweep: leaving %s: %s", path, e)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    """Write the chunks in order with writev: no joined copy of a batch is made."""
    views = [memoryview(c) for c in chunks if len(c)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n:
            size = views[i].nbytes
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _create_locked_temp(directory: Path, name: str) -> tuple[int, Path]:
    """Create and flock a fresh ``.tmp-<random>-<name>.part`` in ``directory``.

    The lock tells ``sweep()`` (of any process) that the file is live; a sweep
    may have removed the name between our create and our lock, so retry then.
    """
    while True:
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{name}{_TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path: Path) -> list[Path]:
    """mkdir -p, returning the directories this call created (outermost first)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
    return created


class CacheWriter:
    """Writes one artifact to a temporary file; ``commit`` publishes it atomically.

    ``await write(chunk)`` buffers; every ~1 MiB the batch goes to disk in a
    cache I/O thread while the next one fills (at most one batch in flight
    per writer). Every buffered byte counts against the cache's
    ``write_budget`` until it is on disk: a write over the budget waits
    (after handing its own batch to the disk), and while anyone waits,
    batches go to disk as soon as a thread is free instead of at ~1 MiB.
    ``await commit(expected_size)``
    writes the rest, checks the body (size; a ``.info`` is JSON whose
    ``Version`` is the requested one; a ``.zip`` follows golang.org/x/mod/zip's
    rules, ``goproxy_router.protocol.integrity.zip_problem``), fsyncs, renames
    into place and fsyncs the directory, then returns the new CacheEntry. On
    any failure the temporary file is removed and CacheError (or
    CacheIntegrityError) is raised; when the disk itself failed (ENOSPC, EIO...)
    it is CacheWriteError, from ``write`` or ``commit``, and the writer is
    aborted: the caller goes on without the cache. Bytes count against
    ``max_size`` (reserved) from the moment they are accepted until the
    commit indexes them or the writer is aborted. ``abort()`` (sync, idempotent) discards
    the body; the async context manager aborts unless committed. A write
    interrupted by cancellation aborts the writer (a gap would corrupt it).
    Once ``commit`` has started it finishes on its own even if its caller is
    cancelled: the artifact is then published whole or not at all.
    """

    _OPEN, _COMMITTING, _COMMITTED, _ABORTED = "open", "committing", "committed", "aborted"

    def __init__(self, cache: DiskCache, key: str, module: str, version: str, ext: str) -> None:
        self._cache = cache
        self.key = key
        self.module = module
        self.version = version
        self.ext = ext
        self.path = cache.root / key
        # Accepted chunks not yet handed to a thread; their bytes are taken from the budget.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.written = 0
        self._state = self._OPEN
        # Touched only by the I/O thread while a job runs, by the loop otherwise.
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._created_dirs: list[Path] = []
        self._job: concurrent.futures.Future[Any] | None = None
        self._reserved = 0       # bytes of the cache's max_size this writer holds

    @property
    def state(self) -> str:
        """open, committing, committed or aborted."""
        return self._state

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk``; may wait for the previous batch to reach the disk, or for budget."""
        if self._state != self._OPEN:
            raise CacheError(f"cache writer for {self.key} is {self._state}")
        if not chunk:
            return
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)
        n = len(data)
        if self.written + n > self._reserved:      # no size was declared, or it was a lie
            self._reserve(self.written + n - self._reserved)
        budget = self._cache.write_budget
        if not budget.try_acquire(n):
            try:
                # Hand what we hold to the disk first: a waiting writer only ever
                # holds bytes on their way to disk, which are given back without it.
                await self._wait_job()
                self._flush()
                await budget.acquire(n)
            except BaseException:
                self.abort()
                raise
            if self._state != self._OPEN:         # aborted by someone else meanwhile
                budget.release(n)
                raise CacheError(f"cache writer for {self.key} is {self._state}")
        if not self._chunks:
            budget.hold(self, self._flush_soon)
        self._chunks.append(data)
        self._buffered += n
        self.written += n
        if self._buffered >= self._cache.write_buffer_bytes:
            try:
                await self._wait_job()
                self._flush()
            except BaseException:
                self.abort()
                raise
        elif budget.pressed:
            self._flush_soon()

    async def commit(self, expected_size: int | None = None) -> CacheEntry:
        """Publish the artifact; refuse (and clean up) if ``expected_size`` differs."""
        if self._state != self._OPEN:
            raise CacheError(f"cache writer for {self.key} is {self._state}")
        if expected_size is not None and expected_size != self.written:
            self.abort()
            self._cache.rejected += 1
            raise CacheIntegrityError(
                f"{self.key}: got {self.written} bytes, expected {expected_size}; not cached")
        self._state = self._COMMITTING
        self._cache.write_budget.drop(self)       # the rest goes to disk with the commit
        task = asyncio.ensure_future(self._commit())
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    def abort(self) -> None:
        """Discard the body and remove the temporary file; no-op once committing."""
        if self._state != self._OPEN:
            return
        self._state = self._ABORTED
        self._discard_buffered()
        self._cleanup_after_job()

    async def __aenter__(self) -> CacheWriter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()

    # -- internals --------------------------------------------------------------

    def _reserve(self, n: int) -> None:
        self._cache._reserve(n, self.key)
        self._reserved += n

    def _unreserve(self) -> None:
        n, self._reserved = self._reserved, 0
        if n:
            self._cache._unreserve(n)

    def _submit(self, fn: Callable[..., Any], *args: Any,
                namespace: bool = False) -> concurrent.futures.Future[Any]:
        cache = self._cache
        try:
            return (cache._namespace if namespace else cache._executor).submit(fn, *args)
        except RuntimeError as e:  # the cache was closed
            raise CacheError(f"{self.key}: the cache is closed") from e

    def _start(self, fn: Callable[[list[bytes]], Any], chunks: list[bytes],
               n: int) -> concurrent.futures.Future[Any]:
        """Run ``fn(chunks)`` in an I/O thread; its ``n`` bytes go back to the budget when it ends."""
        budget = self._cache.write_budget
        try:
            job = self._submit(fn, chunks)
        except CacheError:
            budget.release(n)
            raise
        self._job = job
        if n:
            loop = asyncio.get_running_loop()

            def ended(_: object) -> None:       # in the I/O thread
                with contextlib.suppress(RuntimeError):   # the loop is closed
                    loop.call_soon_threadsafe(self._job_ended, job, n)

            job.add_done_callback(ended)
        return job

    def _job_ended(self, job: concurrent.futures.Future[Any], n: int) -> None:
        self._cache.write_budget.release(n)
        if self._cache.write_budget.pressed:
            self._flush_soon()

    def _flush(self) -> None:
        """Hand the buffered chunks to an I/O thread (no job may be running)."""
        if not self._chunks:
            return
        chunks, n = self._chunks, self._buffered
        self._chunks, self._buffered = [], 0
        self._cache.write_budget.drop(self)
        self._start(self._write_blocking, chunks, n)

    def _flush_soon(self) -> None:
        """``_flush`` now if no job runs (or wait for it to end: it calls back here);
        from callbacks, so it never raises. A failed job is left for the writer to see."""
        job = self._job
        if self._state != self._OPEN or not self._chunks:
            return
        if job is not None and (not job.done() or job.cancelled() or job.exception() is not None):
            return
        try:
            self._flush()
        except CacheError:                        # the cache was closed
            self.abort()

    def _discard_buffered(self) -> None:
        """Drop chunks not handed to a thread and give their bytes back."""
        budget = self._cache.write_budget
        budget.drop(self)
        n, self._chunks, self._buffered = self._buffered, [], 0
        if n:
            budget.release(n)

    async def _wait_job(self) -> None:
        """Wait for the in-flight thread job; shielded so it stays tracked if we're cancelled."""
        job = self._job
        if job is None:
            return
        try:
            await asyncio.shield(asyncio.wrap_future(job))
        except OSError as e:
            raise self._cache._write_failed(self.key, e) from e

    async def _commit(self) -> CacheEntry:
        cache = self._cache
        try:
            await self._wait_job()
            data = None
            if self._job is None and self.written <= cache.small_max_bytes:
                data = b"".join(self._chunks)
            chunks, n = self._chunks, self._buffered
            self._chunks, self._buffered = [], 0
            try:
                self._start(self._prepare_blocking, chunks, n)
                assert self._job is not None
                st: os.stat_result = await asyncio.shield(asyncio.wrap_future(self._job))
                self._job = self._submit(self._publish_blocking, namespace=True)
                await asyncio.shield(asyncio.wrap_future(self._job))
            except OSError as e:
                raise self._cache._write_failed(self.key, e) from e
        except BaseException as e:
            self._state = self._ABORTED
            if isinstance(e, CacheIntegrityError):
                cache.rejected += 1
            self._discard_buffered()
            self._cleanup_after_job()
            raise
        self._state = self._COMMITTED
        self._unreserve()                        # the bytes are counted as committed now
        return cache._committed(self.key, st, data)

    def _cleanup_after_job(self) -> None:
        """Close and unlink the temp file now, or when the running thread job ends."""
        self._unreserve()
        job = self._job
        if job is None or job.done():
            self._cleanup_blocking()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def later(_: object) -> None:
            try:
                self._cleanup_blocking()
            finally:
                done.set_result(None)

        self._cache._track(done)
        job.add_done_callback(later)

    def _cleanup_blocking(self) -> None:
        fd, self._fd = self._fd, None
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open_tmp(self) -> int:
        """Create and lock a fresh temp file next to the final name (I/O thread)."""
        directory = self.path.parent
        self._created_dirs = _makedirs(directory)
        fd, self._tmp = _create_locked_temp(directory, self.path.name)
        self._fd = fd
        return fd

    def _write_blocking(self, chunks: list[bytes]) -> None:
        fd = self._fd if self._fd is not None else self._open_tmp()
        _write_all(fd, chunks)

    def _prepare_blocking(self, chunks: list[bytes]) -> os.stat_result:
        """Write the rest, check, fsync (I/O thread)."""
        fd = self._fd if self._fd is not None else self._open_tmp()
        if chunks:
            _write_all(fd, chunks)
        st = os.fstat(fd)
        if st.st_size != self.written:
            raise CacheIntegrityError(
                f"{self.key}: temp file has {st.st_size} bytes, {self.written} were written")
        self._verify(fd, st.st_size)
        if self._cache.fsync:
            os.fsync(fd)
        return st

    def _publish_blocking(self) -> None:
        """Rename into place, fsync the directories, release the lock, then list
        the version in ``@v/list`` if it is now resolvable (namespace thread)."""
        fd, tmp = self._fd, self._tmp
        assert fd is not None and tmp is not None
        os.replace(tmp, self.path)
        self._tmp = None  # the inode now belongs to the final name
        if self._cache.fsync:
            for d in {self.path.parent, *(c.parent for c in self._created_dirs)}:
                _fsync_dir(d)
        self._fd = None
        os.close(fd)
        if self.ext in _LISTED_EXTS:
            self._cache._refresh_list(self.path.parent)

    def _verify(self, fd: int, size: int) -> None:
        """Content checks that catch truncation and error pages served as 200."""
        if self.ext == "info":
            if size > _INFO_MAX_BYTES:
                raise CacheIntegrityError(f"{self.key}: {size} bytes is too large for a .info")
            problem = info_problem(os.pread(fd, size, 0), self.version)
            if problem is not None:
                raise CacheIntegrityError(f"{self.key}: .info: {problem}")
        elif self.ext == "zip":
            # golang.org/x/mod/zip's rules (router/protocol/integrity.py): entries under
            # <module>@<version>/, clean paths, no collisions, the size limits.
            with os.fdopen(os.dup(fd), "rb") as f:
                problem = zip_problem(f, size, self.module, self.version)
            if problem is not None:
                raise CacheIntegrityError(f"{self.key}: {problem}")
        # .mod: checked by the forwarder (router/protocol/integrity.py) before it gets here.


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's exception as retrieved (its callers may have left)."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.debug("cache background task failed: %r", e)


# -- metadata -----------------------------------------------------------------

V = TypeVar("V")


class NegativeAnswer(NamedTuple):
    """A cached "not here" answer (404 or 410) with its body."""

    status: int
    body: bytes


class MetadataCache(Generic[V]):
    """list / @latest / non-canonical .info answers, negative answers, and stale copies.

    Keys are ``(route name, upstream path)``: the route is part of the key, so
    a private route's answer can never be served on a public one. Three
    stores (cachetools TTLCaches on one injectable ``timer``):

    - fresh: the value for ``ttl`` seconds (``get_fresh``);
    - stale: the last good value for up to ``stale_max_age`` seconds, at most
      ``stale_maxsize`` keys (default ``maxsize``), returned with its age by
      ``get_stale`` for stale-if-error when every upstream fails;
    - negative: 404/410 answers for ``negative_ttl`` seconds.

    ``put`` clears a negative answer for the key; ``put_negative`` ends the
    fresh value but keeps the stale copy (a transient 404 from one upstream
    should not destroy the fallback).
    """

    def __init__(self, ttl: float = 60.0, negative_ttl: float = 10.0,
                 stale_max_age: float = 86400.0, maxsize: int = 10000, *,
                 stale_maxsize: int | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_max_age = stale_max_age
        self._timer = timer
        self._fresh: TTLCache[Hashable, V] = TTLCache(maxsize, ttl, timer=timer)
        self._stale: TTLCache[Hashable, tuple[float, V]] = TTLCache(
            stale_maxsize if stale_maxsize is not None else maxsize, stale_max_age, timer=timer)
        self._negative: TTLCache[Hashable, NegativeAnswer] = TTLCache(
            maxsize, negative_ttl, timer=timer)

    def get_fresh(self, key: Hashable) -> V | None:
        """The value if stored less than ``ttl`` seconds ago, else None."""
        return self._fresh.get(key)

    def get_stale(self, key: Hashable) -> tuple[V, float] | None:
        """``(last good value, age in seconds)`` within ``stale_max_age``, else None."""
        hit = self._stale.get(key)
        if hit is None:
            return None
        stored_at, value = hit
        return value, max(0.0, self._timer() - stored_at)

    def put(self, key: Hashable, value: V) -> None:
        """Store a good answer: fresh for ``ttl``, stale fallback for ``stale_max_age``."""
        self._fresh[key] = value
        self._stale[key] = (self._timer(), value)
        self._negative.pop(key, None)

    def put_negative(self, key: Hashable, status: int, body: bytes) -> None:
        """Store a 404/410 answer for ``negative_ttl`` seconds."""
        if status not in (404, 410):
            raise ValueError(f"only 404 and 410 are cached as negative answers, not {status}")
        self._negative[key] = NegativeAnswer(status, body)
        self._fresh.pop(key, None)

    def get_negative(self, key: Hashable) -> NegativeAnswer | None:
        """The cached 404/410 answer, if younger than ``negative_ttl``."""
        return self._negative.get(key)

    def invalidate(self, key: Hashable) -> None:
        """Forget everything about ``key``."""
        self._fresh.pop(key, None)
        self._stale.pop(key, None)
        self._negative.pop(key, None)

    def __len__(self) -> int:
        """Keys with a fresh value."""
        self._fresh.expire()
        return len(self._fresh)


# -- single flight --------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Coalescer(Generic[K, T]):
    """Single-flight: one ``fetch`` per key at a time, its outcome shared.

    The first ``run(key, fetch)`` starts ``fetch()`` as its own task; calls
    with the same key while it runs await that same task and get the same
    value or exception. The task is shielded: a caller that is cancelled (its
    client went away) leaves, and the fetch goes on for the others and for
    the cache. The key is removed the moment the fetch finishes, so the next
    call (e.g. after a failure) fetches anew. Counters: ``started``, ``joined``.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[T]] = {}
        self.started = 0
        self.joined = 0

    async def run(self, key: K, fetch: Callable[[], Awaitable[T]]) -> T:
        """``await fetch()`` once for all concurrent callers with this key."""
        task = self._inflight.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self._fetch(key, fetch))
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
            self.started += 1
        else:
            self.joined += 1
        return await asyncio.shield(task)

    async def _fetch(self, key: K, fetch: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fetch()
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]

    def __contains__(self, key: object) -> bool:
        return key in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    async def close(self) -> None:
        """Cancel every fetch in flight (shutdown) and wait for them to end."""
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

