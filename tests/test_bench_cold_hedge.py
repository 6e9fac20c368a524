"""Smoke test of bench/bench_cold_hedge.py's harness (not its goal: timing is the lead's).

`--quick` (one run, 12 modules, a 1 MiB big zip) with the headers timeout cut to 2 s,
so a hang the router does not hedge costs 2 s, not 30: about 30 s on the shared
2-core machine. Checks that every scenario's go command succeeded byte for byte (the
bench raises otherwise), that the fault hit only the faulty upstream in the faulted
scenarios, and that the report has the fields the lead reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_go

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.timeout(200)
def test_bench_cold_hedge_quick_runs_every_scenario(tmp_path: Path) -> None:
    require_go()
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_cold_hedge.py"), "--quick",
         "--headers-timeout", "2", "--tmp", str(tmp_path), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    outcomes = {o["scenario"]: o for o in report["outcomes"]}
    assert set(outcomes) == {"no fault", "cold", "warm"}
    assert not any(o["error"] for o in outcomes.values())
    base = outcomes["no fault"]
    assert base["wall"] > 0 and base["upstream"]["fast"]["requests"] > 20
    for name in ("cold", "warm"):
        o = outcomes[name]
        assert o["upstream"]["fast"]["faulted"] > 0, o["upstream"]    # the hang really happened
        assert sum(c["requests"] for c in o["upstream"].values()) > base["upstream"]["fast"]["requests"]
    assert outcomes["warm"]["warmup"] is not None
    assert [g["scenario"] for g in report["goals"]] == ["cold", "warm"]
    for goal in report["goals"]:
        assert {"median_s", "limit_s", "extra_load_max_pct", "hedges_by_source", "met"} <= set(goal)
    assert "goal" in done.stdout and "hedge log event fields seen" in done.stdout
