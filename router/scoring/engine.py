"""The scoring engine: plugins turn (request, upstream) into cost factors; lower cost wins.

Writing a plugin (this docstring is the whole contract; README.md repeats it)
----------------------------------------------------------------------------
A plugin is a subclass of `Plugin`. Everything has a safe default except
`name`; the engine calls nothing else.

- `name` (class attribute, required): what routes.yaml lists under
  `scoring.plugins` and what explain shows.
- `Options` (class attribute, default `NoOptions`: takes none): a pydantic
  model for the plugin's options in routes.yaml. Derive it from
  `PluginOptions` (unknown keys refused, frozen). Unknown top-level keys are
  refused even for a model that leaves pydantic's `extra` unset (whose
  default ignores them), so a typo is an error, never silently ignored.
  Type an option that names an upstream `UpstreamName` (or
  `tuple[UpstreamName, ...]`): it is checked against the configured
  upstreams; a validator of your own finds their names in
  `info.context["upstreams"]` (a frozenset; no context when they are not
  known). Options are validated by `validate`, at startup and at every
  reload; an error reads `routes.yaml:LINE: scoring.plugins[i].<name>.
  <option>: problem` and stops startup (a reload is rejected and the old
  config keeps serving).
- Type parameter: `class MyPlugin(Plugin[MyOptions])` sets `Options` to
  `MyOptions` (unless the class sets `Options` itself) and types
  `self.options` as `MyOptions` for a type checker. The older
  `class MyPlugin(Plugin): Options = MyOptions` works the same at runtime.
- `__init__(self, options)`: receives the validated `Options` instance
  (kept as `self.options`, the one copy); precompute here. Raising stops
  startup, naming the plugin. A new instance is made at every config reload.
- `check(self, upstream_names) -> list[str]`: problems that need more than
  one option at a time, given the configured upstream names; each string
  is reported at the plugin's line in routes.yaml. Default: none.
- `begin(self, ctx) -> None`: called once per ranked request, before
  `score` is called for each of its upstreams: the place for work that
  depends on the request only (e.g. `pin` looks its rule up here, once,
  and keeps it in an attribute that `score` reads). rank() is synchronous
  and one event loop runs one ranking at a time, so that attribute holds
  for exactly this request's `score` calls. If `begin` raises, the engine
  logs and counts it and the plugin is neutral for the whole request.
  Default: does nothing (and costs nothing: the engine skips it).
- `score(self, ctx, upstream) -> float | Veto`: called for every upstream of
  every ranked request, so it must be cheap and do no I/O:
  - a float > 0: a factor multiplied into the upstream's cost (1.0 is
    neutral, 2.0 makes it look twice as expensive, 0.5 half);
  - `Veto("why")`: the upstream is not used for this request (unless every
    upstream is vetoed: then all are used anyway, "panic mode");
  - raise, or return anything else: the engine logs it, counts it
    (`goproxy_plugin_errors_total`), and treats the plugin as neutral for
    that request. A plugin never breaks a request.
- `explain(self, ctx, upstream) -> str`: a few words on why `score` gives
  what it gives here, shown by `explain` (CLI and /_router/explain) next to
  the factor; called only when explaining, never while serving, after
  `begin(ctx)`. Default "" (the factor speaks for itself); one that raises
  is shown as such.

What a plugin sees (read-only; a plugin never sends requests, touches the
cache or the app):

- `RequestContext`: `route` (its name), `module` (decoded path, e.g.
  `github.com/Azure/x`), `kind` (what is asked for: a
  `goproxy_router.protocol.requests.Kind`, `LIST`, `INFO`, `MOD`, `ZIP` or `LATEST`; a
  `str` enum, so `ctx.kind == "zip"` holds too; explain ranks as `INFO`),
  `client_ip`, `country` (ISO 3166-1 alpha-2) and `continent` (AF AN AS EU
  NA OC SA), both None when unknown, and `now` (time.monotonic() at
  ranking, for the stats' clocks).
  Checksum-database requests (`/sumdb/`) are not ranked: they go to the
  database's `url`, then its `mirrors`, in order.
- `Candidate`: `name` (the upstream's name in routes.yaml), `config` (its
  `goproxy_router.config.schema.Upstream`: url, countries, headers, weight, priority,
  probe_path) and `stats` (its `goproxy_router.upstream.stats.UpstreamStats`, live:
  `latency.value` the peak-EWMA seconds to headers, `in_flight`, `requests`,
  `failures`, `breaker` with `.state(now)`, `recent` header latencies,
  `last_error`, `not_before`). Its `target` is how requests reach the
  upstream: not for plugins.

Plugins run in the order listed; the cost is the product of their factors;
ties keep the route's upstream order.

Where plugins come from: `plugins/<name>.py` (built-ins, which cannot be
shadowed; `errors` is the old name of `breaker`, still accepted with a
warning), the entry-point group `goproxy_router.plugins` (name -> Plugin
subclass), and the directories in `scoring.plugin_dirs` (file `<name>.py`
defining exactly one Plugin subclass named `<name>`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import ipaddress
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from goproxy_router.base.logs import log_event
from goproxy_router.config.loader import Loc, format_loc, validation_problems
from goproxy_router.config.schema import PluginSpec, Upstream
from goproxy_router.protocol.requests import Kind
from goproxy_router.upstream.client import UpstreamTarget
from goproxy_router.upstream.stats import UpstreamStats

log = logging.getLogger("router.scoring")

BUILTIN_PACKAGE = "goproxy_router.plugins"
ENTRY_POINT_GROUP = "goproxy_router.plugins"
RENAMED = {"errors": "breaker"}   # old built-in name -> new: still loads, with a warning (once)
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """One reason a configured plugin cannot start, and where in routes.yaml it lies."""

    index: int                   # position in scoring.plugins
    plugin: str
    message: str
    option: Loc = ()             # path inside the plugin's options; () for the plugin itself

    @property
    def loc(self) -> Loc:
        """The location relative to `scoring.plugins`."""
        return (self.index, self.plugin, *self.option) if self.option else (self.index,)

    def __str__(self) -> str:
        if self.option:
            return f"plugin {self.plugin!r}: bad options: {format_loc(self.option)}: {self.message}"
        return self.message


class PluginError(Exception):
    """A plugin could not be loaded or configured; the message names it.

    `problems` says where each one lies (empty when it is not about one entry).
    """

    def __init__(self, message: str, problems: Sequence[PluginProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class PluginOptions(BaseModel):
    """A base for a plugin's `Options`: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    """The options of a plugin that takes none."""


def _known_upstream(value: str, info: ValidationInfo) -> str:
    upstreams = (info.context or {}).get("upstreams")
    if upstreams is not None and value not in upstreams:
        raise ValueError(f"unknown upstream {value!r} (defined: {', '.join(sorted(upstreams))})")
    return value


UpstreamName = Annotated[str, AfterValidator(_known_upstream)]
"""An option naming an upstream: checked against routes.yaml's `upstreams`."""


@dataclass(frozen=True, slots=True)
class Veto:
    """Returned by a plugin to keep an upstream out of this request."""

    reason: str


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What is known about one request when its upstreams are ranked."""

    route: str
    module: str | None
    kind: Kind                       # a str enum: `ctx.kind == "zip"` holds
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


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class Plugin(Generic[OptionsT]):
    """Base class of every scoring plugin. See the module docstring for the contract.

    `Plugin[MyOptions]` types `self.options` and sets `Options` to `MyOptions`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    options: OptionsT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in vars(cls):
            return
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Plugin:
                [model] = get_args(base)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.Options = model

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def begin(self, ctx: RequestContext) -> None:
        """Once per ranked request, before `score` is called for each upstream."""

    def check(self, upstream_names: set[str]) -> list[str]:
        """Problems of the options as a whole against the configured upstreams; [] if none.

        Single options naming upstreams are better typed `UpstreamName`, which
        points at their own line.
        """
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
    name = _current_name(name)
    cls = _builtin(name) or _from_entry_points(name) or _from_dirs(name, plugin_dirs)
    if cls is None:
        raise PluginError(f"plugin {name!r} not found: not a built-in ({BUILTIN_PACKAGE}), "
                          f"not in entry-point group {ENTRY_POINT_GROUP!r}, "
                          f"not in plugin_dirs {list(plugin_dirs)}")
    return cls


def _option_problems(cls: type[Plugin], options: dict[str, Any],
                     upstream_names: set[str] | None) -> tuple[BaseModel | None, list[tuple[Loc, str]]]:
    """Validate `options` against cls.Options: the instance, or where each problem is."""
    model = cls.Options
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None, [((), "its Options is not a pydantic BaseModel subclass")]
    fields = {field.alias or key for key, field in model.model_fields.items()} | set(model.model_fields)
    takes = f"{cls.name} takes {', '.join(sorted(model.model_fields)) or 'no options'}"
    problems: list[tuple[Loc, str]] = []
    if model.model_config.get("extra") is None:     # pydantic would silently ignore a typo
        problems += [((key,), f"unknown option ({takes})") for key in options if key not in fields]
    context = {"upstreams": frozenset(upstream_names)} if upstream_names is not None else None
    try:
        validated = model.model_validate(options, context=context)
    except ValidationError as exc:
        problems += [(loc, f"unknown option ({takes})" if message == "unknown key" and len(loc) == 1
                      else message)
                     for loc, message in validation_problems(exc)]
        return None, problems
    return (None if problems else validated), problems


_warned_renamed: set[str] = set()


def _current_name(name: str) -> str:
    """A built-in's current name for an old one (warned about once per process)."""
    new = RENAMED.get(name)
    if new is None:
        return name
    if name not in _warned_renamed:
        _warned_renamed.add(name)
        log_event(log, logging.WARNING, "deprecated plugin name; list the new one in routes.yaml",
                  plugin=name, use=new)
    return new


def load_plugins(specs: Iterable[PluginSpec], plugin_dirs: Iterable[str] = (),
                 upstream_names: set[str] | None = None) -> list[Plugin]:
    """Instantiate the configured plugins in order; any problem stops startup.

    Every problem of every plugin is gathered into one PluginError, each with
    its place in the list of specs (and in the plugin's options), so
    `validate` can report them all with file and line.
    """
    dirs = list(plugin_dirs)
    plugins: list[Plugin] = []
    problems: list[PluginProblem] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        try:
            name, options = _spec_name(spec)
        except PluginError as exc:
            problems.append(PluginProblem(index, "?", str(exc)))
            continue
        written, name = name, _current_name(name)   # `written` places problems in routes.yaml
        if name in seen:
            problems.append(PluginProblem(index, written, f"plugin {name!r} is listed twice"))
            continue
        seen.add(name)
        try:
            cls = find_plugin(name, dirs)
        except PluginError as exc:
            problems.append(PluginProblem(index, written, str(exc)))
            continue
        validated, bad = _option_problems(cls, options, upstream_names)
        problems += [PluginProblem(index, written, message, loc) if loc else
                     PluginProblem(index, written, f"plugin {name!r}: bad options: {message}")
                     for loc, message in bad]
        if validated is None:
            continue
        try:
            plugin = cls(validated)
        except Exception as exc:
            problems.append(PluginProblem(
                index, written, f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}"))
            continue
        try:
            found = plugin.check(upstream_names) if upstream_names is not None else []
        except Exception as exc:
            found = [f"check() raised {type(exc).__name__}: {exc}"]
        problems += [PluginProblem(index, written, f"plugin {name!r}: {p}") for p in found]
        plugins.append(plugin)
    if problems:
        raise PluginError("\n".join(map(str, problems)), problems)
    return plugins


# ---------------------------------------------------------------------------
# Explaining


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
