"""Live per-upstream statistics: peak-EWMA latency, in-flight count, outcomes, breaker.

Pure data fed by real requests (passive) and probes (active). Nothing here
ranks: plugins read these numbers through the scoring engine. Keys are
(name, url), so the stats of an upstream survive a config reload unchanged.
Recent time-to-headers samples are kept in three windows by source --
small kinds' traffic, zips' traffic, probes -- so a hedge delay can say
which one it came from (router/upstream/hedging.py); all three feed the EWMA.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from goproxy_router.config.schema import Scoring

# Where a latency sample came from: traffic for list/.info/.mod/@latest (and 404s),
# traffic for zips (an upstream may fetch a zip from the origin on a miss: slower),
# or an active probe.
SampleSource = Literal["traffic", "zip", "probe"]
PROBE_WINDOW = 16       # probe samples kept: a probe every ~10 s, so the last few minutes


@dataclass(frozen=True, slots=True)
class StatsSettings:
    """How fast estimates move and how the breaker behaves (from routes.yaml `scoring`)."""

    decay: float = 10.0              # seconds: time constant of the latency EWMA
    default_rtt: float = 0.25        # seconds: what an upstream with no samples is assumed to take
    penalty_rtt: float = 1.0         # seconds: the least a failure counts as
    failure_threshold: int = 5       # consecutive failures that eject
    ejection: float = 30.0           # seconds per ejection so far (30 s, 60 s, 90 s ...)
    max_ejection: float = 300.0
    ejection_jitter: float = 0.1     # +-10 %, so ejected upstreams do not return in lockstep
    half_open_trials: int = 1        # requests let through at once while half-open
    window: int = 128                # recent header latencies kept for percentiles

    @classmethod
    def from_scoring(cls, scoring: Scoring) -> StatsSettings:
        breaker = scoring.breaker
        return cls(decay=scoring.decay, default_rtt=scoring.default_rtt,
                   penalty_rtt=scoring.penalty_rtt, failure_threshold=breaker.threshold,
                   ejection=breaker.ejection, max_ejection=breaker.max_ejection,
                   half_open_trials=breaker.half_open_trials)


class PeakEwma:
    """An RTT estimate that jumps up at once and decays down over `decay` seconds.

    A sample above the estimate replaces it (be quick to notice trouble);
    below it, it is blended in with a weight that depends on the time since
    the last sample, so the estimate moves at the same speed whatever the
    request rate.
    """

    __slots__ = ("decay", "value", "stamp")

    def __init__(self, decay: float, initial: float) -> None:
        self.decay = decay
        self.value = initial
        self.stamp: float | None = None

    def observe(self, sample: float, now: float) -> None:
        if self.stamp is None or sample >= self.value:
            self.value = sample
        else:
            weight = math.exp(-max(now - self.stamp, 0.0) / self.decay)
            self.value = self.value * weight + sample * (1.0 - weight)
        self.stamp = now


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"            # ejected: no requests until the period ends
    HALF_OPEN = "half_open"  # period over: a trial request or probe decides


class Breaker:
    """Consecutive failures eject for a growing, jittered period; one success readmits."""

    __slots__ = ("settings", "consecutive_failures", "times_ejected", "open_until",
                 "last_ejection_end", "_rng")

    def __init__(self, settings: StatsSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.consecutive_failures = 0
        self.times_ejected = 0
        self.open_until: float | None = None
        self.last_ejection_end: float | None = None
        self._rng = rng or random.Random()

    def state(self, now: float) -> BreakerState:
        if self.open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.open_until else BreakerState.HALF_OPEN

    def record_success(self, now: float) -> None:
        self.consecutive_failures = 0
        if self.open_until is not None and now >= self.open_until:
            self.open_until = None
        if self.open_until is None and self.times_ejected and self._calm_since(now):
            self.times_ejected = 0

    def record_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        state = self.state(now)
        if state is BreakerState.HALF_OPEN or (
                state is BreakerState.CLOSED
                and self.consecutive_failures >= self.settings.failure_threshold):
            self._eject(now)

    def _eject(self, now: float) -> None:
        s = self.settings
        self.times_ejected += 1
        period = min(s.ejection * self.times_ejected, s.max_ejection)
        period *= 1.0 + self._rng.uniform(-s.ejection_jitter, s.ejection_jitter)
        self.open_until = self.last_ejection_end = now + period

    def _calm_since(self, now: float) -> bool:
        """Forget past ejections after a quiet spell as long as the longest ejection."""
        end = self.last_ejection_end
        return end is None or now - end >= self.settings.max_ejection

    def remaining(self, now: float) -> float:
        return max((self.open_until or now) - now, 0.0)


class UpstreamStats:
    """Everything known right now about one upstream's health and speed."""

    __slots__ = ("name", "url", "settings", "latency", "in_flight", "requests", "failures",
                 "breaker", "recent", "recent_zip", "probed", "last_error", "last_error_at",
                 "last_sample_at", "not_before", "throughput")

    def __init__(self, name: str, url: str, settings: StatsSettings) -> None:
        self.name = name
        self.url = url
        self.settings = settings
        self.latency = PeakEwma(settings.decay, settings.default_rtt)
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.breaker = Breaker(settings)
        self.recent: deque[float] = deque(maxlen=settings.window)       # small kinds' traffic
        self.recent_zip: deque[float] = deque(maxlen=settings.window)   # zips' time to headers
        self.probed: deque[float] = deque(maxlen=PROBE_WINDOW)          # active probes
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_sample_at: float | None = None
        self.not_before = 0.0        # monotonic time before which it asked not to be called (429)
        self.throughput: float | None = None   # bytes/s of its recent zip bodies (EWMA)

    def begin(self) -> None:
        """A request to this upstream started (load for the latency plugin)."""
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight = max(self.in_flight - 1, 0)

    def record_success(self, rtt: float, now: float | None = None, *, sample: bool = True,
                       source: SampleSource = "traffic") -> None:
        """The upstream answered (200, 404, 410): `rtt` is the time to its headers.

        ``sample=False`` when `record_latency` already took the sample at the
        headers of an answer whose body has now arrived whole and valid.
        """
        now = time.monotonic() if now is None else now
        self.requests += 1
        if sample:
            self.record_latency(rtt, now, source=source)
        self.breaker.record_success(now)

    def record_latency(self, rtt: float, now: float | None = None, *,
                       source: SampleSource = "traffic") -> None:
        """Headers came after `rtt`, the body is still to come: a latency sample only.

        The outcome is recorded once the body is through (`record_success`
        with ``sample=False``, or `record_failure`): a streamed answer whose
        body turns out broken or invalid is a failure, and counts towards
        ejection like any other, not a success at its headers.
        """
        now = time.monotonic() if now is None else now
        self.latency.observe(rtt, now)
        self.samples(source).append(rtt)
        self.last_sample_at = now

    def record_failure(self, elapsed: float, error: str, now: float | None = None) -> None:
        """Timeout, refused, reset, 5xx: a penalty sample, and a step towards ejection."""
        now = time.monotonic() if now is None else now
        self.requests += 1
        self.failures += 1
        self.latency.observe(max(elapsed, self.settings.penalty_rtt), now)
        self.last_error = error
        self.last_error_at = now
        self.last_sample_at = now
        self.breaker.record_failure(now)

    def record_slow(self, elapsed: float, now: float | None = None) -> None:
        """An attempt abandoned after `elapsed` (a hedge lost): at least that slow."""
        if elapsed > self.latency.value:
            self.latency.observe(elapsed, time.monotonic() if now is None else now)

    def record_throughput(self, size: int, seconds: float) -> None:
        """A zip body of `size` bytes arrived in `seconds`: blended into `throughput`, which
        sets the stall interval of its next bodies before they show a rate of their own."""
        if seconds <= 0:
            return
        rate = size / seconds
        self.throughput = rate if self.throughput is None else 0.7 * self.throughput + 0.3 * rate

    def sit_out(self, until: float) -> None:
        """Honour a 429's Retry-After: not to be asked again before `until`."""
        self.not_before = max(self.not_before, until)

    def samples(self, source: SampleSource = "traffic") -> deque[float]:
        """The window of recent header latencies from `source`."""
        return {"traffic": self.recent, "zip": self.recent_zip, "probe": self.probed}[source]

    def percentile(self, fraction: float, min_samples: int = 20,
                   source: SampleSource = "traffic") -> float | None:
        """A percentile of recent header latencies from `source`, or None with too few."""
        return percentile_of(self.samples(source), fraction, min_samples)


def percentile_of(samples: Iterable[float], fraction: float, min_samples: int = 1) -> float | None:
    """The `fraction` percentile of `samples` (nearest rank), or None with fewer than `min_samples`."""
    ordered = sorted(samples)
    if not ordered or len(ordered) < min_samples:
        return None
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


class StatsRegistry:
    """All upstreams' stats, kept across config reloads."""

    def __init__(self, settings: StatsSettings | None = None) -> None:
        self.settings = settings or StatsSettings()
        self._by_key: dict[tuple[str, str], UpstreamStats] = {}

    def get(self, name: str, url: str) -> UpstreamStats:
        key = (name, url)
        stats = self._by_key.get(key)
        if stats is None:
            stats = self._by_key[key] = UpstreamStats(name, url, self.settings)
        return stats

    def retain(self, keys: set[tuple[str, str]]) -> None:
        """Forget upstreams a new config no longer has."""
        for key in list(self._by_key):
            if key not in keys:
                del self._by_key[key]

    def all(self) -> list[UpstreamStats]:
        return list(self._by_key.values())
