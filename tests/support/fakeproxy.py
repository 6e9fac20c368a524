"""A fake GOPROXY upstream on 127.0.0.1 with a request log and faults.

The router's worth is in how it treats bad upstreams, so every fake can be
told, at runtime, to fail in the ways real proxies do: a status for
everything (429 with Retry-After), hanging after reading the request, slow
headers, a body cut short after its Content-Length was promised, a reset
(RST) mid-body, a bandwidth-throttled body, a body that stalls (silent, the
connection kept open) with or without Range support, a corrupt body, or refusing
requests without the right credentials -- for every matching request or
only a seeded fraction of them. Every wait is bounded: a hung handler is
released at stop() and in any case after ``max_hang`` seconds.

Each logged request also records its fate (``faulted``, ``disconnected``,
``completed``), so a test can see that a router gave up on a hung request
and closed its connection (hedging, timeouts) rather than leaking it.

Use ``FakeProxy`` as an async context manager inside the test's event loop,
or ``ThreadedFakeProxy`` when the test itself blocks on subprocesses (the go
command, the router) and the fake must run on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
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
    ``reset_before_headers``: read the request, then reset the connection
    (RST) without sending anything.
    ``reset``: send the headers (full Content-Length) and this many body
    bytes (``True`` = half the body), pause ``reset_pause`` s so the peer
    has read them, then reset the connection (SO_LINGER 0 + abort: RST).
    ``throttle``: send the body at this many bytes per second, in small
    chunks at most ``throttle_gap`` s apart (slow but steady).
    ``retry_after``: with ``status`` (e.g. 429), the Retry-After header value.
    ``corrupt``: replace the body of a 200 answer with these bytes
    (Content-Length follows), e.g. ``b"not json"`` for ``.info``.
    ``redirect``: answer ``redirect_status`` with this ``Location`` (``{path}`` in it
    becomes the request's raw path), e.g. a hostile upstream pointing at an internal URL.
    ``stall``: on a GET without Range, send this share (0 < stall < 1) of the body after
    the full Content-Length, then nothing, the connection kept open (until stop or
    ``max_hang``): a stalled body.
    ``ranges``: every 200 carries ``Accept-Ranges: bytes``, an ``ETag`` (of the body) and a
    ``Last-Modified``, and a GET with ``Range: bytes=N-`` (and a matching ``If-Range``, or
    none) gets a 206 with the rest; not subject to ``paths`` or ``fraction``.
    ``range_etag``: with ``ranges``, 206 answers carry this ETag, If-Range ignored (a
    careless server whose file changed); ``range_ignored``: Range requests get the whole
    body in a 200.
    ``gzip_bomb``: answer a GET with 200, ``Content-Encoding: gzip`` and a body that
    inflates to this many zero bytes (a whole number of MiB; ~1 KiB sent per MiB),
    compressed as it is sent: a decompression bomb in bounded memory.
    ``fraction``: apply the faults to only this share of matching requests;
    the choice is a pure function of (``seed``, raw path, how many times
    that path was seen), so a run is reproducible whatever the request order.
    ``required_headers`` is not subject to ``paths`` or ``fraction``.
    """

    status: int | None = None
    hang: bool = False
    delay: float = 0.0
    truncate: bool | int = False
    required_headers: Mapping[str, str] = field(default_factory=dict)
    paths: str | None = None
    reset_before_headers: bool = False
    reset: bool | int = False
    reset_pause: float = 0.05
    throttle: float | None = None
    throttle_gap: float = 0.05
    retry_after: str | int | float | None = None
    corrupt: bytes | None = None
    redirect: str | None = None
    redirect_status: int = 302
    gzip_bomb: int = 0
    stall: float = 0.0
    ranges: bool = False
    range_etag: str | None = None
    range_ignored: bool = False
    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if self.throttle is not None and self.throttle <= 0:
            raise ValueError("throttle is a positive byte rate")
        if not 0.0 <= self.stall < 1.0:
            raise ValueError("stall is the share of the body sent, within [0, 1)")

    def applies_to(self, raw_path: str) -> bool:
        return self.paths is None or re.search(self.paths, raw_path) is not None

    def chosen(self, raw_path: str, nth: int) -> bool:
        """Whether the ``nth`` (0-based) request for ``raw_path`` gets the faults."""
        if self.fraction >= 1.0:
            return True
        if self.fraction <= 0.0:
            return False
        return random.Random(f"{self.seed}:{raw_path}:{nth}").random() < self.fraction


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it (raw path, so escaping is checkable).

    ``fate`` is filled in while the request is served: ``faulted`` (the
    faults applied to it), ``disconnected`` (the client closed the
    connection before the fake finished its answer: a cancelled hedge or a
    timed-out attempt), ``completed`` (the whole answer was handed to the
    transport) and ``ended_at``.
    """

    method: str
    raw_path: str
    path: str
    headers: tuple[tuple[str, str], ...]
    at: float
    fate: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)

    @property
    def faulted(self) -> bool:
        return bool(self.fate.get("faulted"))

    @property
    def disconnected(self) -> bool:
        return bool(self.fate.get("disconnected"))

    @property
    def completed(self) -> bool:
        return bool(self.fate.get("completed"))

    def _end(self, **what: bool) -> None:
        self.fate.update(what)
        self.fate.setdefault("ended_at", time.monotonic())


class FakeProxy:
    """Serve a ModuleTree over the GOPROXY protocol on 127.0.0.1:<random>."""

    def __init__(self, tree: ModuleTree | None = None, *, name: str = "fake",
                 faults: Faults | None = None, max_hang: float = 300.0) -> None:
        self.tree = tree if tree is not None else ModuleTree()
        self.name = name
        self.faults = faults or Faults()
        self.max_hang = max_hang
        self._log: list[RequestRecord] = []
        self._seen: dict[str, int] = {}
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

    def faulted_paths(self) -> list[str]:
        """Raw paths of the requests the faults were applied to."""
        return [r.raw_path for r in self._log if r.faulted]

    async def wait_until(self, predicate: Callable[[list[RequestRecord]], bool],
                         timeout: float = 5.0) -> bool:
        """Poll the log until ``predicate(requests)`` holds; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.requests):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

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
        record = RequestRecord(
            method=request.method, raw_path=request.raw_path, path=request.path,
            headers=tuple(request.headers.items()), at=time.monotonic(),
        )
        self._log.append(record)
        faults = self.faults
        nth = self._seen.get(request.raw_path, 0)
        self._seen[request.raw_path] = nth + 1
        active = faults.applies_to(request.raw_path) and faults.chosen(request.raw_path, nth)
        record.fate["faulted"] = active
        try:
            response = await self._answer(request, record, faults, active)
        except (asyncio.CancelledError, ConnectionError):
            # aiohttp cancels the handler when the client closes the connection.
            record._end(disconnected=True)
            raise
        record.fate.setdefault("completed", False)
        record.fate.setdefault("ended_at", time.monotonic())
        return response

    async def _answer(self, request: web.Request, record: RequestRecord, faults: Faults,
                      active: bool) -> web.StreamResponse:
        if active and faults.delay and await self._wait_closing(faults.delay):
            return _drop(request)
        if active and faults.hang:
            await self._wait_closing(self.max_hang)
            return _drop(request)
        if active and faults.reset_before_headers:
            return _abort(request, web.Response(status=599))
        for name, want in faults.required_headers.items():
            got = request.headers.get(name)
            if got is None:
                return self._done(record, _text(401, f"{self.name}: missing {name} header"))
            if got != want:
                return self._done(record, _text(403, f"{self.name}: wrong {name} header"))
        if active and faults.status is not None:
            headers = ({"Retry-After": str(faults.retry_after)}
                       if faults.retry_after is not None else None)
            return self._done(record, _text(faults.status,
                                            f"{self.name}: injected status {faults.status}", headers))
        if active and faults.redirect is not None:
            location = faults.redirect.replace("{path}", request.raw_path)
            return self._done(record, web.Response(status=faults.redirect_status,
                                                   headers={"Location": location}))
        if active and faults.gzip_bomb and request.method == "GET":
            return await self._bomb(request, record, faults.gzip_bomb)
        if request.method not in ("GET", "HEAD"):
            return self._done(record, _text(405, f"{self.name}: method not allowed"))
        answer = self.tree.respond(request.path)
        body = answer.body
        if active and answer.status == 200 and faults.corrupt is not None:
            body = faults.corrupt
        ranged = faults.ranges and answer.status == 200
        headers = {"Content-Type": answer.content_type, **(_validators(body) if ranged else {})}
        if active and answer.status == 200:
            get = request.method == "GET"
            if faults.stall and get and "Range" not in request.headers:
                return await self._stalled(request, body, headers, faults.stall)
            if faults.reset and get:
                return await self._reset(request, body, answer.content_type, faults)
            if faults.truncate:
                return await self._truncated(request, body, answer.content_type, faults.truncate)
            if faults.throttle is not None and get:
                return await self._throttled(request, record, body, answer.content_type, faults)
        if ranged and request.method == "GET" and "Range" in request.headers:
            return self._done(record, _partial(request, body, headers, faults))
        return self._done(record, web.Response(status=answer.status, body=body, headers=headers))

    @staticmethod
    def _done(record: RequestRecord, response: web.StreamResponse) -> web.StreamResponse:
        record._end(completed=True)
        return response

    async def _truncated(self, request: web.Request, body: bytes, content_type: str,
                         truncate: bool | int) -> web.StreamResponse:
        keep = _cut(body, truncate)
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:keep])
        return _drop(request, resp)

    async def _stalled(self, request: web.Request, body: bytes, headers: dict[str, str],
                       share: float) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:int(len(body) * share)])
        await self._wait_closing(self.max_hang)       # silent, the connection kept open
        return _drop(request, resp)

    async def _reset(self, request: web.Request, body: bytes, content_type: str,
                     faults: Faults) -> web.StreamResponse:
        keep = _cut(body, faults.reset)
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:keep])
        # Let the peer read the headers and the first bytes: this is a reset mid-body.
        if await self._wait_closing(faults.reset_pause):
            return _drop(request, resp)
        return _abort(request, resp)

    async def _throttled(self, request: web.Request, record: RequestRecord, body: bytes,
                         content_type: str, faults: Faults) -> web.StreamResponse:
        rate = float(faults.throttle or 1.0)
        step = max(1, int(rate * faults.throttle_gap))
        gap = step / rate
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), step):
            if start and await self._wait_closing(gap):
                return _drop(request, resp)
            await resp.write(body[start:start + step])
        await resp.write_eof()
        record._end(completed=True)
        return resp


    async def _bomb(self, request: web.Request, record: RequestRecord,
                    size: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
        await resp.prepare(request)
        try:
            for piece in gzip_zeros(size):
                await resp.write(piece)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):          # the reader gave up, as it should
            return _drop(request, resp)
        record._end(completed=True)
        return resp


_MIB = 1 << 20


@functools.lru_cache(maxsize=1)
def _zero_mib_deflated() -> bytes:
    """Raw deflate of 1 MiB of zeros ended by a full flush: the compressor starts afresh
    after it, so the stream of N MiB of zeros is this block N times."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(bytes(_MIB)) + c.flush(zlib.Z_FULL_FLUSH)


def gzip_zeros(size: int) -> Iterator[bytes]:
    """A gzip stream of ``size`` zero bytes (a whole number of MiB), piece by piece."""
    if size <= 0 or size % _MIB:
        raise ValueError("gzip_zeros takes a positive whole number of MiB")
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"          # gzip header, no name
    block, zeros, crc = _zero_mib_deflated(), bytes(_MIB), 0
    for _ in range(size // _MIB):
        yield block
        crc = zlib.crc32(zeros, crc)
    yield b"\x03\x00" + struct.pack("<II", crc, size & 0xFFFFFFFF)  # final empty block


_LAST_MODIFIED = "Mon, 02 Jan 2006 15:04:05 GMT"
_RANGE = re.compile(r"^bytes=(\d+)-$")


def _validators(body: bytes) -> dict[str, str]:
    """What a Range-capable server sends with a 200: the unit and validators of the body."""
    return {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(body).hexdigest()[:16]}"',
            "Last-Modified": _LAST_MODIFIED}


def _partial(request: web.Request, body: bytes, headers: dict[str, str],
             faults: Faults) -> web.Response:
    """The answer to a ``Range: bytes=N-`` GET: 206 with the rest, or the whole body in a
    200 when If-Range names another version (or the fake ignores ranges)."""
    found = _RANGE.match(request.headers["Range"].strip())
    if_range = request.headers.get("If-Range")
    etag = faults.range_etag
    current = if_range in (None, headers["ETag"], headers["Last-Modified"]) or etag is not None
    if faults.range_ignored or found is None or not current:
        return web.Response(status=200, body=body, headers=headers)
    start = int(found.group(1))
    if start >= len(body):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
    partial = {**headers, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
    if etag is not None:
        partial["ETag"] = etag
    return web.Response(status=206, body=body[start:], headers=partial)


def _cut(body: bytes, keep: bool | int) -> int:
    """How many body bytes to send before breaking off: ``True`` = half, else at most len-1."""
    return len(body) // 2 if keep is True else max(0, min(int(keep), len(body) - 1))


def _text(status: int, msg: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=(msg + "\n").encode(),
                        headers={"Content-Type": _TEXT, **(headers or {})})


def _drop(request: web.Request, resp: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection without (finishing) an answer.

    Flushes what was written, then closes; aiohttp's later attempt to finish
    the response fails quietly against the closed transport.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp if resp is not None else web.Response(status=599)


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Reset the connection: SO_LINGER 0 then abort, so the kernel sends RST, not FIN."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
    return resp


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

    def faulted_paths(self) -> list[str]:
        return self.proxy.faulted_paths()

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
