"""Finding and loading the configured plugins, with every problem placed in routes.yaml.

Built-ins (goproxy_router.plugins, which cannot be shadowed; `errors` is the
old name of `breaker`, still accepted with a warning) come first, then the
entry-point group `goproxy_router.plugins` (name -> Plugin subclass), then
the directories in `scoring.plugin_dirs` (file `<name>.py` defining exactly
one Plugin subclass named `<name>`). Options are validated against the
plugin's `Options` (unknown keys always refused, `UpstreamName`s checked);
`load_plugins` gathers every problem into one PluginError whose problems
`validate` reports as `routes.yaml:LINE: scoring.plugins[i].<name>.<option>`.
Third-party plugins still importing the old `router.scoring` load through
legacy.py, with a warning.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from goproxy_router.base.logs import log_event
from goproxy_router.config.loader import Loc, validation_problems
from goproxy_router.config.schema import PluginSpec
from goproxy_router.scoring import legacy
from goproxy_router.scoring.api import Plugin, PluginError, PluginProblem

log = logging.getLogger("router.scoring")

BUILTIN_PACKAGE = "goproxy_router.plugins"
ENTRY_POINT_GROUP = "goproxy_router.plugins"
RENAMED = {"errors": "breaker"}   # old built-in name -> new: still loads, with a warning (once)


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


_warned_old_imports: set[str] = set()


def _before_import() -> None:
    """Let a third-party plugin's old `router.scoring` imports resolve; start recording them."""
    legacy.install()
    legacy.take_uses()


def _after_import(name: str) -> None:
    """Warn (once per plugin) when the plugin just imported used the old module names."""
    used = legacy.take_uses()
    if used and name not in _warned_old_imports:
        _warned_old_imports.add(name)
        log_event(log, logging.WARNING, "plugin imports the old module path; import the new one",
                  plugin=name, old=", ".join(sorted(used)),
                  use=", ".join(legacy.NEW_PATHS[old] for old in sorted(used)))


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
        _before_import()
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {name!r}: {path} failed to import: "
                              f"{type(exc).__name__}: {exc}") from None
        _after_import(name)
        return _plugin_class(module, name, str(path))
    return None


def _from_entry_points(name: str) -> type[Plugin] | None:
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name != name:
            continue
        _before_import()
        try:
            loaded = entry.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: entry point {entry.value} failed to load: "
                              f"{type(exc).__name__}: {exc}") from None
        _after_import(name)
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
