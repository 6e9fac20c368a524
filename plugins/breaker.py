"""breaker: the circuit breaker's verdict on each upstream (formerly named `errors`)."""

from __future__ import annotations

from goproxy_router.scoring.api import Candidate, Plugin, RequestContext, Veto
from goproxy_router.upstream.stats import BreakerState


class BreakerVerdict(Plugin):
    """Veto ejected upstreams; while half-open, let only a few trial requests through.

    The breaker itself lives in the upstream's stats (fed by every request
    and probe outcome): consecutive failures eject for a growing, jittered
    period. When every upstream is vetoed the engine uses them all anyway.
    """

    name = "breaker"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        stats = upstream.stats
        breaker = stats.breaker
        if stats.not_before > ctx.now:
            return Veto(f"asked to retry after {stats.not_before - ctx.now:.0f}s (HTTP 429)")
        if breaker.open_until is None:      # closed: the common case, decided cheaply
            return 1.0
        state = breaker.state(ctx.now)
        if state is BreakerState.OPEN:
            return Veto(f"ejected after {breaker.consecutive_failures} consecutive failures, "
                        f"{breaker.remaining(ctx.now):.0f}s left")
        if state is BreakerState.HALF_OPEN and stats.in_flight >= stats.settings.half_open_trials:
            return Veto("half-open: a trial request is already in flight")
        return 1.0
