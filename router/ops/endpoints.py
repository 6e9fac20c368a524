"""The operator endpoints of the app: /healthz, /readyz, /metrics and /_router/explain.

/healthz says the process answers; /readyz says whether the edge should take
traffic (503 with the reasons when not); /metrics renders the Prometheus
registry; /_router/explain tells how a module's upstreams would be ranked.
/metrics and /_router/ are for operators: router/serving/middleware.py checks
their access before these run.
"""

from __future__ import annotations

import time

from aiohttp import web

from goproxy_router.forwarding.fetching import text_response
from goproxy_router.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from goproxy_router.protocol.paths import ProtocolError
from goproxy_router.routing.geo import parse_ip
from goproxy_router.serving.edge import EDGE, Edge
from goproxy_router.serving.exchange import EXCHANGE
from goproxy_router.upstream.stats import BreakerState


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
