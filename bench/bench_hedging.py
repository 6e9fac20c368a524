"""Hedging: p99 of .info requests while the fastest upstream hangs on 10 %.

Run: python bench/bench_hedging.py [--rounds 2] [--profiles wan,lan] [--variant-min-delay 0.005]
                                   [--requests N] [--concurrency C]   (override the profiles')

Goal: with the fastest upstream hanging on 10 % of requests, the p99 of a
stream of `.info` requests with hedging on is at most 3x the no-fault p99 and
at least 5x better than with hedging off; the extra upstream load stays under
25 %.

Setup, per configuration (each gets fresh processes and an empty cache, so
the seeded 10 % of hung paths is the same set in every configuration):

- two fake upstreams (tests.support FakeProxy) in a child process, each
  answering after a fixed base latency: "fast" (ranked first: priority 0)
  and "slow" (priority 1, so it is only ever the failover/hedge target); the
  profile sets the two latencies, the client concurrency and the request
  count: wan = 30/45 ms, 10 workers, 1500 requests (two public proxies a
  region apart); lan = 2/3 ms, 3 workers, 900 requests (upstreams next
  door, light load: the no-fault p99 stays near the service time);
- the router as a subprocess of the real CLI (uvloop), fixed ranking (below),
  timeouts connect 1 s / headers 2 s / read 5 s / deadline 10 s,
  the default retry budget and hedge policy (p95 of the upstream's recent
  latencies, floor min_delay 50 ms, min_samples 20) unless a variant says;
- the client: aiohttp in this process, a closed loop of the profile's
  workers, one request per distinct module version.

Why distinct versions: a canonical `.info` is immutable, so the router keeps
it in its disk cache forever after the first fetch (this is the disk cache,
not the metadata TTL cache, and it cannot be switched off). Asking for a new
version every time makes every request a miss that goes through the attempt
policy, which is what is measured. The cache directory is on tmpfs
(/dev/shm) so each miss's commit (write, fsync, rename) costs microseconds
and the shared machine's disk noise stays out of the latency tail.

Warm-up: `--warmup` requests (other versions, no fault) give the fast
upstream more than min_samples latency samples, so hedging is armed. Then
the fault is set on the fast upstream: `hang` (read the request, never
answer; the router's 2 s headers timeout bounds it) on a seeded 10 % of the
measured paths.

Ranking is fixed (`--scoring fixed`, the default: `scoring.plugins: [weights]`,
so priority alone decides and "fast" is asked first for every request). With
the router's default plugins (`--scoring default`) a timeout enters the
latency estimate as a 2 s penalty sample, and with 2-3 ms upstreams that
outweighs the priority factor (2 s x (in flight + 1) > 3 ms x 1000), and a
few timeouts in a row can trip the breaker: either moves the traffic to
"slow" for tens of seconds, and "hedging off" then looks good by luck of
timing. That is the ranking protecting the client, not the attempt policy,
which is what this benchmark isolates.

Configurations, run side by side in each round: no fault (hedging on, the
default); fault + hedging on; fault + hedging off; and, with
`--variant-min-delay S` (default 5 ms), no fault and fault with hedging on
and hedge.min_delay = S instead of the default 50 ms floor.
"Extra upstream load" = upstream `.info` requests / client requests - 1,
counted by the fakes themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    FakeFleet,
    FakeSpec,
    RouterProcess,
    cpu_seconds,
    percentile,
    print_table,
    span,
)

MODULE = "example.com/bench/hedge"
MEASURED = r"/@v/v1\.0\.\d+\.info$"
# name: (fast upstream latency s, slow upstream latency s, concurrency, measured requests)
PROFILES = {"wan": (0.030, 0.045, 10, 1500), "lan": (0.002, 0.003, 3, 900)}


@dataclass
class Outcome:
    profile: str
    config: str
    fault: bool
    concurrency: int
    latencies: list[float]          # seconds, sorted, successful requests
    errors: int
    client_requests: int
    upstream: dict[str, dict[str, int]]
    hedges: float
    retries: float
    wall: float
    router_cpu: float = 0.0         # router CPU seconds during the measured requests

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    @property
    def extra(self) -> float:
        sent = sum(c["requests"] for c in self.upstream.values())
        return sent / self.client_requests - 1 if self.client_requests else float("nan")


async def load(base: str, paths: list[str], concurrency: int, limit: float) -> tuple[list[float], int]:
    """Closed loop: `concurrency` workers, each request timed from send to full body."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    todo = iter(paths)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for path in todo:
            started = time.perf_counter()
            try:
                async with session.get(base + path) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with asyncio.timeout(limit):
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    latencies.sort()
    return latencies, errors


def router_config(urls: dict[str, str], cache_dir: Path, headers_timeout: float,
                  hedge: dict[str, Any], scoring: str = "fixed") -> dict[str, Any]:
    conf: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstreams": {"fast": {"url": urls["fast"], "priority": 0},
                      "slow": {"url": urls["slow"], "priority": 1}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["fast", "slow"]}],
        "timeouts": {"connect": 1.0, "headers": headers_timeout, "read": 5.0, "deadline": 10.0},
        "hedge": hedge,
        "cache": {"dir": str(cache_dir)},
    }
    if scoring == "fixed":          # priority alone decides: fast first, slow only for failover/hedges
        conf["scoring"] = {"plugins": ["weights"]}
    return conf


async def run_config(profile: str, config: str, fault: bool, hedge: dict[str, Any],
                     args: argparse.Namespace) -> Outcome:
    fast_delay, slow_delay, concurrency, n = PROFILES[profile]
    concurrency = args.concurrency or concurrency
    n, warm = args.requests or n, args.warmup
    versions = [f"v1.0.{i}" for i in range(n)] + [f"v0.1.{i}" for i in range(warm)]
    fleet = FakeFleet([FakeSpec("fast", fast_delay, MODULE, versions),
                       FakeSpec("slow", slow_delay, MODULE, versions)])
    with fleet, tempfile.TemporaryDirectory(prefix="bench-hedge-", dir=args.tmp) as tmp:
        workdir = Path(tmp)
        conf = router_config(fleet.urls, workdir / "cache", args.headers_timeout, hedge,
                             args.scoring)
        with RouterProcess(conf, workdir, stderr="file") as router:
            _, warm_errors = await load(router.url, [f"/{MODULE}/@v/v0.1.{i}.info" for i in range(warm)],
                                        concurrency, 60)
            if warm_errors:
                raise RuntimeError(f"{warm_errors} warm-up requests failed")
            if fault:
                fleet.set_faults("fast", hang=True, fraction=args.fraction, seed=args.seed,
                                 paths=MEASURED)
            before = router.metrics()
            cpu_before = cpu_seconds([router.pid])
            started = time.perf_counter()
            latencies, errors = await load(router.url, [f"/{MODULE}/@v/v1.0.{i}.info" for i in range(n)],
                                           concurrency, args.time_limit)
            wall = time.perf_counter() - started
            router_cpu = cpu_seconds([router.pid]) - cpu_before
            after = router.metrics()
            counts = fleet.counts(MEASURED)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return Outcome(profile, config, fault, concurrency, latencies, errors, n, counts,
                   delta("goproxy_hedges_total"), delta("goproxy_retries_total"), wall, router_cpu)


def configs(args: argparse.Namespace) -> list[tuple[str, bool, dict[str, Any]]]:
    out = [("no fault, hedging on", False, {"enabled": True}),
           ("fault, hedging on", True, {"enabled": True}),
           ("fault, hedging off", True, {"enabled": False})]
    if args.variant_min_delay is not None:
        variant = {"enabled": True, "min_delay": args.variant_min_delay}
        label = f"hedging on, min_delay {args.variant_min_delay * 1000:g} ms"
        out += [(f"no fault, {label}", False, variant), (f"fault, {label}", True, variant)]
    return out


def row(o: Outcome) -> list[str]:
    c = o.upstream
    return [o.profile, str(o.concurrency), o.config,
            f"{o.pct(50):.1f}", f"{o.pct(95):.1f}", f"{o.pct(99):.1f}",
            f"{o.latencies[-1] * 1000:.1f}" if o.latencies else "-", str(o.errors),
            f"{c['fast']['requests']}/{c['slow']['requests']}", str(c["fast"]["faulted"]) if o.fault else "-",
            f"{o.hedges:.0f}", f"{o.retries:.0f}", f"{o.extra * 100:.1f}%",
            f"{o.router_cpu / o.client_requests * 1000:.2f}", f"{o.wall:.1f}"]


HEADERS = ["profile", "conc", "configuration", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
           "fast/slow reqs", "hung", "hedges", "retries", "extra load", "router CPU ms/req", "wall s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="measured requests per configuration "
                        "(default: the profile's)")
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--concurrency", type=int, help="client workers (default: the profile's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profiles", default="wan,lan", help=f"of {', '.join(PROFILES)}")
    parser.add_argument("--fraction", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--headers-timeout", type=float, default=2.0)
    parser.add_argument("--variant-min-delay", type=float, default=0.005,
                        help="also run hedging with this hedge.min_delay (s); negative: skip")
    parser.add_argument("--scoring", choices=["fixed", "default"], default="fixed",
                        help="fixed: rank by priority alone (the attempt policy measured alone); "
                             "default: the router's default plugins (latency, breaker, ...)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="per configuration, seconds")
    parser.add_argument("--tmp", default="/dev/shm", help="where the router's cache dir goes")
    args = parser.parse_args()
    if args.variant_min_delay is not None and args.variant_min_delay < 0:
        args.variant_min_delay = None
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]

    results: list[list[Outcome]] = []
    for rnd in range(args.rounds):
        outcomes = []
        for profile in profiles:
            for name, fault, hedge in configs(args):
                outcome = asyncio.run(run_config(profile, name, fault, hedge, args))
                outcomes.append(outcome)
                print(f"round {rnd + 1} {profile:4} {name:45} p99 {outcome.pct(99):8.1f} ms  "
                      f"extra {outcome.extra * 100:5.1f}%  ({outcome.wall:.1f}s)", flush=True)
        results.append(outcomes)
        print(f"\nround {rnd + 1}: fast hangs on {args.fraction:.0%} of the measured paths "
              f"(seed {args.seed}), headers timeout {args.headers_timeout:g}s, scoring "
              f"{args.scoring}; profiles "
              + "; ".join(f"{p}: fast {PROFILES[p][0] * 1000:g} ms, slow {PROFILES[p][1] * 1000:g} ms, "
                          f"{args.requests or PROFILES[p][3]} requests" for p in profiles))
        print_table(HEADERS, [row(o) for o in outcomes])
        print()

    print(f"summary over {args.rounds} round(s): ranges; ratios are computed within each round")
    summary_rows = []
    goal_rows = []
    for profile in profiles:
        for name, _, _ in configs(args):
            runs = [o for rr in results for o in rr if o.profile == profile and o.config == name]
            summary_rows.append([profile, name, span(o.pct(50) for o in runs),
                                 span(o.pct(95) for o in runs), span(o.pct(99) for o in runs),
                                 span(o.latencies[-1] * 1000 for o in runs),
                                 span((o.extra * 100 for o in runs), "{:.1f}%"),
                                 str(sum(o.errors for o in runs))])
        flat = [o for r in results for o in r if o.profile == profile]
        off = [o for o in flat if o.config == "fault, hedging off"]
        for name, fault, hedge in configs(args):
            if not fault or not hedge["enabled"]:
                continue
            on = [o for o in flat if o.config == name]
            base = [o for o in flat if o.config == name.replace("fault,", "no fault,", 1)]
            vs_base = [a.pct(99) / b.pct(99) for a, b in zip(on, base, strict=True)]
            vs_off = [c.pct(99) / a.pct(99) for a, c in zip(on, off, strict=True)]
            extra = [a.extra * 100 for a in on]
            ok = max(vs_base) <= 3 and min(vs_off) >= 5 and max(extra) < 25
            goal_rows.append([profile, name, span(vs_base, "{:.2f}x"), span(vs_off, "{:.1f}x"),
                              span(extra, "{:.1f}%"), "met" if ok else "MISSED"])
    print_table(["profile", "configuration", "p50 ms", "p95 ms", "p99 ms", "max ms", "extra load",
                 "errors"], summary_rows)
    print()
    print("(no-fault p99: the 'no fault' row with the same hedge settings, same round)")
    print_table(["profile", "with the fault", "p99 / no-fault p99 (<=3x)", "off p99 / p99 (>=5x)",
                 "extra load (<25%)", "goal"], goal_rows)


if __name__ == "__main__":
    main()
