"""The code style gate: ruff, with the rules configured in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    result = subprocess.run([ruff, "check", "router", "plugins", "examples", "tests", "bench"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def installed_layout(tmp_path: Path) -> Path:
    """A folder where goproxy_router/ looks as it does once installed, made of symlinks.

    pyproject.toml maps router/ to goproxy_router and plugins/ to goproxy_router.plugins;
    an editable install resolves that with an import hook, which mypy cannot follow.
    """
    package = tmp_path / "goproxy_router"
    package.mkdir()
    for entry in (REPO_ROOT / "router").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "plugins").symlink_to(REPO_ROOT / "plugins")
    return tmp_path


def test_mypy_is_clean(tmp_path: Path) -> None:
    """router/ and plugins/, as the goproxy_router package, type-check ([tool.mypy] settings)."""
    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    env = {**os.environ, "MYPYPATH": str(installed_layout(tmp_path))}
    result = subprocess.run([mypy, "-p", "goproxy_router"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout
