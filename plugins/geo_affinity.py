"""geo_affinity: prefer upstreams declared near the client's country."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router.countries import continent_of
from router.scoring import Candidate, Plugin, RequestContext

Factor = Annotated[float, Field(gt=0)]


class GeoAffinityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    same_country: Factor = 1.0
    same_continent: Factor = 1.5
    elsewhere: Factor = 3.0


class GeoAffinity(Plugin):
    """Factor from the upstream's `countries` vs the client's country.

    Same country is best, then same continent, then elsewhere. An upstream
    declared `"*"` ("near everyone") and a client whose country is unknown
    both get 1.0: not knowing must never punish anyone.
    """

    name = "geo_affinity"
    Options = GeoAffinityOptions

    def __init__(self, options: GeoAffinityOptions) -> None:
        super().__init__(options)
        self.opts = options
        self._continents: dict[tuple[str, ...], frozenset[str]] = {}

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        country = ctx.country
        countries = upstream.config.countries
        if country is None or "*" in countries:
            return 1.0
        if country in countries:
            return self.opts.same_country
        continent = ctx.continent or continent_of(country)
        if continent is not None and continent in self._continents_of(countries):
            return self.opts.same_continent
        return self.opts.elsewhere

    def _continents_of(self, countries: tuple[str, ...]) -> frozenset[str]:
        found = self._continents.get(countries)
        if found is None:
            found = frozenset(c for c in map(continent_of, countries) if c is not None)
            self._continents[countries] = found
        return found
