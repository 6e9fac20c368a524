"""The old import path of the plugin API, so third-party plugins written for it still load.

Before the package was installed as `goproxy_router`, the README's plugins
imported `router.scoring` (Candidate, Plugin, PluginOptions, RequestContext,
UpstreamName, Veto) and `router.protocol` (Kind). `install()` (called by the
loader before it imports a third-party plugin; idempotent) appends a finder
at the END of sys.meta_path serving exactly those two modules, inside an
otherwise empty `router` package: nothing else of the old `router.*` names.
Being last, it never shadows a real top-level `router` package that some
other distribution installs: that one is found first, and then the finder
serves nothing. Every use of the old names is recorded; `take_uses()` hands
them to the loader, which warns once per plugin with the new import path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import goproxy_router.protocol as protocol
from goproxy_router.scoring import api

PACKAGE = "router"
# old module -> (where its names live now, the names it offers)
MODULES: dict[str, tuple[ModuleType, tuple[str, ...]]] = {
    "router.scoring": (api, ("Candidate", "NoOptions", "Plugin", "PluginError", "PluginOptions",
                             "RequestContext", "UpstreamName", "Veto")),
    "router.protocol": (protocol, ("Kind",)),
}
NEW_PATHS = {"router.scoring": "goproxy_router.scoring", "router.protocol": "goproxy_router.protocol"}

_used: set[str] = set()       # old modules used since the last take_uses()


def take_uses() -> set[str]:
    """The old modules used since the last call (and forget them)."""
    found = set(_used)
    _used.clear()
    return found


def _module_getattr(old: str, name: str) -> Any:
    """PEP 562 `__getattr__` of an old module: each use is recorded, then resolved."""
    new, names = MODULES[old]
    if name not in names:
        raise AttributeError(f"module {old!r} has no attribute {name!r} "
                             f"(the plugin API is now {NEW_PATHS[old]})")
    _used.add(old)
    return getattr(new, name)


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `router`, `router.scoring` and `router.protocol` when nothing else does."""

    def __init__(self) -> None:
        self.package: ModuleType | None = None

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == PACKAGE:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if fullname in MODULES and self.package is not None and sys.modules.get(PACKAGE) is self.package:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        if old == PACKAGE:
            module.__doc__ = "The old name of goproxy_router, kept for plugins' imports only."
            self.package = module
            return
        _used.add(old)
        module.__doc__ = f"The old name of {NEW_PATHS[old]}'s plugin API: import that instead."
        vars(module).update(__all__=list(MODULES[old][1]),
                            __getattr__=lambda name: _module_getattr(old, name))


def install() -> None:
    """Append the finder to sys.meta_path, once."""
    if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
        sys.meta_path.append(_OldNames())
