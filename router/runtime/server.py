"""Running the edge: one process or N workers, graceful stop, hot reload.

- SIGTERM/SIGINT: stop accepting, let in-flight downloads finish (bounded), exit.
- SIGHUP, or a change of routes.yaml on disk that has settled: load and
  validate the file, then swap the new config in atomically; requests in
  flight finish on the old one, live stats of unchanged upstreams carry over,
  and an invalid file, or one that drops a protection the running config has,
  is rejected with a logged error while the old config keeps serving.
- SIGUSR1: reload even a config that drops a protection (the operator says so).
- `--workers N`: N processes share the port (SO_REUSEPORT), each with its
  own event loop, all sharing the disk cache (its writes are atomic renames,
  its sweep spares files another worker is writing). The parent only
  supervises: it forwards signals and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from goproxy_router import __version__
from goproxy_router.base.fileid import FileId, file_id
from goproxy_router.base.logs import log_event
from goproxy_router.config.loader import ConfigError
from goproxy_router.config.safety import weakenings
from goproxy_router.config.schema import Config
from goproxy_router.config.secrets import redact
from goproxy_router.serving.connections import (
    ConnectionGate,
    connection_cap,
    log_limits,
    raise_open_files_limit,
)

log = logging.getLogger("router.server")

RESTART_BACKOFF = (1.0, 30.0)      # seconds between restarts of a crashing worker, growing
EXIT_STARTUP = 3                   # a worker could not start: restarting it would not help
HINTS = {errno.EADDRINUSE: " (another process listens there)",
         errno.EACCES: " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
         errno.EADDRNOTAVAIL: " (no interface of this machine has that address)"}


class StartupError(Exception):
    """The edge cannot start (e.g. its port is taken): one line for the operator, no traceback."""


def listen_error(host: str, port: int, exc: OSError) -> StartupError:
    """`cannot listen on HOST:PORT: address already in use` from whatever bind() raised."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve {host!r}: {exc.strerror}"
    elif exc.errno:
        reason = os.strerror(exc.errno).lower() + HINTS.get(exc.errno, "")
    else:
        reason = str(exc)
    return StartupError(f"cannot listen on {where}: {reason}")


def check_listen(host: str, port: int) -> None:
    """Bind HOST:PORT once as the workers will (SO_REUSEPORT), then let go.

    The supervisor does this before forking, so a taken port is one clear
    error rather than N workers failing at once.
    """
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise listen_error(host, port, exc) from None


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str
    port: int
    shutdown_timeout: float = 30.0
    config_path: str | None = None
    watch_interval: float = 2.0    # seconds between looks at routes.yaml; 0: only SIGHUP
    reuse_port: bool = False


FileVersion = tuple[FileId, str]    # the file's identity, sha256 of its bytes
SETTLE = 1.0       # seconds a changed routes.yaml must stay unchanged before the watcher loads it


def _file_version(path: str) -> FileVersion | None:
    """What the file is now: its identity and a hash of its bytes (None if unreadable)."""
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            data = file.read()
    except OSError:
        return None
    return file_id(st), hashlib.sha256(data).hexdigest()


class Reloader:
    """Loads routes.yaml again and hands a valid config to the edge, failing closed.

    - The watcher loads a changed file only once it has stayed the same (identity
      and content) for `settle` seconds over two looks at least: an editor or a
      deploy tool caught half-way through writing it is waited out, never loaded.
    - SIGHUP loads the file at once (the operator asked for it).
    - Either way a config that gives up a protection the running one has (see
      safety.weakenings: an `allow`, `sumdb: false`, the admin token, a wider
      network list) is rejected with an ERROR naming each loss, and counted as
      rejected; only a forced reload (SIGUSR1) applies it.
    """

    def __init__(self, path: str, load: Callable[[str], Config], apply: Callable[[Config], object],
                 rejected: Callable[[], None] = lambda: None, current: Config | None = None,
                 settle: float = SETTLE, clock: Callable[[], float] = time.monotonic):
        self._path = path
        self._load = load
        self._apply = apply
        self._rejected = rejected      # counts an invalid file (the edge counts ok and error)
        self._current = current        # the running config, which a reload must not weaken
        self._settle = settle
        self._clock = clock
        self._lock = asyncio.Lock()
        self._seen = _file_version(path)

    async def reload(self, reason: str, force: bool = False,
                     expect: FileVersion | None = None) -> bool:
        """Load, check and apply the file; False (and a logged ERROR) when the old config stays.

        `expect`: the version the watcher saw settle; if the file is no longer
        that when loaded, nothing happens (the watcher sees the new change).
        """
        async with self._lock:
            before = _file_version(self._path)
            if expect is not None and before != expect:
                return False
            try:
                config = self._load(self._path)
            except ConfigError as exc:
                self._seen = before
                self._rejected()
                # A bad URL is quoted back in its error, with any user:password@ in it.
                log_event(log, logging.ERROR, "reload rejected; the old config keeps serving",
                          reason=reason, path=self._path, errors=[redact(e) for e in exc.errors])
                return False
            if expect is not None and _file_version(self._path) != expect:
                return False                      # written again while it loaded: wait for it
            self._seen = before
            lost = weakenings(self._current, config) if self._current is not None else []
            if lost and not force:
                self._rejected()
                log_event(log, logging.ERROR, "reload rejected: the new config is weaker; the old "
                          "config keeps serving (SIGUSR1 applies it anyway)",
                          reason=reason, path=self._path, lost=lost)
                return False
            try:
                await self._apply(config)  # type: ignore[misc]
            except Exception as exc:   # valid, but e.g. admin.token_env's variable is unset
                error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                log_event(log, logging.ERROR, "reload failed; the old config keeps serving",
                          reason=reason, path=self._path, error=redact(error))
                return False
            self._current = config
            if lost:
                log_event(log, logging.WARNING, "reloaded a weaker config, as forced",
                          reason=reason, path=self._path, lost=lost)
            log_event(log, logging.INFO, "reloaded", reason=reason, path=self._path)
            return True

    async def watch(self, interval: float) -> None:
        """Reload a changed file once it has settled (see the class)."""
        pending: tuple[FileVersion, float] | None = None     # a change, and when it was first seen
        while True:
            await asyncio.sleep(interval)
            version = _file_version(self._path)
            if version is None or version == self._seen:
                pending = None
                continue
            now = self._clock()
            if pending is None or pending[0] != version:
                pending = (version, now)          # changed (again): give the writer time
                continue
            if now - pending[1] < self._settle:
                continue
            pending = None
            await self.reload("file changed", expect=version)


async def serve(config: Config, options: ServeOptions,
                load: Callable[[str], Config] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then let in-flight downloads finish (bounded).

    Raises StartupError when the edge cannot start (port taken, cache not writable, ...).
    """
    from goproxy_router.runtime.app import build_app, install_thin_path
    from goproxy_router.serving.edge import EDGE

    try:
        app = build_app(config)
    except (OSError, ConfigError) as exc:   # the cache directory; admin.token_env's variable
        raise StartupError(f"cannot start: {exc}") from None
    edge = app[EDGE]
    loop = asyncio.get_running_loop()
    limits = config.limits
    files = raise_open_files_limit()
    gate = ConnectionGate(connection_cap(limits.max_connections, files.soft),
                          limits.header_timeout, loop)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=options.shutdown_timeout,
                           keepalive_timeout=limits.keepalive_timeout)
    await runner.setup()
    assert runner.server is not None
    install_thin_path(app, runner.server)
    gate.install(runner.server)
    edge.metrics.watch_connections(gate.counts)
    site = web.TCPSite(runner, options.host, options.port, backlog=1024, reuse_address=True,
                       reuse_port=options.reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(options.host, options.port, exc) from None
    log_event(log, logging.INFO, "listening", host=options.host, port=options.port,
              version=__version__, pid=os.getpid(), routes=[r.name for r in config.routes])
    log_limits(limits, files, gate.limit)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[object]] = []
    if options.config_path and load is not None:
        async def apply(new: Config) -> None:
            previous = edge.state.config.limits
            await edge.reload(new)
            if new.limits != previous:       # all but keepalive_timeout apply to new connections
                gate.update(connection_cap(new.limits.max_connections, files.soft),
                            new.limits.header_timeout)
                log_limits(new.limits.model_copy(
                    update={"keepalive_timeout": limits.keepalive_timeout}), files, gate.limit)
            if new.limits.keepalive_timeout != limits.keepalive_timeout:
                log_event(log, logging.WARNING, "config change needs a restart",
                          section="limits.keepalive_timeout")

        reloader = Reloader(options.config_path, load, apply,
                            lambda: edge.metrics.record_reload("rejected"), current=config)
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: tasks.append(asyncio.ensure_future(reloader.reload("SIGHUP"))))
        loop.add_signal_handler(signal.SIGUSR1, lambda: tasks.append(
            asyncio.ensure_future(reloader.reload("SIGUSR1", force=True))))
        if options.watch_interval > 0:
            tasks.append(asyncio.ensure_future(reloader.watch(options.watch_interval)))
    try:
        await stop.wait()
        log_event(log, logging.INFO, "shutting down", grace_seconds=options.shutdown_timeout)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await runner.cleanup()
    log_event(log, logging.INFO, "stopped", pid=os.getpid())


def run_workers(workers: int, start_worker: Callable[[], None]) -> int:
    """Fork `workers` processes running `start_worker`; supervise until SIGTERM/SIGINT."""
    children: dict[int, int] = {}           # pid -> worker slot
    stopping = False
    restarts = [0] * workers

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:                         # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                start_worker()
            except StartupError as exc:
                print(f"goproxy-router: {exc}", file=sys.stderr)
                code = EXIT_STARTUP
            except BaseException:            # a crash must not fall into the supervisor's loop
                logging.getLogger("router.server").exception("worker crashed")
                code = 1
            finally:
                for handler in logging.getLogger().handlers:   # batched log lines, too
                    handler.flush()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = slot

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    for slot in range(workers):
        spawn(slot)
    log_event(log, logging.INFO, "workers started", workers=workers, pids=sorted(children))
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code == EXIT_STARTUP and not stopping:     # it said why; a restart would fail alike
            status = 1
            forward(signal.SIGTERM, None)
            continue
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        restarts[slot] += 1
        pause = min(RESTART_BACKOFF[0] * restarts[slot], RESTART_BACKOFF[1])
        log_event(log, logging.ERROR, "worker exited; restarting", pid=pid, code=code,
                  restart_in=pause)
        time.sleep(pause)
        if not stopping:
            spawn(slot)
    log_event(log, logging.INFO, "workers stopped")
    return status
