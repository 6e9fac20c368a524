"""The packages are layers: each imports only the ones below it (router/__init__.py).

Imports under `if TYPE_CHECKING:` are for annotations only and are not counted;
imports inside functions are.
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO_ROOT

LAYERS = ["base", "protocol", "config", "upstream", "routing", "scoring",
          "storage", "forwarding", "serving", "ops", "runtime"]
PLUGINS_LAYER = "scoring"      # built-in plugins sit beside the plugin API


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(source: str) -> list[str]:
    """goproxy_router modules a file imports when it runs."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "goproxy_router":
                found.extend(f"goproxy_router.{alias.name}" for alias in node.names)
            elif node.module.startswith("goproxy_router."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.startswith("goproxy_router."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None                     # goproxy_router itself (__version__)
    return parts[1]


def _code() -> list[tuple[str, str]]:
    files = [(str(p.relative_to(REPO_ROOT)), p.relative_to(REPO_ROOT / "router").parts[0])
             for p in sorted((REPO_ROOT / "router").rglob("*.py"))
             if len(p.relative_to(REPO_ROOT / "router").parts) > 1]
    plugins = sorted((REPO_ROOT / "plugins").glob("*.py"))
    files += [(str(p.relative_to(REPO_ROOT)), PLUGINS_LAYER) for p in plugins]
    return files


def upward_imports(path: str, layer: str) -> list[str]:
    return [module for module in runtime_imports((REPO_ROOT / path).read_text())
            if (target := layer_of(module)) is not None and LAYERS.index(target) > LAYERS.index(layer)]


def test_every_package_folder_is_a_known_layer() -> None:
    folders = {p.name for p in (REPO_ROOT / "router").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


@pytest.mark.parametrize(("path", "layer"), [pytest.param(path, layer, id=path)
                                              for path, layer in _code()])
def test_no_module_imports_a_layer_above_its_own(path: str, layer: str) -> None:
    assert upward_imports(path, layer) == []


def test_every_package_says_what_it_must_not_import() -> None:
    for layer in LAYERS[:-1]:
        doc = ast.get_docstring(ast.parse((REPO_ROOT / "router" / layer / "__init__.py").read_text()))
        assert doc and "Must not import" in doc, layer
        named = [other for other in LAYERS[LAYERS.index(layer) + 1:] if other in doc]
        assert named == LAYERS[LAYERS.index(layer) + 1:] or "any other goproxy_router package" in doc \
            or "any goproxy_router package" in doc, (layer, named)


def test_the_check_sees_an_upward_import() -> None:
    """The checker itself: a lazy upward import counts, a TYPE_CHECKING one does not."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from goproxy_router.runtime.app import build_app\n"
              "def f():\n    from goproxy_router.serving import flow\n")
    assert runtime_imports(source) == ["goproxy_router.serving"]
    (path, layer) = next(item for item in _code() if item[1] == "storage")
    assert upward_imports(path, layer) == []
    assert layer_of("goproxy_router.serving") == "serving" and layer_of("goproxy_router") is None
