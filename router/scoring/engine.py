"""The scoring engine: plugin factors multiplied into a cost per upstream; lower cost wins.

`Engine.rank` runs on every proxied miss: each plugin's `score` per upstream,
the product is the cost, ties keep the route's upstream order, vetoed
upstreams are left out unless all are (panic mode). A plugin that raises or
returns nonsense is logged, counted and neutral for that request; one whose
`begin` raises is neutral for the whole request. `explain` says why, per
plugin, for the CLI and /_router/explain. The plugin contract is api.py's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from goproxy_router.base.logs import log_event
from goproxy_router.scoring.api import Candidate, NoOptions, Plugin, RequestContext, Veto
from goproxy_router.upstream.targets import UpstreamTarget

log = logging.getLogger("router.scoring")

_INF = float("inf")


class Scored:
    """One upstream's result: final cost and each plugin's factor (or its Veto).

    Factors are kept as a list in plugin order (cheap on the hot path);
    `breakdown()` names them for explain.
    """

    __slots__ = ("candidate", "cost", "factors", "veto", "position")

    def __init__(self, candidate: Candidate, cost: float, factors: list[float | Veto],
                 veto: str | None, position: int) -> None:
        self.candidate = candidate
        self.cost = cost
        self.factors = factors
        self.veto = veto              # "plugin: reason" of the first veto
        self.position = position      # index in the route's upstream list: the tie-breaker

    @property
    def name(self) -> str:
        return self.candidate.name

    def breakdown(self, plugins: Sequence[Plugin]) -> dict[str, float | str]:
        return {plugin.name: f"veto: {f.reason}" if isinstance(f, Veto) else f
                for plugin, f in zip(plugins, self.factors, strict=True)}

    def reasons(self, ctx: RequestContext, plugins: Sequence[Plugin],
                failed: Mapping[str, str] | None = None) -> dict[str, str]:
        """Each plugin's own words on its factor (those that have any); `failed`: the
        plugins whose `begin` raised, with what it raised."""
        found = {}
        for plugin in plugins:
            if failed and plugin.name in failed:
                found[plugin.name] = failed[plugin.name]
                continue
            try:
                text = plugin.explain(ctx, self.candidate)
            except Exception as exc:
                text = f"explain raised {type(exc).__name__}: {exc}"
            if text:
                found[plugin.name] = str(text)
        return found


def _rank_key(scored: Scored) -> tuple[float, int]:
    return scored.cost, scored.position


@dataclass(slots=True)
class Ranking:
    """The full order for failover: best first, vetoed upstreams left out (unless panic)."""

    order: list[Scored]
    vetoed: list[Scored]
    plugins: tuple[Plugin, ...]
    panic: bool = False

    def targets(self) -> list[UpstreamTarget]:
        return [s.candidate.target for s in self.order]


class Engine:
    """Combines plugin factors into a cost per upstream and ranks them.

    This runs for every proxied request, so the loop is kept plain: the
    common result (a finite float > 0) is checked with one comparison and
    anything unusual goes to the slow path.
    """

    def __init__(self, plugins: Sequence[Plugin[Any]]) -> None:
        self.plugins = tuple(plugins)
        self.beginners = _beginners(self.plugins)   # those with a begin hook: the rest skip it
        self.errors: Counter[str] = Counter()   # plugin name -> exceptions/bad returns

    def rank(self, ctx: RequestContext, candidates: Sequence[Candidate]) -> Ranking:
        """Score every candidate; ties keep config order, so the result is deterministic."""
        plugins = self.plugins
        scorers: Sequence[Plugin[Any]] = plugins
        if self.beginners:
            failed = begin_all(self.beginners, ctx, self._failed_begin)
            if failed:
                scorers = [_NEUTRAL if p in failed else p for p in plugins]
        allowed: list[Scored] = []
        vetoed: list[Scored] = []
        for position, candidate in enumerate(candidates):
            cost = 1.0
            factors: list[float | Veto] = []
            veto: str | None = None
            for plugin in scorers:
                try:
                    result = plugin.score(ctx, candidate)
                except Exception as exc:
                    result = self._neutral(plugin, candidate, f"raised {type(exc).__name__}: {exc}")
                if result.__class__ is not float or not 0.0 < result < _INF:
                    result = self._unusual(plugin, candidate, result)
                    if result.__class__ is Veto:
                        veto = veto or f"{plugin.name}: {result.reason}"
                        factors.append(result)
                        continue
                # The __class__ test above narrows `result` to float (one comparison on the
                # hot path; mypy cannot follow it).
                cost *= result  # type: ignore[operator]
                factors.append(result)
            (allowed if veto is None else vetoed).append(
                Scored(candidate, cost, factors, veto, position))
        allowed.sort(key=_rank_key)
        vetoed.sort(key=_rank_key)
        if not allowed:
            return Ranking(order=vetoed, vetoed=vetoed, plugins=plugins, panic=True)
        return Ranking(order=allowed, vetoed=vetoed, plugins=plugins)

    def _unusual(self, plugin: Plugin, candidate: Candidate, result: Any) -> float | Veto:
        """A Veto, a plain int factor, or a plugin bug (neutral, logged, counted)."""
        if isinstance(result, Veto):
            return result
        if (isinstance(result, (int, float)) and not isinstance(result, bool)
                and 0.0 < result < _INF):
            return float(result)
        return self._neutral(plugin, candidate, f"returned {result!r}, not a factor > 0")

    def _neutral(self, plugin: Plugin, candidate: Candidate, problem: str) -> float:
        self.errors[plugin.name] += 1
        log_event(log, logging.ERROR, "plugin failed; treated as neutral", plugin=plugin.name,
                  upstream=candidate.name, problem=problem[:300])
        return 1.0

    def _failed_begin(self, plugin: Plugin, problem: str) -> None:
        self.errors[plugin.name] += 1
        log_event(log, logging.ERROR, "plugin failed; treated as neutral for the request",
                  plugin=plugin.name, problem=problem[:300])


def _beginners(plugins: Iterable[Plugin[Any]]) -> tuple[Plugin[Any], ...]:
    """The plugins that override `begin` (the default does nothing, so it is not called)."""
    return tuple(p for p in plugins if type(p).begin is not Plugin.begin)


def begin_all(plugins: Iterable[Plugin[Any]], ctx: RequestContext,
              on_error: Callable[[Plugin[Any], str], None]) -> set[Plugin[Any]]:
    """Call each plugin's `begin(ctx)`; the set of those that raised (reported to on_error)."""
    failed: set[Plugin[Any]] = set()
    for plugin in plugins:
        try:
            plugin.begin(ctx)
        except Exception as exc:
            failed.add(plugin)
            on_error(plugin, f"begin raised {type(exc).__name__}: {exc}")
    return failed


class _Neutral(Plugin):
    """Stands in, for one request, for a plugin whose `begin` failed: factor 1.0."""

    name = "(neutral)"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        return 1.0


_NEUTRAL = _Neutral(NoOptions())


def explain(ctx: RequestContext, ranking: Ranking) -> dict[str, Any]:
    """Why each upstream ranks where it does: every plugin's factor, the cost, the order."""
    chosen = {id(s) for s in ranking.order}
    rows = ranking.order + [s for s in ranking.vetoed if id(s) not in chosen]
    failed: dict[str, str] = {}        # explain reads what begin prepared, so begin again here
    begin_all(_beginners(ranking.plugins), ctx,
              lambda plugin, problem: failed.__setitem__(plugin.name, problem))
    return {
        "route": ctx.route,
        "module": ctx.module,
        "client_ip": str(ctx.client_ip) if ctx.client_ip else None,
        "country": ctx.country,
        "continent": ctx.continent,
        "panic": ranking.panic,
        "order": [s.name for s in ranking.order],
        "upstreams": [
            {
                "name": s.name,
                "rank": i + 1 if id(s) in chosen else None,
                "cost": s.cost,
                "factors": s.breakdown(ranking.plugins),
                "reasons": s.reasons(ctx, ranking.plugins, failed),
                "veto": s.veto,
                "countries": list(s.candidate.config.countries),
                "latency_ewma": round(s.candidate.stats.latency.value, 6),
                "in_flight": s.candidate.stats.in_flight,
                "breaker": s.candidate.stats.breaker.state(ctx.now).value,
                "requests": s.candidate.stats.requests,
                "failures": s.candidate.stats.failures,
            }
            for i, s in enumerate(rows)
        ],
    }
