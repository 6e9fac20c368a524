"""Cold and warm edge: `go mod download` while the fastest upstream hangs on 30 %.

Run: python bench/bench_cold_hedge.py [--runs 5] [--quick] [--json FILE] ...

Goal (issue 13): with the first-ranked and fastest of three upstreams hanging
on 30 % of requests (zips included), the real go command downloads a module
graph through a cold edge and through a warm edge each within
max(1.5 x the no-fault time, the no-fault time + 2 s); the extra upstream load
(requests the upstreams received / requests of the no-fault run - 1) stays
under 25 %.

Setup, per scenario and run (fresh processes, nothing shared but the graph):

- the graph: `random_dag` (default 36 modules, depth 4, under
  example.com/cold) and one module of its build list made to carry a 6 MiB
  incompressible file (`add_ballast`), so its zip is over 5 MB; a main
  module requiring the DAG's roots (`write_main_module`);
- three fake upstreams (tests.support FakeProxy, in a child process, see
  benchlib.FakeFleet) serving the same graph after a base latency: "fast"
  20 ms (priority 0: ranked first), "mid" 60 ms (priority 1), "slow" 120 ms
  (priority 2); a hung request is held until the router gives up on it;
- the router as a subprocess of the real CLI (uvloop) with the scoring
  plugins, timeouts (headers 30 s: a hang must not cost that), retry, hedge
  and probe settings of the shipped routes.yaml, i.e. the defaults at run
  time; its cache dir fresh and empty (on tmpfs, `--tmp`); JSON log to a file;
- the go command: `go mod download` in the main module, a fresh GOPATH /
  GOMODCACHE / GOCACHE, GOFLAGS=-mod=mod, GOSUMDB=off, GOPROXY=the router,
  GOMAXPROCS=`--go-procs` (2): go 1.19 loads the graph and downloads zips
  GOMAXPROCS at a time, so a hung request blocks one of that many lanes;
  fixing it keeps runs comparable across machines. The wall time is the go
  command's, start to exit; every downloaded zip is compared byte for byte
  with the graph's.

Scenarios, side by side in each run:

- no fault: fresh router, empty cache, no faults; the reference time;
- cold: fresh router (no latency history, empty cache), "fast" hangs (reads
  the request, never sends headers) on a seeded 30 % of the graph's module
  requests (`/@v/...`, `/@latest`; probes of "/" are not hung);
- warm: the same fault, but the router first downloads another graph (24
  modules under example.com/warmup, no fault, not timed) through a go
  command of its own, then the measured graph with a fresh module cache.
  Why a second graph rather than clearing the router's cache: the router's
  cache is part of its warmth only as far as hits go, and a hit never
  reaches the attempt policy; a disjoint graph keeps every measured request
  a miss while the router has what a warm edge has (its upstreams' latency
  samples, breaker state, pooled connections), and the measured requests
  and their faults are exactly the cold scenario's (the fault's choice is a
  function of the seed and the request path, and the warm-up paths are
  never hung). The fault starts with the measured graph, so the history is
  of healthy upstreams, as after a quiet period.

Run i uses fault seed `--seed` + i for both faulted scenarios (so each run
samples another set of hung requests, the same for cold and warm).

Reported per scenario: median and min-max of the wall time over the runs,
the ratio of the medians to the no-fault median, the goal's limit and
whether the median (and every run, against its own run's no-fault time)
meets it; the upstream requests of the measured graph, how many were hung,
the extra load, and the extra load beyond the hung requests ((received -
hung) / no-fault - 1: what the router sent besides one replacement per hung
request; with 30 % of the first-ranked upstream's requests hung, the total
extra load cannot go below ~30 % x its share of first attempts while it
stays ranked first, since every hung request needs another, hedged or not:
with hedging off it is the same. The load goal ("extra upstream load from
hedging under 25 %") is therefore judged on the load beyond the hung
requests, the total printed beside it); hedges from
the router's metrics (goproxy_hedges_total) and from its log: JSON lines
whose event mentions a hedge (else lines with a truthy hedge* field), by the
field naming the delay's source when there is one (any field named *source*),
else just counted; and attempts that ended cancelled or timed out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, FakeFleet, FakeSpec, RouterProcess, print_table, span  # noqa: E402

from tests.support.modtree import (  # noqa: E402
    Dag,
    add_ballast,
    case_escape,
    download_cache_paths,
    random_dag,
    write_main_module,
)

PREFIX = "example.com/cold"
WARM_PREFIX = "example.com/warmup"
# name, base latency (s), priority: the first is ranked first and is the one that hangs
UPSTREAMS = (("fast", 0.020, 0), ("mid", 0.060, 1), ("slow", 0.120, 2))
FAULTY = UPSTREAMS[0][0]
MEASURED = "^/" + re.escape(case_escape(PREFIX)) + r"/.*(/@v/|/@latest$)"
SCENARIOS = ("no fault", "cold", "warm")
SHIPPED_SECTIONS = ("timeouts", "retry", "hedge", "probes", "scoring")


@dataclass
class Graphs:
    measured: Dag
    warm: Dag
    big: tuple[str, str]
    big_zip_bytes: int


def build_graphs(args: argparse.Namespace) -> Graphs:
    """The measured graph with one big zip, and a disjoint warm-up graph."""
    dag = random_dag(args.modules, args.depth, seed=args.graph_seed, prefix=PREFIX)
    # The big one: a build-list module of the deepest layer (asked for late, by the
    # time the go command has many requests in flight).
    deepest = set(dag.layers[-1])
    big = min(k for k in dag.expected_zips if k[0] in deepest)
    module = add_ballast(dag.tree[big], args.big_mib << 20, seed=args.graph_seed)
    warm = random_dag(args.warm_modules, min(args.depth, args.warm_modules),
                      seed=args.graph_seed + 1, prefix=WARM_PREFIX)
    return Graphs(dag, warm, big, len(module.zip))


def merged_tree(graphs: Graphs) -> Any:
    """Both graphs in one tree, every zip built now: the fakes get them ready-made (a
    zip built on its first request would stall their event loop inside the timing)."""
    tree = graphs.measured.tree.subset()
    for module in graphs.warm.tree:
        tree.add(module)
    for module in tree:
        _ = module.zip
    return tree


def router_config(urls: dict[str, str], cache_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Three upstreams on one route; the shipped routes.yaml's policy sections."""
    import yaml

    shipped = yaml.safe_load((REPO / "routes.yaml").read_text()) or {}
    conf: dict[str, Any] = {
        "upstreams": {name: {"url": urls[name], **({"priority": prio} if args.ranking == "priority" else {})}
                      for name, _, prio in UPSTREAMS},
        "routes": [{"name": "public", "match": ["*"],
                    "upstreams": [name for name, _, _ in UPSTREAMS]}],
        "cache": {"dir": str(cache_dir)},
    }
    conf.update({key: shipped[key] for key in SHIPPED_SECTIONS if key in shipped})
    if args.headers_timeout is not None:
        conf["timeouts"] = {**conf.get("timeouts", {}), "headers": args.headers_timeout}
    if args.scoring == "fixed":
        conf["scoring"] = {"plugins": ["weights"]}
    for setting in args.hedge:
        key, _, value = setting.partition("=")
        conf.setdefault("hedge", {})[key] = yaml.safe_load(value)
    return conf


def go_environ(root: Path, proxy: str, procs: int) -> dict[str, str]:
    """A from-scratch environment, so the user's GOPROXY, GOFLAGS ... cannot leak in."""
    return {
        "GOMAXPROCS": str(procs),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"),
        "GOPATH": str(root / "gopath"), "GOMODCACHE": str(root / "gopath" / "pkg" / "mod"),
        "GOCACHE": str(root / "gocache"), "GOPROXY": proxy, "GOSUMDB": "off",
        "GONOSUMDB": "", "GOPRIVATE": "", "GONOPROXY": "",
        "GOFLAGS": "-mod=mod -modcacherw",          # -modcacherw: the cache can be deleted
        "GOTOOLCHAIN": "local", "GO111MODULE": "on", "GOWORK": "off", "CGO_ENABLED": "0",
    }


def go_download(dag: Dag, root: Path, proxy: str, args: argparse.Namespace) -> float:
    """`go mod download` of the graph in a fresh GOPATH under `root`; its wall time.
    Raises if it fails or any zip differs from the graph's."""
    main = write_main_module(root / "main", "example.com/main", dag.roots)
    started = time.perf_counter()
    done = subprocess.run(["go", "mod", "download"], cwd=main,
                          env=go_environ(root, proxy, args.go_procs),
                          capture_output=True, text=True, timeout=args.go_timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"go mod download failed after {wall:.1f}s:\n{done.stderr[-3000:]}")
    download = root / "gopath" / "pkg" / "mod" / "cache" / "download"
    got = {p.relative_to(download).as_posix() for p in download.rglob("*.zip")}
    if got != download_cache_paths(dag.expected_zips):
        raise RuntimeError(f"downloaded zips differ from the build list: {sorted(got)}")
    for key in dag.expected_zips:
        rel = next(iter(download_cache_paths([key])))
        if _sha(download / rel) != hashlib.sha256(dag.tree[key].zip).hexdigest():
            raise RuntimeError(f"{rel}: not the graph's zip")
    return wall


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Outcome:
    scenario: str
    run: int
    wall: float = float("nan")
    error: str = ""
    upstream: dict[str, dict[str, int]] = field(default_factory=dict)
    hedges: float = 0.0                  # goproxy_hedges_total during the measured download
    retries: float = 0.0
    hedge_events: int = 0                # log lines whose event is about a hedge
    hedge_marked: int = 0                # other log lines with a truthy hedge* field
    hedge_sources: dict[str, int] = field(default_factory=dict)
    hedge_fields: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)   # attempt log lines by outcome
    warmup: float | None = None

    @property
    def requests(self) -> int:
        return sum(c["requests"] for c in self.upstream.values())

    @property
    def hung(self) -> int:
        """Requests the faulty upstream held (a fake without faults marks every request)."""
        if self.scenario == "no fault":
            return 0
        return self.upstream.get(FAULTY, {}).get("faulted", 0)

    @property
    def split(self) -> str:
        return "/".join(str(self.upstream.get(n, {}).get("requests", 0)) for n, _, _ in UPSTREAMS)


def read_log(path: Path, offset: int, outcome: Outcome) -> None:
    """Hedge events and attempt outcomes from the router's JSON lines after `offset`.
    The delay's source is counted from the hedge events, or else from the other lines
    that mark a hedge (whatever names the hedging code gives them: fields are kept)."""
    sources: Counter[str] = Counter()
    marked_sources: Counter[str] = Counter()
    fields: set[str] = set()
    outcomes: Counter[str] = Counter()
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        event = str(entry.get("event", ""))
        if "attempt" in event and "outcome" in entry:
            outcomes[str(entry["outcome"])] += 1
        if "hedge" in event.lower():
            outcome.hedge_events += 1
            tally = sources
        elif any("hedge" in k.lower() and entry[k] not in (None, False, 0, "") for k in entry):
            outcome.hedge_marked += 1          # another line (an attempt's, the access log's)
            tally = marked_sources
        else:
            continue
        fields.update(entry)
        source = next((entry[k] for k in entry if "source" in k.lower()), None)
        if source is not None:
            tally[str(source)] += 1
    outcome.hedge_sources = dict(sources or marked_sources)
    outcome.hedge_fields = sorted(fields)
    outcome.outcomes = dict(outcomes)


def run_scenario(scenario: str, run: int, graphs: Graphs, tree: Any,
                 args: argparse.Namespace) -> Outcome:
    outcome = Outcome(scenario, run)
    specs = [FakeSpec(name, delay, tree=tree, max_hang=args.max_hang)
             for name, delay, _ in UPSTREAMS]
    with FakeFleet(specs) as fleet, \
            tempfile.TemporaryDirectory(prefix="bench-cold-", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        if scenario != "no fault":
            fleet.set_faults(FAULTY, hang=True, fraction=args.fraction, seed=args.seed + run,
                             paths=MEASURED)
        conf = router_config(fleet.urls, workdir / "cache", args)
        router = RouterProcess(conf, workdir, stderr="file")
        with router:
            try:
                if scenario == "warm":
                    outcome.warmup = go_download(graphs.warm, workdir / "warmup", router.url, args)
                time.sleep(0.1)                       # the warm-up's log lines are out
                offset = router.log_path.stat().st_size
                before = router.metrics()
                outcome.wall = go_download(graphs.measured, workdir / "measured", router.url, args)
                after = router.metrics()
                outcome.hedges = after.get("goproxy_hedges_total", 0) - before.get(
                    "goproxy_hedges_total", 0)
                outcome.retries = after.get("goproxy_retries_total", 0) - before.get(
                    "goproxy_retries_total", 0)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                outcome.error = str(exc).splitlines()[0][:200]
                offset = 0
            outcome.upstream = fleet.counts(MEASURED)
        read_log(router.log_path, offset, outcome)     # stopped: every line is written
    return outcome


# -- the report ---------------------------------------------------------------------------


def limit_for(nofault: float) -> float:
    return max(1.5 * nofault, nofault + 2.0)


def extra_load(o: Outcome, base: Outcome) -> float:
    return o.requests / base.requests - 1 if base.requests else float("nan")


def extra_beyond_hung(o: Outcome, base: Outcome) -> float:
    return (o.requests - o.hung) / base.requests - 1 if base.requests else float("nan")


def summarize(results: list[Outcome]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    by = {s: [o for o in results if o.scenario == s and not o.error] for s in SCENARIOS}
    base_by_run = {o.run: o for o in by["no fault"]}
    nf = statistics.median(o.wall for o in by["no fault"]) if by["no fault"] else float("nan")
    rows, goals = [], []
    for s in SCENARIOS:
        runs = by[s]
        errors = sum(1 for o in results if o.scenario == s and o.error)
        if not runs:
            rows.append([s, *["-"] * (len(HEADERS) - 2), str(errors)])
            continue
        med = statistics.median(o.wall for o in runs)
        paired = [(o, base_by_run[o.run]) for o in runs if o.run in base_by_run]
        extras = [extra_load(o, b) * 100 for o, b in paired]
        beyond = [extra_beyond_hung(o, b) * 100 for o, b in paired]
        every = all(o.wall <= limit_for(b.wall) for o, b in paired)
        sources: Counter[str] = Counter()
        for o in runs:
            sources.update(o.hedge_sources)
        events = sum(o.hedge_events for o in runs)
        marked = sum(o.hedge_marked for o in runs)
        by_source = (", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
                     or f"{events} (+{marked} marked lines)")
        ends: Counter[str] = Counter()
        for o in runs:
            ends.update({k: v for k, v in o.outcomes.items() if k in ("cancelled", "timeout")})
        rows.append([s, f"{med:.2f}", span((o.wall for o in runs), "{:.2f}"),
                     f"{med / nf:.2f}x", span((o.requests for o in runs), "{:.0f}"),
                     " ".join(o.split for o in runs),
                     span((o.hung for o in runs), "{:.0f}"),
                     span(extras, "{:.1f}%") if s != "no fault" else "-",
                     span(beyond, "{:.1f}%") if s != "no fault" else "-",
                     span((o.hedges for o in runs), "{:.0f}"), by_source,
                     f"{ends['cancelled']}/{ends['timeout']}",
                     span((o.warmup for o in runs if o.warmup is not None), "{:.2f}"),
                     str(errors)])
        if s != "no fault":
            # The load goal is the load hedging adds: the hung requests' replacements are the
            # fault's (a run with hedging off sends as many: BENCHMARKS.md), so it is judged
            # beyond them; the total extra load is reported beside it.
            ok = med <= limit_for(nf) and every and bool(beyond) and max(beyond) < 25
            goals.append({"scenario": s, "median_s": med, "limit_s": limit_for(nf),
                          "ratio": med / nf, "every_run_within": every,
                          "extra_load_max_pct": max(extras) if extras else None,
                          "extra_beyond_hung_max_pct": max(beyond) if beyond else None,
                          "hedges_by_source": dict(sources), "hedge_events": events,
                          "hedge_marked_lines": marked,
                          "met": ok and not errors})
    return rows, goals


HEADERS = ["scenario", "median s", "min-max s", "vs no fault", "upstream reqs",
           "/".join(n for n, _, _ in UPSTREAMS) + " (per run)", "hung",
           "extra load", "beyond hung", "hedges (metric)", "hedge log events (by source)",
           "cancelled/timeout attempts", "warm-up s", "errors"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 run, 12 modules (depth 3), a 1 MiB big zip")
    parser.add_argument("--modules", type=int, default=36)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--warm-modules", type=int, default=24)
    parser.add_argument("--big-mib", type=int, default=6, help="ballast in the big zip, MiB")
    parser.add_argument("--fraction", type=float, default=0.30)
    parser.add_argument("--seed", type=int, default=20261204, help="fault seed of run 0")
    parser.add_argument("--graph-seed", type=int, default=13)
    parser.add_argument("--headers-timeout", type=float,
                        help="override the shipped timeouts.headers (s), e.g. to bound a smoke run")
    parser.add_argument("--ranking", choices=["priority", "latency"], default="priority",
                        help="priority: fast/mid/slow are priority 0/1/2, fast stays first "
                             "(default); latency: no priorities, the scoring plugins rank on "
                             "what they measure (fast is first while it is fastest)")
    parser.add_argument("--hedge", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hedge setting, e.g. --hedge zip_min_delay=0.05")
    parser.add_argument("--scoring", choices=["shipped", "fixed"], default="shipped",
                        help="shipped: routes.yaml's (default) plugins; fixed: priority alone")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--max-hang", type=float, default=300.0,
                        help="a hung request is released after this long at the latest (s)")
    parser.add_argument("--go-timeout", type=float, default=600.0)
    parser.add_argument("--go-procs", type=int, default=2,
                        help="GOMAXPROCS of the go command: its download parallelism")
    parser.add_argument("--tmp", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--json", type=Path, help="also write the outcomes and goals here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.modules, args.depth, args.warm_modules, args.big_mib = 1, 12, 3, 8, 1
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if "no fault" not in args.scenarios or not set(args.scenarios) <= set(SCENARIOS):
        parser.error(f"--scenarios: a subset of {', '.join(SCENARIOS)} including 'no fault'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    graphs = build_graphs(args)
    tree = merged_tree(graphs)
    dag = graphs.measured
    print(f"graph: {len(dag.tree.paths())} module paths in {len(dag.layers)} layers, build list "
          f"{len(dag.expected_zips)} zips, {len(dag.expected_mods)} go.mod files; big zip "
          f"{graphs.big[0]}@{graphs.big[1]} {graphs.big_zip_bytes / 1e6:.1f} MB; upstreams "
          + ", ".join(f"{n} {d * 1000:g} ms" for n, d, _ in UPSTREAMS)
          + f"; {FAULTY} hangs on {args.fraction:.0%}", flush=True)
    results: list[Outcome] = []
    for run in range(args.runs):
        for scenario in [s for s in SCENARIOS if s in args.scenarios]:
            o = run_scenario(scenario, run, graphs, tree, args)
            results.append(o)
            print(f"run {run + 1} {scenario:8} {o.wall:7.2f} s  upstream requests {o.requests:4d}"
                  f" ({o.split}, hung {o.hung})  hedges {o.hedges:.0f}  log hedge events {o.hedge_events}"
                  f" (+{o.hedge_marked} marked) {o.hedge_sources or ''}  {o.error}", flush=True)
    rows, goals = summarize(results)
    print()
    print_table(HEADERS, rows)
    print()
    for g in goals:
        extra, beyond = g["extra_load_max_pct"], g["extra_beyond_hung_max_pct"]
        print(f"{g['scenario']}: median {g['median_s']:.2f} s <= {g['limit_s']:.2f} s "
              f"(max(1.5x, +2 s) of the no-fault median) ... "
              f"{'yes' if g['median_s'] <= g['limit_s'] else 'NO'}; every run within its run's "
              f"limit ... {'yes' if g['every_run_within'] else 'NO'}; load from hedging (beyond "
              f"the hung requests) max {'-' if beyond is None else f'{beyond:.1f}%'} < 25 % ... "
              f"{'yes' if beyond is not None and beyond < 25 else 'NO'}: goal "
              f"{'met' if g['met'] else 'MISSED'} (total extra load, hung requests' "
              f"replacements included, max {'-' if extra is None else f'{extra:.1f}%'})")
    fields = sorted({f for o in results for f in o.hedge_fields})
    print(f"hedge log event fields seen: {', '.join(fields) or 'none (no hedge events logged)'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"outcomes": [asdict(o) for o in results],
                                         "goals": goals}, indent=1, default=str))
    return 1 if any(o.error for o in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
