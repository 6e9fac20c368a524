"""Active probes: a cheap request to each upstream on a jittered interval.

Passive samples only exist for upstreams that get traffic. Probes keep an
idle upstream's latency estimate fresh (so it can win back traffic once it
recovers), notice a dead one before a developer's request does, and are
the trial requests that readmit an ejected upstream when its breaker
turns half-open. At start-up one round goes out at once and serving waits
for it up to `probes.startup_wait`, so no edge starts blind: its samples
(kept apart from traffic's) set the first hedge delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

from goproxy_router.base.logs import log_event
from goproxy_router.config.schema import Probes, Timeouts
from goproxy_router.config.secrets import redact
from goproxy_router.upstream.client import AttemptError, AttemptTimeout, UpstreamClient
from goproxy_router.upstream.pool import PoolTiming
from goproxy_router.upstream.stats import BreakerState, StatsRegistry, UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

log = logging.getLogger("router.probes")

WATCH_INTERVAL = 0.25   # seconds between looks at an upstream's breaker


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    target: UpstreamTarget
    path: str


class Prober:
    """Runs one probe loop per upstream until stopped."""

    def __init__(self, client: UpstreamClient, registry: StatsRegistry,
                 targets: Iterable[ProbeTarget], settings: Probes,
                 rng: random.Random | None = None) -> None:
        self._client = client
        self._registry = registry
        self._targets = list(targets)
        self._settings = settings
        self._timeouts = Timeouts(connect=settings.timeout, headers=settings.timeout,
                                  read=settings.timeout)
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._probed_once: list[asyncio.Event] = []

    def start(self, *, probe_now: bool = False) -> None:
        """Start one loop per upstream; `probe_now` (start-up): each probes at once,
        not after a jittered pause."""
        if not self._settings.enabled:
            return
        for probe in self._targets:
            probed = asyncio.Event()
            self._probed_once.append(probed)
            self._tasks.append(asyncio.create_task(self._loop(probe, probed, probe_now),
                                                   name=f"probe {probe.target.name}"))

    async def first_round(self, timeout: float) -> bool:
        """Wait until every loop probed once, `timeout` seconds at most (the loops go on
        either way). Whether all had."""
        waits = [asyncio.ensure_future(probed.wait()) for probed in self._probed_once]
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for wait in pending:
            wait.cancel()
        return not pending

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._probed_once.clear()

    async def _loop(self, probe: ProbeTarget, probed: asyncio.Event, probe_now: bool) -> None:
        """Probe every interval (jittered); and as soon as an ejection ends, as its trial."""
        stats = self._registry.get(probe.target.name, probe.target.base_url)
        due = time.monotonic() + (0.0 if probe_now else
                                  self._rng.uniform(0, min(1.0, self._settings.interval)))
        while True:
            now = time.monotonic()
            breaker = stats.breaker
            state = breaker.state(now)
            if state is BreakerState.HALF_OPEN and stats.in_flight == 0:
                due = now
            elif state is BreakerState.OPEN:
                due = min(due, now + breaker.remaining(now))
            if now >= due:
                try:
                    await self.probe_once(probe, stats)
                except Exception as exc:       # a probe loop must outlive any surprise
                    self._failed(probe, stats, now, f"{type(exc).__name__}: {exc}")
                probed.set()
                due = time.monotonic() + self._settings.interval * self._rng.uniform(0.8, 1.2)
                continue
            # Wake up often enough to notice an ejection made by real traffic meanwhile.
            await asyncio.sleep(min(due - now, WATCH_INTERVAL))

    async def probe_once(self, probe: ProbeTarget, stats: UpstreamStats) -> bool:
        """One probe; any answer below 500 means alive. Returns whether it was."""
        started = time.monotonic()
        pool = PoolTiming()
        try:
            try:
                response = await self._client.open(probe.target, probe.path, "GET",
                                                   self._timeouts, pool)
            finally:
                started += pool.waited()      # the edge's own queueing is not the upstream's
        except (AttemptTimeout, AttemptError) as exc:
            self._failed(probe, stats, started, str(exc))
            return False
        response.close()
        if response.status >= 500:
            self._failed(probe, stats, started, f"HTTP {response.status}")
            return False
        stats.record_success(time.monotonic() - started, source="probe")
        return True

    def _failed(self, probe: ProbeTarget, stats: UpstreamStats, started: float, error: str) -> None:
        elapsed = time.monotonic() - started
        error = redact(error, probe.target.secrets)
        stats.record_failure(elapsed, f"probe: {error}")
        log_event(log, logging.WARNING, "probe failed", upstream=probe.target.name,
                  path=probe.path, elapsed=round(elapsed, 4), error=error,
                  breaker=stats.breaker.state(time.monotonic()).value)
