"""Cache hits that take the full flow (HEAD of a kept `.info`): requests per second.

The thin path answers plain GETs of small kept hits; HEAD, Range, `If-*`,
queries and private routes go through parsing, routing, the access check and
the cache. This measures that path in-process (the router and one sequential
client on one loop, a fake upstream for the first fill), for this checkout
and, with `--baseline DIR`, for another checkout side by side: the two run in
alternation, each in its own process, so both see the same machine.

    python bench/bench_full_flow_hits.py [--rounds 3] [--requests 3000] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

ONE_RUN = r'''
import asyncio, sys, tempfile, time, yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
{imports}
from tests.support import FakeProxy, Module, ModuleTree

async def main(requests: int) -> None:
    module = Module("example.com/bench", "v1.0.0")
    upstream = await FakeProxy(ModuleTree([module])).start()
    cache = tempfile.mkdtemp()
    config = {"upstreams": {"up": {"url": upstream.url}},
              "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
              "probes": {"enabled": False}, "cache": {"dir": cache + "/c"}}
    app = build_app(parse_config(yaml.safe_dump(config), "routes.yaml", {}), {})
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}/example.com/bench/@v/v1.0.0.info"
    async with ClientSession() as session:
        for _ in range(200):                      # fill, then warm up
            async with session.get(url) as response:
                await response.read()
        started = time.perf_counter()
        for _ in range(requests):
            async with session.head(url) as response:
                assert response.headers["X-Goproxy-Cache"] == "hit"
        print(requests / (time.perf_counter() - started))
    await server.close()
    await upstream.stop()

asyncio.run(main(int(sys.argv[1])))
'''
# The app and config loader of today's layout, and of a checkout from before the
# package was named goproxy_router (a --baseline of that age).
IMPORTS = ("from goproxy_router.runtime.app import build_app\n"
           "from goproxy_router.config.loader import parse_config")
IMPORTS_BEFORE_RENAME = "from router.app import build_app\nfrom router.config import parse_config"


def one_run(tree: Path, requests: int) -> float:
    """Requests per second of one run in a fresh process rooted at `tree`."""
    old = (tree / "router" / "cli.py").is_file()
    script = ONE_RUN.replace("{imports}", IMPORTS_BEFORE_RENAME if old else IMPORTS)
    result = subprocess.run([sys.executable, "-c", script, str(requests)], cwd=tree,
                            capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"{tree}: {result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    args = parser.parse_args()
    trees = {"this checkout": HERE}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    results: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(one_run(tree, args.requests))
    print("| tree | HEAD .info full-flow hits, req/s (per round) | median |")
    print("|---|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {', '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    main()
