"""The status snapshot: everything the page and status.json show, as typed plain data.

`build_snapshot()` is the only reader of `EdgeState` for the page, and where
secrets are kept out: upstream URLs lose their userinfo, query and fragment
(`public_url`), and `last_error` is cut to LAST_ERROR_MAX and scrubbed of
every configured secret. TypedDicts, so the snapshot is served as JSON as is.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from yarl import URL

from goproxy_router import __version__
from goproxy_router.config.secrets import redact
from goproxy_router.ops.status.history import StatusHistory, wall_time
from goproxy_router.upstream.stats import BreakerState
from goproxy_router.upstream.targets import config_secrets

if TYPE_CHECKING:
    from goproxy_router.scoring.api import Candidate
    from goproxy_router.serving.edge import EdgeState

REFRESH_SECONDS = 5             # the script's refresh period
LAST_ERROR_MAX = 160            # characters of an upstream error shown


# -- redaction -------------------------------------------------------------------


def secret_values(state: EdgeState) -> tuple[str, ...]:
    """Every configured upstream header value and URL credential, longest first."""
    return config_secrets(state.config)


def public_url(url: str, secrets: Iterable[str] = ()) -> str:
    """The upstream URL without user, password, query or fragment."""
    try:
        shown = str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        shown = url
    return redact(shown, secrets, limit=200)


# -- snapshot --------------------------------------------------------------------
# TypedDicts, not dataclasses: the snapshot is served as JSON as it is.

class HistoryPoint(TypedDict):
    t: float                # epoch seconds
    ewma_ms: float
    requests: int           # cumulative
    failures: int
    breaker: str


class LastErrorView(TypedDict):
    message: str            # redacted and cut to LAST_ERROR_MAX
    age_s: float | None


class UpstreamView(TypedDict):
    name: str
    url: str                # without credentials, query or fragment
    countries: list[str]
    weight: float
    priority: int
    breaker: str            # a BreakerState value
    ejected_for_s: float
    times_ejected: int
    ewma_ms: float
    in_flight: int
    requests: int           # since start-up
    failures: int
    window_requests: int    # over the history window
    window_failures: int
    last_error: LastErrorView | None
    history: list[HistoryPoint]
    request_share: float    # of the route's requests, on the route's basis
    error_rate: float | None
    health: str             # "ok", "degraded" or "down"


class RouteView(TypedDict):
    name: str
    patterns: list[str]
    basis: str              # "window" or "total": what share and error rate count
    window_s: float
    requests: int
    upstreams: list[UpstreamView]


class CacheView(TypedDict):
    size_bytes: int | None
    max_size_bytes: int | None
    hits: int | None
    misses: int | None
    stale: int | None
    evictions: int | None
    hit_ratio: float | None


class BudgetView(TypedDict):
    spent: int
    refused: int


class Snapshot(TypedDict):
    generated_at: str       # ISO 8601, UTC
    generated_t: float      # epoch seconds
    version: str
    uptime_s: float
    interval_s: float
    history_s: float
    refresh_s: int
    budget: BudgetView
    cache: CacheView | None
    routes: list[RouteView]


def _window(points: list[tuple[int, int]]) -> tuple[int, int]:
    """(requests, failures) added over consecutive cumulative points.

    A counter that goes down was reset (the upstream's URL changed in a
    reload, so its stats started over): its new value is what was added.
    """
    requests = failures = 0
    for (r0, f0), (r1, f1) in zip(points, points[1:], strict=False):
        requests += r1 - r0 if r1 >= r0 else r1
        failures += f1 - f0 if f1 >= f0 else f1
    return requests, failures


def _round(value: float, digits: int = 1) -> float:
    return round(value, digits) if math.isfinite(value) else 0.0


def _health(breaker: str, error_rate: float | None) -> str:
    if breaker == BreakerState.OPEN:
        return "down"
    if breaker == BreakerState.HALF_OPEN or (error_rate is not None and error_rate >= 0.05):
        return "degraded"
    return "ok"


def _cache_view(cache: Mapping[str, Any] | None) -> CacheView | None:
    if cache is None:
        return None
    hits, misses = int(cache.get("hits") or 0), int(cache.get("misses") or 0)
    return CacheView(
        size_bytes=cache.get("size_bytes"), max_size_bytes=cache.get("max_size_bytes"),
        hits=cache.get("hits"), misses=cache.get("misses"), stale=cache.get("stale"),
        evictions=cache.get("evictions"), hit_ratio=hits / (hits + misses) if hits + misses else None)


def _upstream_view(c: Candidate, history: StatusHistory, now: float,
                   secrets: tuple[str, ...]) -> tuple[UpstreamView, float | None]:
    """One upstream's row without its share of the route (filled in by the caller),
    and the time of its oldest sample."""
    stats = c.stats
    series = history.series(c.name)
    points = [(s.requests, s.failures) for s in series]
    points.append((stats.requests, stats.failures))
    w_requests, w_failures = _window(points)
    breaker = stats.breaker.state(now)
    last_error = None
    if stats.last_error:
        last_error = LastErrorView(
            message=redact(stats.last_error, secrets, limit=LAST_ERROR_MAX),
            age_s=(_round(max(now - stats.last_error_at, 0.0))
                   if stats.last_error_at is not None else None))
    row = UpstreamView(
        name=c.name,
        url=public_url(c.config.url, secrets),
        countries=list(c.config.countries),
        weight=c.config.weight,
        priority=c.config.priority,
        breaker=str(breaker),
        ejected_for_s=_round(stats.breaker.remaining(now)) if breaker is BreakerState.OPEN else 0.0,
        times_ejected=stats.breaker.times_ejected,
        ewma_ms=_round(stats.latency.value * 1000.0),
        in_flight=stats.in_flight,
        requests=stats.requests,
        failures=stats.failures,
        window_requests=w_requests,
        window_failures=w_failures,
        last_error=last_error,
        history=[HistoryPoint(t=_round(s.t, 3), ewma_ms=_round(s.ewma_ms), requests=s.requests,
                              failures=s.failures, breaker=s.breaker) for s in series],
        request_share=0.0, error_rate=None, health="ok")
    return row, (series[0].t if series else None)


def build_snapshot(state: EdgeState, history: StatusHistory,
                   cache: Mapping[str, Any] | None, now: float | None = None) -> Snapshot:
    """Everything the page shows, as JSON-ready data; `now` is on the stats' clock.

    Request share and error rate are over the history window (the deltas of
    the cumulative counters from the oldest sample to now); a route with no
    requests in the window falls back to the counters since start-up
    (`basis` says which). An upstream shared by several routes has one set
    of counters, so its share in each route counts all its requests.
    """
    now = time.monotonic() if now is None else now
    wall = wall_time(now)
    secrets = secret_values(state)
    routes: list[RouteView] = []
    for route in state.routes.routes:
        rows: list[UpstreamView] = []
        oldest = wall
        for c in state.candidates.get(route.name, ()):
            row, first = _upstream_view(c, history, now, secrets)
            rows.append(row)
            if first is not None:
                oldest = min(oldest, first)
        basis = "window" if sum(row["window_requests"] for row in rows) else "total"

        def counts(row: UpstreamView, basis: str = basis) -> tuple[int, int]:
            if basis == "window":
                return row["window_requests"], row["window_failures"]
            return row["requests"], row["failures"]

        total = sum(counts(row)[0] for row in rows)
        for row in rows:
            requests, failures = counts(row)
            row["request_share"] = requests / total if total else 0.0
            row["error_rate"] = failures / requests if requests else None
            row["health"] = _health(row["breaker"], row["error_rate"])
        routes.append(RouteView(
            name=route.name, patterns=list(route.config.match), basis=basis,
            window_s=_round(max(wall - oldest, 0.0)), requests=total, upstreams=rows))
    budget = state.forwarder.budget
    return Snapshot(
        generated_at=dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="seconds"),
        generated_t=_round(wall, 3),
        version=__version__,
        uptime_s=_round(max(now - history.started, 0.0)),
        interval_s=history.interval,
        history_s=history.interval * history.keep,
        refresh_s=REFRESH_SECONDS,
        budget=BudgetView(spent=budget.spent, refused=budget.refused),
        cache=_cache_view(cache),
        routes=routes,
    )
