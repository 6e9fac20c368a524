# examples/plugins/office_hours.py: copy it into a `scoring.plugin_dirs` directory
from goproxy_router.scoring import Candidate, Plugin, PluginOptions, RequestContext, UpstreamName, Veto


class Options(PluginOptions):            # unknown keys are errors
    batch_upstream: UpstreamName         # must name an upstream in routes.yaml


class OfficeHours(Plugin[Options]):      # Plugin[Options]: self.options is an Options
    """Keep CI's bulk zip downloads off the upstream the developers use."""

    name = "office_hours"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        if ctx.kind == "zip" and upstream.name == self.options.batch_upstream:
            return 0.5              # < 1.0 makes it cheaper; a Veto("why") excludes it
        return 1.0                  # neutral
