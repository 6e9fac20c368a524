"""Live routing: GeoIP country, latency feedback, breaker, explain — through the real app.

Three fake upstreams tagged CN, DE and US with injected latency; the client's
country comes from a real MaxMind DB written in the fixture and from
X-Forwarded-For, honoured only from a trusted peer.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support import FakeProxy, Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake
from tests.support.mmdb import write_country_db

MOD = Module("example.com/lib", "v1.0.0")
TREE = ModuleTree([MOD])
# @latest, with the metadata cache off: every request is ranked and forwarded.
LATEST = "/example.com/lib/@latest"
CN_CLIENT, DE_CLIENT = "1.0.1.5", "2.16.0.9"
BASE_DELAY = 0.02


@pytest.fixture
def country_db(tmp_path: Path) -> str:
    path = tmp_path / "GeoLite2-Country.mmdb"
    write_country_db(path, {"1.0.1.0/24": "CN", "2.16.0.0/16": "DE", "3.0.0.0/16": "US"})
    return str(path)


async def three_regions(fake_proxy: MakeFake) -> dict[str, FakeProxy]:
    return {region: await fake_proxy(TREE, name=region, faults=Faults(delay=BASE_DELAY))
            for region in ("us", "de", "cn")}


def live_config(fakes: dict[str, FakeProxy], db: str, trusted: list[str],
                cache_dir: str) -> dict[str, Any]:
    return {
        "upstreams": {name: {"url": fake.url, "countries": [name.upper()]}
                      for name, fake in fakes.items()},
        "routes": [{"name": "public", "match": ["*"], "upstreams": list(fakes)}],
        "geoip": {"database": db, "trusted_proxies": trusted},
        "scoring": {"decay": 1.0},                       # seconds: fast enough for a test
        "probes": {"enabled": True, "interval": 0.1, "timeout": 2},
        "timeouts": {"connect": 2, "headers": 5, "read": 5},
        "cache": {"dir": cache_dir, "metadata_ttl": 0, "negative_ttl": 0},
        # explain is asked with X-Forwarded-For clients here: open the operator surface.
        "admin": {"cidrs": ["0.0.0.0/0", "::/0"]},
    }


async def served_by(client: TestClient, xff: str) -> str:
    resp = await client.get(LATEST, headers={"X-Forwarded-For": xff})
    assert resp.status == 200
    assert json.loads(await resp.read())["Version"] == "v1.0.0"
    assert resp.headers["X-Goproxy-Cache"] == "miss"
    return resp.headers["X-Goproxy-Upstream"]


async def wait_for_samples(fakes: dict[str, FakeProxy]) -> None:
    """Until each fake has answered a probe, so every estimate is measured, not assumed."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(any(r.raw_path == "/" for r in f.requests) for f in fakes.values()):
            await asyncio.sleep(BASE_DELAY * 3)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("probes never reached every upstream")


async def test_traffic_follows_country_then_latency_and_back(
        edge: MakeEdge, fake_proxy: MakeFake, country_db: str, tmp_path: Path) -> None:
    fakes = await three_regions(fake_proxy)
    client = await edge(live_config(fakes, country_db, ["127.0.0.1/32"], str(tmp_path / "c1")))
    await wait_for_samples(fakes)

    # Equal latencies: the CN client is served from CN, the DE client from DE.
    assert [await served_by(client, CN_CLIENT) for _ in range(10)] == ["cn"] * 10
    assert [await served_by(client, DE_CLIENT) for _ in range(5)] == ["de"] * 5

    # CN becomes 10x slower: traffic leaves it within a couple of requests.
    fakes["cn"].set_faults(delay=BASE_DELAY * 10)
    moved_after = None
    for i in range(10):
        if await served_by(client, CN_CLIENT) != "cn":
            moved_after = i + 1
            break
    assert moved_after is not None and moved_after <= 2, moved_after
    assert [await served_by(client, CN_CLIENT) for _ in range(5)].count("cn") == 0

    # CN recovers: probes pull its estimate down and traffic returns, in bounded time.
    fakes["cn"].set_faults(delay=BASE_DELAY)
    started = time.monotonic()
    while await served_by(client, CN_CLIENT) != "cn":
        assert time.monotonic() - started < 15, "traffic never returned to the recovered CN"
        await asyncio.sleep(0.1)
    assert [await served_by(client, CN_CLIENT) for _ in range(5)] == ["cn"] * 5


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
        edge: MakeEdge, fake_proxy: MakeFake, country_db: str, tmp_path: Path) -> None:
    fakes = await three_regions(fake_proxy)
    trusted = await edge(live_config(fakes, country_db, ["127.0.0.1/32"], str(tmp_path / "c1")))
    untrusted = await edge(live_config(fakes, country_db, ["10.0.0.0/8"], str(tmp_path / "c2")))
    headers = {"X-Forwarded-For": CN_CLIENT}

    resp = await trusted.get("/_router/explain?module=example.com/lib", headers=headers)
    report = await resp.json()
    assert (report["client_ip"], report["country"], report["continent"]) == (CN_CLIENT, "CN", "AS")
    assert report["order"][0] == "cn"

    resp = await untrusted.get("/_router/explain?module=example.com/lib", headers=headers)
    report = await resp.json()
    assert (report["client_ip"], report["country"]) == ("127.0.0.1", None)
    assert all(u["factors"]["geo_affinity"] == 1.0 for u in report["upstreams"])


async def test_explain_shows_every_factor_cost_and_order(
        edge: MakeEdge, fake_proxy: MakeFake, country_db: str, tmp_path: Path) -> None:
    fakes = await three_regions(fake_proxy)
    client = await edge(live_config(fakes, country_db, ["127.0.0.1/32"], str(tmp_path / "c1")))
    resp = await client.get(f"/_router/explain?module=example.com/lib&client_ip={DE_CLIENT}")
    assert resp.status == 200
    report = await resp.json()
    assert report["route"] == "public" and report["country"] == "DE"
    rows = {u["name"]: u for u in report["upstreams"]}
    assert rows["de"]["factors"]["geo_affinity"] == 1.0
    assert rows["us"]["factors"]["geo_affinity"] == 3.0
    for row in rows.values():
        product = 1.0
        for factor in row["factors"].values():
            product *= factor
        assert row["cost"] == pytest.approx(product)
    assert report["order"] == sorted(rows, key=lambda n: (rows[n]["cost"], list(fakes).index(n)))
    bad = await client.get("/_router/explain?module=Bad.example/x")
    assert bad.status == 400 and "invalid module path" in (await bad.json())["error"]
    bad = await client.get("/_router/explain?module=example.com/x&client_ip=nope")
    assert bad.status == 400


async def test_breaker_ejects_probes_half_open_and_readmits(edge: MakeEdge, fake_proxy: MakeFake,
                                                            tmp_path: Path) -> None:
    bad = await fake_proxy(TREE, name="bad", faults=Faults(status=500))
    good = await fake_proxy(TREE, name="good")
    client = await edge({
        "upstreams": {"bad": {"url": bad.url},                  # tier 0: tried first
                      "good": {"url": good.url, "priority": 1}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["bad", "good"]}],
        "cache": {"dir": str(tmp_path / "cache"), "metadata_ttl": 0, "negative_ttl": 0},
        "scoring": {"breaker": {"threshold": 3, "ejection": 0.5, "max_ejection": 2}},
        "probes": {"enabled": True, "interval": 60, "timeout": 2},
        # No hedges: on a loaded machine a hedge past bad's slow 500 lets that attempt be
        # cancelled before bad has logged it, and it lands after the count below.
        "hedge": {"enabled": False},
    })
    # Let the start-up probe (a failure: 500) land before counting.
    await asyncio.sleep(1.1)
    def real(fake: FakeProxy) -> list[str]:
        return [r.raw_path for r in fake.requests if r.raw_path != "/"]

    for _ in range(6):
        resp = await client.get(LATEST)
        assert resp.status == 200 and resp.headers["X-Goproxy-Upstream"] == "good"
    assert len(real(bad)) <= 3, "bad should be ejected after 3 consecutive failures"
    ejected_at = len(bad.requests)

    # While ejected, the prober's half-open trial still fails: no real request reaches it.
    deadline = time.monotonic() + 5
    while len(bad.requests) == ejected_at and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert bad.requests[-1].raw_path == "/", "the half-open trial should be a probe"
    resp = await client.get(LATEST)
    assert resp.headers["X-Goproxy-Upstream"] == "good"

    # Fixed: the next half-open probe succeeds and real traffic returns to tier 0.
    bad.clear_faults()
    deadline = time.monotonic() + 10
    while True:
        resp = await client.get(LATEST)
        assert resp.status == 200
        if resp.headers["X-Goproxy-Upstream"] == "bad":
            break
        assert time.monotonic() < deadline, "bad was never readmitted"
        await asyncio.sleep(0.1)
    assert real(bad)[-1] == LATEST
