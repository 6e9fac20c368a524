"""The GOPROXY request flow: protocol -> route -> access -> cache -> rank -> forward.

`handle` answers every path that is not a fixed endpoint: it parses the path,
finds the route, checks its access, then serves from the cache or forwards to
the route's upstreams. Ranking (GeoIP, scoring, the ForwardPlan) is done only on
a miss: the cache calls `plan_for_miss`. Every refusal is a short text/plain
answer that the go command prints to the developer; nothing invalid is ever
forwarded. It reads the request's Exchange, opened by router/serving/middleware.py.
"""

from __future__ import annotations

from aiohttp import web

from goproxy_router.forwarding.fetching import ForwardPlan, text_response
from goproxy_router.protocol.paths import ProtocolError
from goproxy_router.protocol.requests import Kind, ModuleRequest, SumdbRequest, parse
from goproxy_router.routing.routes import AccessDenied, CompiledRoute
from goproxy_router.serving.artifacts import Lookup
from goproxy_router.serving.edge import EDGE
from goproxy_router.serving.exchange import EXCHANGE

ALLOWED_METHODS = ("GET", "HEAD")


def _describe(req: ModuleRequest) -> str:
    if req.kind is Kind.LIST:
        return f"{req.module} version list"
    if req.kind is Kind.LATEST:
        return f"{req.module}@latest"
    return f"{req.module}@{req.version} .{req.kind.value}"


async def handle(request: web.Request) -> web.StreamResponse:
    """Everything that is not a fixed endpoint: a GOPROXY or /sumdb/ path."""
    edge = request.app[EDGE]
    exchange = request[EXCHANGE]
    state = exchange.state
    if request.method not in ALLOWED_METHODS:
        return text_response(405, f"goproxy-router: method {request.method} not allowed; "
                                  "the module proxy protocol is read-only (GET, HEAD)\n",
                             headers={"Allow": ", ".join(ALLOWED_METHODS)})
    try:
        req = parse(request.raw_path.split("?", 1)[0])
    except ProtocolError as exc:
        return text_response(exc.status, f"goproxy-router: {exc.reason}\n")
    exchange.module = req.module
    route: CompiledRoute | None = None
    if req.module is not None:
        route = state.routes.match(req.module)
        if route is None:
            return text_response(404, f"goproxy-router: no route in routes.yaml matches "
                                      f"module {req.module}\n")
        exchange.route = route.name
        if route.access is not None:
            exchange.private = True             # every answer from here on: see on_prepare
            try:
                route.access.check(exchange.client_ip, request.headers.get("Authorization"),
                                   edge.auth_throttle)
            except AccessDenied as exc:
                return text_response(exc.status, f"goproxy-router: {exc.reason}\n",
                                     exc.headers(f"goproxy-router {route.name}"))
    if isinstance(req, SumdbRequest):
        exchange.kind = "sumdb"
        return await state.sumdb.handle(request, req, route, exchange.request_id)
    assert route is not None
    exchange.version = req.version
    exchange.kind = req.kind.value
    path = req.upstream_path()

    def plan_for_miss() -> ForwardPlan:
        """Rank the route's upstreams for this client and plan the fetch: a miss only."""
        ctx = state.context(route.name, req.module, req.kind, exchange.client_ip)
        exchange.country = ctx.country
        plan = ForwardPlan(
            request_id=exchange.request_id,
            route=route.name,
            what=_describe(req),
            path=path,
            method=request.method,
            targets=state.rank(ctx).targets(),
            timeouts=route.timeouts,
            kind=req.kind.value,
            module=req.module,
            version=req.version,
            expected_version=req.version if req.kind is Kind.INFO and req.immutable else None,
            retry=route.retry,
            hedge=route.hedge,
        )
        exchange.plan = plan
        return plan

    lookup = Lookup(route.name, path, route.timeouts.send, plan_for_miss)
    response = await edge.cache.serve(request, req, lookup, state.forwarder)
    if response.status == 200:
        edge.keep_hit(request, route, req)
    return response
