"""The aiohttp application: request id, access log, and the GOPROXY request flow.

parse the path -> find the route -> check access -> forward to the route's
upstreams. Every refusal is a short text/plain answer that the go command
prints to the developer; nothing invalid is ever forwarded.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from router.budget import RetryBudget
from router.config import Config
from router.forward import Forwarder, ForwardPlan, text_response
from router.geo import GeoDatabase, IPAddress, client_address, is_trusted, parse_ip
from router.logs import log_event
from router.probes import Prober, ProbeTarget
from router.protocol import Kind, ModuleRequest, ProtocolError, SumdbRequest, check_path, parse
from router.routes import AccessDenied, CompiledRoute, RouteTable
from router.scoring import Candidate, Engine, Ranking, RequestContext, explain, load_plugins
from router.stats import StatsRegistry, StatsSettings
from router.sumdb import SumdbProxy
from router.upstream import UpstreamClient, UpstreamTarget

log = logging.getLogger("router.access")
errors_log = logging.getLogger("router.app")

ALLOWED_METHODS = ("GET", "HEAD")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EdgeState:
    """What one loaded config gives the request path: routes, ranking, forwarding, sumdb.

    The stats registry is passed in rather than owned, so that live stats
    outlive a config reload.
    """

    def __init__(self, config: Config, client: UpstreamClient, registry: StatsRegistry,
                 env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.routes = RouteTable(config, env)
        self.engine = Engine(load_plugins(config.scoring.plugins, config.scoring.plugin_dirs,
                                          set(config.upstreams)))
        self.geo = GeoDatabase(config.geoip.database)
        self.candidates: dict[str, tuple[Candidate, ...]] = {
            route.name: tuple(
                Candidate(t.name, config.upstreams[t.name], registry.get(t.name, t.base_url), t)
                for t in route.targets)
            for route in self.routes.routes
        }
        retry = config.retry
        self.forwarder = Forwarder(client, registry, RetryBudget(
            retry.budget_ratio, retry.budget_floor, retry.budget_window))
        self.sumdb = SumdbProxy(config.sumdb, self.forwarder, config.timeouts)
        self.trusted_proxies = config.geoip.trusted_proxies
        self.prober = Prober(client, registry, (
            ProbeTarget(UpstreamTarget.from_config(name, up), up.probe_path)
            for name, up in config.upstreams.items()), config.probes)

    def context(self, request: web.Request, route: str, module: str | None,
                kind: str) -> RequestContext:
        """The ranking context of a request: who and where the client is, what it wants."""
        client_ip = request["client_ip"]
        location = self.geo.lookup(client_ip)
        request["country"] = location.country
        return RequestContext(route=route, module=module, kind=kind, client_ip=client_ip,
                              country=location.country, continent=location.continent,
                              now=time.monotonic())

    def rank(self, ctx: RequestContext) -> Ranking:
        return self.engine.rank(ctx, self.candidates[ctx.route])

    def explain(self, module: str, client_ip: IPAddress | None) -> dict[str, Any]:
        """The ranking a request for `module` from `client_ip` would get right now.

        Raises ProtocolError for an invalid module path, LookupError when no
        route matches.
        """
        check_path(module)
        route = self.routes.match(module)
        if route is None:
            raise LookupError(f"no route in routes.yaml matches module {module}")
        location = self.geo.lookup(client_ip)
        ctx = RequestContext(route=route.name, module=module, kind="info", client_ip=client_ip,
                             country=location.country, continent=location.continent,
                             now=time.monotonic())
        return explain(ctx, self.rank(ctx))


STATE = web.AppKey("state", EdgeState)


def _describe(req: ModuleRequest) -> str:
    if req.kind is Kind.LIST:
        return f"{req.module} version list"
    if req.kind is Kind.LATEST:
        return f"{req.module}@latest"
    return f"{req.module}@{req.version} .{req.kind.value}"


async def handle(request: web.Request) -> web.StreamResponse:
    """Everything that is not a fixed endpoint: a GOPROXY or /sumdb/ path."""
    state = request.app[STATE]
    if request.method not in ALLOWED_METHODS:
        return text_response(405, f"goproxy-router: method {request.method} not allowed; "
                                  "the module proxy protocol is read-only (GET, HEAD)\n",
                             headers={"Allow": ", ".join(ALLOWED_METHODS)})
    try:
        req = parse(request.raw_path.split("?", 1)[0])
    except ProtocolError as exc:
        return text_response(exc.status, f"goproxy-router: {exc.reason}\n")
    request["module"] = req.module
    route: CompiledRoute | None = None
    if req.module is not None:
        route = state.routes.match(req.module)
        if route is None:
            return text_response(404, f"goproxy-router: no route in routes.yaml matches "
                                      f"module {req.module}\n")
        request["route"] = route.name
        if route.access is not None:
            try:
                route.access.check(request["client_ip"], request.headers.get("Authorization"))
            except AccessDenied as exc:
                headers = ({"WWW-Authenticate": f'Basic realm="goproxy-router {route.name}"'}
                           if exc.status == 401 else None)
                return text_response(exc.status, f"goproxy-router: {exc.reason}\n", headers)
    if isinstance(req, SumdbRequest):
        return await state.sumdb.handle(request, req, route, request["request_id"])
    assert route is not None
    request["version"] = req.version
    request["kind"] = req.kind.value
    ranking = state.rank(state.context(request, route.name, req.module, req.kind.value))
    plan = ForwardPlan(
        request_id=request["request_id"],
        route=route.name,
        what=_describe(req),
        path=req.upstream_path(),
        method=request.method,
        targets=ranking.targets(),
        timeouts=route.timeouts,
        kind=req.kind.value,
        module=req.module,
        expected_version=req.version if req.kind is Kind.INFO and req.immutable else None,
        retry=route.retry,
        hedge=route.hedge,
    )
    request["plan"] = plan
    return await state.forwarder.forward(request, plan)


async def healthz(request: web.Request) -> web.Response:
    return text_response(200, "ok\n")


async def explain_endpoint(request: web.Request) -> web.Response:
    """GET /_router/explain?module=M[&client_ip=IP] (JSON); default client: the caller."""
    state = request.app[STATE]
    module = request.query.get("module", "")
    raw_ip = request.query.get("client_ip")
    client_ip = parse_ip(raw_ip) if raw_ip else request["client_ip"]
    if raw_ip and client_ip is None:
        return web.json_response({"error": f"client_ip {raw_ip!r} is not an IP address"},
                                 status=400)
    try:
        return web.json_response(state.explain(module, client_ip))
    except ProtocolError as exc:
        return web.json_response({"error": exc.reason}, status=400)
    except LookupError as exc:
        return web.json_response({"error": str(exc)}, status=404)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, client address, the access log line, and no tracebacks to clients."""
    started = time.monotonic()
    state = request.app[STATE]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    peer_host = peer[0] if isinstance(peer, tuple) else None
    request["client_ip"] = client_address(peer_host, request.headers.get("X-Forwarded-For"),
                                          state.trusted_proxies)
    offered = request.headers.get("X-Request-Id", "")
    from_trusted_proxy = is_trusted(parse_ip(peer_host), state.trusted_proxies)
    request["request_id"] = (offered if from_trusted_proxy and _REQUEST_ID.match(offered)
                             else secrets.token_hex(8))
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        errors_log.exception("unhandled error", extra={"fields": {
            "request_id": request["request_id"], "path": request.path}})
        response = text_response(500, f"goproxy-router: internal error "
                                      f"(request {request['request_id']})\n")
        return response
    finally:
        _access_log(request, status, time.monotonic() - started)


def _access_log(request: web.Request, status: int, elapsed: float) -> None:
    plan: ForwardPlan | None = request.get("plan")
    attempts = plan.attempts if plan else []
    upstream = attempts[-1].upstream if attempts and attempts[-1].status == 200 else None
    log_event(log, logging.INFO, "request",
              request_id=request["request_id"], client=str(request.get("client_ip")),
              method=request.method, path=request.path, route=request.get("route"),
              module=request.get("module"), version=request.get("version"),
              kind=request.get("kind"), country=request.get("country"),
              upstream=upstream, attempts=len(attempts),
              status=status, elapsed=round(elapsed, 4))


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get("request_id")
    if request_id:
        response.headers["X-Request-Id"] = request_id


def build_app(config: Config, env: Mapping[str, str] | None = None) -> web.Application:
    """The application for one config; the upstream client lives with the app."""
    app = web.Application(middlewares=[edge_middleware], handler_args={"max_field_size": 16384})
    client = UpstreamClient()
    registry = StatsRegistry(StatsSettings.from_scoring(config.scoring))
    state = app[STATE] = EdgeState(config, client, registry, env)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_router/explain", explain_endpoint)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(_add_request_id)

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        await client.start()
        state.prober.start()
        yield
        await state.prober.stop()
        await client.close()
        state.geo.close()

    app.cleanup_ctx.append(client_context)
    return app
