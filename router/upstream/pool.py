"""The edge's own connection pool, kept apart from the upstream's time.

A request beyond `pool.per_upstream` connections waits for one; that wait is
the edge's queueing, not the upstream's slowness. `PoolTiming` measures it
per attempt (the caller takes it off the attempt's time), `PoolObserver` is
told of it (the metrics), and `trace_config()` gives aiohttp the hooks that
pause an attempt's headers timeout while it waits (`Queueing`).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import aiohttp


class PoolTiming:
    """How long one attempt waited for a connection of the edge's own pool: the edge's
    queueing, not the upstream's slowness, so the caller takes it off the attempt's time."""

    __slots__ = ("queued", "_since")

    def __init__(self) -> None:
        self.queued = 0.0
        self._since: float | None = None

    @property
    def waiting(self) -> bool:
        return self._since is not None

    def enter(self, now: float) -> None:
        if self._since is None:
            self._since = now

    def leave(self, now: float) -> float:
        """End a wait; returns how long it was."""
        if self._since is None:
            return 0.0
        wait, self._since = now - self._since, None
        self.queued += wait
        return wait

    def waited(self, now: float | None = None) -> float:
        """Seconds queued so far, a wait in progress included."""
        if self._since is None:
            return self.queued
        return self.queued + (time.monotonic() if now is None else now) - self._since


class PoolObserver:
    """Hooks the metrics use to see the pool; these defaults do nothing."""

    def queued(self, upstream: str) -> None:
        """A request to `upstream` started waiting for a connection."""

    def dequeued(self, upstream: str, seconds: float) -> None:
        """It got one (or gave up) after `seconds`."""


class Queueing:
    """One request's view of the pool, handed to aiohttp's trace hooks: while it waits
    for a connection, its headers timeout is paused and the wait is timed apart."""

    __slots__ = ("upstream", "timing", "observer", "timeout", "_remaining")

    def __init__(self, upstream: str, timing: PoolTiming, observer: PoolObserver,
                 timeout: asyncio.Timeout) -> None:
        self.upstream = upstream
        self.timing = timing
        self.observer = observer
        self.timeout = timeout
        self._remaining: float | None = None

    def pause(self) -> None:
        if self.timing.waiting:
            return
        self.timing.enter(time.monotonic())
        self.observer.queued(self.upstream)
        when = self.timeout.when()
        if when is not None:
            self._remaining = when - asyncio.get_running_loop().time()
            self.timeout.reschedule(None)

    def resume(self) -> None:
        if not self.timing.waiting:
            return
        self.observer.dequeued(self.upstream, self.timing.leave(time.monotonic()))
        if self._remaining is not None:
            remaining, self._remaining = self._remaining, None
            self.timeout.reschedule(asyncio.get_running_loop().time() + remaining)

    def settle(self) -> None:
        """The request is over: a wait it was still in (cancelled, failed) ends here."""
        if self.timing.waiting:
            self.observer.dequeued(self.upstream, self.timing.leave(time.monotonic()))


async def _on_queued_start(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                           params: aiohttp.TraceConnectionQueuedStartParams) -> None:
    if isinstance(ctx.trace_request_ctx, Queueing):
        ctx.trace_request_ctx.pause()


async def _on_queued_end(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                         params: aiohttp.TraceConnectionQueuedEndParams) -> None:
    if isinstance(ctx.trace_request_ctx, Queueing):
        ctx.trace_request_ctx.resume()


def trace_config() -> aiohttp.TraceConfig:
    """The trace hooks that let a `Queueing` (passed as `trace_request_ctx`) see its waits."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(_on_queued_start)
    trace.on_connection_queued_end.append(_on_queued_end)
    return trace
