"""Memory while streaming: router RSS during 50 concurrent uncached 500 MB zips.

Run: python bench/bench_memory.py [--size-mb 500] [--same 50] [--distinct 50] [--rounds 1]

One round takes ~2-3 minutes here and writes ~25 GB into the router's cache
(deleted at the end); run it twice (or --rounds 2) for ranges.

Goal: 50 concurrent downloads of an uncached 500 MB zip grow the server's
RSS by less than 100 MB.

Setup:

- one file of `--size-mb` MB of seeded random bytes, written once into a temp
  directory on disk (/tmp); every zip is a valid stored zip whose single entry
  `<module>@<version>/blob.bin` is that data: the static upstream
  (`python bench/benchlib.py upstream`, plain asyncio loop) sends a small
  per-version head (local file header) from memory, then the shared data file
  with sendfile(2), then the per-version tail (central directory + end record).
  So 50 distinct zips cost 500 MB of upstream disk, not 25 GB; the router
  sees 50 different artifacts and caches each one (25 GB in its cache);
- the router: `python -m goproxy_router serve` (uvloop), a fresh cache directory on
  disk for each scenario, JSON log on stderr to a file, default settings;
- the client: this process (uvloop), one aiohttp connection per download,
  all started together; each body is checked as it streams (head and tail
  byte for byte, the data part by SHA-256 against the file's digest, and the
  length), so every downloaded byte is verified;
- VmRSS of the router process from /proc/PID/status every 100 ms, from
  before the burst until it has ended. Baseline: the idle router just before
  the burst (after /healthz); growth = peak - baseline.

Scenarios, each with a fresh router and an empty cache:
- same: `--same` concurrent downloads of one uncached zip (coalesced: one
  upstream fill streamed to the first requester and teed into the cache; the
  others wait for the commit, then get the cached file);
- distinct: `--distinct` concurrent downloads of as many different uncached
  zips (as many fills at once, each teed into the cache).
The disk needed is checked first (distinct x size for the router's cache,
plus the data file); with too little free space the distinct count is cut
down and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    RouterProcess,
    RssSampler,
    ServerProcess,
    file_crc32,
    print_table,
    rss_kib,
    span,
    stored_zip_parts,
    write_random_file,
)

MODULE = "example.com/bench/big"


@dataclass
class Expected:
    head: bytes
    data_size: int
    data_sha256: bytes
    tail: bytes

    @property
    def size(self) -> int:
        return len(self.head) + self.data_size + len(self.tail)


class Verifier:
    """Checks a streamed body against head + data (by digest) + tail."""

    def __init__(self, expected: Expected) -> None:
        self.e = expected
        self.pos = 0
        self.head = bytearray()
        self.tail = bytearray()
        self.digest = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        e, view = self.e, memoryview(chunk)
        start, end = self.pos, self.pos + len(chunk)
        data_from, data_to = len(e.head), len(e.head) + e.data_size
        if start < data_from:
            self.head += view[: min(end, data_from) - start]
        lo, hi = max(start, data_from), min(end, data_to)
        if lo < hi:
            self.digest.update(view[lo - start: hi - start])
        if end > data_to:
            self.tail += view[max(start, data_to) - start:]
        self.pos = end

    def ok(self) -> bool:
        e = self.e
        return (self.pos == e.size and bytes(self.head) == e.head and bytes(self.tail) == e.tail
                and self.digest.digest() == e.data_sha256)


@dataclass
class Scenario:
    name: str
    downloads: int
    verified: int
    failures: list[str]
    baseline_kib: int
    peak_kib: int
    after_kib: int
    seconds: float
    bytes_total: int
    samples: list[tuple[float, int]]
    fills: int = 0                  # zip requests the router sent upstream (from its access log)

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024


async def download(session: object, url: str, expected: Expected) -> str | None:
    """None when the whole body arrived and checks out, else what went wrong."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    verifier = Verifier(expected)
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return f"HTTP {response.status}: {(await response.read())[:200]!r}"
            async for chunk in response.content.iter_any():
                verifier.feed(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc} after {verifier.pos} bytes"
    return None if verifier.ok() else f"body mismatch ({verifier.pos} of {expected.size} bytes)"


async def burst(base: str, versions: list[str], expected: dict[str, Expected],
                limit: float) -> tuple[list[str | None], float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=limit, sock_read=60)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with asyncio.timeout(limit + 10):
            results = await asyncio.gather(*(
                download(session, f"{base}/{MODULE}/@v/{v}.zip", expected[v]) for v in versions))
    return list(results), time.perf_counter() - started


def upstream_fills(log: Path) -> int:
    """Zip requests in the router's access log that made upstream attempts (the fills)."""
    fills = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request" and str(entry.get("path", "")).endswith(".zip"):
            fills[bool(entry.get("attempts"))] += 1
    return fills[True]


def run_scenario(name: str, versions: list[str], expected: dict[str, Expected], upstream: str,
                 work: Path, limit: float) -> Scenario:
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix=f"router-{name}-", dir=work))
    conf = {"listen": "127.0.0.1:0", "upstreams": {"origin": {"url": upstream}},
            "routes": [{"name": "public", "match": ["*"], "upstreams": ["origin"]}],
            "cache": {"dir": str(workdir / "cache")}}
    try:
        with RouterProcess(conf, workdir, stderr="file") as router:
            time.sleep(1.0)                             # let start-up settle
            baseline = rss_kib(router.pid)
            sampler = RssSampler(router.pid, 0.1)
            sampler.start()
            results, seconds = uvloop.run(burst(router.url, versions, expected, limit))
            time.sleep(1.0)
            samples = sampler.stop()
            after = rss_kib(router.pid)
        fills = upstream_fills(router.log_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    failures = [f"{v}: {r}" for v, r in zip(versions, results, strict=True) if r is not None]
    return Scenario(name, len(versions), len(versions) - len(failures), failures, baseline,
                    max(kib for _, kib in samples), after, seconds,
                    sum(expected[v].size for v in versions), samples, fills)


def timeline(samples: list[tuple[float, int]], points: int = 12) -> str:
    step = max(1, len(samples) // points)
    return " ".join(f"{t:.0f}s:{kib / 1024:.0f}" for t, kib in samples[::step])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--same", type=int, default=50, help="concurrent downloads of one zip")
    parser.add_argument("--distinct", type=int, default=50, help="concurrent downloads of as many zips")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tmp", default="/tmp", help="where the data file and the router caches go")
    parser.add_argument("--time-limit", type=float, default=240.0, help="per burst, seconds")
    args = parser.parse_args()

    size = args.size_mb * 10**6
    free = shutil.disk_usage(args.tmp).free
    distinct = args.distinct
    # the router's cache holds every distinct zip; keep 10 GB spare for everyone else
    room = int((free - size - 10 * 10**9) // size)
    if room < distinct:
        print(f"NOTE: {free / 1e9:.0f} GB free under {args.tmp}: distinct downloads cut from "
              f"{distinct} to {max(room, 0)}")
        distinct = max(room, 0)

    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=args.tmp) as tmp:
        work = Path(tmp)
        data = work / "data.bin"
        t0 = time.perf_counter()
        write_random_file(data, size, seed=7)
        crc = file_crc32(data)
        digest = hashlib.sha256()
        with open(data, "rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
        print(f"data file: {size / 1e6:.0f} MB of random bytes, written and hashed in "
              f"{time.perf_counter() - t0:.1f}s; {free / 1e9:.0f} GB free under {args.tmp}", flush=True)

        root = work / "upstream"
        (root / MODULE / "@v").mkdir(parents=True)
        versions_same = ["v1.0.0"]
        versions_distinct = [f"v1.1.{i}" for i in range(distinct)]
        expected: dict[str, Expected] = {}
        for v in versions_same + versions_distinct:
            head, tail = stored_zip_parts(f"{MODULE}@{v}/blob.bin", size, crc)
            (root / MODULE / "@v" / f"{v}.zip.head").write_bytes(head)
            (root / MODULE / "@v" / f"{v}.zip.tail").write_bytes(tail)
            expected[v] = Expected(head, size, digest.digest(), tail)

        results: list[Scenario] = []
        with ServerProcess(["upstream", "--root", str(root), "--data", str(data)]) as upstream:
            for rnd in range(args.rounds):
                plan = [(f"same x{args.same}", versions_same * args.same)] if args.same else []
                if distinct:
                    plan.append((f"distinct x{distinct}", versions_distinct))
                for name, versions in plan:
                    s = run_scenario(name.split()[0], versions, expected, upstream.url, work,
                                     args.time_limit)
                    s.name = name
                    results.append(s)
                    print(f"round {rnd + 1} {name:13} baseline {s.baseline_kib / 1024:6.1f} MiB  "
                          f"peak {s.peak_kib / 1024:6.1f} MiB  growth {s.growth_mib:6.1f} MiB  "
                          f"{s.verified}/{s.downloads} verified  {s.seconds:5.1f}s  "
                          f"{s.bytes_total / s.seconds / 1e6:5.0f} MB/s to clients  "
                          f"{s.fills} upstream fill(s)", flush=True)
                    print(f"    RSS MiB over time: {timeline(s.samples)}", flush=True)
                    for failure in s.failures[:5]:
                        print(f"    FAILED {failure}")

    print(f"\nrouter VmRSS, sampled every 100 ms; {args.size_mb} MB zips; {args.rounds} round(s)")
    rows = []
    for name in dict.fromkeys(s.name for s in results):
        runs = [s for s in results if s.name == name]
        rows.append([name, span(s.baseline_kib / 1024 for s in runs), span(s.peak_kib / 1024 for s in runs),
                     span(s.growth_mib for s in runs), span(s.after_kib / 1024 for s in runs),
                     f"{sum(s.verified for s in runs)}/{sum(s.downloads for s in runs)}",
                     span((s.seconds for s in runs), "{:.0f}"),
                     span((s.bytes_total / s.seconds / 1e6 for s in runs), "{:.0f}"),
                     "met" if all(s.growth_mib < 100 for s in runs) else "MISSED"])
    print_table(["scenario", "baseline MiB", "peak MiB", "growth MiB", "1 s after MiB", "verified",
                 "seconds", "MB/s to clients", "growth < 100 MB"], rows)


if __name__ == "__main__":
    main()
