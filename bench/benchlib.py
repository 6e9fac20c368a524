"""Shared plumbing for the load benchmarks: servers on 127.0.0.1, wrk, RSS, tables.

Not a benchmark itself. The benchmark scripts import it (``bench/`` is on
``sys.path`` when one of them runs) and start, through it:

- the router as a subprocess of the real CLI (``python -m goproxy_router serve``),
  on uvloop as in production, with its JSON log on stderr sent to
  ``/dev/null`` or to a file, as the caller says;
- a fleet of ``tests.support.fakeproxy.FakeProxy`` upstreams with a base
  latency, in a child process of their own (so neither the client's event
  loop nor the GIL adds jitter to their timing), steered through a pipe;
- a static upstream (``python bench/benchlib.py upstream``) on the plain
  asyncio loop, whose ``FileResponse`` really uses ``sendfile(2)``, and which
  can also serve a zip assembled from a small per-version head, one shared
  data file (sent with ``sendfile``) and a per-version tail;
- a bare aiohttp server (``python bench/benchlib.py bare``) returning a body
  from memory, or a file, with no middleware and no access log.

Every process is started on a free loopback port, waited for with a bound,
and stopped by its own pid (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable


# -- small helpers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll `url` until it answers (any status) or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s: {last}")


def http_get(url: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM this one process, wait (bounded), then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in [0, 100])."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def span(values: Iterable[float], fmt: str = "{:.1f}") -> str:
    """"lo–hi" (or a single value) for a range over repeated runs."""
    vals = sorted(v for v in values if v == v)
    if not vals:
        return "-"
    lo, hi = fmt.format(vals[0]), fmt.format(vals[-1])
    return lo if lo == hi else f"{lo}–{hi}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths,
              strict=True))).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    out.flush()


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


class RssSampler(threading.Thread):
    """Samples a pid's VmRSS every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - start, rss_kib(self.pid)))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join(timeout=5)
        return self.samples

    @property
    def peak(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


# -- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    bytes_per_s: float
    requests: int
    errors: int
    non2xx: int
    raw: str
    cpu: float = 0.0        # the server's CPU seconds per second during the run, when measured


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def run_wrk(url: str, *, threads: int = 1, conns: int = 32, duration: float = 10.0,
            cpu: str | None = None, timeout_s: float = 10.0) -> WrkResult:
    """One bounded wrk run; `cpu` pins wrk with taskset (e.g. "1")."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", f"--timeout={timeout_s:g}s", url]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    total = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or transfer is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return WrkResult(
        rps=float(rps.group(1)),
        bytes_per_s=float(transfer.group(1)) * _UNITS[transfer.group(2)],
        requests=int(total.group(1)),
        errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        raw=out,
    )


# -- the router as a subprocess ------------------------------------------------------------


class LocalServer:
    """A server child process on a free loopback port: its URL, pid, and `with` support.
    Subclasses start it (`start`, returning self) and stop it (`stop`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> LocalServer:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def router_command(repo: Path) -> list[str]:
    """How to start the router of checkout `repo`: `python -m goproxy_router`, or
    `python -m router.cli` for a checkout from before the package was named
    goproxy_router. Another checkout of today's layout needs its own venv
    (`repo/.venv`, `pip install -e .` there): goproxy_router is whichever is installed."""
    if (repo / "router" / "cli.py").is_file():
        return [PYTHON, "-m", "router.cli"]
    own = repo / ".venv" / "bin" / "python"
    if repo.resolve() != REPO.resolve() and not own.is_file():
        raise SystemExit(f"{repo}: a goproxy_router checkout needs its own venv at {own}")
    return [str(own) if repo.resolve() != REPO.resolve() else PYTHON, "-m", "goproxy_router"]


class RouterProcess(LocalServer):
    """`python -m goproxy_router serve --config F --listen 127.0.0.1:P` (uvloop, as in production).

    `stderr` (the per-request JSON log): "devnull", or "file" (``<workdir>/router.log``).
    `cpu`: pin the router with taskset (e.g. "0"). `log_level`: the CLI's global
    --log-level ("warning" drops the per-request access log line). `repo`: run the
    router code of another checkout (default: this one); only a checkout from before
    issue 12 (with router/cli.py) runs its own code, a later one runs the installed package.
    """

    def __init__(self, config: dict[str, Any], workdir: Path, *, stderr: str = "devnull",
                 cpu: str | None = None, log_level: str | None = None,
                 repo: Path = REPO) -> None:
        super().__init__()
        self.workdir = workdir
        self.repo = repo
        self.log_level = log_level
        self.config_path = write_yaml(workdir / "routes.yaml", config)
        self.stderr_mode = stderr
        self.log_path = workdir / "router.log"
        self.cpu = cpu
        self._log_file: Any = None

    def start(self) -> RouterProcess:
        level = ["--log-level", self.log_level] if self.log_level else []
        cmd = [*router_command(self.repo), *level, "serve", "--config", str(self.config_path),
               "--listen", f"127.0.0.1:{self.port}", "--shutdown-timeout", "2"]
        if self.cpu is not None:
            cmd = ["taskset", "-c", self.cpu, *cmd]
        if self.stderr_mode == "file":
            self._log_file = open(self.log_path, "wb")
            err: Any = self._log_file
        else:
            err = subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=self.repo, stdout=subprocess.DEVNULL, stderr=err)
        wait_http(self.url + "/healthz", proc=self.proc)
        return self

    def metrics(self) -> dict[str, float]:
        """Unlabelled and summed counters from /metrics, by metric name."""
        _, _, body = http_get(self.url + "/metrics", timeout=10)
        totals: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def stop(self) -> None:
        stop_process(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# -- a fleet of fake upstreams in a child process --------------------------------------------


@dataclass
class FakeSpec:
    """One fake upstream: a base latency before every answer, and module versions to serve
    (`versions` of `module`, or a whole `tree`: a tests.support ModuleTree). A hung
    request is released (its connection closed) after `max_hang` seconds."""

    name: str
    base_delay: float = 0.0
    module: str = "example.com/bench/m"
    versions: list[str] = field(default_factory=list)
    tree: Any = None
    max_hang: float = 30.0


def _fleet_main(conn: Any, specs: list[FakeSpec]) -> None:
    """Child process: serve the fakes, obey commands from the pipe until "stop"."""
    import uvloop

    from tests.support.fakeproxy import FakeProxy, Faults
    from tests.support.modtree import Module, ModuleTree

    class DelayedFake(FakeProxy):
        """A FakeProxy that takes `base_delay` seconds before anything else it does."""

        def __init__(self, *args: Any, base_delay: float = 0.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.base_delay = base_delay

        async def _answer(self, request: Any, record: Any, faults: Any, active: bool) -> Any:
            if self.base_delay > 0:
                await asyncio.sleep(self.base_delay)
            return await super()._answer(request, record, faults, active)

    async def main() -> None:
        fakes: dict[str, DelayedFake] = {}
        for spec in specs:
            tree = (spec.tree if spec.tree is not None
                    else ModuleTree(Module(spec.module, v) for v in spec.versions))
            fake = DelayedFake(tree, name=spec.name, base_delay=spec.base_delay,
                               max_hang=spec.max_hang)
            await fake.start()
            fakes[spec.name] = fake
        conn.send({name: fake.url for name, fake in fakes.items()})
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if command == "faults":
                name, changes = args
                fakes[name].faults = Faults(**changes)
                conn.send(True)
            elif command == "counts":
                pattern = re.compile(args[0])
                out = {}
                for name, fake in fakes.items():
                    reqs = [r for r in fake.requests if pattern.search(r.raw_path)]
                    out[name] = {"requests": len(reqs),
                                 "faulted": sum(r.faulted for r in reqs),
                                 "disconnected": sum(r.disconnected for r in reqs)}
                conn.send(out)
        for fake in fakes.values():
            await fake.stop()
        conn.send("stopped")

    uvloop.run(main())


class FakeFleet:
    """Fake upstreams (FakeProxy + base latency) served by a child process."""

    def __init__(self, specs: list[FakeSpec]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_fleet_main, args=(child, specs), daemon=True)
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> FakeFleet:
        self._proc.start()
        if not self._conn.poll(timeout):
            raise RuntimeError("fake upstreams did not start")
        self.urls = self._conn.recv()
        return self

    def _call(self, *message: Any, timeout: float = 30.0) -> Any:
        self._conn.send(message)
        if not self._conn.poll(timeout):
            raise RuntimeError(f"fake upstreams did not answer {message[0]!r}")
        return self._conn.recv()

    def set_faults(self, name: str, **faults: Any) -> None:
        self._call("faults", name, faults)

    def counts(self, path_regex: str = r"") -> dict[str, dict[str, int]]:
        return self._call("counts", path_regex)

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(Exception):
                self._call("stop", timeout=15)
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def __enter__(self) -> FakeFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- module zips: whole, or head + shared data + tail -----------------------------------------


def write_random_file(path: Path, size: int, seed: int = 1) -> None:
    """`size` pseudo-random (incompressible) bytes, written in 16 MiB blocks."""
    import random

    rng = random.Random(seed)
    block = 16 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(rng.randbytes(n))
            left -= n


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def stored_zip_parts(entry_name: str, data_size: int, crc: int) -> tuple[bytes, bytes]:
    """Head (local file header) and tail (central directory + end record) of a zip
    holding one stored entry `entry_name` of `data_size` bytes with CRC `crc`.
    head + data + tail is a valid zip (no zip64: data_size < 4 GiB)."""
    if data_size >= 0xFFFFFFFF:
        raise ValueError("data too large for a non-zip64 archive")
    name = entry_name.encode()
    dos_time, dos_date = 0, (1980 - 1980) << 9 | 1 << 5 | 1        # 1980-01-01 00:00
    head = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, dos_time, dos_date,
                       crc, data_size, data_size, len(name), 0) + name
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0x031E, 20, 0, 0, dos_time,
                          dos_date, crc, data_size, data_size, len(name), 0, 0, 0, 0,
                          0o100644 << 16, 0) + name
    cd_offset = len(head) + data_size
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), cd_offset, 0)
    return head, central + end


# -- the static upstream and the bare server (run as `python bench/benchlib.py ...`) ---------


def _serve_upstream(port: int, root: Path, data: Path | None) -> None:
    """GET <path>: the file root/<path> with FileResponse (sendfile on the asyncio loop), or
    root/<path>.head + the shared `data` file (sendfile) + root/<path>.tail; else 404."""
    from aiohttp import web

    data_size = data.stat().st_size if data is not None else 0

    async def handle(request: web.Request) -> web.StreamResponse:
        rel = request.path.lstrip("/")
        if ".." in rel.split("/"):
            return web.Response(status=400)
        whole = root / rel
        if whole.is_file():
            return web.FileResponse(whole, headers={"Content-Type": _content_type(rel)})
        head_file = root / (rel + ".head")
        if data is None or not head_file.is_file():
            return web.Response(status=404, text=f"not here: {request.path}\n")
        head, tail = head_file.read_bytes(), (root / (rel + ".tail")).read_bytes()
        resp = web.StreamResponse(headers={"Content-Type": "application/zip"})
        resp.content_length = len(head) + data_size + len(tail)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        await resp.write(head)
        transport = request.transport
        assert transport is not None
        with open(data, "rb") as f:
            await asyncio.get_running_loop().sendfile(transport, f, 0, data_size)
        await resp.write(tail)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


def _content_type(path: str) -> str:
    if path.endswith(".zip"):
        return "application/zip"
    if path.endswith((".info", "@latest")):
        return "application/json"
    return "text/plain; charset=utf-8"


def _serve_bare(port: int, loop: str, body_path: str, body_file: Path,
                files: list[tuple[str, Path]]) -> None:
    """The floor: one route returning bytes from memory, others a FileResponse; nothing else."""
    from aiohttp import web

    body = body_file.read_bytes()
    content_type = _content_type(body_path)

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get(body_path, small)
    for url_path, file in files:
        def make(file: Path = file) -> Any:
            async def big(request: web.Request) -> web.FileResponse:
                return web.FileResponse(file, headers={"Content-Type": "application/zip"})
            return big
        app.router.add_get(url_path, make())
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class ServerProcess(LocalServer):
    """One of the helper servers above as a subprocess."""

    def __init__(self, args: list[str], cpu: str | None = None) -> None:
        super().__init__()
        cmd = [PYTHON, str(Path(__file__).resolve()), *args, "--port", str(self.port)]
        self.cmd = ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd

    def start(self, probe_path: str = "/") -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_http(self.url + probe_path, proc=self.proc)
        return self


# -- nginx ------------------------------------------------------------------------------------


class Nginx(LocalServer):
    """Debian's nginx, one worker, as a caching reverse proxy (proxy_cache) for `upstream`.

    `cpu`: pin the master and its worker with taskset (e.g. "0").
    """

    def __init__(self, workdir: Path, upstream: str, *, sendfile: bool = True,
                 cpu: str | None = None) -> None:
        super().__init__()
        self.workdir = workdir
        self.upstream = upstream
        self.sendfile = sendfile
        self.cpu = cpu

    def config(self) -> str:
        d = self.workdir
        buffers = ("sendfile on; tcp_nopush on;" if self.sendfile
                   else "sendfile off; output_buffers 2 1m;")
        return f"""
worker_processes 1;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {buffers}
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=mods:16m max_size=10g inactive=7d
                     use_temp_path=off;
    upstream origin {{ server {self.upstream.removeprefix("http://")}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{self.port} backlog=1024;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache mods;
            proxy_cache_valid 200 365d;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""

    def start(self) -> Nginx:
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        cmd = ["nginx", "-p", str(self.workdir), "-c", str(conf)]
        if self.cpu is not None:            # the master and its one worker inherit the pinning
            cmd = ["taskset", "-c", self.cpu, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/", proc=self.proc)
        return self

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        # SIGQUIT is nginx's graceful stop; the master waits for its workers.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="helper servers for the benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--root", type=Path, required=True)
    up.add_argument("--data", type=Path)
    bare = commands.add_parser("bare")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    bare.add_argument("--body-path", required=True)
    bare.add_argument("--body-file", type=Path, required=True)
    bare.add_argument("--file", action="append", default=[], metavar="URLPATH=FILE")
    args = parser.parse_args(argv)
    if args.command == "upstream":
        _serve_upstream(args.port, args.root, args.data)
    else:
        files = [(u, Path(f)) for u, _, f in (spec.partition("=") for spec in args.file)]
        _serve_bare(args.port, args.loop, args.body_path, args.body_file, files)


if __name__ == "__main__":
    main()


__all__ = ["FakeFleet", "FakeSpec", "Nginx", "REPO", "RouterProcess", "RssSampler", "ServerProcess",
           "WrkResult", "cpu_seconds", "file_crc32", "free_port", "have", "http_get", "percentile",
           "print_table", "rss_kib", "run_wrk", "span", "stop_process", "stored_zip_parts",
           "wait_http", "write_random_file", "write_yaml"]
