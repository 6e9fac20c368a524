"""The bound on the body bytes all of a DiskCache's writers hold in memory together.

A writer takes budget for every chunk it accepts and gives it back once the
bytes are on disk or dropped; a writer over the bound waits, which
back-pressures its upstream read and its client. Served first come, first
served, and free of deadlock (see ``WriteBudget``). Event-loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

__all__ = ["WRITE_BUDGET_BYTES", "WriteBudget"]

WRITE_BUDGET_BYTES = 32 * 1024 * 1024
"""Default bound on the bytes all of a DiskCache's writers buffer together (WriteBudget)."""


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
