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
- `build_snapshot()` turns the live state into plain, JSON-ready numbers.
  It is the only place that reads `EdgeState`, and it is where secrets are
  kept out: upstream URLs lose their userinfo, and every string that can
  carry upstream text (`last_error`) is cut short and scrubbed of header
  values, tokens and credentials. Upstream `headers` are never read except
  to know which values to scrub.
- `render_status()` turns a snapshot into HTML; every string goes through
  `html.escape`, so a hostile upstream's error text renders as text.

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
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

import router
from router.redact import redact
from router.stats import BreakerState
from router.upstream import config_secrets

if TYPE_CHECKING:
    from router.app import EdgeState

log = logging.getLogger("router.status")

STATUS_PATH = "/_router/status"
STATUS_JSON_PATH = "/_router/status.json"
REFRESH_SECONDS = 5             # the script's refresh period
FALLBACK_REFRESH_SECONDS = 10   # the <noscript> meta refresh
LAST_ERROR_MAX = 160            # characters of an upstream error shown
CACHE_KEYS = ("size_bytes", "max_size_bytes", "hits", "misses", "stale", "evictions")


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


def _cache_view(cache: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    view: dict[str, Any] = {key: cache.get(key) for key in CACHE_KEYS}
    hits, misses = int(view["hits"] or 0), int(view["misses"] or 0)
    view["hit_ratio"] = hits / (hits + misses) if hits + misses else None
    return view


def build_snapshot(state: EdgeState, history: StatusHistory,
                   cache: Mapping[str, Any] | None, now: float | None = None) -> dict[str, Any]:
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
    routes: list[dict[str, Any]] = []
    for route in state.routes.routes:
        rows: list[dict[str, Any]] = []
        window_requests = 0
        oldest = wall
        for c in state.candidates.get(route.name, ()):
            stats = c.stats
            series = history.series(c.name)
            if series:
                oldest = min(oldest, series[0].t)
            points = [(s.requests, s.failures) for s in series]
            points.append((stats.requests, stats.failures))
            w_requests, w_failures = _window(points)
            window_requests += w_requests
            breaker = stats.breaker.state(now)
            last_error = None
            if stats.last_error:
                last_error = {
                    "message": redact(stats.last_error, secrets, limit=LAST_ERROR_MAX),
                    "age_s": (_round(max(now - stats.last_error_at, 0.0))
                              if stats.last_error_at is not None else None),
                }
            rows.append({
                "name": c.name,
                "url": public_url(c.config.url, secrets),
                "countries": list(c.config.countries),
                "weight": c.config.weight,
                "priority": c.config.priority,
                "breaker": str(breaker),
                "ejected_for_s": _round(stats.breaker.remaining(now)) if breaker is BreakerState.OPEN
                else 0.0,
                "times_ejected": stats.breaker.times_ejected,
                "ewma_ms": _round(stats.latency.value * 1000.0),
                "in_flight": stats.in_flight,
                "requests": stats.requests,
                "failures": stats.failures,
                "window_requests": w_requests,
                "window_failures": w_failures,
                "last_error": last_error,
                "history": [{"t": _round(s.t, 3), "ewma_ms": _round(s.ewma_ms),
                             "requests": s.requests, "failures": s.failures, "breaker": s.breaker}
                            for s in series],
            })
        basis = "window" if window_requests else "total"
        key_r, key_f = ("window_requests", "window_failures") if basis == "window" else (
            "requests", "failures")
        total = sum(row[key_r] for row in rows)
        for row in rows:
            requests, failures = row[key_r], row[key_f]
            row["request_share"] = requests / total if total else 0.0
            row["error_rate"] = failures / requests if requests else None
            row["health"] = _health(row["breaker"], row["error_rate"])
        routes.append({
            "name": route.name,
            "patterns": list(route.config.match),
            "basis": basis,
            "window_s": _round(max(wall - oldest, 0.0)),
            "requests": total,
            "upstreams": rows,
        })
    budget = state.forwarder.budget
    return {
        "generated_at": dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="seconds"),
        "generated_t": _round(wall, 3),
        "version": router.__version__,
        "uptime_s": _round(max(now - history.started, 0.0)),
        "interval_s": history.interval,
        "history_s": history.interval * history.keep,
        "refresh_s": REFRESH_SECONDS,
        "budget": {"spent": budget.spent, "refused": budget.refused},
        "cache": _cache_view(cache),
        "routes": routes,
    }


# -- rendering -------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def _sparkline(row: Mapping[str, Any], t_end: float, span: float) -> str:
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

    shade = []
    for (t0, _, b0), (t1, _, _) in zip(points, points[1:], strict=False):
        if b0 == "open":
            shade.append(f'<rect x="{x(t0):.1f}" y="0" width="{max(x(t1) - x(t0), 1.5):.1f}" '
                         f'height="{SPARK_H}" class="sp-open"/>')
    if points[-1][2] == "open":
        shade.append(f'<rect x="{x(points[-1][0]) - 1.5:.1f}" y="0" width="1.5" height="{SPARK_H}" '
                     'class="sp-open"/>')
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _ in points)
    first_x = x(points[0][0])
    area = f"{first_x:.1f},{SPARK_H} {coords} {x(points[-1][0]):.1f},{SPARK_H}"
    last_x, last_y = x(points[-1][0]), y(points[-1][1])
    title = (f"EWMA latency, last {_span(span)}: now {_ms(row['ewma_ms'])}, "
             f"min {_ms(low)}, max {_ms(max(p[1] for p in points))}")
    return (f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" '
            f'viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" aria-label="{_e(title)}">'
            f"<title>{_e(title)}</title>"
            f'<line x1="0" y1="{SPARK_H - 1}" x2="{SPARK_W}" y2="{SPARK_H - 1}" class="sp-base"/>'
            + "".join(shade)
            + f'<polygon points="{area}" class="sp-area {_latency_class(row["ewma_ms"])}"/>'
            f'<polyline points="{coords}" class="sp-line {_latency_class(row["ewma_ms"])}"/>'
            f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.5" '
            f'class="sp-dot {_latency_class(row["ewma_ms"])}"/></svg>')


def _tuning(row: Mapping[str, Any]) -> str:
    """Weight and priority, when not the defaults."""
    parts = [f"weight {row['weight']:g}" if row["weight"] != 1 else "",
             f"priority {row['priority']}" if row["priority"] else ""]
    return "".join(f" \u00b7 {p}" for p in parts if p)


def _upstream_row(row: Mapping[str, Any], t_end: float, span: float) -> str:
    breaker = row["breaker"]
    breaker_text = BREAKER_LABELS.get(breaker, breaker)
    if breaker == "open" and row["ejected_for_s"]:
        breaker_detail = f'<span class="sub">back in {_e(_duration(row["ejected_for_s"]))}</span>'
    elif row["times_ejected"]:
        breaker_detail = f'<span class="sub">ejected {_e(row["times_ejected"])}\u00d7</span>'
    else:
        breaker_detail = ""
    countries = ", ".join(row["countries"])
    error = row["last_error"]
    if error:
        age = f' <span class="sub">{_e(_duration(error["age_s"]))} ago</span>' \
            if error["age_s"] is not None else ""
        error_html = f'<span class="err" title="{_e(error["message"])}">{_e(error["message"])}</span>{age}'
    else:
        error_html = '<span class="muted">none</span>'
    share = row["request_share"]
    err_rate = row["error_rate"]
    return (
        f'<tr class="up health-{_e(row["health"])}" data-upstream="{_e(row["name"])}">'
        f'<td class="name"><div class="who"><span class="dot {_e(row["health"])}" '
        f'title="{_e(HEALTH_LABELS.get(row["health"], row["health"]))}"></span>'
        f'<div><strong>{_e(row["name"])}</strong>'
        f'<span class="sub url">{_e(row["url"])}</span>'
        f'<span class="sub">countries {_e(countries)}{_e(_tuning(row))}</span></div></div></td>'
        f'<td><span class="health {_e(row["health"])}">'
        f'{_e(HEALTH_LABELS.get(row["health"], row["health"]))}</span></td>'
        f'<td><span class="badge b-{_e(breaker)}" data-breaker="{_e(breaker)}">{_e(breaker_text)}</span>'
        f"{breaker_detail}</td>"
        f'<td class="lat"><span class="num {_latency_class(row["ewma_ms"])}" data-ewma-ms="'
        f'{_e(row["ewma_ms"])}">{_e(_ms(row["ewma_ms"]))}</span>{_sparkline(row, t_end, span)}</td>'
        f'<td class="share"><div class="bar"><span style="width:{share * 100:.1f}%"></span></div>'
        f'<span class="num">{_e(_pct(share))}</span></td>'
        f'<td class="num r">{_e(row["requests"])}<span class="sub">{_e(row["in_flight"])} in flight'
        f"</span></td>"
        f'<td class="num r"><span class="{_error_class(err_rate)}">{_e(_pct(err_rate))}</span>'
        f'<span class="sub">{_e(row["failures"])} failed</span></td>'
        f'<td class="lasterr">{error_html}</td></tr>'
    )


_COLUMNS = ("<colgroup>" + "".join(f'<col style="width:{w}%">' for w in (19, 7, 10, 22, 12, 8, 8, 14))
            + "</colgroup>")


def _route_section(route: Mapping[str, Any], t_end: float, span: float) -> str:
    basis = (f"share and error rate over the last {_duration(route['window_s'])}"
             if route["basis"] == "window" else "share and error rate since start-up")
    rows = "".join(_upstream_row(r, t_end, span) for r in route["upstreams"])
    down = sum(1 for r in route["upstreams"] if r["health"] == "down")
    summary = (f'<span class="health down">{down} of {len(route["upstreams"])} down</span>' if down
               else '<span class="health ok">all up</span>')
    patterns = " ".join(f"<code>{_e(p)}</code>" for p in route["patterns"])
    return (
        f'<section class="route" data-route="{_e(route["name"])}">'
        f'<header><h2>{_e(route["name"])}</h2>{summary}<span class="patterns">{patterns}</span>'
        f'<span class="sub basis">{_e(basis)}</span></header>'
        f'<table>{_COLUMNS}<thead><tr><th>Upstream</th><th>Health</th><th>Breaker</th>'
        f'<th>Latency (EWMA, last {_e(_span(span))})</th><th>Request share</th>'
        f'<th class="r">Requests</th><th class="r">Error rate</th><th>Last error</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def _ratio_attr(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.4f}"


def _cache_card(cache: Mapping[str, Any] | None) -> str:
    if cache is None:
        return ('<div class="card"><h3>Cache</h3><div class="big muted">\u2013</div>'
                '<div class="sub">no cache yet</div></div>')
    size, limit = cache.get("size_bytes"), cache.get("max_size_bytes")
    fill = (f'<div class="bar"><span style="width:{min(size / limit, 1.0) * 100:.1f}%"></span></div>'
            if size is not None and limit else "")
    of = f" of {_e(_bytes(limit))}" if limit else ""
    return (
        '<div class="card" id="cache"><h3>Cache</h3>'
        f'<div class="big" data-hit-ratio="{_e(_ratio_attr(cache["hit_ratio"]))}">'
        f'{_e(_pct(cache["hit_ratio"]))}'
        '<small> hit ratio</small></div>'
        f'<div class="sub">{_e(cache.get("hits") or 0)} hits \u00b7 {_e(cache.get("misses") or 0)} misses'
        f' \u00b7 {_e(cache.get("stale") or 0)} stale</div>'
        f'<div class="sub">{_e(_bytes(size))}{of} \u00b7 {_e(cache.get("evictions") or 0)} evictions</div>'
        f"{fill}</div>"
    )


def _main(snapshot: Mapping[str, Any]) -> str:
    t_end = float(snapshot["generated_t"])
    rows = [r for route in snapshot["routes"] for r in route["upstreams"]]
    span = float(snapshot["history_s"])
    names: dict[str, str] = {}
    for r in rows:
        names[r["name"]] = r["health"]
    healthy = sum(1 for h in names.values() if h == "ok")
    down = sum(1 for h in names.values() if h == "down")
    overall = "down" if names and down == len(names) else "degraded" if healthy < len(names) else "ok"
    budget = snapshot["budget"]
    cards = (
        f'<div class="card"><h3>Upstreams</h3><div class="big {overall}">{healthy}'
        f"<small> of {len(names)} healthy</small></div>"
        f'<div class="sub">{down} down \u00b7 {len(names) - healthy - down} degraded</div></div>'
        + _cache_card(snapshot["cache"])
        + f'<div class="card"><h3>Retry budget</h3><div class="big">{_e(budget["spent"])}'
        f'<small> retries &amp; hedges</small></div>'
        f'<div class="sub {"bad" if budget["refused"] else ""}">{_e(budget["refused"])} refused</div></div>'
        f'<div class="card"><h3>Routes</h3><div class="big">{len(snapshot["routes"])}</div>'
        f'<div class="sub">first match wins, top to bottom</div></div>'
    )
    sections = "".join(_route_section(route, t_end, span) for route in snapshot["routes"])
    if not sections:
        sections = '<p class="muted">No routes configured.</p>'
    return (
        f'<main id="status" data-generated-at="{_e(snapshot["generated_at"])}">'
        f'<div class="meta">version {_e(snapshot["version"])} \u00b7 up {_e(_duration(snapshot["uptime_s"]))}'
        f' \u00b7 generated <time>{_e(snapshot["generated_at"])}</time>'
        ' \u00b7 <a href="status.json">status.json</a></div>'
        f'<div class="cards">{cards}</div>{sections}</main>'
    )


_CSS = """
:root{--fg:#1d2430;--muted:#6b7485;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;
--good:#1a7f37;--warn:#b25e00;--bad:#c62828;--accent:#2f6fde;
--good-bg:#e3f4e8;--warn-bg:#fdf0dc;--bad-bg:#fde6e6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
.top{display:flex;align-items:center;gap:16px;padding:14px 24px;background:var(--card);
border-bottom:1px solid var(--line)}
.top h1{font-size:18px;margin:0;font-weight:650}
.top h1 span{color:var(--muted);font-weight:400}
#live{margin-left:auto;font-size:12px;color:var(--muted);display:flex;align-items:center;gap:6px}
#live::before{content:"";width:8px;height:8px;border-radius:50%;background:var(--muted)}
#live.on::before{background:var(--good)}
#live.off{color:var(--bad);font-weight:600}#live.off::before{background:var(--bad)}
main{padding:16px 24px 32px;max-width:1500px}
.meta{color:var(--muted);font-size:12px;margin-bottom:12px}.meta a{color:var(--accent)}
.cards{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card h3{margin:0 0 4px;font-size:12px;text-transform:uppercase;letter-spacing:.06em;
color:var(--muted);font-weight:600}
.big{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.big small{font-size:13px;font-weight:400;color:var(--muted)}
.big.ok{color:var(--good)}.big.degraded{color:var(--warn)}.big.down{color:var(--bad)}
.route{background:var(--card);border:1px solid var(--line);border-radius:10px;margin-bottom:16px;
overflow:hidden}
.route header{display:flex;align-items:baseline;flex-wrap:wrap;gap:10px;padding:10px 14px;
border-bottom:1px solid var(--line)}
.route h2{margin:0;font-size:16px}
.patterns code{background:#eef1f6;border-radius:4px;padding:1px 6px;margin-right:4px;font-size:12px}
.basis{margin-left:auto}
table{width:100%;border-collapse:collapse;table-layout:fixed}
th{white-space:nowrap;text-align:left;font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);
font-weight:600;padding:8px 10px;background:#fafbfc;border-bottom:1px solid var(--line)}
td{padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:middle}
tr:last-child td{border-bottom:0}
tr.health-down td{background:#fff8f8}
.r{text-align:right;white-space:nowrap}
.who{display:flex;gap:10px;align-items:flex-start}
.sub{display:block;color:var(--muted);font-size:12px}
.url{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11.5px;word-break:break-all}
.num{font-variant-numeric:tabular-nums;font-weight:600}
.dot{width:10px;height:10px;border-radius:50%;margin-top:5px;flex:none}
.dot.ok{background:var(--good)}.dot.degraded{background:var(--warn)}.dot.down{background:var(--bad)}
.health{font-size:12px;font-weight:600}
.health.ok{color:var(--good)}.health.degraded{color:var(--warn)}.health.down{color:var(--bad)}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;font-weight:650}
.b-closed{background:var(--good-bg);color:var(--good)}
.b-half_open{background:var(--warn-bg);color:var(--warn)}
.b-open{background:var(--bad);color:#fff}
.good{color:var(--good)}.warn{color:var(--warn)}.bad{color:var(--bad)}.muted{color:var(--muted)}
td.lat{white-space:nowrap}
td.lat .num{display:inline-block;min-width:72px;text-align:right;margin-right:8px;vertical-align:middle}
.spark{vertical-align:middle;overflow:visible}
.sp-base{stroke:var(--line);stroke-width:1}
.sp-open{fill:var(--bad-bg)}
.sp-line{fill:none;stroke-width:1.6;stroke-linejoin:round;stroke-linecap:round}
.sp-line.good{stroke:var(--accent)}.sp-line.warn{stroke:var(--warn)}.sp-line.bad{stroke:var(--bad)}
.sp-area{stroke:none;opacity:.13}
.sp-area.good{fill:var(--accent)}.sp-area.warn{fill:var(--warn)}.sp-area.bad{fill:var(--bad)}
.sp-dot.good{fill:var(--accent)}.sp-dot.warn{fill:var(--warn)}.sp-dot.bad{fill:var(--bad)}
.bar{height:8px;background:#eaeef4;border-radius:4px;overflow:hidden;margin:3px 0}
.bar span{display:block;height:100%;background:var(--accent);border-radius:4px}
td.share .bar{display:inline-block;width:calc(100% - 52px);max-width:110px;vertical-align:middle;
margin-right:8px}
.card .bar{margin-top:8px}
.err{color:var(--bad);font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11.5px;
word-break:break-all;display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,minmax(0,1fr))}
td.lasterr,th:last-child{display:none}}
""".strip()

_JS = """
(function () {
  "use strict";
  var every = %d * 1000, live = document.getElementById("live"), refreshes = 0;
  function show(ok, text) {
    live.className = ok ? "on" : "off";
    live.textContent = text;
  }
  function tick() {
    var ctl = new AbortController(), timer = setTimeout(function () { ctl.abort(); }, 4000);
    fetch(location.href, {cache: "no-store", signal: ctl.signal, headers: {Accept: "text/html"}})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("status"), old = document.getElementById("status");
        if (!fresh || !old) { throw new Error("unexpected answer"); }
        old.replaceWith(document.importNode(fresh, true));
        refreshes += 1;
        live.setAttribute("data-refreshes", String(refreshes));
        show(true, "live \\u00b7 updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) {
        show(false, "not updating (" + (e && e.name === "AbortError" ? "timeout" : e.message) +
             ") \\u00b7 showing data from " + new Date(
               document.getElementById("status").getAttribute("data-generated-at")
             ).toLocaleTimeString());
      })
      .finally(function () { clearTimeout(timer); setTimeout(tick, every); });
  }
  show(true, "live \\u00b7 refreshes every " + (every / 1000) + " s");
  setTimeout(tick, every);
})();
""".strip() % REFRESH_SECONDS

SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src '{SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")


def render_status(snapshot: Mapping[str, Any]) -> str:
    """The whole page for one snapshot: self-contained HTML, every string escaped."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>goproxy-router status</title>"
        f'<noscript><meta http-equiv="refresh" content="{FALLBACK_REFRESH_SECONDS}"></noscript>'
        f"<style>{_CSS}</style></head><body>"
        '<div class="top"><h1>goproxy-router <span>status</span></h1>'
        f'<span id="live">auto-refresh every {FALLBACK_REFRESH_SECONDS} s (no JavaScript)</span></div>'
        f"{_main(snapshot)}"
        f"<script>{_JS}</script></body></html>"
    )


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


def _snapshot(request: web.Request) -> dict[str, Any]:
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
