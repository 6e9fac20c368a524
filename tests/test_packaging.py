"""What a new user installs is what the code imports.

A green run on a machine where packages were once installed by hand hid an
undeclared run-time dependency (`serve` died on a clean machine). Two checks
make that impossible to miss: every third-party import of the shipped code is
declared in pyproject.toml (and every test import in the `test` extra), and a
fresh virtual environment with `pip install .` and nothing else serves the
shipped routes.yaml.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

LOCAL = {"goproxy_router", "tests", "benchlib"}


def _imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module name -> files importing it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower().replace("_", "-")
            for req in requirements}


def _distributions(module: str) -> set[str]:
    names = importlib.metadata.packages_distributions().get(module, [])
    return {name.lower().replace("_", "-") for name in names}


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_every_runtime_import_is_a_declared_dependency() -> None:
    runtime = _declared(_project()["dependencies"])
    code = sorted([*REPO_ROOT.glob("router/**/*.py"), *REPO_ROOT.glob("plugins/*.py")])
    assert code, "no shipped code found"
    missing = {module: files for module, files in _imports(code).items()
               if not _distributions(module) & runtime}
    assert not missing, f"imported by the shipped code but not in [project.dependencies]: {missing}"


def test_every_test_and_bench_import_is_declared() -> None:
    project = _project()
    declared = _declared(project["dependencies"]) | _declared(project["optional-dependencies"]["test"])
    code = sorted([*REPO_ROOT.glob("tests/**/*.py"), *REPO_ROOT.glob("bench/*.py")])
    missing = {module: files for module, files in _imports(code).items()
               if not _distributions(module) & declared}
    assert not missing, f"imported by tests or benches but not declared (test extra): {missing}"


def test_every_package_folder_is_installed_under_the_one_name() -> None:
    """router/ installs as goproxy_router, plugins/ as goproxy_router.plugins: every folder
    with an __init__.py is in pyproject's package list, and nothing installs as `router`."""
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"goproxy_router": "router", "goproxy_router.plugins": "plugins"}
    folders = {"goproxy_router" + ".".join(("", *init.parent.relative_to(REPO_ROOT / "router").parts))
               for init in (REPO_ROOT / "router").rglob("__init__.py")}
    assert set(setuptools["packages"]) == folders | {"goproxy_router.plugins"}
    assert all(name.split(".")[0] == "goproxy_router" for name in setuptools["packages"])


def _copy_of_the_tree(dest: Path) -> Path:
    """The repository as a fresh clone would have it (no caches, venvs or build output)."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv",
                                    "cache", ".pytest_cache", ".hypothesis", ".ruff_cache")
    return Path(shutil.copytree(REPO_ROOT, dest / "clone", ignore=ignore))


@pytest.mark.fresh_install
def test_a_fresh_venv_with_pip_install_dot_serves_the_shipped_routes_yaml(tmp_path: Path) -> None:
    """The README's first command in a new venv: `pip install .` (no extras), then serve,
    including the status page, whose HTML, CSS and JS are package data.

    Needs the package registry; GOPROXY_ROUTER_OFFLINE=1 skips it. Active probes
    are turned off in the copy of the shipped file, so the test talks to
    127.0.0.1 only; everything else is the file as shipped.
    """
    if os.environ.get("GOPROXY_ROUTER_OFFLINE") == "1":
        pytest.skip("GOPROXY_ROUTER_OFFLINE=1: no package registry to install from")
    clone = _copy_of_the_tree(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "."],
        cwd=clone, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    site = next(venv.glob("lib/python3*/site-packages"))
    ours = {p.name for p in site.iterdir() if p.name in ("goproxy_router", "router", "plugins")}
    assert ours == {"goproxy_router"}, f"installed top-level packages: {ours}"
    assert (site / "goproxy_router" / "plugins" / "pin.py").is_file()
    shipped = (clone / "routes.yaml").read_text()
    assert "probes:" not in shipped
    (clone / "routes.yaml").write_text(shipped + "\nprobes: {enabled: false}\n")

    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [str(venv / "bin" / "goproxy-router"), "serve", "--config", "routes.yaml",
         "--listen", f"127.0.0.1:{port}"],
        cwd=clone, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        status = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    status = resp.status
                    break
            except OSError:
                time.sleep(0.2)
        log.seek(0)
        assert status == 200, f"no 200 from /healthz; serve said:\n{log.read()[-3000:]}"
        # The status page's templates are package data: they must be in the wheel.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_router/status", timeout=10) as resp:
            page = resp.read().decode()
        assert '<main id="status"' in page and 'data-route="public"' in page, page[:2000]
        assert "--accent:" in page and 'getElementById("live")' in page      # style.css, app.js
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
    assert proc.returncode == 0
