"""Ranking cost: Engine.rank for one request, 10 upstreams, the 5 built-in plugins.

Run: python bench/bench_ranking.py [--samples N] [--batch K]

The upstreams have live-looking stats (different latencies, some in flight,
one ejected) and countries on three continents; the client is in CN. Each
sample times K back-to-back rankings, each of its own RequestContext as a
request has, and keeps the mean; median and p99 are over the samples. The
goal is a median under 50 us per ranking.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goproxy_router.config.schema import Upstream
from goproxy_router.protocol.requests import Kind
from goproxy_router.scoring.api import Candidate, RequestContext
from goproxy_router.scoring.engine import Engine
from goproxy_router.scoring.loader import load_plugins
from goproxy_router.upstream.stats import StatsSettings, UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

COUNTRIES = [("CN",), ("HK",), ("JP",), ("SG",), ("DE",), ("FR",), ("US",), ("BR",), ("*",),
             ("CN", "HK", "MO")]
PLUGINS = ["geo_affinity", "latency", "breaker", "weights",
           {"pin": {"rules": [{"match": ["golang.org/x/*"], "prefer": ["up0"]},
                              {"match": ["github.com/bigcorp"], "forbid": ["up3"]}]}}]


def candidates(n: int, rng: random.Random) -> list[Candidate]:
    out = []
    for i in range(n):
        config = Upstream(url=f"https://up{i}.example", countries=COUNTRIES[i % len(COUNTRIES)],
                          weight=1.0 + (i % 3), priority=1 if i == n - 1 else 0)
        stats = UpstreamStats(f"up{i}", config.url, StatsSettings())
        for t in range(50):
            stats.record_success(rng.uniform(0.02, 0.4), now=t * 0.1)
        stats.in_flight = rng.randrange(0, 4)
        out.append(Candidate(f"up{i}", config, stats, UpstreamTarget.from_config(f"up{i}", config)))
    for _ in range(5):                                     # one ejected upstream
        out[4].stats.record_failure(0.01, "refused", now=5.0)
    return out


def measure(samples: int, batch: int) -> list[float]:
    rng = random.Random(7)
    engine = Engine(load_plugins(PLUGINS, upstream_names={f"up{i}" for i in range(10)}))
    ups = candidates(10, rng)
    contexts = [RequestContext(route="public", module="golang.org/x/mod", kind=Kind.INFO,
                               country="CN", continent="AS", now=6.0) for _ in range(batch)]
    ranking = engine.rank(contexts[0], ups)
    assert ranking.order[0].name == "up0" and len(ranking.vetoed) == 1
    for _ in range(200):                                   # warm up
        engine.rank(contexts[0], ups)
    results = []
    for _ in range(samples):
        start = time.perf_counter()
        for ctx in contexts:
            engine.rank(ctx, ups)
        results.append((time.perf_counter() - start) / batch * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    results = sorted(measure(args.samples, args.batch))
    p99 = results[min(int(len(results) * 0.99), len(results) - 1)]
    print("rank 10 upstreams x 5 plugins (geo_affinity, latency, breaker, weights, pin)")
    print(f"  median {statistics.median(results):6.1f} us   p99 {p99:6.1f} us   "
          f"({args.samples} samples x {args.batch})")


if __name__ == "__main__":
    main()
