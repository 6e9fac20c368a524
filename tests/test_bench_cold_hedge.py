"""Smoke test of bench/bench_cold_hedge.py's harness (not its goal: timing is the lead's),
and of its reader of the router's log (the hedge events, by delay source).

`--quick` (one run, 12 modules, a 1 MiB big zip) with the headers timeout cut to 2 s,
so a hang the router does not hedge costs 2 s, not 30: about 30 s on the shared
2-core machine. Checks that every scenario's go command succeeded byte for byte (the
bench raises otherwise), that the fault hit only the faulty upstream in the faulted
scenarios, and that the report has the fields the lead reads.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_cold_hedge",
                                                  REPO / "bench" / "bench_cold_hedge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_cold_hedge", module)
    spec.loader.exec_module(module)
    return module


def test_the_log_reader_counts_hedges_by_their_delay_source(tmp_path: Path) -> None:
    bench = _bench_module()
    log = tmp_path / "router.log"
    lines = [
        {"event": "request", "hedged": False, "status": 200},                 # not a hedge
        {"event": "upstream attempt failed", "outcome": "cancelled", "upstream": "fast"},
        {"event": "upstream attempt failed", "outcome": "timeout", "upstream": "fast"},
        {"event": "hedge sent", "upstream": "mid", "delay": 0.05, "delay_source": "probes"},
        {"event": "hedge sent", "upstream": "mid", "delay": 0.2, "delay_source": "cold_delay"},
        {"event": "zip hedge", "upstream": "mid", "delay_source": "probes"},
    ]
    log.write_text("not json\n" + "".join(json.dumps(x) + "\n" for x in lines))
    outcome = bench.Outcome("cold", 0)
    bench.read_log(log, 0, outcome)
    assert outcome.hedge_events == 3 and outcome.hedge_marked == 0
    assert outcome.hedge_sources == {"probes": 2, "cold_delay": 1}
    assert outcome.outcomes == {"cancelled": 1, "timeout": 1}
    assert "delay_source" in outcome.hedge_fields
    # No hedge events, but attempt lines marking a hedge: those are counted instead.
    log.write_text(json.dumps({"event": "upstream attempt", "outcome": "ok", "hedge": True,
                               "hedge_source": "route"}) + "\n")
    marked = bench.Outcome("warm", 0)
    bench.read_log(log, 0, marked)
    assert (marked.hedge_events, marked.hedge_marked, marked.hedge_sources) == (0, 1, {"route": 1})
