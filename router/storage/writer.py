"""Writing one artifact into the cache: crash-safe, checked, within the write budget.

Crash safety (kill -9 at any instant): a body is written to
``.tmp-<random>-<name>.part`` in the artifact's own directory, checked,
fsynced and only then ``os.replace``-d onto its final name, and the
directory is fsynced. A final name therefore either does not exist or holds
a complete, checked file: after ``kill -9`` (or a power loss) at most a
``.tmp-*`` file is left behind, which ``DiskCache.sweep()`` removes at the
next start. The writer holds an exclusive ``flock`` on its temporary file
for its whole life, so a sweep by another worker never deletes a live
download (router/storage/fileops.py).

Blocking I/O stays off the event loop: chunk writes are buffered and each
~1 MiB batch is written by one of the cache's own threads while the next
accumulates; at ``commit`` the final write, the checks and fsync take one
thread hop, the rename and directory fsync another (on the cache's single
namespace thread, which also does every eviction unlink). The timings
behind this are in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from goproxy_router.protocol.integrity import info_problem, zip_problem
from goproxy_router.storage import fileops
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheError, CacheIntegrityError
from goproxy_router.storage.listing import LISTED_EXTS
from goproxy_router.storage.tasks import retrieve

if TYPE_CHECKING:
    from goproxy_router.storage.disk import DiskCache

__all__ = ["CacheWriter"]

_INFO_MAX_BYTES = 1 << 20  # a .info is ~100 bytes; anything this large is not one


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
        task.add_done_callback(retrieve)
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
        self._created_dirs = fileops.makedirs(directory)
        fd, self._tmp = fileops.create_locked_temp(directory, self.path.name)
        self._fd = fd
        return fd

    def _write_blocking(self, chunks: list[bytes]) -> None:
        fd = self._fd if self._fd is not None else self._open_tmp()
        fileops.write_all(fd, chunks)

    def _prepare_blocking(self, chunks: list[bytes]) -> os.stat_result:
        """Write the rest, check, fsync (I/O thread)."""
        fd = self._fd if self._fd is not None else self._open_tmp()
        if chunks:
            fileops.write_all(fd, chunks)
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
                fileops.fsync_dir(d)
        self._fd = None
        os.close(fd)
        if self.ext in LISTED_EXTS:
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
