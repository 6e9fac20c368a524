"""Live stats: peak EWMA, breaker, percentiles, registry."""

from __future__ import annotations

import math
import random

import pytest

from goproxy_router.upstream.stats import (
    Breaker,
    BreakerState,
    PeakEwma,
    StatsRegistry,
    StatsSettings,
    UpstreamStats,
)


def test_peak_ewma_jumps_up_and_decays_down_with_time() -> None:
    ewma = PeakEwma(decay=10.0, initial=0.25)
    ewma.observe(0.05, now=0.0)
    assert ewma.value == 0.05                       # first sample replaces the default
    ewma.observe(1.0, now=1.0)
    assert ewma.value == 1.0                        # a peak replaces at once
    ewma.observe(0.1, now=11.0)                     # one time constant later
    expected = 1.0 * math.exp(-1) + 0.1 * (1 - math.exp(-1))
    assert ewma.value == pytest.approx(expected)


def test_peak_ewma_moves_at_the_same_speed_whatever_the_rate() -> None:
    slow, fast = PeakEwma(10.0, 1.0), PeakEwma(10.0, 1.0)
    slow.observe(1.0, 0.0)
    fast.observe(1.0, 0.0)
    slow.observe(0.1, 5.0)
    for i in range(1, 501):
        fast.observe(0.1, i * 0.01)
    assert slow.value == pytest.approx(fast.value, rel=1e-9)


SETTINGS = StatsSettings(failure_threshold=3, ejection=30.0, max_ejection=100.0, ejection_jitter=0.1)


def test_breaker_ejects_after_threshold_and_grows_with_jitter() -> None:
    breaker = Breaker(SETTINGS, random.Random(1))
    for now in (0.0, 0.1):
        breaker.record_failure(now)
        assert breaker.state(now) is BreakerState.CLOSED
    breaker.record_failure(0.2)
    assert breaker.state(0.2) is BreakerState.OPEN
    first = breaker.remaining(0.2)
    assert 27.0 <= first <= 33.0
    assert breaker.state(0.2 + first + 0.01) is BreakerState.HALF_OPEN
    breaker.record_failure(0.2 + first + 0.01)       # trial failed: ejected again, longer
    second = breaker.remaining(0.2 + first + 0.01)
    assert 54.0 <= second <= 66.0
    now = 0.2 + first + second + 0.02
    assert breaker.state(now) is BreakerState.HALF_OPEN
    breaker.record_success(now)                       # trial succeeded: readmitted
    assert breaker.state(now) is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_breaker_ejection_is_capped_and_success_resets_the_count() -> None:
    breaker = Breaker(SETTINGS, random.Random(2))
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    breaker.record_success(0.0)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    breaker.times_ejected = 10
    breaker.record_failure(0.0)
    assert breaker.state(0.0) is BreakerState.OPEN
    assert breaker.remaining(0.0) <= 110.0


def test_failures_are_penalty_samples() -> None:
    stats = UpstreamStats("a", "http://a", StatsSettings(penalty_rtt=1.0))
    stats.record_success(0.02, now=0.0)
    stats.record_failure(0.001, "connection refused", now=0.1)
    assert stats.latency.value == 1.0                 # a fast failure does not look fast
    assert stats.failures == 1 and stats.requests == 2
    assert stats.last_error == "connection refused"


def test_percentile_needs_enough_samples() -> None:
    stats = UpstreamStats("a", "http://a", StatsSettings())
    for i in range(19):
        stats.record_success(i / 100, now=float(i))
    assert stats.percentile(0.95) is None
    for i in range(19, 100):
        stats.record_success(i / 100, now=float(i))
    assert stats.percentile(0.95) == pytest.approx(0.95)


def test_registry_keeps_stats_per_name_and_url() -> None:
    registry = StatsRegistry()
    a = registry.get("a", "http://a")
    assert registry.get("a", "http://a") is a
    assert registry.get("a", "http://moved") is not a
    registry.retain({("a", "http://a")})
    assert registry.all() == [a]
