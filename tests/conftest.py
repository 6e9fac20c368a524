"""Generic fixtures: fake upstreams, an isolated go environment, and the
router as a subprocess.

The go command and the router run as separate processes, like in
production; fakes they talk to run on a background loop (``threaded_fake_proxy``)
so the test thread can block on them. Every wait here is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from goproxy_router.base.logs import LineSink
from goproxy_router.storage.disk import DiskCache
from tests.support import FakeProxy, Faults, ModuleTree, RefusedPort, ThreadedFakeProxy

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_GO_ENV = "GOPROXY_ROUTER_REQUIRE_GO"


# -- fake upstreams ---------------------------------------------------------

@pytest.fixture
async def fake_proxy() -> AsyncIterator[Callable[..., Awaitable[FakeProxy]]]:
    """Factory for fakes on the test's own loop: ``await fake_proxy(tree, name=..., faults=...)``."""
    started: list[FakeProxy] = []

    async def make(tree: ModuleTree | None = None, *, name: str = "fake",
                   faults: Faults | None = None) -> FakeProxy:
        proxy = await FakeProxy(tree, name=name, faults=faults).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.stop()


@pytest.fixture
def threaded_fake_proxy() -> Iterator[Callable[..., ThreadedFakeProxy]]:
    """Factory for fakes on a background thread, for subprocess-based tests."""
    started: list[ThreadedFakeProxy] = []

    def make(tree: ModuleTree | None = None, *, name: str = "fake",
             faults: Faults | None = None) -> ThreadedFakeProxy:
        proxy = ThreadedFakeProxy(tree, name=name, faults=faults).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., DiskCache]]:
    """``make_cache(max_size=None, root=None, sweep=True, **kw)`` -> a DiskCache, closed at teardown."""
    caches: list[DiskCache] = []

    def make(max_size: int | None = None, root: Path | None = None, *, sweep: bool = True,
             **kw: Any) -> DiskCache:
        cache = DiskCache(root or tmp_path / "cache", max_size, **kw)
        if sweep:
            cache.sweep()
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An http://127.0.0.1:PORT URL where connections are refused."""
    with RefusedPort() as port:
        yield port.url


# -- the go command ---------------------------------------------------------

@dataclass
class GoEnv:
    """An isolated GOPATH/GOMODCACHE/GOCACHE/HOME under a temp directory.

    The environment is built from scratch (not inherited) so a developer's
    GOPROXY, GOPRIVATE or GOFLAGS can never leak into a test.
    """

    root: Path
    goproxy: str = "off"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def gomodcache(self) -> Path:
        return self.root / "gopath" / "pkg" / "mod"

    @property
    def download_dir(self) -> Path:
        return self.gomodcache / "cache" / "download"

    def environ(self, goproxy: str | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "GOPATH": str(self.root / "gopath"),
            "GOMODCACHE": str(self.gomodcache),
            "GOCACHE": str(self.root / "gocache"),
            "GOPROXY": goproxy if goproxy is not None else self.goproxy,
            "GOSUMDB": "off",
            "GONOSUMDB": "",
            "GOPRIVATE": "",
            "GONOPROXY": "",
            # -modcacherw: the cache is otherwise read-only and hard to clean up.
            "GOFLAGS": "-mod=mod -modcacherw",
            "GOTOOLCHAIN": "local",
            "GO111MODULE": "on",
            "GOWORK": "off",
            "CGO_ENABLED": "0",
        }
        env.update(self.extra)
        return env

    def run(self, *args: str, cwd: Path, goproxy: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``go ARGS``; the subprocess is killed after ``timeout`` s."""
        return subprocess.run(["go", *args], cwd=cwd, env=self.environ(goproxy),
                              capture_output=True, text=True, timeout=timeout)

    def downloaded(self, ext: str = "zip") -> set[str]:
        """``<escaped path>/@v/<version>.<ext>`` for every cached artifact."""
        if not self.download_dir.is_dir():
            return set()
        return {p.relative_to(self.download_dir).as_posix()
                for p in self.download_dir.rglob(f"*.{ext}") if "/@v/" in p.as_posix()}


def require_go() -> None:
    """Skip (with the reason shown by -ra) when go is missing, unless CI demands it."""
    if shutil.which("go") is None:
        if os.environ.get(REQUIRE_GO_ENV):
            pytest.fail(f"go command not on PATH but {REQUIRE_GO_ENV} is set")
        pytest.skip("go command not on PATH (CI installs it); go-command tests skipped")


@pytest.fixture
def go_env(tmp_path: Path) -> GoEnv:
    """An isolated go environment; set ``.goproxy`` or pass ``goproxy=`` to run()."""
    require_go()
    root = tmp_path / "goenv"
    (root / "home").mkdir(parents=True)
    return GoEnv(root=root)


# -- the router as a subprocess --------------------------------------------

def free_port() -> int:
    """A port free right now (tiny race, acceptable for a local test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RouterProcess:
    """A running ``python -m goproxy_router serve``; stderr goes to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    stderr_path: Path
    stdout_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        """The log so far, once it has settled: the router writes its lines in batches, up
        to LineSink.FLUSH_DELAY after they happen (bounded: at most 3 s of waiting)."""
        quiet = max(LineSink.FLUSH_DELAY * 2, 0.04)
        deadline = time.monotonic() + 3.0
        size, stable_since = -1, time.monotonic()
        while self.proc.poll() is None and time.monotonic() < deadline:
            now_size = self.stderr_path.stat().st_size
            if now_size != size:
                size, stable_since = now_size, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                break
            time.sleep(0.01)
        return self.stderr_path.read_text(errors="replace")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode} before /healthz "
                                   f"answered; stderr:\n{self.stderr()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
                    last = f"status {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"status {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise RuntimeError(f"router /healthz not 200 within {timeout}s ({last}); "
                           f"stderr:\n{self.stderr()[-4000:]}")


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Factory: ``router_process(config, env={...})`` -> a healthy RouterProcess.

    ``config`` is a routes.yaml mapping (or YAML text). A mapping without a
    ``cache`` section gets one under tmp so the router never writes into
    the working tree. ``env`` is added to the inherited environment;
    ``preexec_fn`` runs in the child before the router starts (e.g. to set an rlimit).
    """
    started: list[RouterProcess] = []

    def start(config: Mapping[str, Any] | str, *, env: Mapping[str, str] | None = None,
              startup_timeout: float = 15.0, extra_args: Sequence[str] = (),
              preexec_fn: Callable[[], None] | None = None) -> RouterProcess:
        n = len(started)
        workdir = tmp_path / f"router{n}"
        workdir.mkdir()
        if not isinstance(config, str):
            config = dict(config)
            config.setdefault("cache", {"dir": str(workdir / "cache")})
            config = yaml.safe_dump(config, sort_keys=False)
        config_path = workdir / "routes.yaml"
        config_path.write_text(config)
        port = free_port()
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        full_env.update(env or {})
        stderr_path, stdout_path = workdir / "stderr.log", workdir / "stdout.log"
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "goproxy_router", "serve", "--config", str(config_path),
                 "--listen", f"127.0.0.1:{port}", *extra_args],
                cwd=workdir, env=full_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                preexec_fn=preexec_fn)
        router = RouterProcess(proc, port, config_path, stderr_path, stdout_path)
        started.append(router)
        try:
            router.wait_healthy(startup_timeout)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        return router

    yield start
    for router in started:
        router.stop()


# -- the router in process ----------------------------------------------------

FAST_TIMEOUTS = {"connect": 2, "headers": 0.5, "read": 2}


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: ``await edge(config_dict, env)`` -> a TestClient on an in-process router.

    Timeouts default to a fast set so failure tests stay quick; active probes
    are off unless the config turns them on; the cache lives under tmp.
    """
    from aiohttp.test_utils import TestClient, TestServer

    from goproxy_router.config.loader import parse_config
    from goproxy_router.runtime.app import build_app, install_thin_path

    clients: list[TestClient] = []

    async def make(config: dict[str, Any], env: dict[str, str] | None = None) -> TestClient:
        config.setdefault("timeouts", FAST_TIMEOUTS)
        config.setdefault("probes", {"enabled": False})   # keep fakes' request logs exact
        config.setdefault("cache", {"dir": str(tmp_path / f"cache{len(clients)}")})
        parsed = parse_config(yaml.safe_dump(config), "routes.yaml", env or {})
        app = build_app(parsed, env or {})
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        assert client.server.runner is not None and client.server.runner.server is not None
        install_thin_path(app, client.server.runner.server)   # as `serve` does
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
