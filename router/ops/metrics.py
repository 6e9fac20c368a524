"""Prometheus metrics: what an operator graphs and alerts on.

Every label value comes from the config or a small fixed set (route and
upstream names, request kinds, status codes, outcomes), never from the
request: a module path would make the series count unbounded. Live values
(breaker state, latency estimate, cache size) are read at scrape time by a
collector rather than pushed on every change.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from goproxy_router.base.logs import dropped_lines
from goproxy_router.forwarding.forwarder import AttemptObserver
from goproxy_router.routing.throttle import SURFACES, AuthThrottle
from goproxy_router.serving.connections import ConnectionCounts
from goproxy_router.upstream.pool import PoolObserver
from goproxy_router.upstream.stats import BreakerState, StatsRegistry

BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
RELOAD_RESULTS = ("ok", "rejected", "error")   # rejected: the file is invalid; error: it
                                                # validated but could not be applied
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The counters and histograms of one router process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "goproxy_requests", "Client requests answered, by route, kind, status and cache result.",
            ["route", "kind", "status", "cache"], registry=r)
        self.attempts = Counter(
            "goproxy_upstream_attempts", "Requests sent to upstreams, by upstream and outcome.",
            ["upstream", "outcome"], registry=r)
        self.upstream_latency = Histogram(
            "goproxy_upstream_latency_seconds",
            "Time from sending a request to an upstream to its response headers.",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        # The edge's own queueing, apart from the upstream's latency: a request waiting
        # for one of the pool's connections (pool.per_upstream) is not the upstream's doing.
        self.pool_wait = Histogram(
            "goproxy_upstream_pool_wait_seconds",
            "Time requests waited for a connection of the edge's own pool to the upstream.",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.pool_queued = Gauge(
            "goproxy_upstream_pool_queued",
            "Requests waiting now for a connection of the edge's own pool to the upstream.",
            ["upstream"], registry=r)
        self.retries = Counter("goproxy_retries", "Attempts made after a failed one.", registry=r)
        # By the upstream the hedge went to, and what set its delay: "own" samples of the
        # upstream that was slow, the "route"'s others, its "probe"s, or "cold" (hedging.py).
        self.hedges = Counter("goproxy_hedges", "Hedged requests sent to a second upstream, by "
                              "that upstream and the source of the hedge delay.",
                              ["upstream", "source"], registry=r)
        self.hedge_wins = Counter("goproxy_hedge_wins", "Hedges that answered first, by the "
                                  "upstream they went to.", ["upstream"], registry=r)
        self.resumes = Counter(
            "goproxy_resumes", "Stalled zip bodies, by upstream and what followed: resumed with "
            "a Range request, or not (budget refused, resume failed, answer did not match).",
            ["upstream", "outcome"], registry=r)
        self.reloads = Counter("goproxy_config_reloads", "Configuration reloads, by result.",
                               ["result"], registry=r)
        for result in RELOAD_RESULTS:     # every series exists at 0, so an alert can see it rise
            self.reloads.labels(result)
        # Prometheus' own convention for "is the running config the file on disk?".
        self.reload_ok = Gauge("goproxy_config_last_reload_successful",
                               "1 if the last config (re)load succeeded, 0 if it failed.",
                               registry=r)
        self.reload_time = Gauge("goproxy_config_last_reload_success_timestamp_seconds",
                                 "Unix time of the last successful config (re)load.", registry=r)
        self.reload_ok.set(1)             # the config loaded at start-up
        self.reload_time.set(time.time())
        # Requests answered on the thin path (router/serving/thin.py), by their goproxy_requests
        # labels: a plain dict increment per hit, folded into the counter at scrape time.
        self.pending_requests: Tally[tuple[str, str, str, str]] = Tally()
        r.register(DroppedLogLines(dropped_lines))

    def record_reload(self, result: str) -> None:
        """Count a reload (one of RELOAD_RESULTS) and set the last-reload gauges."""
        self.reloads.labels(result).inc()
        self.reload_ok.set(1 if result == "ok" else 0)
        if result == "ok":
            self.reload_time.set(time.time())

    def attach(self, live: LiveCollector) -> None:
        self.registry.register(live)

    def watch_connections(self, counts: Callable[[], ConnectionCounts]) -> None:
        """Show the client-connection gate (router/serving/connections.py) of a serving process."""
        self.registry.register(ConnectionsCollector(counts))

    def render(self) -> bytes:
        pending, self.pending_requests = self.pending_requests, Tally()
        for labels, count in pending.items():
            self.requests.labels(*labels).inc(count)
        return generate_latest(self.registry)


class MetricsObserver(AttemptObserver):
    """Feeds the attempt policy's events into the counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def resume(self, upstream: str, outcome: str) -> None:
        self._metrics.resumes.labels(upstream, outcome).inc()

    def attempt(self, upstream: str, outcome: str, latency: float | None) -> None:
        self._metrics.attempts.labels(upstream, outcome).inc()
        if latency is not None:
            self._metrics.upstream_latency.labels(upstream).observe(latency)

    def retry(self) -> None:
        self._metrics.retries.inc()

    def hedge(self, upstream: str, source: str) -> None:
        self._metrics.hedges.labels(upstream, source).inc()

    def hedge_won(self, upstream: str) -> None:
        self._metrics.hedge_wins.labels(upstream).inc()


class MetricsPoolObserver(PoolObserver):
    """Feeds waits for pooled connections into the pool metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def queued(self, upstream: str) -> None:
        self._metrics.pool_queued.labels(upstream).inc()

    def dequeued(self, upstream: str, seconds: float) -> None:
        self._metrics.pool_queued.labels(upstream).dec()
        self._metrics.pool_wait.labels(upstream).observe(seconds)


class DroppedLogLines(Collector):
    """Log lines dropped rather than wait on a stderr nobody reads (router/base/logs.py):
    a log pipeline that stalls shows up here instead of stalling the edge."""

    def __init__(self, dropped: Callable[[], int]) -> None:
        self._dropped = dropped

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("goproxy_log_lines_dropped",
                                  "Log lines dropped because stderr was not read fast enough.",
                                  value=self._dropped())


class ConnectionsCollector(Collector):
    """Client connections: how many are open against the cap, and how many the gate
    closed or turned away (silent ones, idle ones making room, refusals at the cap)."""

    def __init__(self, counts: Callable[[], ConnectionCounts]) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        yield GaugeMetricFamily("goproxy_connections_open", "Client connections open.",
                                value=counts.open)
        yield GaugeMetricFamily("goproxy_connections_max",
                                "Client connections admitted at most (limits.max_connections, "
                                "lowered to fit the open-files limit).", value=counts.limit)
        yield CounterMetricFamily("goproxy_connections_refused",
                                  "Connections turned away at the cap: answered 503, or closed.",
                                  value=counts.refused)
        yield CounterMetricFamily("goproxy_connections_header_timeouts",
                                  "Connections closed for not sending a request head within "
                                  "limits.header_timeout.", value=counts.header_timeouts)
        yield CounterMetricFamily("goproxy_connections_evicted",
                                  "Idle connections closed to make room for new ones at the cap.",
                                  value=counts.evicted)


class AuthCollector(Collector):
    """Failed authentications and the refusals of the throttle (router/routing/throttle.py), by
    surface (a route's `allow` tokens, or the admin token): a guessing client shows here."""

    def __init__(self, throttle: AuthThrottle) -> None:
        self._throttle = throttle

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, help_text, tally in (
                ("goproxy_auth_failures", "Credentials presented and not accepted, by surface.",
                 self._throttle.failures),
                ("goproxy_auth_throttled", "Requests refused with 429 after too many wrong "
                 "credentials from their client address, by surface.", self._throttle.throttled)):
            family = CounterMetricFamily(name, help_text, labels=["surface"])
            for surface in SURFACES:
                family.add_metric([surface], tally[surface])
            yield family


class SumdbCollector(Collector):
    """Checksum-database answers (router/serving/sumdbcache.py), by endpoint kind (lookup,
    tile, partial_tile, latest) and what the client was told (hit, miss, stale)."""

    def __init__(self, answers: Mapping[tuple[str, str], int]) -> None:
        self._answers = answers

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("goproxy_sumdb_answers", "Checksum database answers, by "
                                     "endpoint kind and cache result.", labels=["endpoint", "cache"])
        for (endpoint, cache), count in sorted(self._answers.items()):
            family.add_metric([endpoint, cache], count)
        yield family


class LiveCollector(Collector):
    """Reads live state at scrape time: breakers, latency estimates, budget, cache."""

    def __init__(self, stats: StatsRegistry, budget: Callable[[], Any],
                 cache: Callable[[], dict[str, Any] | None], now: Callable[[], float],
                 plugin_errors: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats
        self._budget = budget
        self._cache = cache
        self._now = now
        self._plugin_errors = plugin_errors

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = self._now()
        breaker = GaugeMetricFamily(
            "goproxy_upstream_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["upstream"])
        ewma = GaugeMetricFamily(
            "goproxy_upstream_latency_ewma_seconds", "Peak-EWMA time to headers.",
            labels=["upstream"])
        in_flight = GaugeMetricFamily(
            "goproxy_upstream_in_flight", "Requests in flight to the upstream.", labels=["upstream"])
        for stats in self._stats.all():
            breaker.add_metric([stats.name], BREAKER_VALUES[stats.breaker.state(now)])
            ewma.add_metric([stats.name], stats.latency.value)
            in_flight.add_metric([stats.name], stats.in_flight)
        yield from (breaker, ewma, in_flight)
        errors = CounterMetricFamily("goproxy_plugin_errors",
                                     "Scoring plugin calls that raised or returned nonsense "
                                     "(since the last config load).", labels=["plugin"])
        for plugin, count in self._plugin_errors().items():
            errors.add_metric([plugin], count)
        yield errors
        budget = self._budget()
        yield CounterMetricFamily("goproxy_retry_budget_spent",
                                  "Retries and hedges the budget allowed.", value=budget.spent)
        yield CounterMetricFamily("goproxy_retry_budget_refusals",
                                  "Retries and hedges the budget refused.", value=budget.refused)
        cache = self._cache()
        if cache is not None:
            yield GaugeMetricFamily("goproxy_cache_size_bytes", "Bytes in the disk cache.",
                                    value=cache["size_bytes"])
            if cache.get("max_size_bytes"):
                yield GaugeMetricFamily("goproxy_cache_max_size_bytes", "The cache's size bound.",
                                        value=cache["max_size_bytes"])
            yield CounterMetricFamily(
                "goproxy_checksum_mismatches",
                "Module versions whose zip go.mod differed from their .mod.",
                value=cache.get("mismatches", 0))
            if "write_budget_bytes" in cache:
                yield GaugeMetricFamily(
                    "goproxy_cache_write_buffered_bytes",
                    "Bytes of artifacts being filled that are held in memory, not yet on disk.",
                    value=cache["write_buffered_bytes"])
                yield GaugeMetricFamily(
                    "goproxy_cache_write_budget_bytes",
                    "The most the fills may hold in memory together before they wait.",
                    value=cache["write_budget_bytes"])
                yield CounterMetricFamily(
                    "goproxy_cache_write_waits",
                    "Times a fill waited for the write budget (its upstream read held back).",
                    value=cache["write_waits"])
            if "degraded" in cache:
                yield GaugeMetricFamily(
                    "goproxy_cache_degraded",
                    "1 while the disk cache is degraded (free space below cache.min_free, or its "
                    "last write failed): fills are served, not all of them cached.",
                    value=cache["degraded"])
                yield GaugeMetricFamily(
                    "goproxy_cache_reserved_bytes",
                    "Bytes fills in progress have reserved against the cache's size bound.",
                    value=cache["reserved_bytes"])
                write_errors = CounterMetricFamily(
                    "goproxy_cache_write_errors",
                    "Cache writes that failed (the body was served uncached), by errno.",
                    labels=["errno"])
                for errno_name, count in sorted(cache["write_errors"].items()):
                    write_errors.add_metric([errno_name], count)
                yield write_errors
            for name in ("hits", "misses", "stale", "evictions"):
                yield CounterMetricFamily(f"goproxy_cache_{name}", f"Cache {name}.",
                                          value=cache[name])
