"""The status page's memory: each upstream's live stats, sampled into a bounded ring.

Every `interval` seconds (5 s) each upstream's latency, in-flight count,
cumulative counters and breaker state are kept, the last `keep` (120) per
upstream, so the page draws trends and computes rates over a window rather
than since start-up. Upstreams that leave the config are forgotten; a failed
sample is logged (logger `router.status`) and sampling goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goproxy_router.serving.edge import EdgeState

log = logging.getLogger("router.status")


@dataclass(frozen=True, slots=True)
class Sample:
    """One upstream at one moment. `t` is wall-clock (epoch seconds)."""

    t: float
    ewma_ms: float
    in_flight: int
    requests: int       # cumulative, as in UpstreamStats
    failures: int
    breaker: str        # a BreakerState value


class StatusHistory:
    """Per upstream name, the last `keep` samples taken every `interval` seconds.

    `start(get_state)` runs the sampler on the current loop; `get_state` is
    called on every tick, so a config reload is followed. Upstreams that
    leave the config are forgotten at the next sample, so memory stays
    bounded by upstreams x `keep`.
    """

    def __init__(self, interval: float = 5.0, keep: int = 120) -> None:
        if interval <= 0 or keep < 1:
            raise ValueError("interval must be > 0 and keep >= 1")
        self.interval = interval
        self.keep = keep
        self.started = time.monotonic()
        self._series: dict[str, deque[Sample]] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self, state: EdgeState, now: float | None = None) -> None:
        """Record every upstream of `state` once.

        `now` is on the stats' clock (`time.monotonic()`, the default): it
        decides the breaker state, and maps to the wall-clock time stored.
        """
        now = time.monotonic() if now is None else now
        wall = wall_time(now)
        seen: set[str] = set()
        for candidates in state.candidates.values():
            for c in candidates:
                if c.name in seen:      # an upstream shared by routes: one stats object
                    continue
                seen.add(c.name)
                stats = c.stats
                series = self._series.get(c.name)
                if series is None:
                    series = self._series[c.name] = deque(maxlen=self.keep)
                series.append(Sample(
                    t=wall, ewma_ms=stats.latency.value * 1000.0, in_flight=stats.in_flight,
                    requests=stats.requests, failures=stats.failures,
                    breaker=str(stats.breaker.state(now))))
        for name in list(self._series):
            if name not in seen:
                del self._series[name]

    def series(self, name: str) -> tuple[Sample, ...]:
        """The samples of one upstream, oldest first (empty if never sampled)."""
        return tuple(self._series.get(name, ()))

    def start(self, get_state: Callable[[], EdgeState]) -> None:
        """Sample now, then every `interval` seconds, until `stop()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(get_state), name="status-history")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, timeout=5.0)

    async def _run(self, get_state: Callable[[], EdgeState]) -> None:
        while True:
            try:
                self.sample(get_state())
            except Exception:       # a bad tick must not end the sampling
                log.exception("status history sample failed")
            await asyncio.sleep(self.interval)


def wall_time(monotonic: float) -> float:
    """A monotonic instant as epoch seconds (same offset as the clocks have now)."""
    return time.time() - (time.monotonic() - monotonic)
