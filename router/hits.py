"""The thin path for the most frequent answer: a small immutable artifact already in memory.

Once the full request flow (parse the path, find the route, check access,
look in the cache) has answered a `.info` or `.mod` of a public route from
the cache's memory tier, nothing about the answer can change: the bytes are
immutable, the route is fixed until the next reload. So the answer is kept
here, under the exact raw request path, with its response headers and its
access-log fields rendered once, and later GETs for that path are answered
before parsing, routing, ranking or building a forwarding plan. That is
what a cache hit costs on a busy edge, so every per-request step left here
is one that the answer needs: a request id, the peer, one counter, one log
line.

Only plain GETs take the thin path (no Range, no conditional headers, no
query): anything else goes through the full flow, which handles it. Routes
with an `allow` section never do; their answers are not kept here. The
table is emptied on every reload, since a new config may route the same
path elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from router.cache import CacheEntry


@dataclass(frozen=True, slots=True)
class KeptHit:
    """One ready-made answer."""

    body: bytes
    headers: CIMultiDict[str]    # every response header but X-Request-Id
    log_fields: str              # the access-log fields after "client", as JSON text
    labels: tuple[str, str, str, str]   # its goproxy_requests labels


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
        """Remember the answer a GET of `raw_path` just got from the memory tier."""
        body = entry.data
        if body is None or len(body) > self.max_bytes or "?" in raw_path:
            return
        headers = CIMultiDict({
            "Content-Type": content_type,
            "Cache-Control": cache_control,
            "X-Goproxy-Cache": "hit",
            "ETag": f'"{entry.etag}"',
            "Last-Modified": _http_date(entry.mtime),
            "Server": server,
        })
        log_fields = json.dumps({
            "country": None, "method": "GET", "path": raw_path, "route": route,
            "module": module, "version": version, "kind": kind, "upstream": None,
            "attempts": 0, "cache": "hit", "status": 200, "bytes": len(body),
        }, separators=(",", ":"))[1:-1]
        self._drop(raw_path)
        while self._kept and self.size + len(body) > self.max_bytes:
            self._drop(next(iter(self._kept)))
        self._kept[raw_path] = KeptHit(body, headers, log_fields, (route, kind, "200", "hit"))
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


def hit_response(hit: KeptHit, request_id: str) -> web.Response:
    headers = hit.headers.copy()
    headers["X-Request-Id"] = request_id
    return web.Response(body=hit.body, headers=headers)


def access_line(clock_now: str, pid: int, request_id: str, client_json: str, hit: KeptHit,
                elapsed: float) -> str:
    """The access-log line of a kept hit, exactly as JsonFormatter renders the full flow's."""
    return (f'{{"ts":"{clock_now}","level":"info","logger":"router.access","pid":{pid},'
            f'"event":"request","request_id":"{request_id}","client":{client_json},'
            f'{hit.log_fields},"elapsed":{round(elapsed, 4)!r}}}\n')

