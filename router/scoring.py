"""The scoring engine: plugins turn (request, upstream) into cost factors; lower cost wins.

Writing a plugin
----------------
Subclass `Plugin`, give it a `name`, optionally an `Options` pydantic model
(validated from routes.yaml), and implement `score`:

- return a float > 0: a factor multiplied into the upstream's cost
  (1.0 is neutral, 2.0 makes it look twice as expensive, 0.5 half);
- return `Veto("why")`: the upstream is not used for this request (unless
  every upstream is vetoed: then all are used anyway, "panic mode");
- raise, or return anything else: the engine logs it, counts it, and treats
  the plugin as neutral for that request. A plugin never breaks a request.

A plugin only scores: it never sends requests, touches the cache or the app.
It sees the `RequestContext` and the `Candidate` (the upstream's config and
its live stats) and must treat both as read-only.

Where plugins come from: `plugins/<name>.py` (built-ins), the entry-point
group `goproxy_router.plugins` (name -> Plugin subclass), and the directories
in `scoring.plugin_dirs` (file `<name>.py` defining the plugin `<name>`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import ipaddress
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from router.config import PluginSpec, Upstream
from router.logs import log_event
from router.stats import UpstreamStats
from router.upstream import UpstreamTarget

log = logging.getLogger("router.scoring")

BUILTIN_PACKAGE = "plugins"
ENTRY_POINT_GROUP = "goproxy_router.plugins"
_INF = float("inf")


class PluginError(Exception):
    """A plugin could not be loaded or configured; the message names it."""


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Veto:
    """Returned by a plugin to keep an upstream out of this request."""

    reason: str


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What is known about one request when its upstreams are ranked."""

    route: str
    module: str | None
    kind: str
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    country: str | None = None       # ISO 3166-1 alpha-2, None when unknown
    continent: str | None = None     # AF AN AS EU NA OC SA, None when unknown
    now: float = 0.0                 # time.monotonic() at ranking


@dataclass(frozen=True, slots=True)
class Candidate:
    """One upstream as a plugin sees it: its config and its live stats (read-only)."""

    name: str
    config: Upstream
    stats: UpstreamStats
    target: UpstreamTarget = field(repr=False)


class Plugin:
    """Base class of every scoring plugin. See the module docstring for the contract."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    def check(self, upstream_names: set[str]) -> list[str]:
        """Problems of the options against the configured upstreams (e.g. unknown names)."""
        return []

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        """A cost factor (> 0; 1.0 neutral) or a Veto for this upstream in this request."""
        return 1.0

    def explain(self, ctx: RequestContext, upstream: Candidate) -> str:
        """Why `score` gives what it gives here, in a few words, for `explain` only
        (never called while serving); "" when the factor speaks for itself."""
        return ""


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

    def reasons(self, ctx: RequestContext, plugins: Sequence[Plugin]) -> dict[str, str]:
        """Each plugin's own words on its factor (those that have any)."""
        found = {}
        for plugin in plugins:
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

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.plugins = tuple(plugins)
        self.errors: Counter[str] = Counter()   # plugin name -> exceptions/bad returns

    def rank(self, ctx: RequestContext, candidates: Sequence[Candidate]) -> Ranking:
        """Score every candidate; ties keep config order, so the result is deterministic."""
        plugins = self.plugins
        allowed: list[Scored] = []
        vetoed: list[Scored] = []
        for position, candidate in enumerate(candidates):
            cost = 1.0
            factors: list[float | Veto] = []
            veto: str | None = None
            for plugin in plugins:
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
                cost *= result
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


# ---------------------------------------------------------------------------
# Loading


def _spec_name(spec: PluginSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if len(spec) != 1:
        raise PluginError(f"plugin entry {spec!r} must be a name or a single {{name: options}} map")
    [(name, options)] = spec.items()
    return name, dict(options or {})


def _plugin_class(module: Any, name: str, origin: str) -> type[Plugin]:
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin
             and obj.name == name]
    if len(found) != 1:
        raise PluginError(f"plugin {name!r}: {origin} defines {len(found)} Plugin subclasses "
                          f"named {name!r}, expected exactly one")
    return found[0]


def _from_dirs(name: str, dirs: Iterable[str]) -> type[Plugin] | None:
    for directory in dirs:
        path = Path(directory) / f"{name}.py"
        if not path.is_file():
            continue
        module_name = f"goproxy_router_plugin_{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin {name!r}: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {name!r}: {path} failed to import: "
                              f"{type(exc).__name__}: {exc}") from None
        return _plugin_class(module, name, str(path))
    return None


def _from_entry_points(name: str) -> type[Plugin] | None:
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name != name:
            continue
        try:
            loaded = entry.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: entry point {entry.value} failed to load: "
                              f"{type(exc).__name__}: {exc}") from None
        if not (isinstance(loaded, type) and issubclass(loaded, Plugin)):
            raise PluginError(f"plugin {name!r}: entry point {entry.value} is not a Plugin subclass")
        return loaded
    return None


def _builtin(name: str) -> type[Plugin] | None:
    if not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{BUILTIN_PACKAGE}.{name}":
            return None
        raise PluginError(f"plugin {name!r}: {exc}") from None
    return _plugin_class(module, name, f"{BUILTIN_PACKAGE}/{name}.py")


def find_plugin(name: str, plugin_dirs: Iterable[str] = ()) -> type[Plugin]:
    """Built-ins first (they cannot be shadowed), then entry points, then plugin_dirs."""
    cls = _builtin(name) or _from_entry_points(name) or _from_dirs(name, plugin_dirs)
    if cls is None:
        raise PluginError(f"plugin {name!r} not found: not a built-in ({BUILTIN_PACKAGE}/), "
                          f"not in entry-point group {ENTRY_POINT_GROUP!r}, "
                          f"not in plugin_dirs {list(plugin_dirs)}")
    return cls


def load_plugins(specs: Iterable[PluginSpec], plugin_dirs: Iterable[str] = (),
                 upstream_names: set[str] | None = None) -> list[Plugin]:
    """Instantiate the configured plugins in order; any problem stops startup."""
    dirs = list(plugin_dirs)
    plugins: list[Plugin] = []
    seen: set[str] = set()
    for spec in specs:
        name, options = _spec_name(spec)
        if name in seen:
            raise PluginError(f"plugin {name!r} is listed twice")
        seen.add(name)
        cls = find_plugin(name, dirs)
        try:
            validated = cls.Options.model_validate(options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}"
                for e in exc.errors(include_url=False))
            raise PluginError(f"plugin {name!r}: bad options: {problems}") from None
        try:
            plugin = cls(validated)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}") from None
        problems = plugin.check(upstream_names) if upstream_names is not None else []
        if problems:
            raise PluginError(f"plugin {name!r}: " + "; ".join(problems))
        plugins.append(plugin)
    return plugins


# ---------------------------------------------------------------------------
# Explaining


def explain(ctx: RequestContext, ranking: Ranking) -> dict[str, Any]:
    """Why each upstream ranks where it does: every plugin's factor, the cost, the order."""
    chosen = {id(s) for s in ranking.order}
    rows = ranking.order + [s for s in ranking.vetoed if id(s) not in chosen]
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
                "reasons": s.reasons(ctx, ranking.plugins),
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
