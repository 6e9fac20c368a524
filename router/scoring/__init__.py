"""Ranking a route's upstreams: the plugin API (api.py), the engine that turns plugin
factors into an order (engine.py), and plugin loading (loader.py: built-ins, entry
points, plugin_dirs; legacy.py: the old `router.scoring` import path).

The plugin API is importable from here (the README's example does):
`from goproxy_router.scoring import Candidate, Plugin, PluginOptions, RequestContext,
UpstreamName, Veto`.

Must not import storage, forwarding, serving, ops or runtime.
"""

from goproxy_router.scoring.api import (
    Candidate,
    Plugin,
    PluginError,
    PluginOptions,
    RequestContext,
    UpstreamName,
    Veto,
)

__all__ = ["Candidate", "Plugin", "PluginError", "PluginOptions", "RequestContext", "UpstreamName", "Veto"]
