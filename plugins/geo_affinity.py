"""geo_affinity: prefer upstreams declared near the client's country."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from goproxy_router.routing.countries import continent_of
from goproxy_router.scoring.api import Candidate, Plugin, PluginOptions, RequestContext

Factor = Annotated[float, Field(gt=0)]


class GeoAffinityOptions(PluginOptions):
    same_country: Factor = 1.0      # the upstream lists the client's country
    anywhere: Factor = 1.2          # the upstream says "*": near everyone, nobody's nearest
    same_continent: Factor = 1.5    # it lists a country on the client's continent
    elsewhere: Factor = 3.0

    @model_validator(mode="after")
    def _nearest_first(self) -> GeoAffinityOptions:
        if not self.same_country < self.anywhere:
            raise ValueError("same_country must be below anywhere: an upstream that lists the "
                             "client's own country must outrank one declared '*'")
        return self


class GeoAffinity(Plugin[GeoAffinityOptions]):
    """Factor from the upstream's `countries` vs the client's country.

    An upstream listing the client's own country is best; one declared `"*"`
    ("near everyone", e.g. a global CDN) comes next, so a regional mirror
    wins for its own region at equal latency while the global one stays
    close behind; then an upstream listing a country on the client's
    continent; then the rest. A client whose country is unknown gets 1.0
    everywhere: not knowing must never punish anyone.
    """

    name = "geo_affinity"

    def __init__(self, options: GeoAffinityOptions) -> None:
        super().__init__(options)
        self._continents: dict[tuple[str, ...], frozenset[str]] = {}

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        country = ctx.country
        if country is None:
            return 1.0
        countries = upstream.config.countries
        if country in countries:
            return self.options.same_country
        if "*" in countries:
            return self.options.anywhere
        continent = ctx.continent or continent_of(country)
        if continent is not None and continent in self._continents_of(countries):
            return self.options.same_continent
        return self.options.elsewhere

    def explain(self, ctx: RequestContext, upstream: Candidate) -> str:
        country = ctx.country
        countries = upstream.config.countries
        if country is None:
            return ""                       # explain's client line already says so
        if country in countries:
            return f"lists {country}, the client's country"
        if "*" in countries:
            return f"'*' (near everyone): after any upstream that lists {country}"
        continent = ctx.continent or continent_of(country)
        if continent is not None and continent in self._continents_of(countries):
            return f"lists {', '.join(countries)}: same continent ({continent})"
        return f"lists {', '.join(countries)}: not near {country}"

    def _continents_of(self, countries: tuple[str, ...]) -> frozenset[str]:
        found = self._continents.get(countries)
        if found is None:
            found = frozenset(c for c in map(continent_of, countries) if c is not None)
            self._continents[countries] = found
        return found
