"""A hang costs little even on a cold edge and even for zips (issue 13, items 1, 2 and 4).

With no samples of its own an edge hedges off priors (the route's others, the
probes, a cold delay); a zip hedges on the first byte, and the loser of the race
is cancelled before its body flows; a hedge never goes to an upstream at its
in-flight cap. The delays themselves are tested on fake time in
tests/test_schedule.py; here an in-process edge meets fake upstreams.
Upstreams are tried in config order (``scoring: {plugins: []}``), so ``a``, the
first, is the one that hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Faults
from tests.support.http import MakeEdge, MakeFake
from tests.test_faults import GOOD, PATHS, TREE, config, fetch

HEADERS = 10.0          # a hung attempt would cost this much without a hedge
SLOW = {"connect": 0.5, "headers": HEADERS, "read": 5.0, "deadline": 30.0}


def _config(a: str, b: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return config([("a", a), ("b", b)], tmp_path, timeouts=dict(SLOW), **extra)


def _hedge_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "router.forward"
            and r.getMessage() == "hedge sent"
            and getattr(r, "fields", {}).get("request_id") == request_id]


async def _metrics(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The hedge series of /metrics: name -> sorted labels -> value."""
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("goproxy_hedge") and sample.name.endswith("_total"):
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_a_zip_with_no_headers_comes_from_the_next_upstream_far_before_the_timeout(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    a = await fake_proxy(TREE, name="a", faults=Faults(hang=True, paths=r"\.zip$"))
    b = await fake_proxy(TREE, name="b")
    client = await edge(_config(a.url, b.url, tmp_path))        # hedge: the defaults
    got = await fetch(client, PATHS["zip"])
    assert got.status == 200 and got.body == GOOD["zip"]
    assert got.headers["X-Goproxy-Upstream"] == "b"
    assert got.elapsed < HEADERS / 3, f"{got.elapsed:.2f}s: the zip waited for a's timeout"
    assert await a.wait_until(lambda rs: len(rs) == 1 and rs[0].disconnected, 3.0), \
        "the hung zip request was not cancelled"
    [line] = _hedge_lines(caplog, got.headers["X-Request-Id"])
    assert line["kind"] == "zip" and (line["upstream"], line["hedge_to"]) == ("a", "b")
    assert (line["delay"], line["delay_source"]) == (2.0, "cold")     # hedge.zip_cold_delay
    counts = await _metrics(client)
    assert counts["goproxy_hedges_total"] == {(("source", "cold"), ("upstream", "b")): 1.0}
    assert counts["goproxy_hedge_wins_total"] == {(("upstream", "b"),): 1.0}


async def test_the_loser_of_a_zip_race_is_cancelled_before_its_body_flows(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    """The first headers win: a's come after b's, so a's body is never read."""
    a = await fake_proxy(TREE, name="a", faults=Faults(delay=1.0, paths=r"\.zip$"))
    b = await fake_proxy(TREE, name="b")
    client = await edge(_config(a.url, b.url, tmp_path,
                                hedge={"zip_cold_delay": 0.3, "zip_min_delay": 0.3}))
    got = await fetch(client, PATHS["zip"])
    assert got.status == 200 and got.body == GOOD["zip"]
    assert got.headers["X-Goproxy-Upstream"] == "b"
    assert got.elapsed < 1.0, got.elapsed
    assert await a.wait_until(lambda rs: len(rs) == 1 and rs[0].fate.get("ended_at"), 3.0)
    [loser] = a.requests
    assert loser.disconnected and not loser.completed, loser.fate   # no double transfer
    [winner] = b.requests
    assert winner.completed


async def test_a_cold_edge_hedges_small_kinds_off_the_cold_delay(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    a = await fake_proxy(TREE, name="a", faults=Faults(hang=True))
    b = await fake_proxy(TREE, name="b")
    client = await edge(_config(a.url, b.url, tmp_path, hedge={"cold_delay": 0.5}))
    got = await fetch(client, PATHS["info"])
    assert got.status == 200 and got.body == GOOD["info"]
    assert got.headers["X-Goproxy-Upstream"] == "b"
    assert 0.45 <= got.elapsed < HEADERS / 3, got.elapsed
    [line] = _hedge_lines(caplog, got.headers["X-Request-Id"])
    assert (line["upstream"], line["hedge_to"], line["delay"], line["delay_source"]) == (
        "a", "b", 0.5, "cold")
    assert await a.wait_until(lambda rs: len(rs) == 1 and rs[0].disconnected, 3.0)


async def test_the_startup_probe_round_sets_the_first_hedge_delays(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """One probe round before serving: the first request already hedges at a's probed
    latency times probe_factor (floored at min_delay), not at the cold delay, and a zip
    at twice that (zip_factor, floored at zip_min_delay); explain says so."""
    caplog.set_level(logging.INFO, logger="router.forward")
    a = await fake_proxy(TREE, name="a")
    b = await fake_proxy(TREE, name="b")
    client = await edge(_config(a.url, b.url, tmp_path, hedge={"probe_samples": 1},
                                probes={"interval": 60, "timeout": 1, "startup_wait": 2}))
    assert [r.raw_path for r in a.requests] == ["/"], "no probe round at start-up"
    async with client.get("/_router/explain", params={"module": "example.com/lib"}) as resp:
        report = await resp.json()
    small = report["hedge"]["a"]["small"]
    assert small["source"] == "probe" and 0.025 <= small["seconds"] < 0.3  # 3 x a loopback probe
    zip_delay = report["hedge"]["a"]["zip"]            # 2 x the unfloored probe delay, floored
    assert zip_delay["source"] == "probe" and 0.025 <= zip_delay["seconds"] <= 2 * small["seconds"]
    a.set_faults(hang=True)
    got = await fetch(client, PATHS["mod"])
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b"
    assert got.elapsed < 0.5, got.elapsed
    [line] = _hedge_lines(caplog, got.headers["X-Request-Id"])
    assert (line["delay"], line["delay_source"]) == (round(small["seconds"], 4), "probe")


async def test_a_hung_startup_probe_holds_serving_up_only_for_startup_wait(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a", faults=Faults(hang=True))
    b = await fake_proxy(TREE, name="b")
    started = time.monotonic()
    client = await edge(_config(a.url, b.url, tmp_path,
                                probes={"interval": 60, "timeout": 3, "startup_wait": 0.3}))
    assert time.monotonic() - started < 1.5, "serving waited for the hung probe"
    got = await fetch(client, PATHS["info"])                 # a still unprobed: cold, hedged
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b"


async def test_no_hedge_goes_to_an_upstream_at_its_in_flight_cap(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path) -> None:
    """b is busy with one request (its cap): a's hang costs the headers timeout, then fails
    over; with room at b the same hang is hedged."""
    a = await fake_proxy(TREE, name="a", faults=Faults(hang=True, paths=r"\.info$"))
    b = await fake_proxy(TREE, name="b", faults=Faults(delay=1.2, paths=r"\.mod$"))
    cfg = config([("a", a.url), ("b", b.url)], tmp_path,
                 timeouts={**SLOW, "headers": 1.5},
                 routes=[{"name": "busy", "match": ["example.com/lib"], "upstreams": ["b"]},
                         {"name": "public", "match": ["*"], "upstreams": ["a", "b"]}],
                 hedge={"cold_delay": 0.2, "max_in_flight": 1})
    client = await edge(cfg)
    busy = asyncio.ensure_future(fetch(client, PATHS["mod"]))     # b: one in flight for 1.2 s
    assert await b.wait_until(lambda rs: len(rs) == 1, 2.0)
    got = await fetch(client, "/example.com/warm/@v/v1.0.0.info")
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b"
    assert got.elapsed >= 1.4, f"{got.elapsed:.2f}s: hedged onto b at its in-flight cap"
    assert (await busy).status == 200
    got = await fetch(client, "/example.com/warm/@v/v1.0.1.info")
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b"
    assert got.elapsed < 1.0, f"{got.elapsed:.2f}s: no hedge with room at b"
