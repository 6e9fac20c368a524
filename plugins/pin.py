"""pin: custom routing rules — module patterns to preferred, avoided or forbidden upstreams.

    scoring:
      plugins:
        - pin:
            rules:
              - match: ["golang.org/x/*"]
                prefer: [goproxy-cn]
              - match: ["github.com/bigcorp/*"]
                forbid: [goproxy-io]
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from goproxy_router.protocol.pathmatch import PatternError
from goproxy_router.protocol.patterns import PatternTable, validate_glob
from goproxy_router.scoring.api import Candidate, Plugin, PluginOptions, RequestContext, UpstreamName, Veto


class PinRule(PluginOptions):
    match: tuple[str, ...]
    prefer: tuple[UpstreamName, ...] = ()
    avoid: tuple[UpstreamName, ...] = ()
    forbid: tuple[UpstreamName, ...] = ()

    @field_validator("match")
    @classmethod
    def _globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a rule needs at least one pattern")
        for glob in value:
            try:
                validate_glob(glob)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return value


class PinOptions(PluginOptions):
    rules: tuple[PinRule, ...]
    prefer_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    avoid_factor: Annotated[float, Field(gt=1)] = 10.0


class Pin(Plugin[PinOptions]):
    """The first rule whose pattern (GOPRIVATE syntax) matches the module applies.

    The rule is looked up once per request, in `begin`, and kept in `_rule`
    for that request's `score` calls (rank() runs them right after, with no
    other ranking in between).
    """

    name = "pin"

    def __init__(self, options: PinOptions) -> None:
        super().__init__(options)
        self._table: PatternTable[PinRule] = PatternTable(
            (glob, rule) for rule in options.rules for glob in rule.match)
        self._rule: PinRule | None = None     # the current request's rule, set by begin

    def begin(self, ctx: RequestContext) -> None:
        self._rule = None if ctx.module is None else self._table.lookup(ctx.module)

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        rule = self._rule
        if rule is None:
            return 1.0
        if upstream.name in rule.forbid:
            return Veto(f"pin rule {', '.join(rule.match)} forbids it")
        if upstream.name in rule.prefer:
            return self.options.prefer_factor
        if upstream.name in rule.avoid:
            return self.options.avoid_factor
        return 1.0
