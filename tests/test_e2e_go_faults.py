"""Acceptance: the real go command downloads a whole module graph
through the router while the best-ranked upstream hangs on 30 % of requests.

The go command has no timeout of its own and fails the run on a single 5xx,
so without per-attempt timeouts, failover and hedging this either blocks
forever or fails. ``flaky`` is ranked first (priority 0, the default scoring
plugins); it reads every module request and, for a seeded 30 % of them,
never answers. ``healthy`` (priority 1) serves the same graph. The download
must succeed, fetch exactly the build list byte for byte, and every hung
request must have been given up by the router (its connection closed).

The second test is the cold edge of a deploy: a fresh process, an empty
cache, no latency history, production timeouts (30 s for headers), and the
hangs hitting zips too. Hedging from priors must spare the go command every
one of them: no attempt waits out its headers timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GoEnv, RouterProcess
from tests.support import (
    Faults,
    ThreadedFakeProxy,
    case_escape,
    download_cache_paths,
    random_dag,
    write_main_module,
)

HANG_FRACTION = 0.3
SEED = 20260401
MODULE_REQUEST = r"/@v/|/@latest$"      # probes ("/") are not hung: the fault is in the data path


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.e2e
@pytest.mark.timeout(200)
def test_go_mod_download_while_the_best_upstream_hangs_on_30_percent(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    dag = random_dag(26, 4, seed=SEED, prefix="example.com/flaky")
    flaky = threaded_fake_proxy(dag.tree, name="flaky", faults=Faults(
        hang=True, fraction=HANG_FRACTION, seed=SEED, paths=MODULE_REQUEST))
    healthy = threaded_fake_proxy(dag.tree, name="healthy")

    router = router_process({
        "upstreams": {
            "flaky": {"url": flaky.url, "priority": 0},
            "healthy": {"url": healthy.url, "priority": 1},
        },
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["flaky", "healthy"]}],
        "timeouts": {"connect": 2, "headers": 1.0, "read": 10, "deadline": 30},
    })
    main = write_main_module(tmp_path / "main", "example.com/main", dag.roots)

    started = time.monotonic()
    r = go_env.run("mod", "download", "-x", cwd=main, goproxy=router.url, timeout=150)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, (f"go mod download failed after {elapsed:.1f}s:\n{r.stderr[-4000:]}\n"
                               f"--- router stderr:\n{router.stderr()[-4000:]}")

    # Exactly the build list, byte for byte, and every go.mod of the graph.
    expected_zips = download_cache_paths(dag.expected_zips, "zip")
    assert go_env.downloaded("zip") == expected_zips
    assert go_env.downloaded("mod") == download_cache_paths(dag.expected_mods, "mod")
    for path, version in dag.expected_zips:
        rel = f"{case_escape(path)}/@v/{case_escape(version)}.zip"
        assert (go_env.download_dir / rel).read_bytes() == dag.tree[(path, version)].zip, rel
    for path, version in dag.expected_mods:
        rel = f"{case_escape(path)}/@v/{case_escape(version)}.mod"
        assert (go_env.download_dir / rel).read_bytes() == dag.tree[(path, version)].mod, rel

    # The fault really happened, on about 30 % of what the router asked flaky for ...
    module_requests = [rec for rec in flaky.requests if "/@" in rec.raw_path]
    hung = [rec for rec in module_requests if rec.faulted]
    assert len(module_requests) >= 40, len(module_requests)
    assert 0.1 <= len(hung) / len(module_requests) <= 0.5, (len(hung), len(module_requests))
    # ... and every hung request was answered by the healthy upstream instead,
    healthy_paths = set(healthy.raw_paths())
    assert {rec.raw_path for rec in hung} <= healthy_paths
    # ... which was not used for much else: failover, not a wholesale switch.
    answered_by_flaky = {rec.raw_path for rec in module_requests if not rec.faulted}
    assert len(answered_by_flaky) >= len(module_requests) // 2
    # The router gave up on every hung request: no connection left hanging.
    assert _wait(lambda: all(rec.disconnected for rec in flaky.requests if rec.faulted), 10.0), \
        [rec.raw_path for rec in flaky.requests if rec.faulted and not rec.disconnected]


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_cold_edge_hedges_past_a_hang_on_30_percent_including_zips(
        tmp_path: Path, go_env: GoEnv, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    dag = random_dag(26, 4, seed=SEED + 1, prefix="example.com/cold")
    fast = threaded_fake_proxy(dag.tree, name="fast", faults=Faults(
        hang=True, fraction=HANG_FRACTION, seed=SEED, paths=MODULE_REQUEST))
    mid = threaded_fake_proxy(dag.tree, name="mid")
    far = threaded_fake_proxy(dag.tree, name="far")

    router = router_process({          # default timeouts, hedge and probe settings: a fresh edge
        "upstreams": {
            "fast": {"url": fast.url, "priority": 0},
            "mid": {"url": mid.url, "priority": 1},
            "far": {"url": far.url, "priority": 2},
        },
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["fast", "mid", "far"]}],
    })
    main = write_main_module(tmp_path / "main", "example.com/main", dag.roots)

    r = go_env.run("mod", "download", "-x", cwd=main, goproxy=router.url, timeout=200)
    assert r.returncode == 0, f"{r.stderr[-4000:]}\n--- router stderr:\n{router.stderr()[-4000:]}"
    assert go_env.downloaded("zip") == download_cache_paths(dag.expected_zips, "zip")
    for path, version in dag.expected_zips:
        rel = f"{case_escape(path)}/@v/{case_escape(version)}.zip"
        assert (go_env.download_dir / rel).read_bytes() == dag.tree[(path, version)].zip, rel

    hung = [rec.raw_path for rec in fast.requests if rec.faulted]
    assert any(path.endswith(".zip") for path in hung), hung       # zips were hung too
    assert any(not path.endswith(".zip") for path in hung), hung
    lines = [json.loads(line) for line in router.stderr().splitlines() if line.startswith("{")]
    hedges = [line for line in lines if line.get("event") == "hedge sent"]
    # Every hung request was hedged, zips included, each hedge saying what set its delay ...
    assert len(hedges) >= len(hung), (len(hedges), hung)
    assert {h["kind"] for h in hedges} >= {"zip"}
    assert all(h["delay_source"] in ("own", "route", "probe", "cold") and h["delay"] > 0
               for h in hedges), hedges
    assert all(h["upstream"] == "fast" for h in hedges), hedges
    # ... so no attempt waited out the 30 s headers timeout, and the router let go of each.
    attempts = [line for line in lines if line.get("event") == "upstream attempt failed"]
    assert not [a for a in attempts if a.get("outcome") == "timeout"], attempts
    assert _wait(lambda: all(rec.disconnected for rec in fast.requests if rec.faulted), 10.0)
