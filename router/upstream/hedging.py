"""The hedge delay of a running attempt, from the best that is known of its upstream.

A cold edge (after a deploy, a scale-out, a restart) has no samples of its
own yet, and a hung upstream must still cost little. So the delay after
which a request not yet answered is hedged comes from, in order:

- "own":   the running upstream's own recent traffic (>= `hedge.min_samples`);
- "route": the route's other upstreams' recent traffic, pooled (as many);
- "probe": the running upstream's active-probe measurements (>= `hedge.probe_samples`;
           one round is taken at start-up) times `hedge.probe_factor`: a probe is the
           cheapest request there is, a real one takes longer;
           with both a route and a probe delay, the larger one wins;
- "cold":  the configured `hedge.cold_delay` (`hedge.zip_cold_delay` for a zip),

at `hedge.percentile`, never sooner than `hedge.min_delay` (`hedge.zip_min_delay`).
Zips are measured apart from small kinds: an upstream may fetch a zip from the
origin on a miss, so its time to headers is its own. Until zips are measured
(own or route), a zip's delay is the small kinds' times `hedge.zip_factor`.
Pure: it reads stats and config, sends nothing; the schedule
(router/forwarding/schedule.py) and explain use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

from goproxy_router.config.schema import Hedge
from goproxy_router.upstream.stats import UpstreamStats, percentile_of

DelaySource = Literal["own", "route", "probe", "cold"]


@dataclass(frozen=True, slots=True)
class HedgeDelay:
    """Seconds after an attempt was sent that its hedge is due, and what set them."""

    seconds: float
    source: DelaySource


def hedge_delay(hedge: Hedge, running: UpstreamStats, others: Iterable[UpstreamStats],
                *, for_zip: bool = False) -> HedgeDelay:
    """The hedge delay of an attempt to `running`; `others`: the route's other upstreams."""
    others = list(others)
    floor = hedge.zip_min_delay if for_zip else hedge.min_delay
    found = _measured(hedge, running, others, "zip") if for_zip else None
    if found is None:
        found = _measured(hedge, running, others, "traffic")
        if found is not None and for_zip:
            found = (found[0] * hedge.zip_factor, found[1])
    if found is None:
        return HedgeDelay(max(hedge.zip_cold_delay if for_zip else hedge.cold_delay, floor), "cold")
    seconds, source = found
    return HedgeDelay(max(seconds, floor), source)


def _measured(hedge: Hedge, running: UpstreamStats, others: Iterable[UpstreamStats],
              window: Literal["traffic", "zip"]) -> tuple[float, DelaySource] | None:
    own = running.percentile(hedge.percentile, hedge.min_samples, window)
    if own is not None:
        return own, "own"
    pooled = chain.from_iterable(s.samples(window) for s in others if s is not running)
    priors: list[tuple[float, DelaySource]] = []
    route = percentile_of(pooled, hedge.percentile, hedge.min_samples)
    if route is not None:
        priors.append((route, "route"))
    if window == "traffic":
        probe = running.percentile(hedge.percentile, hedge.probe_samples, "probe")
        if probe is not None:
            priors.append((probe * hedge.probe_factor, "probe"))
    # Both known: the larger. Faster neighbours must not make a slower upstream's
    # every answer look late (a hedge on each request), nor a lucky probe a slow route's.
    return max(priors) if priors else None


def explain_delays(hedge: Hedge, upstreams: Sequence[UpstreamStats]) -> dict[str, Any]:
    """For explain: the hedge delay an attempt to each of a route's `upstreams` would get
    now, for small kinds and for a zip (None where hedging is off), and its source."""
    def one(stats: UpstreamStats, kinds: Iterable[str], for_zip: bool) -> dict[str, Any] | None:
        if not hedge.enabled or not set(kinds) & set(hedge.kinds):
            return None
        delay = hedge_delay(hedge, stats, upstreams, for_zip=for_zip)
        return {"seconds": round(delay.seconds, 6), "source": delay.source}

    return {stats.name: {"small": one(stats, ("list", "info", "mod", "latest"), False),
                         "zip": one(stats, ("zip",), True)} for stats in upstreams}
