"""The status page: snapshot numbers, escaping, secrets, the endpoints, and the page
as headless Chromium renders it (DOM after JavaScript, and a screenshot).

Everything talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from goproxy_router.config.loader import parse_config
from goproxy_router.config.secrets import redact
from goproxy_router.ops.status.handlers import STATUS_HISTORY, STATUS_SOURCES, setup_status
from goproxy_router.ops.status.history import StatusHistory
from goproxy_router.ops.status.page import CONTENT_SECURITY_POLICY, render_status
from goproxy_router.ops.status.snapshot import LAST_ERROR_MAX, build_snapshot, public_url
from goproxy_router.serving.edge import EdgeState
from goproxy_router.upstream.client import UpstreamClient
from goproxy_router.upstream.stats import StatsRegistry, StatsSettings

REQUIRE_BROWSER_ENV = "GOPROXY_ROUTER_REQUIRE_BROWSER"
CHROMIUM = "/usr/bin/chromium"
SECRET_TOKEN = "s3cret-token"
SECRET_PASSWORD = "hunter2pass"
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'

CONFIG = f"""
upstreams:
  goproxy-cn:   {{url: "https://goproxy.cn", countries: [CN, HK, MO]}}
  proxy-golang: {{url: "https://proxy.golang.org", countries: ["*"]}}
  goproxy-io:   {{url: "https://goproxy.io", countries: ["*"], weight: 0.5}}
  corp:
    url: "https://deploy:{SECRET_PASSWORD}@internal-proxy.corp.example:7001/base"
    countries: ["*"]
    headers: {{X-Auth-Token: "Bearer {SECRET_TOKEN}", X-Api-Key: "k3y-{SECRET_PASSWORD}"}}
routes:
  - name: corp
    match: ["git.corp.example", "github.com/corp/private-*"]
    upstreams: [corp]
    sumdb: false
  - name: public
    match: ["*"]
    upstreams: [goproxy-cn, proxy-golang, goproxy-io]
probes: {{enabled: false}}
"""

CACHE_INFO = {"size_bytes": 734_003_200, "max_size_bytes": 2 * 1024**3, "hits": 900,
              "misses": 100, "stale": 3, "evictions": 12}


def make_state(ejection: float = 30.0) -> EdgeState:
    config = parse_config(CONFIG, "routes.yaml", {})
    settings = StatsSettings(ejection=ejection, max_ejection=max(ejection, 300.0))
    return EdgeState(config, UpstreamClient(), StatsRegistry(settings), {})


def stats_of(state: EdgeState, name: str) -> Any:
    return next(c.stats for cs in state.candidates.values() for c in cs if c.name == name)


@dataclass
class Scenario:
    state: EdgeState
    history: StatusHistory
    end: float          # the monotonic "now" the scenario was built up to


def busy_scenario(end: float | None = None) -> Scenario:
    """Ten minutes of traffic, sampled every 5 s: goproxy-cn fast, proxy-golang slower,
    goproxy-io failing for the last minute (ejected for 10 minutes), corp fast with an
    occasional hostile error that echoes its credentials."""
    end = time.monotonic() if end is None else end
    state = make_state(ejection=600.0)
    history = StatusHistory(interval=5.0, keep=120)
    cn, golang, io = (stats_of(state, n) for n in ("goproxy-cn", "proxy-golang", "goproxy-io"))
    corp = stats_of(state, "corp")
    start = end - 600.0
    for i in range(120):
        t = start + 5.0 * i
        wave = (i % 24) / 24.0
        for k in range(6):
            cn.record_success(0.045 + 0.03 * wave + 0.002 * k, now=t + 0.1 * k)
        for k in range(3):
            golang.record_success(0.13 + 0.05 * (1 - wave), now=t + 0.1 * k)
        if i < 108:
            io.record_success(0.2 + (0.15 if 60 <= i < 70 else 0.0), now=t)
        else:
            io.record_failure(3.0, "GET https://goproxy.io/x/@v/list: 502 Bad Gateway", now=t)
        corp.record_success(0.03, now=t)
        if i == 100:
            corp.record_failure(1.2, f"500 from corp: {HOSTILE} Authorization: Bearer "
                                     f"{SECRET_TOKEN} for deploy:{SECRET_PASSWORD}", now=t)
        history.sample(state, now=t + 4.0)
    history.started = end - 3 * 3600 - 17 * 60
    return Scenario(state, history, end)


# -- StatusHistory ------------------------------------------------------------------

def test_history_records_each_upstream_once_and_stays_bounded() -> None:
    state = make_state()
    history = StatusHistory(interval=5.0, keep=3)
    cn = stats_of(state, "goproxy-cn")
    base = time.monotonic()
    for i in range(5):
        cn.record_success(0.1, now=base + i)
        history.sample(state, now=base + i + 0.5)
    series = history.series("goproxy-cn")
    assert len(series) == 3                           # bounded
    assert [s.requests for s in series] == [3, 4, 5]  # cumulative, newest last
    assert series[-1].ewma_ms == pytest.approx(100.0)
    assert series[-1].breaker == "closed" and series[-1].in_flight == 0
    assert series[-1].t == pytest.approx(time.time() - (time.monotonic() - (base + 4.5)), abs=0.5)
    assert {n: len(history.series(n)) for n in ("corp", "proxy-golang", "goproxy-io")} == {
        "corp": 3, "proxy-golang": 3, "goproxy-io": 3}
    assert history.series("nope") == ()


def test_history_forgets_upstreams_that_left_the_config() -> None:
    history = StatusHistory()
    history.sample(make_state())
    smaller = parse_config(CONFIG.replace("upstreams: [goproxy-cn, proxy-golang, goproxy-io]",
                                          "upstreams: [goproxy-cn]"), "routes.yaml", {})
    history.sample(EdgeState(smaller, UpstreamClient(), StatsRegistry(), {}))
    assert len(history.series("goproxy-cn")) == 2
    assert history.series("corp")          # still configured (route corp)
    assert history.series("goproxy-io") == ()


async def test_sampler_runs_on_its_own_survives_a_bad_tick_and_stops() -> None:
    state = make_state()
    history = StatusHistory(interval=0.02, keep=50)
    calls = []

    def get_state() -> EdgeState:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("config reload in progress")
        return state

    history.start(get_state)
    deadline = time.monotonic() + 5.0
    while len(history.series("corp")) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(history.series("corp")) >= 3
    await asyncio.wait_for(history.stop(), 5.0)
    count = len(history.series("corp"))
    await asyncio.sleep(0.1)
    assert len(history.series("corp")) == count


# -- the snapshot ------------------------------------------------------------------

def test_share_and_error_rate_come_from_the_window() -> None:
    state = make_state()
    history = StatusHistory()
    cn, golang, io = (stats_of(state, n) for n in ("goproxy-cn", "proxy-golang", "goproxy-io"))
    base = time.monotonic()
    # Before the window: 100 requests to goproxy-io, half failed; they must not count.
    for i in range(100):
        if i % 2:
            io.record_failure(0.01, "boom", now=base - 500 + i * 0.01)
        else:
            io.record_success(0.2, now=base - 500 + i * 0.01)
    history.sample(state, now=base)
    for i in range(30):
        cn.record_success(0.05, now=base + 1 + i * 0.01)
    for i in range(9):
        golang.record_success(0.1, now=base + 2 + i * 0.01)
    golang.record_failure(1.0, "timeout", now=base + 3)
    history.sample(state, now=base + 5)
    io.record_success(0.2, now=base + 6)     # after the last sample: counted (live point)

    snap = build_snapshot(state, history, None, now=base + 7)
    public = next(r for r in snap["routes"] if r["name"] == "public")
    assert public["basis"] == "window" and public["requests"] == 41
    assert public["window_s"] == pytest.approx(7.0, abs=0.01)
    rows = {r["name"]: r for r in public["upstreams"]}
    assert [r["name"] for r in public["upstreams"]] == ["goproxy-cn", "proxy-golang", "goproxy-io"]
    assert rows["goproxy-cn"]["request_share"] == pytest.approx(30 / 41)
    assert rows["proxy-golang"]["request_share"] == pytest.approx(10 / 41)
    assert rows["goproxy-io"]["request_share"] == pytest.approx(1 / 41)
    assert rows["goproxy-cn"]["error_rate"] == 0.0
    assert rows["proxy-golang"]["error_rate"] == pytest.approx(0.1)
    assert rows["goproxy-io"]["error_rate"] == 0.0          # the old failures are outside
    assert rows["goproxy-io"]["requests"] == 101 and rows["goproxy-io"]["failures"] == 50
    assert rows["proxy-golang"]["health"] == "degraded"     # 10 % errors
    assert rows["goproxy-cn"]["health"] == "ok"
    assert len(rows["goproxy-cn"]["history"]) == 2
    assert rows["goproxy-cn"]["history"][1]["requests"] == 30
    assert rows["goproxy-cn"]["ewma_ms"] == pytest.approx(50.0)
    corp = next(r for r in snap["routes"] if r["name"] == "corp")
    assert corp["basis"] == "total" and corp["upstreams"][0]["error_rate"] is None
    assert corp["upstreams"][0]["request_share"] == 0.0
    json.dumps(snap)                                        # JSON-ready as it is


def test_share_falls_back_to_totals_without_history_and_survives_counter_resets() -> None:
    state = make_state()
    cn, golang = stats_of(state, "goproxy-cn"), stats_of(state, "proxy-golang")
    for _ in range(3):
        cn.record_success(0.05)
    golang.record_failure(1.0, "refused")
    snap = build_snapshot(state, StatusHistory(), None)
    public = next(r for r in snap["routes"] if r["name"] == "public")
    assert public["basis"] == "total"
    rows = {r["name"]: r for r in public["upstreams"]}
    assert rows["goproxy-cn"]["request_share"] == pytest.approx(0.75)
    assert rows["proxy-golang"]["error_rate"] == 1.0
    assert rows["goproxy-io"]["error_rate"] is None

    # A reload that changes an upstream's URL starts its counters over.
    history = StatusHistory()
    base = time.monotonic()
    history.sample(state, now=base)
    cn.requests = 1                         # was 3: a reset, then one new request
    snap = build_snapshot(state, history, None, now=base + 1)
    rows = {r["name"]: r for r in snap["routes"][1]["upstreams"]}
    assert rows["goproxy-cn"]["window_requests"] == 1


def test_breaker_states_and_ejection_time() -> None:
    state = make_state(ejection=30.0)
    io = stats_of(state, "goproxy-io")
    base = time.monotonic()
    for i in range(5):
        io.record_failure(2.0, "502 Bad Gateway", now=base + i)
    snap = build_snapshot(state, StatusHistory(), None, now=base + 10)
    row = {r["name"]: r for r in snap["routes"][1]["upstreams"]}["goproxy-io"]
    assert row["breaker"] == "open" and row["health"] == "down"
    assert 30 * 0.9 - 6 <= row["ejected_for_s"] <= 30 * 1.1 - 6    # ejected at base+4, +-10 % jitter
    assert row["times_ejected"] == 1
    assert row["ewma_ms"] == pytest.approx(2000.0)
    assert row["last_error"] == {"message": "502 Bad Gateway", "age_s": 6.0}

    later = build_snapshot(state, StatusHistory(), None, now=base + 100)
    row = {r["name"]: r for r in later["routes"][1]["upstreams"]}["goproxy-io"]
    assert row["breaker"] == "half_open" and row["ejected_for_s"] == 0.0
    assert row["health"] == "degraded"
    io.record_success(0.1, now=base + 101)
    again = build_snapshot(state, StatusHistory(), None, now=base + 102)
    row = {r["name"]: r for r in again["routes"][1]["upstreams"]}["goproxy-io"]
    assert row["breaker"] == "closed"


def test_cache_budget_and_header_fields() -> None:
    state = make_state()
    state.forwarder.budget.spent, state.forwarder.budget.refused = 7, 2
    history = StatusHistory()
    history.started = time.monotonic() - 65
    snap = build_snapshot(state, history, dict(CACHE_INFO, directory="/var/cache/x"))
    assert snap["cache"] == dict(CACHE_INFO, hit_ratio=0.9)      # only the known keys
    assert snap["budget"] == {"spent": 7, "refused": 2}
    assert snap["uptime_s"] == pytest.approx(65, abs=1)
    assert snap["version"]
    assert snap["generated_at"].endswith("+00:00")
    assert build_snapshot(state, history, None)["cache"] is None
    empty = build_snapshot(state, history, dict(CACHE_INFO, hits=0, misses=0))
    assert empty["cache"]["hit_ratio"] is None
    html = render_status(snap)
    assert "90%" in html and "700.0 MiB of 2.0 GiB" in html
    assert "no cache yet" in render_status(build_snapshot(state, history, None))


# -- escaping and secrets ---------------------------------------------------------------

def test_hostile_strings_render_inert() -> None:
    scenario = busy_scenario()
    snap = build_snapshot(scenario.state, scenario.history, CACHE_INFO, now=scenario.end)
    corp_row = snap["routes"][0]["upstreams"][0]
    assert "<script>alert(1)</script>" in corp_row["last_error"]["message"]   # kept, as text
    # Every string the page shows, made hostile (names cannot be in routes.yaml, but
    # the renderer must not rely on that).
    for route in snap["routes"]:
        route["name"] = route["name"] + HOSTILE
        route["patterns"] = [p + HOSTILE for p in route["patterns"]]
        for row in route["upstreams"]:
            row["name"] += HOSTILE
            row["url"] += HOSTILE
            row["countries"] = [HOSTILE]
            row["health"] = HOSTILE
            row["breaker"] = HOSTILE
    snap["version"] += HOSTILE
    html = render_status(snap)
    assert html.count("<script") == 1                    # the page's own script only
    assert "<img" not in html and "onerror=\"alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def _marker(field: str) -> str:
    return f'<i data-f="{field}">\'"'


def test_every_value_the_page_substitutes_is_escaped() -> None:
    """Each string, and each number the renderer shows as it is, replaced by its own
    markup: every one appears escaped in the page, and none as a tag. Numbers the
    renderer formats (latency, ratios, sizes, ages) cannot carry markup."""
    scenario = busy_scenario()
    snap: Any = build_snapshot(scenario.state, scenario.history, CACHE_INFO, now=scenario.end)
    fields = {"generated_at", "version", "budget.spent", "budget.refused", "cache.hits",
              "cache.misses", "cache.stale", "cache.evictions"}
    snap["generated_at"] = _marker("generated_at")
    snap["version"] = _marker("version")
    for key in ("spent", "refused"):
        snap["budget"][key] = _marker(f"budget.{key}")
    for key in ("hits", "misses", "stale", "evictions"):
        snap["cache"][key] = _marker(f"cache.{key}")
    for i, route in enumerate(snap["routes"]):
        route["name"] = _marker(f"route{i}.name")
        route["patterns"] = [_marker(f"route{i}.pattern")]
        fields |= {f"route{i}.name", f"route{i}.pattern"}
        for j, row in enumerate(route["upstreams"]):
            for key in ("name", "url", "health", "breaker", "priority", "times_ejected", "requests",
                        "in_flight", "failures"):
                row[key] = _marker(f"row{i}.{j}.{key}")
                fields.add(f"row{i}.{j}.{key}")
            row["countries"] = [_marker(f"row{i}.{j}.country")]
            row["ejected_for_s"] = 0.0       # so that times_ejected is shown
            row["last_error"] = {"message": _marker(f"row{i}.{j}.error"), "age_s": 3.0}
            fields |= {f"row{i}.{j}.country", f"row{i}.{j}.error"}
    html = render_status(snap)
    assert "<i " not in html
    for field in sorted(fields):
        assert f"&lt;i data-f=&quot;{field}&quot;&gt;&#x27;&quot;" in html, field


def test_the_csp_allows_exactly_the_script_the_page_carries() -> None:
    """The script comes from a package file; its hash in the CSP is computed from it."""
    scenario = busy_scenario()
    html = render_status(build_snapshot(scenario.state, scenario.history, None, now=scenario.end))
    script = html[html.index("<script>") + len("<script>"):html.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in CONTENT_SECURITY_POLICY
    assert "refresh" in script and "$" not in script      # the period was filled in


def test_redact_removes_credentials_and_keeps_the_message() -> None:
    secrets = ("s3cret-token", "hunter2pass")
    text = ("upstream said: Authorization: Bearer abc123def456ghi and "
            "https://bob:pw9secret@host/x?access_token=tok123456789 token=xyz, password: \"p4ss\"\n"
            "s3cret-token hunter2pass basic auth required; retry later")
    out = redact(text, secrets, limit=1000)
    for leaked in ("abc123def456ghi", "pw9secret", "bob:", "tok123456789", "xyz", "p4ss",
                   "s3cret-token", "hunter2pass", "\n"):
        assert leaked not in out, leaked
    assert out.startswith("upstream said: Authorization: [redacted]")
    assert "basic auth required; retry later" in out
    long = redact("x" * 500 + " Bearer " + "s3cret-token", secrets, limit=LAST_ERROR_MAX)
    assert len(long) <= 160 and "s3cret" not in long
    # A secret cut in half by the length limit must not survive partly either.
    assert "s3cret" not in redact("y" * 150 + "s3cret-token", ("s3cret-token",), limit=158)
    assert public_url("https://deploy:hunter2pass@h.example:7001/base") == "https://h.example:7001/base"


async def serve(state: EdgeState, history: StatusHistory,
                cache: dict[str, Any] | None = CACHE_INFO) -> TestServer:
    """The status endpoints on a fresh app on 127.0.0.1 (its sampler adds a sample now)."""
    app = web.Application()
    setup_status(app, lambda: state, lambda: cache, history=history)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def status_server() -> AsyncIterator[tuple[TestServer, Scenario]]:
    scenario = busy_scenario()
    server = await serve(scenario.state, scenario.history)
    yield server, scenario
    await server.close()


async def test_no_secret_reaches_the_page_or_the_json(
        status_server: tuple[TestServer, Scenario]) -> None:
    server, _ = status_server
    async with TestClient(server) as client:
        page = await asyncio.wait_for(client.get("/_router/status"), 10)
        html = await page.text()
        data = await asyncio.wait_for(client.get("/_router/status.json"), 10)
        raw = await data.text()
    for body in (html, raw):
        assert SECRET_TOKEN not in body
        assert SECRET_PASSWORD not in body
        assert "deploy:" not in body and "deploy@" not in body
        assert "internal-proxy.corp.example:7001/base" in body
    corp = json.loads(raw)["routes"][0]["upstreams"][0]
    assert corp["url"] == "https://internal-proxy.corp.example:7001/base"
    assert "[redacted]" in corp["last_error"]["message"]


async def test_endpoints_answer_html_and_json(status_server: tuple[TestServer, Scenario]) -> None:
    server, scenario = status_server
    async with TestClient(server) as client:
        page = await asyncio.wait_for(client.get("/_router/status"), 10)
        assert page.status == 200 and page.content_type == "text/html"
        assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["Cache-Control"] == "no-store"
        html = await page.text()
        data = await asyncio.wait_for(client.get("/_router/status.json"), 10)
        assert data.status == 200 and data.content_type == "application/json"
        snap = await data.json()
        head = await asyncio.wait_for(client.head("/_router/status"), 10)
        assert head.status == 200
    # Without JavaScript (dump-dom itself needs it, so no browser test for that) the page
    # is the served HTML: it shows everything already, and a meta refresh reloads it.
    static = html[:html.index("<script>")] + html[html.index("</script>"):]
    for text in ('data-route="public"', "goproxy-cn", 'data-breaker="open"', "3000 ms", "90%",
                 "auto-refresh every 10 s (no JavaScript)", "<svg"):
        assert text in static, text
    # Self-contained: no external asset of any kind.
    for ref in ('src="http', "src='http", 'href="http', "@import", "url(http", "<link"):
        assert ref not in html
    assert '<meta http-equiv="refresh" content="10">' in html      # the no-JS fallback
    assert "<noscript>" in html
    assert [r["name"] for r in snap["routes"]] == ["corp", "public"]
    assert snap["routes"][1]["patterns"] == ["*"]
    rows = {r["name"]: r for r in snap["routes"][1]["upstreams"]}
    assert rows["goproxy-io"]["breaker"] == "open"
    assert rows["goproxy-cn"]["breaker"] == "closed"
    assert len(rows["goproxy-cn"]["history"]) == 120
    assert sum(r["request_share"] for r in rows.values()) == pytest.approx(1.0)
    assert scenario.history is server.app[STATUS_HISTORY]
    assert server.app[STATUS_SOURCES].get_cache_info() == CACHE_INFO


async def test_setup_status_samples_while_the_app_runs() -> None:
    state = make_state()
    app = web.Application()
    history = setup_status(app, lambda: state, lambda: None, history=StatusHistory(interval=0.02))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        deadline = time.monotonic() + 5.0
        while len(history.series("goproxy-cn")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(history.series("goproxy-cn")) >= 2
    finally:
        await asyncio.wait_for(server.close(), 10)
    count = len(history.series("goproxy-cn"))
    await asyncio.sleep(0.1)
    assert len(history.series("goproxy-cn")) == count       # stopped with the app


# -- in a real browser --------------------------------------------------------------

def require_browser() -> str:
    """Chromium's path; skip (with the reason shown by -ra) when it is missing,
    unless CI demands it."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get(REQUIRE_BROWSER_ENV):
        pytest.fail(f"{CHROMIUM} is missing but {REQUIRE_BROWSER_ENV} is set "
                    "(Debian: apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium; .ci/run installs "
                "it); headless browser tests skipped")


def test_missing_browser_skips_but_fails_when_ci_requires_it(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    import tests.test_status_page as me

    monkeypatch.setattr(me, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv(REQUIRE_BROWSER_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        me.require_browser()
    monkeypatch.setenv(REQUIRE_BROWSER_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_BROWSER_ENV):
        me.require_browser()


async def run_chromium(chromium: str, profile: Path, *args: str,
                       timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in a thread (the test server keeps serving on this loop),
    killed after `timeout` seconds."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
           "--no-default-browser-check", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={profile}", *args]
    env = dict(os.environ, HOME=str(profile))
    result = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                     timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-3000:]}"
    return result


def read_png(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixel colours of a PNG (8-bit RGB/RGBA, not
    interlaced), decoded here so no imaging library is needed."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    colours: set[bytes] = set()
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert kind == 0, f"bad filter {kind}"
        if y % 4 == 0:      # every 4th row is plenty to tell a page from a blank
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = line
    return width, height, colours


async def test_chromium_renders_the_page_and_its_refresh(
        status_server: tuple[TestServer, Scenario], tmp_path: Path) -> None:
    chromium = require_browser()
    server, _ = status_server
    url = str(server.make_url("/_router/status"))
    # Virtual time runs the page's 5 s refresh timer at once; the DOM is dumped after it.
    result = await run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=7000",
                                "--dump-dom", url)
    dom = result.stdout
    assert 'id="status"' in dom
    # The script ran, fetched the page again and swapped the fresh tables in.
    assert 'data-refreshes="1"' in dom or 'data-refreshes="2"' in dom, dom[:2000]
    assert 'class="on"' in dom and "live · updated" in dom
    for text in ('data-route="corp"', 'data-route="public"', "goproxy-cn", "proxy-golang",
                 "goproxy-io", 'data-breaker="open"', 'data-breaker="closed"',
                 'data-hit-ratio="0.9000"', "90%", "<svg", "hit ratio"):
        assert text in dom, text
    public = dom[dom.index('data-route="public"'):]
    io_row = public[public.index('data-upstream="goproxy-io"'):]
    assert 'data-breaker="open"' in io_row[:3000] and "3000 ms" in io_row[:3000]
    cn_row = public[public.index('data-upstream="goproxy-cn"'):]
    assert "ms</span>" in cn_row[:3000] and 'data-breaker="closed"' in cn_row[:3000]
    assert SECRET_TOKEN not in dom and SECRET_PASSWORD not in dom
    assert "<script>alert(1)" not in dom and "&lt;script&gt;alert(1)" in dom


async def test_chromium_screenshot_is_a_real_picture(
        status_server: tuple[TestServer, Scenario], tmp_path: Path) -> None:
    chromium = require_browser()
    server, _ = status_server
    shot = tmp_path / "status.png"
    await run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                       "--window-size=1280,900", str(server.make_url("/_router/status")))
    assert shot.is_file() and shot.stat().st_size > 10_000
    started = time.monotonic()
    width, height, colours = read_png(shot)
    assert (width, height) == (1280, 900)
    assert len(colours) > 50, f"a nearly blank screenshot: {len(colours)} colours"
    # The red of an open breaker and the green of a closed one are both on screen.
    assert any(c[0] > 150 and c[1] < 90 and c[2] < 90 for c in colours), "no red"
    assert any(c[1] > 100 and c[0] < 60 and c[2] < 90 for c in colours), "no green"
    assert time.monotonic() - started < 60
    keep = os.environ.get("GOPROXY_ROUTER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "status.png")


async def test_status_paths_win_over_a_catch_all_registered_first() -> None:
    """The app registers its GOPROXY catch-all before calling setup_status()."""
    async def catch_all(request: web.Request) -> web.Response:
        return web.Response(text="catch-all")

    state = make_state()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", catch_all)
    setup_status(app, lambda: state, lambda: None)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        page = await asyncio.wait_for(client.get("/_router/status"), 10)
        assert page.content_type == "text/html" and "goproxy-router" in await page.text()
        data = await asyncio.wait_for(client.get("/_router/status.json"), 10)
        assert (await data.json())["cache"] is None
        other = await asyncio.wait_for(client.get("/_router/status.xml"), 10)
        assert await other.text() == "catch-all"
