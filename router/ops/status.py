"""The operator's status page: `/_router/status` (HTML) and `/_router/status.json`.

Per route, each upstream's health, breaker state, peak-EWMA latency over the
last minutes (an inline SVG sparkline), request share (a bar) and error rate;
the cache's size and hit ratio; the retry budget. One self-contained page:
inline CSS, inline JS, inline SVG, no external asset, so it works offline and
from behind any firewall.

Three parts, each usable alone:

- `StatusHistory` samples the live stats every `interval` seconds into a
  bounded ring per upstream (120 x 5 s = 10 minutes), so the page can draw
  trends and compute shares and error rates over a window rather than since
  start-up. `sample()` can be called directly (tests pass fake times).
- `build_snapshot()` turns the live state into a `Snapshot` (TypedDicts of
  plain, JSON-ready numbers). It is the only place that reads `EdgeState`, and it is where secrets are
  kept out: upstream URLs lose their userinfo, and every string that can
  carry upstream text (`last_error`) is cut short and scrubbed of header
  values, tokens and credentials. Upstream `headers` are never read except
  to know which values to scrub.
- `render_status()` turns a snapshot into HTML from the templates in
  `router/ops/status_page/` (package data, read once at import: `page.html`,
  `fragments.html`, `style.css`, `app.js`). Values are substituted by
  `string.Template` in one function, `_render`, which `html.escape`s every
  value that is not a fragment it rendered itself, so a hostile upstream's
  error text renders as text.

How the page refreshes itself, and why this way: a small inline script
fetches the page's own URL every 5 s and swaps the freshly rendered
`<main id="status">` into the document. The alternatives were (a) fetching
`status.json` and rendering the tables in JavaScript, which would mean a
second renderer to keep in step with this one and a second place where
escaping must be right (one `innerHTML` with an unescaped upstream string
is an XSS), and (b) a plain `<meta http-equiv="refresh">`, which reloads
the whole page (flicker, scroll position lost) and, when the router stops
answering, replaces the last known picture with a browser error page at
exactly the moment the operator needs it. The swap keeps one renderer and
one escaping rule, keeps the scroll position, and on a failed fetch keeps
the last picture with a visible "not updating" warning. Without JS, a meta
refresh inside `<noscript>` reloads the page every 10 s. `status.json`
serves the same snapshot to scripts and dashboards.

The page sets a Content-Security-Policy that allows only its own script
(by hash) and connections to its own origin: even an escaping bug could not
run injected script or send data elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import html
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any, TypedDict

from aiohttp import web
from yarl import URL

from goproxy_router import __version__, ops
from goproxy_router.config.secrets import redact
from goproxy_router.upstream.client import config_secrets
from goproxy_router.upstream.stats import BreakerState

if TYPE_CHECKING:
    from goproxy_router.scoring.engine import Candidate
    from goproxy_router.serving.edge import EdgeState

log = logging.getLogger("router.status")

STATUS_PATH = "/_router/status"
STATUS_JSON_PATH = "/_router/status.json"
REFRESH_SECONDS = 5             # the script's refresh period
FALLBACK_REFRESH_SECONDS = 10   # the <noscript> meta refresh
LAST_ERROR_MAX = 160            # characters of an upstream error shown


# -- history -------------------------------------------------------------------

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
        wall = _wall(now)
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


def _wall(monotonic: float) -> float:
    """A monotonic instant as epoch seconds (same offset as the clocks have now)."""
    return time.time() - (time.monotonic() - monotonic)


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
    wall = _wall(now)
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


# -- templates -------------------------------------------------------------------

class Markup(str):
    """Text that is HTML already (a rendered fragment): `_render` inserts it as is."""


def _render(template: Template, /, **values: object) -> Markup:
    """`template` with every value substituted; the one place where escaping happens.

    Each value is `html.escape`d (quotes too, so attribute values are safe)
    unless it is `Markup`, i.e. a fragment that went through here already.
    A placeholder left without a value is a KeyError, not a silently empty spot.
    """
    return Markup(template.substitute(
        {name: value if isinstance(value, Markup) else html.escape(str(value), quote=True)
         for name, value in values.items()}))


_FRAGMENT_MARK = re.compile(r"^<!-- fragment: (\w+) -->$", re.MULTILINE)


def _one_line(text: str) -> str:
    """A template written over indented lines, as the one line it renders to."""
    return "".join(line.strip() for line in text.splitlines())


def _load_fragments(text: str) -> dict[str, Template]:
    """`fragments.html` split at its `<!-- fragment: NAME -->` lines (before the first: a comment)."""
    parts = _FRAGMENT_MARK.split(text)
    return {name: Template(_one_line(body)) for name, body in zip(parts[1::2], parts[2::2], strict=True)}


_FILES = resources.files(ops) / "status_page"
_PAGE = Template(_one_line((_FILES / "page.html").read_text(encoding="utf-8")))
_FRAGMENTS = _load_fragments((_FILES / "fragments.html").read_text(encoding="utf-8"))
_CSS = Markup((_FILES / "style.css").read_text(encoding="utf-8").strip())
# The script is fixed at load time, so the page's CSP can allow exactly it, by hash.
# `$refresh_s` is its one placeholder (a literal `$` in app.js would be `$$`).
_JS = Markup(Template((_FILES / "app.js").read_text(encoding="utf-8").strip())
             .substitute(refresh_s=REFRESH_SECONDS))


def _fragment(fragment: str, /, **values: object) -> Markup:
    return _render(_FRAGMENTS[fragment], **values)


def _join(fragments: Iterable[Markup], sep: str = "") -> Markup:
    return Markup(sep.join(fragments))


# -- formatting ------------------------------------------------------------------

def _bytes(n: float | None) -> str:
    if n is None:
        return "\u2013"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _span(seconds: float) -> str:
    """A window length in words: "10 min", "90 s"."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return _duration(seconds)


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(ratio: float | None) -> str:
    if ratio is None:
        return "\u2013"
    pct = ratio * 100
    return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"


def _latency_class(ms: float) -> str:
    return "good" if ms < 300 else "warn" if ms < 1000 else "bad"


def _error_class(ratio: float | None) -> str:
    if ratio is None:
        return "muted"
    return "good" if ratio < 0.01 else "warn" if ratio < 0.1 else "bad"


BREAKER_LABELS = {"closed": "closed", "half_open": "half-open", "open": "open"}
HEALTH_LABELS = {"ok": "healthy", "degraded": "degraded", "down": "down"}
SPARK_W, SPARK_H = 168, 34


# -- rendering -------------------------------------------------------------------

def _sparkline(row: UpstreamView, t_end: float, span: float) -> Markup:
    """EWMA latency over the history window as an inline SVG; open-breaker spells shaded."""
    points = [(p["t"], p["ewma_ms"], p.get("breaker", "closed")) for p in row["history"]]
    points.append((t_end, row["ewma_ms"], row["breaker"]))
    points = [p for p in points if p[0] >= t_end - span]
    peak = max(max(p[1] for p in points) * 1.15, 10.0)
    low = min(p[1] for p in points)

    def x(t: float) -> float:
        return 1 + (SPARK_W - 2) * (1 - (t_end - t) / span) if span > 0 else SPARK_W - 1

    def y(v: float) -> float:
        return SPARK_H - 2 - (SPARK_H - 4) * (v / peak)

    shade = [_fragment("sparkline_open", x=f"{x(t0):.1f}", width=f"{max(x(t1) - x(t0), 1.5):.1f}",
                       height=SPARK_H)
             for (t0, _, b0), (t1, _, _) in zip(points, points[1:], strict=False) if b0 == "open"]
    if points[-1][2] == "open":
        shade.append(_fragment("sparkline_open", x=f"{x(points[-1][0]) - 1.5:.1f}", width="1.5",
                               height=SPARK_H))
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _ in points)
    area = f"{x(points[0][0]):.1f},{SPARK_H} {coords} {x(points[-1][0]):.1f},{SPARK_H}"
    title = (f"EWMA latency, last {_span(span)}: now {_ms(row['ewma_ms'])}, "
             f"min {_ms(low)}, max {_ms(max(p[1] for p in points))}")
    return _fragment(
        "sparkline", width=SPARK_W, height=SPARK_H, title=title, base_y=SPARK_H - 1,
        shade=_join(shade), area=area, coords=coords, latency_class=_latency_class(row["ewma_ms"]),
        last_x=f"{x(points[-1][0]):.1f}", last_y=f"{y(points[-1][1]):.1f}")


def _tuning(row: UpstreamView) -> str:
    """Weight and priority, when not the defaults."""
    parts = [f"weight {row['weight']:g}" if row["weight"] != 1 else "",
             f"priority {row['priority']}" if row["priority"] else ""]
    return "".join(f" \u00b7 {p}" for p in parts if p)


def _upstream_row(row: UpstreamView, t_end: float, span: float) -> Markup:
    breaker = row["breaker"]
    if breaker == "open" and row["ejected_for_s"]:
        breaker_detail = _fragment("breaker_back_in", duration=_duration(row["ejected_for_s"]))
    elif row["times_ejected"]:
        breaker_detail = _fragment("breaker_ejected", times=row["times_ejected"])
    else:
        breaker_detail = Markup()
    error = row["last_error"]
    if not error:
        last_error = _fragment("no_error")
    elif error["age_s"] is None:
        last_error = _fragment("last_error", message=error["message"])
    else:
        last_error = _fragment("last_error_aged", message=error["message"], age=_duration(error["age_s"]))
    share, err_rate = row["request_share"], row["error_rate"]
    return _fragment(
        "upstream", name=row["name"], url=row["url"], health=row["health"],
        health_label=HEALTH_LABELS.get(row["health"], row["health"]),
        countries=", ".join(row["countries"]), tuning=_tuning(row),
        breaker=breaker, breaker_label=BREAKER_LABELS.get(breaker, breaker), breaker_detail=breaker_detail,
        latency_class=_latency_class(row["ewma_ms"]), ewma_ms=row["ewma_ms"], latency=_ms(row["ewma_ms"]),
        sparkline=_sparkline(row, t_end, span),
        share_bar=_fragment("bar", percent=f"{share * 100:.1f}"), share=_pct(share),
        requests=row["requests"], in_flight=row["in_flight"],
        error_class=_error_class(err_rate), error_rate=_pct(err_rate), failures=row["failures"],
        last_error=last_error)


def _route_section(route: RouteView, t_end: float, span: float) -> Markup:
    basis = (f"share and error rate over the last {_duration(route['window_s'])}"
             if route["basis"] == "window" else "share and error rate since start-up")
    down = sum(1 for r in route["upstreams"] if r["health"] == "down")
    summary = (_fragment("route_some_down", down=down, total=len(route["upstreams"])) if down
               else _fragment("route_all_up"))
    return _fragment(
        "route", name=route["name"], summary=summary,
        patterns=_join((_fragment("pattern", pattern=p) for p in route["patterns"]), " "),
        basis=basis, span=_span(span),
        rows=_join(_upstream_row(r, t_end, span) for r in route["upstreams"]))


def _ratio_attr(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.4f}"


def _cache_card(cache: CacheView | None) -> Markup:
    if cache is None:
        return _fragment("cache_card_empty")
    size, limit = cache["size_bytes"], cache["max_size_bytes"]
    fill = (_fragment("bar", percent=f"{min(size / limit, 1.0) * 100:.1f}")
            if size is not None and limit else Markup())
    return _fragment(
        "cache_card", hit_ratio_attr=_ratio_attr(cache["hit_ratio"]), hit_ratio=_pct(cache["hit_ratio"]),
        hits=cache["hits"] or 0, misses=cache["misses"] or 0, stale=cache["stale"] or 0,
        size=_bytes(size), of=f" of {_bytes(limit)}" if limit else "",
        evictions=cache["evictions"] or 0, fill=fill)


def _main(snapshot: Snapshot) -> Markup:
    t_end = float(snapshot["generated_t"])
    span = float(snapshot["history_s"])
    health = {r["name"]: r["health"] for route in snapshot["routes"] for r in route["upstreams"]}
    healthy = sum(1 for h in health.values() if h == "ok")
    down = sum(1 for h in health.values() if h == "down")
    overall = "down" if health and down == len(health) else "degraded" if healthy < len(health) else "ok"
    budget = snapshot["budget"]
    cards = _join([
        _fragment("upstreams_card", overall=overall, healthy=healthy, total=len(health), down=down,
                  degraded=len(health) - healthy - down),
        _cache_card(snapshot["cache"]),
        _fragment("budget_card", spent=budget["spent"], refused=budget["refused"],
                  refused_class="bad" if budget["refused"] else ""),
        _fragment("routes_card", routes=len(snapshot["routes"])),
    ])
    sections = (_join(_route_section(route, t_end, span) for route in snapshot["routes"])
                or _fragment("no_routes"))
    return _fragment(
        "main", generated_at=snapshot["generated_at"], version=snapshot["version"],
        uptime=_duration(snapshot["uptime_s"]), cards=cards, sections=Markup(sections))


SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src '{SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")


def render_status(snapshot: Snapshot) -> str:
    """The whole page for one snapshot: self-contained HTML, every string escaped."""
    return str(_render(_PAGE, fallback_s=FALLBACK_REFRESH_SECONDS, style=_CSS, script=_JS,
                       main=_main(snapshot)))


# -- HTTP ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where the handlers read the live state and the cache counters from."""

    get_state: Callable[[], EdgeState]
    get_cache_info: Callable[[], dict[str, Any] | None]


STATUS_HISTORY = web.AppKey("status_history", StatusHistory)
STATUS_SOURCES = web.AppKey("status_sources", StatusSources)

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
             "Referrer-Policy": "no-referrer"}


def _snapshot(request: web.Request) -> Snapshot:
    sources = request.app[STATUS_SOURCES]
    return build_snapshot(sources.get_state(), request.app[STATUS_HISTORY], sources.get_cache_info())


async def status_page(request: web.Request) -> web.Response:
    """GET /_router/status: the HTML page."""
    return web.Response(text=render_status(_snapshot(request)), content_type="text/html",
                        charset="utf-8",
                        headers={**_NO_STORE, "Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def status_json(request: web.Request) -> web.Response:
    """GET /_router/status.json: the same snapshot for scripts."""
    return web.json_response(_snapshot(request), headers=_NO_STORE)


def setup_status(app: web.Application, get_state: Callable[[], EdgeState],
                 get_cache_info: Callable[[], dict[str, Any] | None],
                 history: StatusHistory | None = None) -> StatusHistory:
    """Serve the status page on `app` and sample stats while it runs.

    Registers GET (and HEAD) /_router/status and /_router/status.json, and a
    cleanup context that starts the sampler at start-up and stops it at
    shutdown. Plain paths resolve before a catch-all `/{tail:.*}` whatever
    the registration order (aiohttp's resource index; tested). Returns the
    history, which `history=` can supply (tests, or a custom interval).
    """
    history = history or StatusHistory()
    app[STATUS_HISTORY] = history
    app[STATUS_SOURCES] = StatusSources(get_state, get_cache_info)
    app.router.add_get(STATUS_PATH, status_page)
    app.router.add_get(STATUS_JSON_PATH, status_json)

    async def sampler(app: web.Application) -> AsyncIterator[None]:
        history.start(get_state)
        yield
        await history.stop()

    app.cleanup_ctx.append(sampler)
    return history
