"""The plugin API: what a scoring plugin is, gets and returns; lower cost wins.

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
  `goproxy_router.protocol.Kind`, `LIST`, `INFO`, `MOD`, `ZIP` or `LATEST`; a
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
ties keep the route's upstream order (engine.py).

Where plugins come from (loader.py): `plugins/<name>.py` (built-ins, which
cannot be shadowed; `errors` is the old name of `breaker`, still accepted
with a warning), the entry-point group `goproxy_router.plugins` (name ->
Plugin subclass), and the directories in `scoring.plugin_dirs` (file
`<name>.py` defining exactly one Plugin subclass named `<name>`). Import
this API from `goproxy_router.scoring`; a plugin importing the old
`router.scoring` (and `router.protocol.Kind`) still loads, with a warning
(legacy.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from goproxy_router.config.loader import Loc, format_loc
from goproxy_router.config.schema import Upstream
from goproxy_router.protocol.requests import Kind
from goproxy_router.upstream.stats import UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget


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
