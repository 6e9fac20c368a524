"""A fake GOPROXY upstream on 127.0.0.1 with a request log and faults.

The router's worth is in how it treats bad upstreams, so every fake can be
told, at runtime, to fail in the ways real proxies do: a status for
everything, hanging after reading the request, slow headers, a body cut
short after its Content-Length was promised, or refusing requests without
the right credentials. Every wait is bounded: a hung handler is released at
stop() and in any case after ``max_hang`` seconds.

Use ``FakeProxy`` as an async context manager inside the test's event loop,
or ``ThreadedFakeProxy`` when the test itself blocks on subprocesses (the go
command, the router) and the fake must run on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.support.modtree import ModuleTree

_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Faults:
    """How a fake misbehaves; replace the whole object to change it atomically.

    ``status``: answer every request with this status and a text body.
    ``hang``: read the request, never answer (until stop or ``max_hang``).
    ``delay``: seconds to wait before sending headers.
    ``truncate``: send the full Content-Length, then close after this many
    body bytes (``True`` = half the body).
    ``required_headers``: every request must carry these exact headers;
    missing -> 401, wrong value -> 403. Applies to every path.
    ``paths``: regex on the raw path; when set, the other faults apply only
    to matching requests (e.g. ``r"\\.zip$"``).
    """

    status: int | None = None
    hang: bool = False
    delay: float = 0.0
    truncate: bool | int = False
    required_headers: Mapping[str, str] = field(default_factory=dict)
    paths: str | None = None

    def applies_to(self, raw_path: str) -> bool:
        return self.paths is None or re.search(self.paths, raw_path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it (raw path, so escaping is checkable)."""

    method: str
    raw_path: str
    path: str
    headers: tuple[tuple[str, str], ...]
    at: float

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


class FakeProxy:
    """Serve a ModuleTree over the GOPROXY protocol on 127.0.0.1:<random>."""

    def __init__(self, tree: ModuleTree | None = None, *, name: str = "fake",
                 faults: Faults | None = None, max_hang: float = 300.0) -> None:
        self.tree = tree if tree is not None else ModuleTree()
        self.name = name
        self.faults = faults or Faults()
        self.max_hang = max_hang
        self._log: list[RequestRecord] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self.port: int | None = None

    # -- control -----------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"fake proxy {self.name!r} is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log (safe to read from another thread)."""
        return list(self._log)

    def raw_paths(self) -> list[str]:
        return [r.raw_path for r in self._log]

    def clear_log(self) -> None:
        self._log.clear()

    def set_faults(self, **changes: Any) -> Faults:
        """Change some faults, keeping the others (``set_faults(status=500)``)."""
        self.faults = replace(self.faults, **changes)
        return self.faults

    def clear_faults(self) -> None:
        self.faults = Faults()

    async def start(self) -> FakeProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Release hung handlers, then shut down within a few seconds."""
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=10)
            self._runner = None

    async def __aenter__(self) -> FakeProxy:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- serving -----------------------------------------------------------

    async def _wait_closing(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the proxy is stopping meanwhile."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
            return True
        except TimeoutError:
            return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self._log.append(RequestRecord(
            method=request.method, raw_path=request.raw_path, path=request.path,
            headers=tuple(request.headers.items()), at=time.monotonic(),
        ))
        faults = self.faults
        active = faults.applies_to(request.raw_path)
        if active and faults.delay and await self._wait_closing(faults.delay):
            return _drop(request)
        if active and faults.hang:
            await self._wait_closing(self.max_hang)
            return _drop(request)
        for name, want in faults.required_headers.items():
            got = request.headers.get(name)
            if got is None:
                return _text(401, f"{self.name}: missing {name} header")
            if got != want:
                return _text(403, f"{self.name}: wrong {name} header")
        if active and faults.status is not None:
            return _text(faults.status, f"{self.name}: injected status {faults.status}")
        if request.method not in ("GET", "HEAD"):
            return _text(405, f"{self.name}: method not allowed")
        answer = self.tree.respond(request.path)
        if active and faults.truncate and answer.status == 200:
            return await self._truncated(request, answer.body, answer.content_type, faults.truncate)
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})

    async def _truncated(self, request: web.Request, body: bytes, content_type: str,
                         truncate: bool | int) -> web.StreamResponse:
        keep = len(body) // 2 if truncate is True else min(int(truncate), len(body) - 1)
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:keep])
        return _drop(request, resp)


def _text(status: int, msg: str) -> web.Response:
    return web.Response(status=status, body=(msg + "\n").encode(), headers={"Content-Type": _TEXT})


def _drop(request: web.Request, resp: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection without (finishing) an answer.

    Flushes what was written, then closes; aiohttp's later attempt to finish
    the response fails quietly against the closed transport.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp if resp is not None else web.Response(status=599)


class ThreadedFakeProxy:
    """A FakeProxy on its own event loop in a daemon thread.

    For tests that block on subprocesses. Faults and the log are read and
    set from the test thread; start and stop wait at most ``timeout`` s.
    """

    def __init__(self, tree: ModuleTree | None = None, *, name: str = "fake",
                 faults: Faults | None = None, timeout: float = 10.0) -> None:
        self.proxy = FakeProxy(tree, name=name, faults=faults)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"fakeproxy-{name}", daemon=True)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def name(self) -> str:
        return self.proxy.name

    @property
    def tree(self) -> ModuleTree:
        return self.proxy.tree

    @property
    def requests(self) -> list[RequestRecord]:
        return self.proxy.requests

    def raw_paths(self) -> list[str]:
        return self.proxy.raw_paths()

    @property
    def faults(self) -> Faults:
        return self.proxy.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.proxy.faults = value

    def set_faults(self, **changes: Any) -> Faults:
        return self.proxy.set_faults(**changes)

    def clear_faults(self) -> None:
        self.proxy.clear_faults()

    def clear_log(self) -> None:
        self._loop.call_soon_threadsafe(self.proxy.clear_log)

    def start(self) -> ThreadedFakeProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        fut.result(timeout=self.timeout)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop)
            fut.result(timeout=self.timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self.timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> ThreadedFakeProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RefusedPort:
    """A 127.0.0.1 port where connections are refused, reserved while open.

    The socket is bound but never listens, so the kernel answers SYN with
    RST (ECONNREFUSED) and no other process can take the port meanwhile.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RefusedPort:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
