"""The thin path for the most frequent answer: a small immutable artifact already in memory.

Once the full request flow (parse the path, find the route, check access,
look in the cache) has answered a `.info` or `.mod` (or a zip small enough)
of a public route from the cache's memory tier, nothing about the answer can change: the bytes are
immutable, the route is fixed until the next reload. So the answer is kept
here, under the exact raw request path, with its response headers and its
access-log fields rendered once, and later GETs for that path are answered
before parsing, routing, ranking or building a forwarding plan. That is
what a cache hit costs on a busy edge, so every per-request step left here
is one that the answer needs: a request id, the peer, one counter, one log
line.

The answer goes out as one pre-rendered buffer (status line, the fixed
headers and the body rendered once; Date and X-Request-Id filled in), written
straight to the connection: the same bytes aiohttp would write for the
same Response, without building and serializing one per request. That is
for HTTP/1.1 keep-alive requests (what the go command sends); an HTTP/1.0
request or one that asks to close the connection gets an ordinary Response,
so aiohttp deals with the connection as usual.

Only plain GETs take the thin path (no Range, no conditional headers, no
query): anything else goes through the full flow, which handles it. Routes
with an `allow` section never do; their answers are not kept here. The
table is emptied on every reload, since a new config may route the same
path elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict

from goproxy_router.serving import accesslog
from goproxy_router.storage.entry import CacheEntry


@dataclass(frozen=True, slots=True)
class KeptHit:
    """One ready-made answer."""

    body: bytes
    headers: CIMultiDict[str]    # every response header but X-Request-Id (and Date)
    head: bytes                  # the status line and those headers, Content-Length too
    log_fields: str              # the access-log fields after "client": accesslog.prefix
    labels: accesslog.Labels     # its goproxy_requests labels


class HitTable:
    """Raw request path → KeptHit, bounded in bytes of bodies (oldest kept first out).

    The bodies are the memory tier's own `bytes` objects, so an answer kept in
    both places costs its size once. Eviction is first-in-first-out rather
    than LRU: a lookup stays one dict access, and an evicted answer that is
    still wanted comes back after one trip through the full flow.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._kept: dict[str, KeptHit] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, raw_path: str) -> KeptHit | None:
        return self._kept.get(raw_path)

    def keep(self, raw_path: str, entry: CacheEntry, *, content_type: str, cache_control: str,
             server: str, route: str, module: str, version: str, kind: str) -> None:
        """Remember the answer a GET of `raw_path` just got from the memory tier.

        Only a public answer: a kept one goes out without the app's last look
        at its headers (which makes a private route's answers private), so an
        answer that is not `public` is never kept, whoever asks.
        """
        body = entry.data
        if (body is None or len(body) > self.max_bytes or "?" in raw_path
                or not cache_control.startswith("public")):
            return
        headers = CIMultiDict({
            "Content-Type": content_type,
            "Cache-Control": cache_control,
            "X-Goproxy-Cache": "hit",
            "ETag": f'"{entry.etag}"',
            "Last-Modified": _http_date(entry.mtime),
            "Server": server,
        })
        # No country: the thin path looks nothing up (router/serving/accesslog.py has the schema).
        entry_fields = accesslog.fields(method="GET", path=raw_path, status=200, route=route,
                                        module=module, version=version, kind=kind,
                                        cache="hit", bytes=len(body))
        self._drop(raw_path)
        while self._kept and self.size + len(body) > self.max_bytes:
            self._drop(next(iter(self._kept)))
        head = "".join(["HTTP/1.1 200 OK\r\n",
                        *(f"{name}: {value}\r\n" for name, value in headers.items()),
                        f"Content-Length: {len(body)}\r\n"]).encode("latin-1")
        self._kept[raw_path] = KeptHit(body, headers, head, accesslog.prefix(entry_fields),
                                       accesslog.labels(entry_fields))
        self.size += len(body)

    def clear(self) -> None:
        self._kept.clear()
        self.size = 0

    def _drop(self, raw_path: str) -> None:
        old = self._kept.pop(raw_path, None)
        if old is not None:
            self.size -= len(old.body)


def _http_date(mtime: float) -> str:
    """Last-Modified exactly as aiohttp writes it for the full flow's hits (it rounds up)."""
    probe = web.StreamResponse()
    probe.last_modified = mtime
    return probe.headers["Last-Modified"]


def is_plain_get(request: web.BaseRequest) -> bool:
    """A GET for the whole body with no conditions (no Range, no If-*): what the go command sends.

    One pass over the raw header names: cheaper than a lookup per header it rules out.
    """
    if request.method != "GET":
        return False
    for name, _ in request.raw_headers:
        if len(name) >= 3 and name[:3].lower() == b"if-":
            return False
        if len(name) == 5 and name.lower() == b"range":
            return False
    return True


def hit_response(request: web.BaseRequest, hit: KeptHit,
                 request_id: str) -> web.StreamResponse | RenderedResponse:
    """A pre-rendered answer on an HTTP/1.1 keep-alive connection, else a plain Response."""
    if request.version == HttpVersion11 and request.keep_alive:
        return RenderedResponse(b"".join((hit.head, _DATE.header(), b"X-Request-Id: ",
                                          request_id.encode("ascii"), b"\r\n\r\n", hit.body)),
                                len(hit.body))
    headers = hit.headers.copy()
    headers["X-Request-Id"] = request_id
    return web.Response(body=hit.body, headers=headers)


class RenderedResponse:
    """A whole HTTP/1.1 response, status line to body, written to the connection at once.

    It offers what aiohttp's server asks of the response a handler returns
    (`prepare`, `write_eof`, `keep_alive`, and for its access logger `status`,
    `body_length`, `headers`); nothing else uses it.
    """

    __slots__ = ("_data", "body_length", "prepared")
    status = 200
    keep_alive = True
    headers: CIMultiDict[str] = CIMultiDict()
    HIGH_WATER = 64 * 1024       # transport buffer beyond which the writer waits for the client
    waits = 0                    # times an answer waited for a client that did not read (tests)

    def __init__(self, data: bytes, body_length: int) -> None:
        self._data = data
        self.body_length = body_length
        self.prepared = False

    async def prepare(self, request: web.BaseRequest) -> None:
        if self.prepared:
            return
        self.prepared = True
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client left before its answer")
        transport.write(self._data)
        if transport.get_write_buffer_size() > self.HIGH_WATER:   # a client not reading
            RenderedResponse.waits += 1
            await request.writer.drain()

    async def write_eof(self, data: Any = b"") -> None:
        return None


class _HttpDate:
    """The Date header line, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def header(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode("ascii")
        return self._line


_DATE = _HttpDate()
