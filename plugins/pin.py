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

from router.patterns import PatternError, PatternTable, validate_glob
from router.scoring import Candidate, Plugin, PluginOptions, RequestContext, UpstreamName, Veto


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


class Pin(Plugin):
    """The first rule whose pattern (GOPRIVATE syntax) matches the module applies."""

    name = "pin"
    Options = PinOptions

    def __init__(self, options: PinOptions) -> None:
        super().__init__(options)
        self.opts = options
        self._table: PatternTable[PinRule] = PatternTable(
            (glob, rule) for rule in options.rules for glob in rule.match)
        # The engine scores every upstream of one request in a row: look the rule up once.
        self._last: tuple[RequestContext | None, PinRule | None] = (None, None)

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        if ctx.module is None:
            return 1.0
        last_ctx, rule = self._last
        if last_ctx is not ctx:
            rule = self._table.lookup(ctx.module)
            self._last = (ctx, rule)
        if rule is None:
            return 1.0
        if upstream.name in rule.forbid:
            return Veto(f"pin rule {', '.join(rule.match)} forbids it")
        if upstream.name in rule.prefer:
            return self.opts.prefer_factor
        if upstream.name in rule.avoid:
            return self.opts.avoid_factor
        return 1.0
