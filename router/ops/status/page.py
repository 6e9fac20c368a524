"""The status page's HTML: a snapshot rendered through the templates in templates/.

The templates (package data: `page.html`, `fragments.html`, `style.css`,
`app.js`) are read once at import. Every value goes through `_render`, the one
place where escaping happens: anything not a fragment rendered there is
`html.escape`d, so a hostile upstream's text renders as text. The script is
fixed at import, so CONTENT_SECURITY_POLICY allows exactly it, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable
from importlib import resources
from string import Template

from goproxy_router.ops.status.snapshot import REFRESH_SECONDS, CacheView, RouteView, Snapshot, UpstreamView

FALLBACK_REFRESH_SECONDS = 10   # the <noscript> meta refresh


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


_FILES = resources.files("goproxy_router.ops.status") / "templates"
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
