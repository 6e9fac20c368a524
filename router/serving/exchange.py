"""One typed record per request through the full flow: what the steps learn about it.

The middleware opens an `Exchange` and stores it under `EXCHANGE`; the
steps fill it in (route and kind, the cache's outcome, the forwarding plan
with its attempts, the bytes sent) and the access log, the request metrics
and the response headers read it back. It replaces string keys on the
request, so a field is named, typed and written in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from goproxy_router.forwarding.fetching import ForwardPlan
from goproxy_router.routing.geo import IPAddress
from goproxy_router.storage.entry import CacheEntry

if TYPE_CHECKING:
    from goproxy_router.serving.edge import EdgeState


@dataclass(slots=True)
class Exchange:
    """A request of the full flow and what became of it; None until a step knows."""

    state: EdgeState                # this request's config, even across a reload
    request_id: str
    client_ip: IPAddress | None
    route: str | None = None
    kind: str | None = None         # list, info, mod, zip, latest or sumdb
    module: str | None = None
    version: str | None = None
    country: str | None = None      # looked up to rank (a miss) or for the access log
    private: bool = False           # a route with `allow`: every answer made private
    cache: str | None = None        # hit, miss or stale: what X-Goproxy-Cache said
    plan: ForwardPlan | None = None  # on a miss (or a /sumdb/ request): its attempts
    memory_entry: CacheEntry | None = None   # a hit from the memory tier, for the thin path
    bytes: int | None = None        # of the body sent

    @property
    def upstream(self) -> str | None:
        """The upstream whose answer was sent: the last attempt that ended ok."""
        attempts = self.plan.attempts if self.plan else []
        ok = [a.upstream for a in attempts if a.outcome.value == "ok"]
        return ok[-1] if ok else None

    @property
    def attempts(self) -> int:
        return len(self.plan.attempts) if self.plan else 0


EXCHANGE = web.RequestKey("exchange", Exchange)
