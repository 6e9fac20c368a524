"""The state the request path reads: `Edge` (process-long) and `EdgeState` (one config).

Two lifetimes: an `Edge` lives as long as the process (upstream client, live
stats, retry budget, cache and checksum-database cache, metrics, the thin path's
kept hits); an `EdgeState`
is what one config gives (routes, plugins, GeoIP, probes) and is swapped whole
on reload, so in-flight requests finish on the state they started with.

The Edge is handed its metrics and observers: they are built, with the
collectors that read the Edge, by the runtime (router/runtime/app.py), so this
module needs no operator code at run time. It lives on the app under `EDGE`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from goproxy_router import __version__
from goproxy_router.base.logs import Clock, LineSink, direct_sink, log_event
from goproxy_router.config.schema import Config
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.forwarder import AttemptObserver, Forwarder
from goproxy_router.protocol.paths import check_path
from goproxy_router.protocol.requests import Kind, ModuleRequest
from goproxy_router.routing.admin import AdminPolicy
from goproxy_router.routing.geo import GeoDatabase, IPAddress
from goproxy_router.routing.identity import Peer, PeerBook, RequestIds
from goproxy_router.routing.routes import CompiledRoute, RouteTable
from goproxy_router.routing.throttle import AuthThrottle
from goproxy_router.scoring.api import Candidate, RequestContext
from goproxy_router.scoring.engine import Engine, Ranking, explain
from goproxy_router.scoring.loader import load_plugins
from goproxy_router.serving import accesslog
from goproxy_router.serving.artifacts import ArtifactCache
from goproxy_router.serving.exchange import EXCHANGE
from goproxy_router.serving.responses import CONTENT_TYPES, IMMUTABLE
from goproxy_router.serving.sumdb import SumdbProxy
from goproxy_router.serving.sumdbcache import SumdbCache
from goproxy_router.serving.thin import HitTable, KeptHit, RenderedResponse, hit_response, is_plain_get
from goproxy_router.upstream.client import UpstreamClient
from goproxy_router.upstream.hedging import explain_delays
from goproxy_router.upstream.pool import PoolObserver
from goproxy_router.upstream.probes import Prober, ProbeTarget
from goproxy_router.upstream.stats import StatsRegistry, StatsSettings
from goproxy_router.upstream.targets import UpstreamTarget

if TYPE_CHECKING:
    from goproxy_router.ops.metrics import Metrics

log = accesslog.log
errors_log = logging.getLogger("router.app")

SERVER = f"goproxy-router/{__version__}"


class EdgeState:
    """What one loaded config gives the request path: routes, ranking, forwarding, sumdb.

    The stats registry is passed in rather than owned, so that live stats
    outlive a config reload.
    """

    def __init__(self, config: Config, client: UpstreamClient, registry: StatsRegistry,
                 env: Mapping[str, str] | None = None, budget: RetryBudget | None = None,
                 observer: AttemptObserver | None = None, geo: GeoDatabase | None = None,
                 sumdb_cache: SumdbCache | None = None) -> None:
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
        self.sumdb = SumdbProxy(config.sumdb, self.forwarder, config.timeouts, sumdb_cache)
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
        ranking = self.rank(ctx)
        report = explain(ctx, ranking)
        report["hedge"] = explain_delays(route.hedge, [s.candidate.stats for s in ranking.order])
        return report


class Edge:
    """The process-long parts, and the current EdgeState (swapped on reload).

    `metrics` counts requests and reloads; `pool_observer` and `attempts` feed
    the upstream pool's and the attempt policy's events into it.
    """

    def __init__(self, config: Config, env: Mapping[str, str] | None, metrics: Metrics,
                 pool_observer: PoolObserver, attempts: AttemptObserver) -> None:
        self.env = env
        self.metrics = metrics
        self._attempts = attempts
        self.client = UpstreamClient(limit_per_host=config.pool.per_upstream,
                                     observer=pool_observer)
        self.registry = StatsRegistry(StatsSettings.from_scoring(config.scoring))
        retry = config.retry
        self.budget = RetryBudget(retry.budget_ratio, retry.budget_floor, retry.budget_window)
        self.cache = ArtifactCache(config.cache)
        self.sumdb_cache = SumdbCache(self.cache.disk, config.cache.sumdb_ttl,
                                      config.cache.stale_max_age)
        self.state = self._state(config)
        self.admin = AdminPolicy.from_config(config, env)
        self.auth_throttle = AuthThrottle()         # across reloads: a reload is no fresh start
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
        peer = peer_of(request, self.state.peers)
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
                         self._attempts, geo, self.sumdb_cache)

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
        retry = config.retry           # the shared budget keeps its history, takes the new terms
        self.budget.configure(retry.budget_ratio, retry.budget_floor, retry.budget_window)
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


def peer_of(request: web.BaseRequest, peers: PeerBook) -> Peer:
    """The connected peer of a request, and whether it is a trusted proxy."""
    # request.remote: the connection's peer address, which aiohttp looks up once per
    # connection (a getpeername system call on uvloop), not once per request.
    return peers.peer(request.remote)


def _cache_write_problem(cache_dir: Path) -> str | None:
    """Blocking: create and remove a temporary file in the cache directory."""
    try:
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".tmp-readyz-"):
            pass
    except OSError as exc:
        return f"cache directory {cache_dir} is not writable: {exc.strerror or exc}"
    return None
