"""weights: static preferences from routes.yaml (`weight`, `priority`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from goproxy_router.scoring.api import Candidate, Plugin, PluginOptions, RequestContext


class WeightsOptions(PluginOptions):
    priority_step: Annotated[float, Field(gt=1)] = 1000.0


class Weights(Plugin[WeightsOptions]):
    """Factor 1/weight x priority_step**priority.

    `weight: 2` makes an upstream look half as costly. `priority` works in
    tiers like Envoy's: 0 is the first tier; an upstream of priority 1 costs
    `priority_step` (1000) times more, so it is used only when every tier-0
    upstream is vetoed (ejected) or a thousand times slower.
    """

    name = "weights"

    def __init__(self, options: WeightsOptions) -> None:
        super().__init__(options)
        self.step = options.priority_step

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        config = upstream.config
        return self.step ** config.priority / config.weight
