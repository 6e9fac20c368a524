"""A third-party plugin written for the old import path (`router.scoring`, `router.protocol`)
still loads, from plugin_dirs and from an entry point, with a warning naming the new path;
the new path warns about nothing; a real, unrelated top-level `router` package wins.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goproxy_router.protocol.requests import Kind
from goproxy_router.scoring import legacy, loader
from goproxy_router.scoring.api import PluginError, RequestContext, Veto
from goproxy_router.scoring.engine import Engine
from goproxy_router.scoring.loader import load_plugins
from tests.test_scoring import candidate, names

OLD_STYLE = '''\
from router.protocol import Kind
from router.scoring import Candidate, Plugin, PluginOptions, RequestContext, UpstreamName, Veto


class Options(PluginOptions):
    batch_upstream: UpstreamName


class OldStyle(Plugin[Options]):
    name = "{name}"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float | Veto:
        if ctx.kind == Kind.ZIP and upstream.name == self.options.batch_upstream:
            return Veto("bulk downloads go elsewhere")
        return 1.0
'''


def _is_router_module(name: str) -> bool:
    return name == "router" or name.startswith("router.")


@pytest.fixture
def no_router(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No `router` importable but the alias: the checkout's own router/ folder (the repo
    root is on sys.path under pytest) is taken off sys.path, and any `router` module
    imported before is set aside and put back afterwards."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if not (Path(p or os.getcwd()) / "router" / "__init__.py").exists()])
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_router_module(name)}
    monkeypatch.setattr(loader, "_warned_old_imports", set())
    importlib.invalidate_caches()
    yield
    for name in [name for name in sys.modules if _is_router_module(name)]:
        del sys.modules[name]
    sys.modules.update(saved)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "router.scoring" and r.levelno == logging.WARNING]


def _zip_ranking(plugin_specs: list[Any], dirs: tuple[str, ...] = ()) -> list[str]:
    plugins = load_plugins(plugin_specs, dirs, {"a", "b"})
    ctx = RequestContext(route="default", module="example.com/m", kind=Kind.ZIP)
    return names(Engine(plugins).rank(ctx, [candidate("b"), candidate("a")]))


@pytest.mark.usefixtures("no_router")
def test_a_plugin_dirs_plugin_with_the_old_imports_loads_scores_and_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "old_style.py").write_text(OLD_STYLE.format(name="old_style"))
    with caplog.at_level(logging.WARNING, logger="router.scoring"):
        assert _zip_ranking([{"old_style": {"batch_upstream": "b"}}], (str(tmp_path),)) == ["a"]
        with pytest.raises(PluginError, match=r"batch_upstream.*unknown upstream 'nosuch'"):
            load_plugins([{"old_style": {"batch_upstream": "nosuch"}}], [str(tmp_path)], {"a", "b"})
    [warning] = _warnings(caplog)                       # once per plugin, not per load
    fields = warning.fields                             # type: ignore[attr-defined]
    assert fields["plugin"] == "old_style"
    assert fields["old"] == "router.protocol, router.scoring"
    assert fields["use"] == "goproxy_router.protocol, goproxy_router.scoring"
    assert sys.meta_path[-1].__class__.__name__ == "_OldNames"      # last: anything real wins


@pytest.mark.usefixtures("no_router")
def test_only_the_old_plugin_api_is_aliased(tmp_path: Path) -> None:
    (tmp_path / "old_style.py").write_text(OLD_STYLE.format(name="old_style"))
    load_plugins([{"old_style": {"batch_upstream": "b"}}], [str(tmp_path)], {"a", "b"})
    old_scoring = importlib.import_module("router.scoring")     # the alias, not a dependency

    assert old_scoring.Veto is Veto
    with pytest.raises(AttributeError, match="now goproxy_router.scoring"):
        old_scoring.Engine  # noqa: B018
    for other in ("router.base", "router.scoring.engine", "router.config"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(other)


@pytest.mark.usefixtures("no_router")
def test_an_entry_point_plugin_with_the_old_imports_loads_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "acme_old_scoring.py").write_text(OLD_STYLE.format(name="old_entry"))
    dist = tmp_path / "acme_old_scoring-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-old-scoring\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[goproxy_router.plugins]\nold_entry = acme_old_scoring:OldStyle\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_old_scoring", raising=False)
    with caplog.at_level(logging.WARNING, logger="router.scoring"):
        assert _zip_ranking([{"old_entry": {"batch_upstream": "b"}}]) == ["a"]
    [warning] = _warnings(caplog)
    assert warning.fields["plugin"] == "old_entry"      # type: ignore[attr-defined]
    sys.modules.pop("acme_old_scoring", None)


@pytest.mark.usefixtures("no_router")
def test_the_new_import_path_loads_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    new_style = (OLD_STYLE.replace("from router.protocol import", "from goproxy_router.protocol import")
                 .replace("from router.scoring import", "from goproxy_router.scoring import"))
    (tmp_path / "new_style.py").write_text(new_style.format(name="new_style"))
    with caplog.at_level(logging.WARNING, logger="router.scoring"):
        assert _zip_ranking([{"new_style": {"batch_upstream": "b"}}], (str(tmp_path),)) == ["a"]
    assert _warnings(caplog) == []
    assert not any(_is_router_module(name) for name in sys.modules)


@pytest.mark.usefixtures("no_router")
def test_a_real_router_package_is_not_shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another distribution's top-level `router` wins over the alias, which then serves nothing."""
    legacy.install()
    real = tmp_path / "site" / "router"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    (real / "protocol.py").write_text("WHOSE = 'theirs'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "old_style.py").write_text(OLD_STYLE.format(name="old_style"))
    with pytest.raises(PluginError, match=r"old_style.py failed to import: ImportError"):
        load_plugins([{"old_style": {"batch_upstream": "b"}}], [str(tmp_path / "plugins")], {"a", "b"})
    theirs = importlib.import_module("router")
    theirs_protocol = importlib.import_module("router.protocol")

    assert theirs.REAL is True and theirs_protocol.WHOSE == "theirs"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("router.scoring")
