"""The aiohttp application: the request path, the operator surface and the thin path, wired.

`build_app` makes the Edge for one config with its metrics (router/ops/metrics.py)
and the collectors that read it, mounts the middleware and response hook
(router/serving/middleware.py), the operator endpoints (router/ops/endpoints.py)
and status page (router/ops/status.py) and, for every other path, the request flow
(router/serving/flow.py); its cleanup context starts and stops the upstream
client, probes, cache and GeoIP. `install_thin_path` puts the thin hit path
(router/serving/thin.py) in front of all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import cast

from aiohttp import web

from goproxy_router.base.compat import ServerHandler, swap_request_handler
from goproxy_router.config.schema import Config
from goproxy_router.ops.endpoints import explain_endpoint, healthz, metrics_endpoint, readyz
from goproxy_router.ops.metrics import (
    AuthCollector,
    LiveCollector,
    Metrics,
    MetricsObserver,
    MetricsPoolObserver,
    SumdbCollector,
)
from goproxy_router.ops.status.handlers import setup_status
from goproxy_router.serving.edge import EDGE, Edge
from goproxy_router.serving.flow import handle
from goproxy_router.serving.middleware import RequestErrorLog, edge_middleware, on_prepare
from goproxy_router.serving.thin import is_plain_get


def make_edge(config: Config, env: Mapping[str, str] | None = None) -> Edge:
    """The Edge for `config`, counted by its own Metrics (live values read at scrape time)."""
    metrics = Metrics()
    edge = Edge(config, env, metrics, MetricsPoolObserver(metrics), MetricsObserver(metrics))
    metrics.attach(LiveCollector(edge.registry, lambda: edge.budget, edge.cache.info,
                                 time.monotonic, lambda: edge.state.engine.errors))
    metrics.registry.register(AuthCollector(edge.auth_throttle))
    metrics.registry.register(SumdbCollector(edge.sumdb_cache.answers))
    return edge


def build_app(config: Config, env: Mapping[str, str] | None = None) -> web.Application:
    """The application for one config; the process-long parts live in its Edge."""
    app = web.Application(middlewares=[edge_middleware], handler_args={
        "max_field_size": 16384,
        "logger": RequestErrorLog(logging.getLogger("aiohttp.server"), {})})
    edge = app[EDGE] = make_edge(config, env)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/_router/explain", explain_endpoint)
    setup_status(app, lambda: edge.state, edge.cache.info)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(on_prepare)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await edge.client.start()
        edge.state.prober.start(probe_now=True)
        # No edge starts blind: one probe round sets the first hedge delays, if it is quick.
        await edge.state.prober.first_round(edge.state.config.probes.startup_wait)
        yield
        await edge.state.prober.stop()
        await edge.client.close()
        await edge.sumdb_cache.close()
        await edge.cache.close()
        edge.state.geo.close()

    app.cleanup_ctx.append(lifetime)
    return app


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

