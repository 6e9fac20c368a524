"""Hostile clients: a forged client address, private answers
kept by a shared cache, bytes that are not text in Authorization, a malformed request
line, and token guessing.

Every client here is a socket or an aiohttp client on 127.0.0.1; the edge runs in
process with fake upstreams (tests/conftest.py `edge`, `fake_proxy`). Other client
addresses are played through X-Forwarded-For from a trusted loopback peer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from goproxy_router.routing.geo import IPAddress, client_address
from goproxy_router.routing.routes import AccessDenied, make_private
from goproxy_router.routing.throttle import AuthThrottle
from goproxy_router.serving.responses import IMMUTABLE
from goproxy_router.serving.thin import HitTable
from goproxy_router.storage.entry import CacheEntry
from tests.support import FakeProxy, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake
from tests.test_operations import Got, cfg, edge_of, get, info_path, parse_metrics, public, value

PRIVATE = Module("corp.example/tool", "v1.0.0",
                 files={"blob.bin": os.urandom(100_000)})    # incompressible: a zip past 64 KiB
PRIVATE_SMALL = Module("corp.example/tool", "v1.1.0")
PRIVATE_HEAD = Module("corp.example/tool", "v1.2.0", files={"blob.bin": os.urandom(100_000)})
OPEN = Module("example.com/lib", "v1.0.0", files={"blob.bin": os.urandom(100_000)})
TREE = ModuleTree([PRIVATE, PRIVATE_SMALL, PRIVATE_HEAD, OPEN])
TOKEN = "tok-" + secrets.token_hex(16)
ENV = {"CORP_TOKENS": TOKEN, "ADMIN_TOKEN": "adm-" + secrets.token_hex(16)}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PATIENCE = 10.0

IP = ipaddress.ip_address
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def corp(**allow: object) -> dict[str, object]:
    return {"name": "corp", "match": ["corp.example"], "upstreams": ["a"], "sumdb": False,
            "allow": allow or {"cidrs": ["10.0.0.0/8"], "tokens_env": "CORP_TOKENS"}}


def zip_path(m: Module) -> str:
    return f"/{m.path}/@v/{m.version}.zip"


async def raw(client: TestClient, head: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    """Send `head` byte for byte (it ends the request: Connection: close) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head)
        data = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def request_head(path: str, *headers: tuple[str, bytes]) -> bytes:
    extra = b"".join(name.encode() + b": " + val + b"\r\n" for name, val in headers)
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n".encode()
            + extra + b"\r\n")


# -- item 4: the client address ----------------------------------------------------------------

@pytest.mark.parametrize("peer, lines, expected", [
    ("203.0.113.5", [], "203.0.113.5"),
    ("203.0.113.5", ["10.1.2.3"], "203.0.113.5"),                   # untrusted peer: ignored
    ("10.0.0.2", ["1.2.3.4"], "1.2.3.4"),
    ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], "1.2.3.4"),       # rightmost untrusted hop
    # HAProxy `option forwardfor` adds a line of its own: the client wrote the first one.
    ("10.0.0.2", ["10.1.2.3", "203.0.113.7"], "203.0.113.7"),
    ("10.0.0.2", ["10.1.2.3, 10.4.4.4", "203.0.113.7, 10.0.0.9"], "203.0.113.7"),
    ("10.0.0.2", ["6.6.6.6", "10.0.0.9"], "6.6.6.6"),               # walk on through a trusted line
    ("10.0.0.2", ["10.0.0.7", "10.0.0.9"], "10.0.0.7"),             # all trusted: the furthest
    ("10.0.0.2", ["1.2.3.4,,", " , 10.0.0.9", ""], "1.2.3.4"),      # empty entries skipped
    # A trusted proxy that cannot say who its client was: unknown, never the proxy itself.
    ("10.0.0.2", ["garbage, 10.0.0.9"], None),
    ("10.0.0.2", ["unknown"], None),
    ("10.0.0.2", ["_hidden", "10.0.0.9"], None),
    ("10.0.0.2", ["1.2.3.4:http"], None),                           # a port is digits
    ("10.0.0.2", ["[2001:db8::2"], None),                           # unclosed bracket
    ("10.0.0.2", ["10.1.2.3, garbage, 203.0.113.7"], "203.0.113.7"),  # garbage left of it: moot
    ("10.0.0.2", ["[2001:db8::2]:443"], "2001:db8::2"),
    ("10.0.0.2", ["[2001:db8::3]"], "2001:db8::3"),
    ("10.0.0.2", ["1.2.3.4:5678"], "1.2.3.4"),
    ("10.0.0.2", ["::ffff:1.2.3.4"], "1.2.3.4"),                    # v4-mapped hop
    ("::1", ["2001:db8::1"], "2001:db8::1"),
    ("::ffff:10.0.0.2", ["1.2.3.4"], "1.2.3.4"),                    # v4-mapped peer
    (None, ["1.2.3.4"], None),
])
def test_real_client_is_the_rightmost_untrusted_hop_of_every_line(
        peer: str | None, lines: list[str], expected: str | None) -> None:
    assert client_address(peer, lines, TRUSTED) == (IP(expected) if expected else None)


_HOP = st.one_of(
    st.ip_addresses().map(str), st.sampled_from(["unknown", "_hidden", "", " ", "[::1", "a:b"]),
    st.text(alphabet=st.characters(codec="latin-1", exclude_characters=","), max_size=12))


@given(forged=st.lists(st.lists(_HOP, max_size=4).map(", ".join), max_size=3),
       real=st.ip_addresses(), proxies=st.integers(0, 3))
def test_nothing_a_client_writes_changes_who_it_is(forged: list[str], real: IPAddress,
                                                   proxies: int) -> None:
    """Whatever X-Forwarded-For lines a client sends, the untrusted address our proxies
    saw is its address; a trusted one (an internal machine) may name anything it likes."""
    seen = real.ipv4_mapped if isinstance(real, ipaddress.IPv6Address) and real.ipv4_mapped else real
    own = [f"10.0.0.{i + 1}" for i in range(proxies)]              # further trusted hops
    lines = [*forged, ", ".join([str(real), *own])]                # what our proxies appended
    found = client_address("10.0.0.99", lines, TRUSTED)
    if not any(seen in net for net in TRUSTED):
        assert found == seen


async def test_a_second_forwarded_for_line_does_not_open_cidrs_or_admin(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """A client behind a trusted proxy that appends its own X-Forwarded-For line writes
    `X-Forwarded-For: 10.1.2.3` itself: neither the route's cidrs nor admin.cidrs open."""
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(cidrs=["10.0.0.0/8"]), public("a")],
                            admin={"cidrs": ["10.0.0.0/8"]},
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}), ENV)
    forged = (("X-Forwarded-For", b"10.1.2.3"), ("X-Forwarded-For", b"203.0.113.7"))
    status, _, body = await raw(client, request_head(info_path(PRIVATE_SMALL), *forged))
    assert status == 403 and b"203.0.113.7" in body, body
    for path in ("/metrics", "/_router/status.json"):
        status, _, body = await raw(client, request_head(path, *forged))
        assert status == 403, (path, body[:200])
        assert b"goproxy_requests" not in body
    assert not [p for p in a.raw_paths() if p.startswith("/corp.")], "a refused request was forwarded"
    # The proxy's own line naming an allowed client still lets it in.
    honest = (("X-Forwarded-For", b"203.0.113.7"), ("X-Forwarded-For", b"10.1.2.3"))
    status, _, body = await raw(client, request_head(info_path(PRIVATE_SMALL), *honest))
    assert status == 200, body
    assert (await raw(client, request_head("/metrics", *honest)))[0] == 200


async def test_forwarded_header_is_not_read(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """RFC 7239 Forwarded is ignored (as nginx does): one the proxy does not write is
    the client's own, so it can name no address."""
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(cidrs=["10.0.0.0/8"]), public("a")],
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}), ENV)
    for headers in ({"Forwarded": "for=10.1.2.3"},
                    {"Forwarded": 'for="10.1.2.3"', "X-Forwarded-For": "203.0.113.7"}):
        assert (await get(client, info_path(PRIVATE_SMALL), headers)).status == 403, headers


async def test_thin_path_names_the_same_client_as_the_full_flow(
        edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")],
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}), ENV)
    path = info_path(OPEN)
    lines = (("X-Forwarded-For", b"10.1.2.3"), ("X-Forwarded-For", b"203.0.113.7"))
    for _ in range(3):            # a miss, a hit kept for the thin path, a thin-path hit
        assert (await raw(client, request_head(path, *lines)))[0] == 200
    assert edge_of(client).hits.get(path) is not None, "the answer was not kept"
    clients = [r.fields["client"] for r in caplog.records
               if r.name == "router.access" and isinstance(getattr(r, "fields", None), dict)]
    assert clients == ["203.0.113.7"] * 3, clients


# -- item 5: answers behind allow are private -----------------------------------------------

def assert_private(got: Got, what: str) -> None:
    cache_control = got.headers.get("Cache-Control", "")
    assert cache_control.startswith("private"), (what, got.status, cache_control)
    assert "public" not in cache_control, (what, cache_control)
    assert "Authorization" in got.headers.get("Vary", ""), (what, dict(got.headers))


async def private_answers(client: TestClient, auth: dict[str, str] | None,
                          a: FakeProxy) -> dict[str, Got]:
    """One answer of every kind the edge gives, for the corp route."""
    got: dict[str, Got] = {}

    async def fetch(name: str, path: str, headers: dict[str, str] | None = None,
                    method: str = "GET") -> Got:
        async def go() -> Got:
            async with client.request(method, path, headers={**(auth or {}), **(headers or {})},
                                      allow_redirects=False) as resp:
                return Got(resp.status, CIMultiDict(resp.headers), await resp.read())
        got[name] = await asyncio.wait_for(go(), PATIENCE)
        return got[name]

    small = info_path(PRIVATE_SMALL)
    await fetch("miss (memory fill)", small)
    hit = await fetch("hit from memory", small)
    assert hit.headers["X-Goproxy-Cache"] == "hit"
    await fetch("304", small, {"If-None-Match": hit.headers["ETag"]})
    await fetch("miss (streamed zip)", zip_path(PRIVATE))
    disk = await fetch("hit from disk (sendfile)", zip_path(PRIVATE))
    assert disk.headers["X-Goproxy-Cache"] == "hit"
    await fetch("206", zip_path(PRIVATE), {"Range": "bytes=0-99"})
    await fetch("HEAD of a hit", zip_path(PRIVATE), method="HEAD")
    await fetch("HEAD of a miss", zip_path(PRIVATE_HEAD), method="HEAD")
    await fetch("list", f"/{PRIVATE.path}/@v/list")
    await fetch("404", f"/{PRIVATE.path}/@v/v9.9.9.info")
    a.set_faults(status=500)
    await fetch("502", f"/{PRIVATE.path}/@v/v8.8.8.info")
    await asyncio.sleep(0.15)                                      # past metadata_ttl
    stale = await fetch("stale list", f"/{PRIVATE.path}/@v/list")
    assert stale.headers["X-Goproxy-Cache"] == "stale", stale.status
    a.clear_faults()
    return got


async def test_every_answer_of_a_route_with_allow_is_private(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: object) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(tokens_env="CORP_TOKENS"), public("a")],
                            cache={"dir": f"{tmp_path}/cache", "metadata_ttl": 0.1,
                                   "negative_ttl": 0}), ENV)
    got = await private_answers(client, BEARER, a)
    expected = {"miss (memory fill)": 200, "hit from memory": 200, "304": 304,
                "miss (streamed zip)": 200, "hit from disk (sendfile)": 200, "206": 206,
                "HEAD of a hit": 200, "HEAD of a miss": 200, "list": 200, "404": 404,
                "502": 502, "stale list": 200}
    assert {name: g.status for name, g in got.items()} == expected
    for name, answer in got.items():
        assert_private(answer, name)
    assert got["hit from memory"].headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert got["hit from disk (sendfile)"].headers["Cache-Control"] == (
        "private, max-age=31536000, immutable")
    for name in ("404", "502"):
        assert got[name].headers["Cache-Control"] == "private, no-store", name
    # Refusals of the route too.
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = await get(client, info_path(PRIVATE_SMALL), headers)
        assert refused.status in (401, 403)
        assert_private(refused, f"refusal {refused.status}")
    # None of it was kept for the thin path, which sends no private headers.
    assert len(edge_of(client).hits) == 0


async def test_a_public_route_keeps_its_public_answers(edge: MakeEdge, fake_proxy: MakeFake,
                                                      tmp_path: object) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")],
                            cache={"dir": f"{tmp_path}/cache"}), ENV)
    for path in (info_path(OPEN), info_path(OPEN), zip_path(OPEN), zip_path(OPEN)):
        got = await get(client, path)
        assert got.status == 200
        assert got.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert "Vary" not in got.headers
    listed = await get(client, f"/{OPEN.path}/@v/list")
    assert listed.headers["Cache-Control"].startswith("public, max-age=")


def test_hit_table_keeps_no_private_answer() -> None:
    """Defence in depth: the thin path sends its headers as kept, so it refuses private ones."""
    table = HitTable(1 << 20)
    entry = CacheEntry("k", Path("/nonexistent"), 2, 1_600_000_000.0, "1-2", b"{}")
    for path, cache_control in (("/corp.example/tool/@v/v1.0.0.info", "private, max-age=60"),
                                ("/example.com/lib/@v/v1.0.0.info", IMMUTABLE)):
        table.keep(path, entry, content_type="application/json", cache_control=cache_control,
                   server="s", route="r", module="m", version="v1.0.0", kind="info")
    assert table.get("/corp.example/tool/@v/v1.0.0.info") is None
    assert table.get("/example.com/lib/@v/v1.0.0.info") is not None


@pytest.mark.parametrize("before, status, after", [
    ("public, max-age=31536000, immutable", 200, "private, max-age=31536000, immutable"),
    ("public, max-age=31536000, immutable", 304, "private, max-age=31536000, immutable"),
    ("public, max-age=0", 200, "private, max-age=0"),
    (None, 200, "private, no-store"),
    ("public, max-age=60", 404, "private, no-store"),
    (None, 502, "private, no-store"),
])
def test_make_private(before: str | None, status: int, after: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    if before:
        headers["Cache-Control"] = before
    make_private(headers, status)
    assert headers["Cache-Control"] == after
    assert headers["Vary"] == "Authorization"
    headers["Vary"] = "Accept-Encoding"
    make_private(headers, status)
    assert headers["Vary"] == "Accept-Encoding, Authorization"


# -- item 11: Authorization that is not text, malformed requests, guessing -----------------------

@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\xfd", b"\xc3\x28", b"Basic \x80abc",
                                   b"Bearer tok-\xe9"])
async def test_authorization_that_is_not_utf8_is_a_400_not_a_500(
        edge: MakeEdge, fake_proxy: MakeFake, value: bytes) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(tokens_env="CORP_TOKENS"), public("a")],
                            admin={"cidrs": ["10.0.0.0/8"], "token_env": "ADMIN_TOKEN"}), ENV)
    for path, surface in ((info_path(PRIVATE_SMALL), b"route corp"),
                          ("/metrics", b"operator endpoints")):
        status, headers, body = await raw(client, request_head(path, ("Authorization", value)))
        assert status in (400, 401), (path, status, body[:300])
        assert surface in body and b"not UTF-8" in body, body
        assert headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("head", [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                  b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"])
async def test_a_malformed_request_is_one_quiet_log_line(
        edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture,
        head: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")]), ENV)
    status, _, body = await raw(client, head)     # aiohttp closes after a 400
    assert status == 400, body[:200]
    await asyncio.sleep(0.05)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()) for r in loud]
    quiet = [r for r in caplog.records if "bad request" in r.getMessage()]
    assert len(quiet) == 1 and quiet[0].levelno == logging.INFO, \
        [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert "\n" not in quiet[0].getMessage()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_allows_a_burst_then_one_failure_a_second() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(burst=10, rate=1.0, clock=clock)
    attacker, other = IP("203.0.113.7"), IP("198.51.100.1")
    for _ in range(10):
        assert throttle.wait(attacker, "route") == 0.0
        throttle.failed(attacker, "route")
    assert throttle.wait(attacker, "route") == pytest.approx(1.0)
    assert throttle.wait(other, "route") == 0.0                     # per address
    clock.now += 0.5
    assert throttle.wait(attacker, "route") == pytest.approx(0.5)
    clock.now += 0.5                                                # one refilled
    assert throttle.wait(attacker, "route") == 0.0
    throttle.failed(attacker, "route")
    assert throttle.wait(attacker, "route") == pytest.approx(1.0)
    clock.now += 10.0                                               # full again, forgotten
    assert throttle.wait(attacker, "route") == 0.0
    assert throttle.failures["route"] == 11 and throttle.throttled["route"] == 3


def test_throttle_counts_ipv6_per_64_and_stays_bounded() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(burst=2, rate=1.0, max_clients=100, clock=clock)
    throttle.failed(IP("2001:db8::1"), "admin")
    throttle.failed(IP("2001:db8::ffff:2"), "admin")
    assert throttle.wait(IP("2001:db8::3"), "admin") > 0            # the same /64
    assert throttle.wait(IP("2001:db8:0:1::1"), "admin") == 0.0     # another /64
    throttle.failed(None, "admin")                                  # unknown clients: one bucket
    for i in range(1000):
        throttle.failed(ipaddress.IPv4Address(0x0A000000 + i), "admin")
    assert len(throttle._buckets) <= 100


async def test_fifty_wrong_tokens_get_429_and_another_address_still_gets_in(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(tokens_env="CORP_TOKENS"), public("a")],
                            admin={"cidrs": ["10.0.0.0/8"], "token_env": "ADMIN_TOKEN"},
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}), ENV)
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    statuses = []
    for i in range(50):
        got = await get(client, info_path(PRIVATE_SMALL),
                        {**attacker, "Authorization": f"Bearer guess-{i}"})
        statuses.append(got.status)
    assert statuses[:10] == [403] * 10, statuses
    assert statuses.count(429) >= 35, statuses
    refused = await get(client, info_path(PRIVATE_SMALL), {**attacker, **BEARER})
    assert refused.status == 429, "a right guess from a throttled address must look the same"
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many" in refused.text
    # Another address with the right token, and the admin token, still work at once.
    other = {"X-Forwarded-For": "198.51.100.1"}
    assert (await get(client, info_path(PRIVATE_SMALL), {**other, **BEARER})).status == 200
    admin = {**other, "Authorization": f"Bearer {ENV['ADMIN_TOKEN']}"}
    # The admin surface shares the throttle: the attacker's address is refused there too.
    assert (await get(client, "/metrics", {**admin, **attacker})).status == 429
    samples = parse_metrics((await get(client, "/metrics", admin)).text)
    assert value(samples, "goproxy_auth_failures_total", surface="route") >= 10
    assert value(samples, "goproxy_auth_throttled_total", surface="route") >= 35
    assert value(samples, "goproxy_auth_throttled_total", surface="admin") == 1
    # Admin token guesses are counted and throttled alike.
    for i in range(12):
        await get(client, "/metrics", {"X-Forwarded-For": "192.0.2.9",
                                       "Authorization": f"Bearer nope-{i}"})
    got = await get(client, "/metrics", {"X-Forwarded-For": "192.0.2.9",
                                         "Authorization": f"Bearer {ENV['ADMIN_TOKEN']}"})
    assert got.status == 429 and "Retry-After" in got.headers


async def test_throttle_does_not_touch_clients_without_credentials_or_in_the_network(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [corp(), public("a")],
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}), ENV)
    inside = {"X-Forwarded-For": "10.9.9.9", "Authorization": "Bearer wrong"}
    for _ in range(20):                        # the network lets it in: the token is not looked at
        assert (await get(client, info_path(PRIVATE_SMALL), inside)).status == 200
    outside = {"X-Forwarded-For": "203.0.113.8"}
    for _ in range(20):                        # no credentials: asked for them, never throttled
        assert (await get(client, info_path(PRIVATE_SMALL), outside)).status == 401
    assert sum(edge_of(client).auth_throttle.failures.values()) == 0


def test_require_all_does_not_compare_a_token_from_outside_the_networks() -> None:
    """Otherwise a client outside could tell a right token (403 network) from a wrong one."""
    from goproxy_router.config.loader import parse_config
    from goproxy_router.routing.routes import RouteTable
    config = parse_config(
        "upstreams: {a: {url: 'http://a.example'}}\n"
        "routes: [{name: strict, match: ['s.example'], upstreams: [a],\n"
        "          allow: {cidrs: ['10.0.0.0/8'], tokens_env: T, require: all}}]\n",
        "routes.yaml", {"T": "right"})
    policy = RouteTable(config, {"T": "right"}).routes[0].access
    assert policy is not None
    reasons = set()
    for token in ("right", "wrong"):
        with pytest.raises(AccessDenied) as info:
            policy.check(IP("8.8.8.8"), f"Bearer {token}")
        reasons.add((info.value.status, info.value.reason))
    assert len(reasons) == 1

