"""Cache hits: router vs nginx proxy_cache vs a bare aiohttp handler, with wrk.

Run: python bench/bench_cache_hits.py [--rounds 2] [--duration 10] [--zip-mb 50] [--profile DIR]
                                      [--baseline DIR]

Goals: cache-hit `.info` requests per second >= 0.8x a bare aiohttp handler
returning the same bytes from memory, per worker process; and for a 50 MB
zip >= 0.8x nginx's throughput.

Setup (everything on 127.0.0.1, side by side in one run):

- a static upstream (asyncio, FileResponse) holding one `.info` and one
  `--zip-mb` MB module zip (stored, random data) on disk; idle while measured;
- nginx (Debian's), `worker_processes 1`, `proxy_cache` on disk, access_log
  off, in front of that upstream; twice: `sendfile on` and `sendfile off`
  with `output_buffers 2 1m` (zip only);
- the router (`python -m goproxy_router serve`, one process, uvloop, its cache
  on disk), its JSON request log on stderr sent to /dev/null, a second
  router process whose stderr goes to a file, and a third started with
  `--log-level warning`, which drops the access log line (.info only), and
  a fourth with `cache.send_buffers: 0`, which sends every cached file with
  sendfile (the default copies up to 8 through 1 MiB buffers, like nginx's
  `sendfile off`, and sendfiles the rest) (zip only);
- a bare aiohttp app (`python bench/benchlib.py bare`, uvloop, no access
  log, no middleware): the `.info` bytes from memory, the zip with
  `web.FileResponse`; and the same app on the plain asyncio loop (zip only).

Each server process is pinned to CPU 0 with taskset (nginx's master and its
one worker inherit it), wrk to CPU 1, so every server gets one core and the
client the other. Every cache is warmed (the second answer must say HIT)
and each target gets a 2 s wrk warm-up before its measured runs. Rounds
interleave the targets. `.info`: wrk -t1 -c32 for `--duration` s; zip:
wrk -t1 -c4. Throughput in MB/s is requests/s x the zip size (10^6 bytes).

`--baseline DIR` adds one more zip target: the router of another checkout
(e.g. `git archive REV | tar -x -C DIR`), same setup, to compare revisions
within one run.

`--profile DIR` also records the router under the same load with py-spy
(`.info` and zip), as collapsed stacks in DIR, and prints the top frames.
"""

from __future__ import annotations

import argparse
import collections
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    Nginx,
    RouterProcess,
    ServerProcess,
    WrkResult,
    cpu_seconds,
    have,
    http_get,
    print_table,
    run_wrk,
    span,
    stored_zip_parts,
)

MODULE = "example.com/bench/hits"
VERSION = "v1.0.0"
INFO_PATH = f"/{MODULE}/@v/{VERSION}.info"
ZIP_PATH = f"/{MODULE}/@v/{VERSION}.zip"
INFO = b'{"Version":"v1.0.0","Time":"2021-03-04T05:06:07Z"}'
SERVER_CPU, CLIENT_CPU = "0", "1"
NGINX_SENDFILE = "nginx proxy_cache (sendfile on)"
NGINX_BUFFERS = "nginx proxy_cache (sendfile off, output_buffers 2 1m)"
ROUTER_NO_LOG = "router, --log-level warning (no access log)"
ROUTER_BASELINE = "router of --baseline, stderr to /dev/null"
ROUTER_SENDFILE = "router, send_buffers 0 (sendfile only)"


def make_upstream_files(root: Path, zip_mb: int) -> tuple[Path, int]:
    """The .info and a stored zip of `zip_mb` MB of random data, in GOPROXY layout."""
    directory = root / MODULE / "@v"
    directory.mkdir(parents=True)
    (directory / f"{VERSION}.info").write_bytes(INFO)
    data = random.Random(5).randbytes(zip_mb * 10**6)
    head, tail = stored_zip_parts(f"{MODULE}@{VERSION}/blob.bin", len(data), zlib.crc32(data))
    zip_file = directory / f"{VERSION}.zip"
    zip_file.write_bytes(head + data + tail)
    return zip_file, len(head) + len(data) + len(tail)


def warm(url: str, expect_size: int, hit_header: str) -> None:
    """Fill the cache, then check the next answer is a complete hit."""
    for attempt in range(2):
        status, headers, body = http_get(url, timeout=60)
        if status != 200 or len(body) != expect_size:
            raise RuntimeError(f"{url}: status {status}, {len(body)} bytes (want {expect_size})")
        if attempt == 1 and hit_header:
            name, want = hit_header.split("=")
            got = headers.get(name, "")
            if got.upper() != want.upper():
                raise RuntimeError(f"{url}: second answer has {name}: {got!r}, not {want}")


def profile_router(router: RouterProcess, out: Path, url: str, conns: int, duration: float) -> Path:
    """py-spy record (collapsed stacks) of the router during one wrk run."""
    out.mkdir(parents=True, exist_ok=True)
    name = "zip" if url.endswith(".zip") else "info"
    raw = out / f"router-{name}-hits.txt"
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(router.pid), "--format", "raw",
                            "--rate", "250", "-o", str(raw), "--duration", str(int(duration) + 1)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    result = run_wrk(url, conns=conns, duration=duration, cpu=CLIENT_CPU)
    spy.wait(timeout=duration + 30)
    print(f"\npy-spy of the router, {name} hits ({result.rps:.0f} req/s while sampled): {raw}")
    summarize_profile(raw)
    return raw


IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",       # a pool thread waiting for work
               "wait (threading.py")


def summarize_profile(raw: Path, top: int = 18) -> None:
    """Top frames of py-spy's collapsed stacks, idle pool threads left out.

    Inclusive shares are of the busy samples; frames present in nearly every
    busy sample (the interpreter and event-loop scaffolding) are not shown.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not busy:
        print("  (no busy samples)")
        return
    print(f"  {busy} busy samples; inclusive:")
    shown = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * busy][:top]
    for frame, n in shown:
        print(f"  {n / busy * 100:5.1f}%  {frame}")
    print("  self:")
    for frame, n in own.most_common(10):
        print(f"  {n / busy * 100:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    parser.add_argument("--conns", type=int, default=32, help="wrk connections for .info")
    parser.add_argument("--zip-conns", type=int, default=4, help="wrk connections for the zip")
    parser.add_argument("--zip-mb", type=int, default=50)
    parser.add_argument("--profile", type=Path, help="also py-spy the router; collapsed stacks here")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout whose router is one more zip target")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not have(tool):
            sys.exit(f"{tool} is needed: apt-get install -y wrk nginx util-linux")

    with tempfile.TemporaryDirectory(prefix="bench-hits-", dir="/tmp") as tmp:
        work = Path(tmp)
        root = work / "upstream"
        zip_file, zip_size = make_upstream_files(root, args.zip_mb)
        (work / "info.json").write_bytes(INFO)
        upstream = ServerProcess(["upstream", "--root", str(root)])
        servers: list = [upstream]
        try:
            upstream.start()

            def router(stderr: str, log_level: str | None = None,
                       repo: Path | None = None, **cache: str) -> RouterProcess:
                d = work / (f"router-{stderr}-{log_level or 'info'}{'-baseline' if repo else ''}"
                            f"{'-copy' if cache else ''}")
                d.mkdir()
                conf = {"listen": "127.0.0.1:0", "upstreams": {"origin": {"url": upstream.url}},
                        "routes": [{"name": "public", "match": ["*"], "upstreams": ["origin"]}],
                        "cache": {"dir": str(d / "cache"), **cache}}
                return RouterProcess(conf, d, stderr=stderr, cpu=SERVER_CPU, log_level=log_level,
                                     **({"repo": repo.resolve()} if repo else {}))

            def nginx(sendfile: bool) -> Nginx:
                d = work / f"nginx-{'sendfile' if sendfile else 'buffers'}"
                d.mkdir()
                return Nginx(d, upstream.url, sendfile=sendfile, cpu=SERVER_CPU)

            def bare(loop: str) -> ServerProcess:
                return ServerProcess(["bare", "--loop", loop, "--body-path", INFO_PATH,
                                      "--body-file", str(work / "info.json"),
                                      "--file", f"{ZIP_PATH}={zip_file}"], cpu=SERVER_CPU)

            targets = {
                NGINX_SENDFILE: nginx(True),
                NGINX_BUFFERS: nginx(False),
                "bare aiohttp, uvloop": bare("uvloop"),
                "bare aiohttp, asyncio loop": bare("asyncio"),
                "router, stderr to /dev/null": router("devnull"),
                "router, stderr to a file": router("file"),
                ROUTER_NO_LOG: router("devnull", "warning"),
                ROUTER_SENDFILE: router("devnull", send_buffers="0"),
            }
            if args.baseline is not None:
                targets[ROUTER_BASELINE] = router("devnull", repo=args.baseline)
            for target in targets.values():
                if isinstance(target, ServerProcess):
                    target.start(INFO_PATH)
                else:
                    target.start()
                servers.append(target)
            hit = {Nginx: "X-Cache-Status=HIT", RouterProcess: "X-Goproxy-Cache=hit", ServerProcess: ""}
            for target in targets.values():
                warm(target.url + INFO_PATH, len(INFO), hit[type(target)])
                warm(target.url + ZIP_PATH, zip_size, hit[type(target)])

            info_targets = [NGINX_SENDFILE, "bare aiohttp, uvloop", "router, stderr to /dev/null",
                            "router, stderr to a file", ROUTER_NO_LOG]
            zip_targets = [NGINX_SENDFILE,
                           NGINX_BUFFERS,
                           "bare aiohttp, uvloop", "bare aiohttp, asyncio loop",
                           "router, stderr to /dev/null", ROUTER_SENDFILE]
            if args.baseline is not None:
                zip_targets.append(ROUTER_BASELINE)
            for name in info_targets:
                run_wrk(targets[name].url + INFO_PATH, conns=args.conns, duration=2, cpu=CLIENT_CPU)
            for name in zip_targets:
                run_wrk(targets[name].url + ZIP_PATH, conns=args.zip_conns, duration=2, cpu=CLIENT_CPU)

            info: dict[str, list[WrkResult]] = {n: [] for n in info_targets}
            zips: dict[str, list[WrkResult]] = {n: [] for n in zip_targets}
            for rnd in range(args.rounds):
                for label, path, conns, runs, unit in (
                        (".info", INFO_PATH, args.conns, info, lambda r: f"{r.rps:9.0f} req/s"),
                        ("zip", ZIP_PATH, args.zip_conns, zips,
                         lambda r: f"{r.rps * zip_size / 1e6:9.0f} MB/s")):
                    names = list(runs) if rnd % 2 == 0 else list(runs)[::-1]   # interleaved
                    for name in names:
                        r = measure(targets[name], targets[name].url + path, conns, args.duration)
                        runs[name].append(r)
                        print(f"round {rnd + 1} {label:6} {name:55} {unit(r)}  "
                              f"server CPU {r.cpu * 100:3.0f}%{check(r)}", flush=True)
            if args.profile is not None and have("py-spy"):
                r = targets["router, stderr to /dev/null"]
                assert isinstance(r, RouterProcess)
                profile_router(r, args.profile, r.url + INFO_PATH, args.conns, args.duration)
                profile_router(r, args.profile, r.url + ZIP_PATH, args.zip_conns, args.duration)
        finally:
            for server in reversed(servers):
                server.stop()

    report(args, info, zips, zip_size)


def measure(target: Nginx | RouterProcess | ServerProcess, url: str, conns: int,
            duration: float) -> WrkResult:
    """One wrk run; also the server's CPU use (`cpu` attribute: seconds per second)."""
    pids = target.worker_pids() if isinstance(target, Nginx) else [target.pid]
    before = cpu_seconds(pids)
    result = run_wrk(url, conns=conns, duration=duration, cpu=CLIENT_CPU)
    result.cpu = (cpu_seconds(pids) - before) / duration
    return result


def check(r: WrkResult) -> str:
    return f"   ({r.errors} socket errors, {r.non2xx} non-2xx!)" if r.errors or r.non2xx else ""


def report(args: argparse.Namespace, info: dict[str, list[WrkResult]],
           zips: dict[str, list[WrkResult]], zip_size: int) -> None:
    rounds = args.rounds
    print(f"\n.info cache hits: wrk -t1 -c{args.conns} -d{args.duration:g}s, {rounds} round(s); "
          "servers pinned to CPU 0, wrk to CPU 1")
    bare = info["bare aiohttp, uvloop"]
    nginx = info[NGINX_SENDFILE]
    rows = []
    for name, runs in info.items():
        rows.append([name, span((r.rps for r in runs), "{:.0f}"),
                     span((r.rps / b.rps for r, b in zip(runs, bare, strict=True)), "{:.2f}x"),
                     span((r.rps / n.rps for r, n in zip(runs, nginx, strict=True)), "{:.2f}x"),
                     span((r.cpu * 100 for r in runs), "{:.0f}%"),
                     span((r.cpu / r.rps * 1e6 for r in runs), "{:.0f}"),
                     str(sum(r.errors + r.non2xx for r in runs))])
    print_table(["server (one process)", "req/s", "vs bare aiohttp", "vs nginx", "server CPU",
                 "CPU us/req", "errors"], rows)
    router_ratio = [r.rps / b.rps for r, b in zip(info["router, stderr to /dev/null"], bare, strict=True)]
    print(f"goal router >= 0.8x bare aiohttp: {span(router_ratio, '{:.2f}x')} -> "
          f"{'met' if min(router_ratio) >= 0.8 else 'MISSED'}")

    print(f"\n{zip_size / 1e6:.1f} MB zip cache hits: wrk -t1 -c{args.zip_conns} -d{args.duration:g}s")
    best_nginx = [max(a.rps, b.rps) for a, b in zip(zips[NGINX_SENDFILE], zips[NGINX_BUFFERS], strict=True)]
    rows = []
    for name, runs in zips.items():
        rows.append([name, span((r.rps * zip_size / 1e6 for r in runs), "{:.0f}"),
                     span((r.rps for r in runs), "{:.1f}"),
                     span((r.rps / n for r, n in zip(runs, best_nginx, strict=True)), "{:.2f}x"),
                     span((r.rps / n.rps for r, n in zip(runs, zips[NGINX_SENDFILE], strict=True)),
                          "{:.2f}x"),
                     span((r.cpu * 100 for r in runs), "{:.0f}%"),
                     span((r.cpu / (r.rps * zip_size / 1e9) for r in runs), "{:.2f}"),
                     str(sum(r.errors + r.non2xx for r in runs))])
    print_table(["server (one process)", "MB/s", "req/s", "vs best nginx", "vs nginx sendfile on",
                 "server CPU", "CPU s/GB", "errors"], rows)
    nginx_sendfile = [n.rps for n in zips[NGINX_SENDFILE]]
    default = "router, stderr to /dev/null"
    for who, label, base in (
            (default, "the better of its two configs", best_nginx),
            (default, "sendfile on, Debian's default", nginx_sendfile),
            (ROUTER_SENDFILE, "sendfile on, Debian's default", nginx_sendfile),
            (ROUTER_SENDFILE, "the better of its two configs", best_nginx)):
        ratio = [r.rps / n for r, n in zip(zips[who], base, strict=True)]
        print(f"goal {who} >= 0.8x nginx ({label}, per round): {span(ratio, '{:.2f}x')} -> "
              f"{'met' if min(ratio) >= 0.8 else 'MISSED'}")

if __name__ == "__main__":
    main()
