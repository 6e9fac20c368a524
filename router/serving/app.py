"""The aiohttp application: request id, access log, and the GOPROXY request flow.

parse the path -> find the route -> check access -> cache -> rank -> forward
to the route's upstreams. Ranking (GeoIP, scoring, the ForwardPlan) is done
only on a miss: the cache calls `plan_for_miss`. Every refusal is a short text/plain answer that
the go command prints to the developer; nothing invalid is ever forwarded.

Two lifetimes: an `Edge` lives as long as the process (upstream client, live
stats, retry budget, cache, metrics); an `EdgeState` is what one config
gives (routes, plugins, GeoIP, probes) and is swapped whole on reload, so
in-flight requests finish on the state they started with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from goproxy_router import __version__
from goproxy_router.base.compat import ServerHandler, swap_request_handler
from goproxy_router.base.logs import Clock, LineSink, direct_sink, log_event
from goproxy_router.config.schema import Config
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.forwarder import AttemptObserver, Forwarder, ForwardPlan, text_response
from goproxy_router.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from goproxy_router.ops.metrics import (
    AuthCollector,
    LiveCollector,
    Metrics,
    MetricsObserver,
    MetricsPoolObserver,
)
from goproxy_router.ops.status import setup_status
from goproxy_router.protocol.paths import Kind, ModuleRequest, ProtocolError, SumdbRequest, check_path, parse
from goproxy_router.routing.admin import AdminPolicy
from goproxy_router.routing.geo import GeoDatabase, IPAddress, parse_ip
from goproxy_router.routing.identity import Peer, PeerBook, RequestIds
from goproxy_router.routing.routes import AccessDenied, CompiledRoute, RouteTable, make_private
from goproxy_router.routing.throttle import AuthThrottle
from goproxy_router.scoring.engine import Candidate, Engine, Ranking, RequestContext, explain, load_plugins
from goproxy_router.serving import accesslog
from goproxy_router.serving.artifacts import CONTENT_TYPES, IMMUTABLE, ArtifactCache, Lookup
from goproxy_router.serving.exchange import EXCHANGE, Exchange
from goproxy_router.serving.sumdb import SumdbProxy
from goproxy_router.serving.thin import (
    HitTable,
    KeptHit,
    RenderedResponse,
    hit_response,
    is_plain_get,
)
from goproxy_router.upstream.client import UpstreamClient, UpstreamTarget
from goproxy_router.upstream.probes import Prober, ProbeTarget
from goproxy_router.upstream.stats import BreakerState, StatsRegistry, StatsSettings

log = accesslog.log
errors_log = logging.getLogger("router.app")

ALLOWED_METHODS = ("GET", "HEAD")
SERVER = f"goproxy-router/{__version__}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EdgeState:
    """What one loaded config gives the request path: routes, ranking, forwarding, sumdb.

    The stats registry is passed in rather than owned, so that live stats
    outlive a config reload.
    """

    def __init__(self, config: Config, client: UpstreamClient, registry: StatsRegistry,
                 env: Mapping[str, str] | None = None, budget: RetryBudget | None = None,
                 observer: AttemptObserver | None = None, geo: GeoDatabase | None = None) -> None:
        self.config = config
        self.routes = RouteTable(config, env)
        self.engine = Engine(load_plugins(config.scoring.plugins, config.scoring.plugin_dirs,
                                          set(config.upstreams)))
        self.geo = geo if geo is not None else GeoDatabase(config.geoip.database)
        self.candidates: dict[str, tuple[Candidate, ...]] = {
            route.name: tuple(
                Candidate(t.name, config.upstreams[t.name], registry.get(t.name, t.base_url), t)
                for t in route.targets)
            for route in self.routes.routes
        }
        retry = config.retry
        self.forwarder = Forwarder(client, registry, budget or RetryBudget(
            retry.budget_ratio, retry.budget_floor, retry.budget_window), observer=observer,
            resume=config.resume)
        self.sumdb = SumdbProxy(config.sumdb, self.forwarder, config.timeouts)
        self.peers = PeerBook(config.geoip.trusted_proxies)
        self.prober = Prober(client, registry, (
            ProbeTarget(UpstreamTarget.from_config(name, up), up.probe_path)
            for name, up in config.upstreams.items()), config.probes)

    def context(self, route: str, module: str | None, kind: Kind,
                client_ip: IPAddress | None) -> RequestContext:
        """The ranking context of a request: who and where the client is, what it wants."""
        location = self.geo.lookup(client_ip)
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
        ctx = self.context(route.name, module, Kind.INFO, client_ip)
        return explain(ctx, self.rank(ctx))


class Edge:
    """The process-long parts, and the current EdgeState (swapped on reload)."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.metrics = Metrics()
        self.client = UpstreamClient(limit_per_host=config.pool.per_upstream,
                                     observer=MetricsPoolObserver(self.metrics))
        self.registry = StatsRegistry(StatsSettings.from_scoring(config.scoring))
        retry = config.retry
        self.budget = RetryBudget(retry.budget_ratio, retry.budget_floor, retry.budget_window)
        self.cache = ArtifactCache(config.cache)
        self.state = self._state(config)
        self.metrics.attach(LiveCollector(self.registry, lambda: self.budget, self.cache.info,
                                          time.monotonic, lambda: self.state.engine.errors))
        self.admin = AdminPolicy.from_config(config, env)
        self.auth_throttle = AuthThrottle()         # across reloads: a reload is no fresh start
        self.metrics.registry.register(AuthCollector(self.auth_throttle))
        self.hits = HitTable(config.cache.memory)
        self.request_ids = RequestIds()
        self._clock = Clock()
        self._pid = os.getpid()
        self._sink: LineSink | None = None
        self._sink_checked = -1.0
        self._write_probe: asyncio.Task[str | None] | None = None

    def _access_sink(self, now: float) -> LineSink | None:
        """Where the thin path may write its access-log line itself; looked up once a second."""
        if now - self._sink_checked > 1.0:
            self._sink = direct_sink(log, logging.INFO)
            self._sink_checked = now
        return self._sink

    def keep_hit(self, request: web.Request, route: CompiledRoute, req: ModuleRequest) -> None:
        """Remember a plain GET's answer from the memory tier for the thin path (public routes)."""
        exchange = request[EXCHANGE]
        entry = exchange.memory_entry
        if (entry is None or route.access is not None or exchange.cache != "hit"
                or not is_plain_get(request) or exchange.state is not self.state):
            return
        kind = req.kind.value
        self.hits.keep(request.raw_path, entry, content_type=CONTENT_TYPES[kind],
                       cache_control=IMMUTABLE, server=SERVER, route=route.name,
                       module=req.module, version=req.version or "", kind=kind)

    def answer_hit(self, request: web.BaseRequest, hit: KeptHit,
                   started: float) -> web.StreamResponse | RenderedResponse:
        """The thin path: a kept answer, its request id, counters and access-log line."""
        peer = _peer(request, self.state.peers)
        headers = request.headers
        request_id = (self.request_ids.choose(headers.get("X-Request-Id"), True) if peer.trusted
                      else self.request_ids.new())
        response = hit_response(request, hit, request_id)
        self.metrics.pending_requests[hit.labels] += 1
        self.cache.answers["hit"] += 1
        sink = self._access_sink(started)
        if sink is None and not log.isEnabledFor(logging.INFO):
            return response
        client = (json.dumps(str(self.state.peers.client(peer, headers))) if peer.trusted
                  else peer.json)
        elapsed = time.monotonic() - started
        if sink is not None:
            sink.write(accesslog.line(self._clock.now(), self._pid, request_id, client,
                                      hit.log_fields, elapsed))
        else:                        # someone else listens too (e.g. a test's log capture)
            accesslog.emit(request_id, json.loads(client),
                           json.loads("{" + hit.log_fields + "}"), elapsed)
        return response

    async def cache_write_problem(self) -> str | None:
        """Why the disk cache cannot be written, or None, from a real write: os.access says
        yes to root. In a thread, so a slow or hung filesystem holds up /readyz, not the
        loop; concurrent callers share one probe write, so they cannot pile up threads."""
        if self._write_probe is None:
            probe = asyncio.create_task(asyncio.to_thread(_cache_write_problem,
                                                         self.cache.disk.root))
            probe.add_done_callback(lambda _: setattr(self, "_write_probe", None))
            self._write_probe = probe
        return await asyncio.shield(self._write_probe)

    def _state(self, config: Config, geo: GeoDatabase | None = None) -> EdgeState:
        return EdgeState(config, self.client, self.registry, self.env, self.budget,
                         MetricsObserver(self.metrics), geo)

    async def reload(self, config: Config) -> None:
        """Swap in a new config atomically; the old one keeps serving on failure."""
        geo: GeoDatabase | None = None
        try:
            # Opening the GeoIP file reads all of it: in a thread, while the old state serves.
            geo = await asyncio.to_thread(GeoDatabase, config.geoip.database)
            new = self._state(config, geo)
            admin = AdminPolicy.from_config(config, self.env)
        except Exception:
            if geo is not None:
                geo.close()
            self.metrics.record_reload("error")
            raise
        old, self.state, self.admin = self.state, new, admin
        self.hits.clear()              # the new routes may send the same paths elsewhere
        for ignored in ("cache", "listen", "pool"):
            if getattr(old.config, ignored) != getattr(config, ignored):
                log_event(errors_log, logging.WARNING, "config change needs a restart",
                          section=ignored)
        self.registry.retain({(t.name, t.base_url) for c in new.candidates.values()
                              for t in (cand.target for cand in c)})
        new.prober.start()
        await old.prober.stop()
        old.geo.close()
        self.metrics.record_reload("ok")
        log_event(errors_log, logging.INFO, "config reloaded",
                  routes=[r.name for r in config.routes])


EDGE = web.AppKey("edge", Edge)


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
            exchange.private = True             # every answer from here on: see _on_prepare
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


async def healthz(request: web.Request) -> web.Response:
    return text_response(200, "ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded, the cache writable and every route has a
    usable upstream; otherwise 503 saying why. A degraded cache (disk low or
    failing: fills are served uncached) is said in the body, still with 200:
    the edge proxies all the same, so it stays in rotation."""
    edge = request.app[EDGE]
    problems = await readiness_problems(edge)
    if problems:
        return text_response(503, "not ready:\n" + "".join(f"  {p}\n" for p in problems))
    disk = edge.cache.disk
    disk.admits()                              # a fresh look at the free space, at most 1/s
    if disk.degraded is not None:
        return text_response(200, f"ready\n  cache degraded: {disk.degraded}\n")
    return text_response(200, "ready\n")


async def readiness_problems(edge: Edge) -> list[str]:
    problems = []
    cache_problem = await edge.cache_write_problem()
    if cache_problem is not None:
        problems.append(cache_problem)
    now = time.monotonic()
    for route, candidates in edge.state.candidates.items():
        if all(c.stats.breaker.state(now) is BreakerState.OPEN for c in candidates):
            names = ", ".join(c.name for c in candidates)
            problems.append(f"route {route}: every upstream is ejected ({names})")
    return problems


def _cache_write_problem(cache_dir: Path) -> str | None:
    """Blocking: create and remove a temporary file in the cache directory."""
    try:
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".tmp-readyz-"):
            pass
    except OSError as exc:
        return f"cache directory {cache_dir} is not writable: {exc.strerror or exc}"
    return None


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[EDGE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def explain_endpoint(request: web.Request) -> web.Response:
    """GET /_router/explain?module=M[&client_ip=IP] (JSON); default client: the caller."""
    exchange = request[EXCHANGE]
    state = exchange.state
    module = request.query.get("module", "")
    raw_ip = request.query.get("client_ip")
    client_ip = parse_ip(raw_ip) if raw_ip else exchange.client_ip
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
    edge = request.app[EDGE]
    state = edge.state
    peer = _peer(request, state.peers)
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


def _peer(request: web.BaseRequest, peers: PeerBook) -> Peer:
    # request.remote: the connection's peer address, which aiohttp looks up once per
    # connection (a getpeername system call on uvloop), not once per request.
    return peers.peer(request.remote)


def install_thin_path(app: web.Application, server: web.Server) -> None:
    """Answer kept hits (router/serving/thin.py) before aiohttp's routing, middleware and signals.

    Call after the runner's setup, before the site starts: `server` is the
    runner's low-level server, whose request handler is the application's.
    Anything that is not a kept hit goes on to that handler unchanged.
    """
    edge = app[EDGE]
    hits = edge.hits

    def in_front_of(full: ServerHandler) -> ServerHandler:
        async def thin_path(request: web.BaseRequest) -> web.StreamResponse:
            if request.method == "GET":
                hit = hits.get(request.raw_path)
                if hit is not None and is_plain_get(request):
                    # A RenderedResponse offers all the server asks of a response (router/serving/thin.py).
                    return cast(web.StreamResponse, edge.answer_hit(request, hit, time.monotonic()))
            return await full(request)
        return thin_path

    swap_request_handler(server, in_front_of)


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


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
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


def build_app(config: Config, env: Mapping[str, str] | None = None) -> web.Application:
    """The application for one config; the process-long parts live in its Edge."""
    app = web.Application(middlewares=[edge_middleware], handler_args={
        "max_field_size": 16384,
        "logger": RequestErrorLog(logging.getLogger("aiohttp.server"), {})})
    edge = app[EDGE] = Edge(config, env)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/_router/explain", explain_endpoint)
    setup_status(app, lambda: edge.state, edge.cache.info)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(_on_prepare)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await edge.client.start()
        edge.state.prober.start()
        yield
        await edge.state.prober.stop()
        await edge.client.close()
        await edge.cache.close()
        edge.state.geo.close()

    app.cleanup_ctx.append(lifetime)
    return app
