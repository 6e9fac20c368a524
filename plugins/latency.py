"""latency: prefer the upstream that answers fastest right now, given its load."""

from __future__ import annotations

from goproxy_router.scoring.api import Candidate, Plugin, RequestContext


class Latency(Plugin):
    """Peak-EWMA time to headers (seconds) x (requests in flight + 1).

    The in-flight term spreads a burst: an upstream already busy with our
    requests looks proportionally slower, as in Finagle's and Linkerd's
    peak-EWMA balancers. Failures enter the EWMA as penalty samples, so an
    upstream that fails fast does not look fast.
    """

    name = "latency"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        stats = upstream.stats
        return stats.latency.value * (stats.in_flight + 1)
