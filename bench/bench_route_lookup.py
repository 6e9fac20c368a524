"""Route lookup cost: PatternTable.lookup among 1,000 realistic GOPRIVATE globs.

Run: python bench/bench_route_lookup.py [--samples N] [--batch K]

Each sample times K back-to-back lookups of one target and keeps the mean, so
timer overhead is amortised; median and p99 are over the samples. The target
budget is a median well under 20 us per lookup.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goproxy_router.protocol.pathmatch import match_prefix_patterns
from goproxy_router.protocol.patterns import PatternTable

N_PATTERNS = 1000


# (share of the table, glob for the i-th pattern of that shape)
SHAPES: list[tuple[float, str]] = [
    (0.40, "github.com/org{i}"),
    (0.20, "*.corp{i}.example"),
    (0.20, "github.com/team{i}/private-*"),
    (0.10, "gitlab.com/group{i}/*/internal"),
    (0.05, "git.host{i}.example/svc-??"),
    (0.05, "bitbucket.org/acme{i}/[a-m]*"),
]


def realistic_globs(n: int, seed: int = 1) -> list[str]:
    """A shuffled mix of the shapes real routes.yaml files use."""
    globs = [
        shape.format(i=i) for share, shape in SHAPES for i in range(int(share * n))
    ]
    random.Random(seed).shuffle(globs)
    return globs


def instance_of(glob: str) -> str:
    """A module path that glob matches, with a couple of extra elements."""
    return (
        re.sub(r"\[[^]]*\]", "c", glob).replace("*", "x1").replace("?", "a") + "/pkg/v2"
    )


def timed(fn: Callable[[], object], samples: int, batch: int) -> tuple[float, float]:
    """Median and p99 of per-call time in microseconds."""
    per_call: list[float] = []
    clock = time.perf_counter_ns
    loop = range(batch)
    for _ in range(samples):
        start = clock()
        for _ in loop:
            fn()
        per_call.append((clock() - start) / batch / 1000)
    per_call.sort()
    return statistics.median(per_call), per_call[
        min(len(per_call) - 1, int(len(per_call) * 0.99))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    globs = realistic_globs(N_PATTERNS)
    start = time.perf_counter()
    table = PatternTable((glob, i) for i, glob in enumerate(globs))
    build_ms = (time.perf_counter() - start) * 1000

    cases: list[tuple[str, str, int | None]] = [
        (f"hit #{pos} {globs[pos]}", instance_of(globs[pos]), pos)
        for pos in (0, 250, 500, 750, N_PATTERNS - 1)
    ]
    cases += [
        ("miss, shared host", "github.com/unknown-org/repo", None),
        ("miss, other host", "golang.org/x/mod", None),
        ("miss, deep path", "example.org/a/b/c/d/e/f/v3", None),
    ]
    for name, target, expected in cases:
        assert table.lookup(target) == expected, (name, target)

    print(
        f"PatternTable: {len(table)} globs, built in {build_ms:.1f} ms; "
        f"{args.samples} samples x {args.batch} lookups each"
    )
    print(f"{'case':<52} {'target':<42} {'median us':>9} {'p99 us':>8}")
    for name, target, _ in cases:
        med, p99 = timed(partial(table.lookup, target), args.samples, args.batch)
        print(f"{name:<52} {target:<42} {med:9.2f} {p99:8.2f}")

    miss = cases[-1][1]
    med, p99 = timed(lambda: any(match_prefix_patterns(g, miss) for g in globs), 20, 1)
    print(
        f"{'for comparison: linear match_prefix_patterns, miss':<52} {miss:<42} {med:9.0f} {p99:8.0f}"
    )


if __name__ == "__main__":
    main()
