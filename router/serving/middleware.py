"""Around every request of the full flow: request id, operator access, access log, headers.

`edge_middleware` opens the request's Exchange (request id, client address),
checks operator access to /_router/ and /metrics, writes the one access-log
line and counts the request, and turns an unhandled error into a 500 without a
traceback to the client. `on_prepare` sets the headers every answer of the app
gets, and makes a private route's answers private. `RequestErrorLog` keeps
aiohttp's own 400s for unparsable requests to one INFO line. The thin path
(router/serving/thin.py) passes none of these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from goproxy_router.base.logs import log_event
from goproxy_router.forwarding.fetching import text_response
from goproxy_router.routing.routes import AccessDenied, make_private
from goproxy_router.serving import accesslog
from goproxy_router.serving.edge import EDGE, SERVER, Edge, peer_of
from goproxy_router.serving.exchange import EXCHANGE, Exchange

log = accesslog.log
errors_log = logging.getLogger("router.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, client address, the access log line, and no tracebacks to clients."""
    started = time.monotonic()
    edge = request.app[EDGE]
    state = edge.state
    peer = peer_of(request, state.peers)
    exchange = request[EXCHANGE] = Exchange(
        state=state, client_ip=state.peers.client(peer, request.headers),
        request_id=edge.request_ids.choose(request.headers.get("X-Request-Id"), peer.trusted))
    status = 500
    try:
        if _is_admin_path(request.path):
            try:
                edge.admin.check(exchange.client_ip, request.headers.get("Authorization"),
                                 edge.auth_throttle)
            except AccessDenied as exc:
                status = exc.status
                return text_response(exc.status, f"goproxy-router: {exc.reason}\n",
                                     exc.headers("goproxy-router operator endpoints"))
        response = await handler(request)
        status = response.status
        exchange.bytes = _body_size(response)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        errors_log.exception("unhandled error", extra={"fields": {
            "request_id": exchange.request_id, "path": request.path}})
        response = text_response(500, f"goproxy-router: internal error "
                                      f"(request {exchange.request_id})\n")
        return response
    finally:
        _finished(edge, request, exchange, status, time.monotonic() - started)


def _body_size(response: web.StreamResponse) -> int | None:
    """Bytes of the body: sent already when streamed, or about to be for a plain Response."""
    if response.prepared:
        return response.body_length
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, (bytes, bytearray)) else response.content_length


def _is_admin_path(path: str) -> bool:
    return path.startswith("/_router/") or path == "/metrics"


def _finished(edge: Edge, request: web.Request, exchange: Exchange, status: int,
              elapsed: float) -> None:
    """One access log line and the request metrics (router/serving/accesslog.py: the schema)."""
    counted = not _is_admin_path(request.path) and request.path not in ("/healthz", "/readyz")
    logged = log.isEnabledFor(logging.INFO)
    if not (counted or logged):
        return
    entry = accesslog.fields(
        method=request.method, path=request.path, status=status, route=exchange.route,
        module=exchange.module, version=exchange.version, kind=exchange.kind,
        country=_country(exchange) if logged else None, upstream=exchange.upstream,
        attempts=exchange.attempts, cache=exchange.cache, bytes=exchange.bytes)
    if counted:
        edge.metrics.requests.labels(*accesslog.labels(entry)).inc()
    if logged:
        accesslog.emit(exchange.request_id, str(exchange.client_ip), entry, elapsed)


def _country(exchange: Exchange) -> str | None:
    """The client's country for the log line: a miss looked it up to rank; a hit through
    the full flow looks it up only here, when the line is written (cached per address)."""
    if exchange.country is None and exchange.cache is not None and exchange.plan is None:
        return exchange.state.geo.lookup(exchange.client_ip).country
    return exchange.country


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer of the full flow gets, just before they are sent.

    An answer of a route with `allow` is made private here rather than where
    it is produced (memory or disk hit, a streamed fill, 304, 206, HEAD,
    stale, an error): every answer of the app passes here, the ones added
    later too, so none can be left public by a path that forgot. The thin
    path (router/serving/thin.py) does not pass here; it keeps public answers only.
    """
    exchange = request.get(EXCHANGE)
    if exchange is not None and exchange.request_id:
        response.headers["X-Request-Id"] = exchange.request_id
    response.headers["Server"] = SERVER
    if exchange is not None and exchange.private:
        make_private(response.headers, response.status)


class RequestErrorLog(logging.LoggerAdapter):
    """aiohttp's server logger, with a request it could not parse told in one INFO line.

    aiohttp answers a malformed request line, method, version or header 400
    itself, before any handler or middleware, and logs it with a traceback at
    ERROR (at DEBUG for a bad method on a fresh connection). That is the
    client's mistake, common on a port open to the internet, not the edge's:
    one line at INFO (`bad request`, client, status, problem) says it.
    Everything else passes through unchanged.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log_event(errors_log, logging.INFO, "bad request",
                      client=str(args[0]) if args else None, status=exc.code,
                      problem=" ".join(str(exc.message).split())[:200])
            return
        super().log(level, msg, *args, **kwargs)
