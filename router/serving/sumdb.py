"""Checksum databases served under /sumdb/<name>/, without leaking private names.

The go command asks `/sumdb/<name>/supported` first; a 200 makes it send
every lookup and tile request for that database through us. A lookup names a
module, so it is only forwarded when the module's route allows checksum
verification (`sumdb: true`); a private module's name never leaves the edge.
The answers are served through the edge's cache (router/serving/sumdbcache.py)
when it has one: full tiles and lookups for good, `latest` and partial tiles
briefly, and stale when every database URL fails.
"""

from __future__ import annotations

from aiohttp import web

from goproxy_router.config.schema import Hedge, SumDB, Timeouts
from goproxy_router.forwarding.fetching import ForwardPlan, text_response
from goproxy_router.forwarding.forwarder import Forwarder
from goproxy_router.protocol.requests import SumdbRequest
from goproxy_router.routing.routes import CompiledRoute
from goproxy_router.serving.exchange import EXCHANGE
from goproxy_router.serving.sumdbcache import SumdbCache
from goproxy_router.upstream.targets import UpstreamTarget, sumdb_targets


class SumdbProxy:
    """Answers the /sumdb/ paths for the databases listed in routes.yaml."""

    def __init__(self, databases: tuple[SumDB, ...], forwarder: Forwarder, timeouts: Timeouts,
                 cache: SumdbCache | None = None) -> None:
        self._forwarder = forwarder
        self._cache = cache
        self._timeouts = timeouts
        self._targets: dict[str, tuple[UpstreamTarget, ...]] = {
            db.name: sumdb_targets(db) for db in databases
        }

    async def handle(self, request: web.Request, req: SumdbRequest,
                     route: CompiledRoute | None, plan_id: str) -> web.StreamResponse:
        """Serve one /sumdb/ request; `route` is the lookup's module route (None otherwise)."""
        targets = self._targets.get(req.name)
        if targets is None:
            return text_response(404, f"goproxy-router: checksum database {req.name} is not "
                                      "proxied here; the go command will contact it directly\n")
        if req.endpoint == "supported":
            return web.Response(status=200)
        if route is not None and not route.sumdb:
            return text_response(404, (
                f"goproxy-router: module {req.module} is private (route {route.name}); "
                f"its name is never sent to {req.name}.\n"
                "Exclude it from checksum verification on the client, e.g.\n"
                f"  go env -w GONOSUMDB={','.join(route.config.match)}\n"))
        def plan_for() -> ForwardPlan:
            plan = ForwardPlan(
                request_id=plan_id,
                route=route.name if route else "sumdb",
                what=f"checksum database {req.name} {req.tail}",
                path="/" + req.tail,
                method=request.method,
                targets=targets,
                timeouts=self._timeouts,
                hedge=Hedge(enabled=False),
            )
            request[EXCHANGE].plan = plan
            return plan

        if self._cache is not None:
            return await self._cache.serve(request, req, plan_for, self._forwarder)
        return await self._forwarder.forward(request, plan_for())
