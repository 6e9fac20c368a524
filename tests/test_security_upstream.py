"""Hostile upstreams: an upstream may not turn the edge
against its own network with a redirect, nor blow up its memory with a
compressed body, and the edge's own queueing for connections is never
charged to an upstream.

Fake upstreams on 127.0.0.1 misbehave through tests/support/fakeproxy.py
faults (``redirect``, ``gzip_bomb``, ``delay``); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from goproxy_router.config.schema import Timeouts
from goproxy_router.upstream.client import UpstreamClient
from goproxy_router.upstream.targets import UpstreamTarget
from tests.conftest import RouterProcess
from tests.support import Faults, Module, ModuleTree, ThreadedFakeProxy
from tests.support.http import MakeEdge, MakeFake, upstream_app
from tests.test_operations import parse_metrics, value

MOD = Module("example.com/lib", "v1.2.3")
TREE = ModuleTree([MOD])
MOD_PATH = "/example.com/lib/@v/v1.2.3.mod"


def two_upstreams(first: dict[str, Any], second_url: str) -> dict[str, Any]:
    """`first` (hostile) tried before `second` (good): config order, no scoring."""
    return {
        "upstreams": {"first": first, "second": {"url": second_url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["first", "second"]}],
        "scoring": {"plugins": []},
    }


# -- item 1: redirects -------------------------------------------------------------

@pytest.mark.parametrize("admin_path", ["/_router/status.json", "/metrics"])
async def test_redirect_to_the_edges_admin_pages_is_refused_and_fails_over(
        edge: MakeEdge, fake_proxy: MakeFake, admin_path: str) -> None:
    """A public upstream answers `302 Location: http://127.0.0.1:<edge port>/_router/...`:
    the edge trusts loopback for its admin pages, so following it would hand them out
    (and cache them as a .mod). Same host, another port: another origin, refused."""
    hostile = await fake_proxy(TREE, name="hostile")
    good = await fake_proxy(TREE, name="good")
    client = await edge(two_upstreams({"url": hostile.url}, good.url))
    hostile.set_faults(redirect=f"http://127.0.0.1:{client.port}{admin_path}")
    resp = await client.get(MOD_PATH)
    assert resp.status == 200
    assert await resp.read() == MOD.mod
    assert resp.headers["X-Goproxy-Upstream"] == "second"
    assert len(hostile.requests) == 1 and len(good.requests) == 1
    # What the edge cached and serves again is the good upstream's go.mod.
    again = await client.get(MOD_PATH)
    assert again.status == 200 and await again.read() == MOD.mod
    assert len(good.requests) == 1


async def test_refused_redirect_is_a_failed_attempt_and_nothing_is_cached(
        edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture) -> None:
    hostile = await fake_proxy(TREE, name="hostile")
    client = await edge({"upstreams": {"only": {"url": hostile.url}},
                         "routes": [{"name": "r", "match": ["*"], "upstreams": ["only"]}],
                         "retry": {"max_attempts": 1}})
    hostile.set_faults(redirect=f"http://127.0.0.1:{client.port}/_router/status.json")
    for _ in range(2):
        resp = await client.get(MOD_PATH)
        text = await resp.text()
        assert resp.status == 502, text
        assert "refused: redirect to another origin" in text and "status.json" not in text
    assert len(hostile.requests) == 2                # nothing was cached in between
    assert any("redirect to another origin" in r.getMessage() + str(r.__dict__)
               for r in caplog.records if r.name == "router.forward")


async def test_redirect_to_a_name_for_loopback_is_refused(edge: MakeEdge,
                                                         fake_proxy: MakeFake) -> None:
    """The upstream is configured as 127.0.0.1; `localhost` is another origin (whatever
    it resolves to) unless listed."""
    hostile = await fake_proxy(TREE, name="hostile")
    elsewhere = await fake_proxy(TREE, name="elsewhere")
    good = await fake_proxy(TREE, name="good")
    hostile.set_faults(redirect=f"http://localhost:{elsewhere.port}{{path}}")
    client = await edge(two_upstreams({"url": hostile.url}, good.url))
    resp = await client.get(MOD_PATH)
    assert resp.status == 200 and resp.headers["X-Goproxy-Upstream"] == "second"
    assert elsewhere.requests == []


async def test_listed_redirect_origin_is_followed_without_credentials(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """An origin in the upstream's `redirects` is followed (by name, to the addresses
    checked for it), and the upstream's own headers do not go along."""
    hostile = await fake_proxy(TREE, name="upstream")
    cdn = await fake_proxy(TREE, name="cdn")
    hostile.set_faults(redirect=f"http://localhost:{cdn.port}{{path}}")
    client = await edge(two_upstreams(
        {"url": hostile.url, "headers": {"Authorization": "Bearer up-secret"},
         "redirects": [f"http://localhost:{cdn.port}"]}, cdn.url))
    resp = await client.get(MOD_PATH)
    assert resp.status == 200 and await resp.read() == MOD.mod
    assert resp.headers["X-Goproxy-Upstream"] == "first"
    [seen] = cdn.requests
    assert seen.header("Authorization") is None
    assert seen.header("Host") == f"localhost:{cdn.port}"
    assert hostile.requests[0].header("Authorization") == "Bearer up-secret"


async def test_redirect_loops_are_cut_after_a_few_hops(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    looping = await fake_proxy(TREE, name="looping", faults=Faults(redirect="{path}"))
    good = await fake_proxy(TREE, name="good")
    client = await edge(two_upstreams({"url": looping.url}, good.url))
    resp = await client.get(MOD_PATH)
    assert resp.status == 200 and resp.headers["X-Goproxy-Upstream"] == "second"
    assert len(looping.requests) == 4                # the request and 3 redirects


async def test_a_pinned_redirect_connects_to_the_checked_address(fake_proxy: MakeFake) -> None:
    """`cdn.test` is known only to the injected resolver: the request can only have got
    through by connecting to the address the check saw, with the name as Host."""
    upstream = await fake_proxy(TREE, name="upstream")
    cdn = await fake_proxy(TREE, name="cdn")
    upstream.set_faults(redirect=f"http://cdn.test:{cdn.port}{{path}}")

    async def resolve(host: str, port: int) -> list[str]:
        return {"cdn.test": ["127.0.0.1"]}[host]

    client = UpstreamClient(resolver=resolve)
    await client.start()
    try:
        target = UpstreamTarget.for_url("u", upstream.url, redirects=(f"http://cdn.test:{cdn.port}",))
        response = await client.open(target, MOD_PATH, "GET", Timeouts(headers=5))
        assert response.status == 200
        assert await response.read_all(1 << 20) == MOD.mod
        response.release()
    finally:
        await client.close()
    assert cdn.requests[0].header("Host") == f"cdn.test:{cdn.port}"


def fixed_resolver(table: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]
    return resolve


DNS = fixed_resolver({
    "proxy.example": ["93.184.216.34"], "cdn.example": ["93.184.216.35", "2606:2800::1"],
    "rebind.example": ["93.184.216.36", "127.0.0.1"], "inside.example": ["10.1.2.3"],
    "corp.example": ["10.0.0.5"], "cgnat.example": ["100.64.3.4"],
})


@pytest.mark.parametrize("base, allowed, location, refused", [
    # same origin: followed, by name
    ("https://proxy.example/p", (), "/elsewhere", None),
    # https -> http: never, not even to the same host
    ("https://proxy.example/p", (), "http://proxy.example/p", "https to http"),
    # another origin: only if listed, and only to public addresses for a public upstream
    ("https://proxy.example/p", (), "https://cdn.example/x", "not in the upstream's redirects"),
    ("https://proxy.example/p", ("https://cdn.example",), "https://cdn.example/x?sig=1", None),
    ("https://proxy.example/p", ("https://rebind.example",), "https://rebind.example/x",
     "127.0.0.1, a loopback address"),
    ("https://proxy.example/p", ("https://inside.example",), "https://inside.example/x",
     "a private address"),
    ("https://proxy.example/p", ("https://cgnat.example",), "https://cgnat.example/",
     "CGNAT"),
    ("http://proxy.example/p", ("http://2130706433",), "http://2130706433/", "loopback"),
    ("http://proxy.example/p", ("http://0x7f.1",), "http://0x7f.1/", "loopback"),
    ("http://proxy.example/p", ("http://[::ffff:127.0.0.1]",), "http://[::ffff:127.0.0.1]/",
     "loopback"),
    ("http://proxy.example/p", ("http://169.254.169.254",), "http://169.254.169.254/latest",
     "link-local"),
    ("http://proxy.example/p", ("http://0.0.0.0:8080",), "http://0.0.0.0:8080/", "unspecified"),
    ("http://proxy.example/p", ("http://nowhere.example",), "http://nowhere.example/",
     "cannot resolve"),
    # a registry inside the network may send the edge to its storage there, not to loopback
    ("https://corp.example/p", ("https://inside.example",), "https://inside.example/x", None),
    ("https://corp.example/p", ("https://rebind.example",), "https://rebind.example/x",
     "loopback"),
    ("https://proxy.example/p", (), "ftp://proxy.example/p", r"not an http\(s\) URL"),
])
async def test_redirect_policy(base: str, allowed: tuple[str, ...], location: str,
                               refused: str | None) -> None:
    from goproxy_router.upstream.redirects import RedirectPolicy, RedirectRefused

    policy = RedirectPolicy(URL(base), allowed, DNS)
    if refused is None:
        hop = await policy.next_hop(URL(base), location)
        assert hop.url == URL(base).join(URL(location))
        assert hop.same_origin == (hop.addresses == ())
        return
    with pytest.raises(RedirectRefused, match=refused) as caught:
        await policy.next_hop(URL(base), location)
    assert "sig=" not in str(caught.value)


def test_address_classes() -> None:
    import ipaddress

    from goproxy_router.upstream.redirects import address_class

    cases = {"127.0.0.2": "loopback", "::1": "loopback", "10.9.9.9": "private",
             "172.31.0.1": "private", "192.168.1.1": "private", "fd00::1": "private",
             "100.127.0.1": "shared (CGNAT)", "169.254.169.254": "link-local",
             "fe80::1": "link-local", "224.0.0.1": "multicast", "0.0.0.0": "unspecified",
             "::ffff:10.0.0.1": "private", "8.8.8.8": None, "2606:4700::1111": None}
    for address, kind in cases.items():
        assert address_class(ipaddress.ip_address(address)) == kind, address


# -- item 2: compressed bodies -----------------------------------------------------

def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_gzip_bomb_is_not_inflated_into_memory_nor_cached(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], tmp_path: Path) -> None:
    """1 MiB of gzip inflating to 1 GiB, as a .mod: the edge stops decoding at the
    .mod limit (16 MiB), keeps serving others meanwhile, caches nothing of it and
    fails over to the good upstream."""
    bomb = threaded_fake_proxy(TREE, name="bomb", faults=Faults(gzip_bomb=1 << 30, paths=r"\.mod$"))
    good = threaded_fake_proxy(TREE, name="good")
    router = router_process(dict(two_upstreams({"url": bomb.url}, good.url),
                                 probes={"enabled": False}))
    with urllib.request.urlopen(router.url + "/example.com/lib/@v/v1.2.3.info", timeout=10) as r:
        assert r.status == 200                          # warmed up: imports, pools, cache
    before = _vm_hwm_kib(router.proc.pid)
    stalls: list[float] = []
    done = threading.Event()

    def ping() -> None:                                 # the loop must keep answering
        while not done.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(router.url + "/healthz", timeout=10) as r:
                r.read()
            stalls.append(time.monotonic() - started)
            time.sleep(0.02)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        with urllib.request.urlopen(router.url + MOD_PATH, timeout=30) as r:
            assert r.status == 200
            assert r.headers["X-Goproxy-Upstream"] == "second"
            assert r.read() == MOD.mod
    finally:
        done.set()
        pinger.join(15)
    growth_mib = (_vm_hwm_kib(router.proc.pid) - before) / 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert stalls and max(stalls) < 1.0, f"/healthz took up to {max(stalls):.2f}s"
    assert "decodes to more than the 16777216-byte limit" in router.stderr()
    cached = [p for p in (router.config_path.parent / "cache").rglob("*.mod")]
    assert [p.read_bytes() for p in cached] == [MOD.mod]


async def test_an_unsupported_content_encoding_fails_over(edge: MakeEdge,
                                                          fake_proxy: MakeFake) -> None:
    async def brotli(request: web.Request) -> web.Response:
        return web.Response(body=b"\x1b\x03\x00\xf8\xa5", headers={"Content-Encoding": "br"})

    server = await upstream_app(brotli)
    good = await fake_proxy(TREE, name="good")
    try:
        client = await edge(two_upstreams({"url": str(server.make_url("")).rstrip("/")},
                                          good.url))
        for path, body in [(MOD_PATH, MOD.mod), ("/example.com/lib/@v/v1.2.3.zip", MOD.zip)]:
            resp = await client.get(path)
            assert resp.status == 200 and await resp.read() == body
            assert resp.headers["X-Goproxy-Upstream"] == "second"
    finally:
        await server.close()


async def test_a_compressed_zip_past_the_limit_is_cut_off_and_not_cached(
        edge: MakeEdge, fake_proxy: MakeFake, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A zip streams, so it is held to the decoder's own limit (the go command's 500 MB,
    made 4 MiB here): past it the transfer is cut off, as for any zip that breaks
    mid-body (the client never sees a complete-looking body) and nothing is cached."""
    monkeypatch.setattr("goproxy_router.upstream.client.MAX_DECODED", 4 << 20)
    bomb = await fake_proxy(TREE, name="bomb", faults=Faults(gzip_bomb=64 << 20, paths=r"\.zip$"))
    client = await edge({"upstreams": {"bomb": {"url": bomb.url}},
                         "routes": [{"name": "r", "match": ["*"], "upstreams": ["bomb"]}]})
    resp = await client.get("/example.com/lib/@v/v1.2.3.zip")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert list((tmp_path / "cache0").rglob("*.zip")) == []


# -- item 8: the edge's own pool ---------------------------------------------------

async def test_waiting_for_a_pooled_connection_is_not_the_upstreams_fault(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """60 concurrent requests, 5 connections, an upstream taking 0.5 s for each: the
    last wait ~5.5 s for a connection, far past the 1 s headers timeout. None of that
    is the upstream's: no timeout, no ejection, and the wait shows as its own metric."""
    modules = [Module("example.com/many", f"v1.0.{i}") for i in range(60)]
    slow = await fake_proxy(ModuleTree(modules), name="slow", faults=Faults(delay=0.5))
    client = await edge({
        "upstreams": {"slow": {"url": slow.url}},
        "routes": [{"name": "r", "match": ["*"], "upstreams": ["slow"]}],
        "timeouts": {"connect": 2, "headers": 1.0, "read": 2, "deadline": 30},
        "hedge": {"enabled": False},
        "pool": {"per_upstream": 5},
    })

    async def fetch(m: Module) -> int:
        async with client.get(f"/example.com/many/@v/{m.version}.info") as resp:
            await resp.read()
            return resp.status

    started = time.monotonic()
    statuses = await asyncio.wait_for(asyncio.gather(*(fetch(m) for m in modules)), 40)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 60
    assert len(slow.requests) == 60                   # not one retried after a "timeout"
    assert elapsed >= 5.5                             # 12 rounds of 0.5 s: they did queue
    resp = await client.get("/metrics")
    samples = parse_metrics(await resp.text())
    assert value(samples, "goproxy_upstream_breaker_state", upstream="slow") == 0
    assert value(samples, "goproxy_upstream_attempts_total", upstream="slow",
                 outcome="timeout") is None
    assert value(samples, "goproxy_upstream_pool_wait_seconds_count", upstream="slow") >= 55
    assert value(samples, "goproxy_upstream_pool_wait_seconds_sum", upstream="slow") > 30
    assert value(samples, "goproxy_upstream_pool_queued", upstream="slow") == 0
    # The latency estimate is the upstream's 0.5 s, not the queue's seconds.
    assert value(samples, "goproxy_upstream_latency_ewma_seconds", upstream="slow") < 0.9


async def test_pool_timing_excludes_the_wait_from_the_headers_timeout(
        fake_proxy: MakeFake) -> None:
    """At the client level: one connection, two requests to a 0.4 s upstream with a
    0.6 s headers timeout; the second waits ~0.4 s for the connection, then gets its
    own 0.6 s."""
    from goproxy_router.upstream.pool import PoolTiming

    slow = await fake_proxy(TREE, name="slow", faults=Faults(delay=0.4))
    client = UpstreamClient(limit_per_host=1)
    await client.start()
    try:
        target = UpstreamTarget.for_url("slow", slow.url)
        timings = [PoolTiming(), PoolTiming()]

        async def one(timing: Any) -> int:
            response = await client.open(target, MOD_PATH, "GET", Timeouts(headers=0.6), timing)
            await response.read_all(1 << 20)
            response.release()
            return response.status

        assert await asyncio.gather(*(one(t) for t in timings)) == [200, 200]
    finally:
        await client.close()
    waits = sorted(t.queued for t in timings)
    assert waits[0] == 0.0 and 0.3 < waits[1] < 1.0, waits
