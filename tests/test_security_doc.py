"""SECURITY.md names a test for every defence: each test, and the code it cites, exists.

A renamed or deleted test would otherwise leave the threat model pointing
at nothing. `file.py::test_x` names a test; a following `::test_y` in the
same cell means the same file.
"""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "SECURITY.md").read_text()


def _named_tests() -> list[tuple[str, str]]:
    named = []
    for row in DOC.splitlines():
        if not row.startswith("|"):
            continue
        current = None
        for file, name in re.findall(r"`(?:([\w/]+\.py))?::(\w+)`", row):
            current = file or current
            assert current is not None, f"a test named without its file: {row}"
            named.append((current, name))
    return named


def _defined(file: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / "tests" / file).read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")}


def test_every_test_security_md_names_exists() -> None:
    named = _named_tests()
    assert len(named) >= 50, "SECURITY.md should name the tests of every defence"
    missing = [f"{file}::{name}" for file, name in named if name not in _defined(file)]
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"


def test_every_threat_row_names_a_test() -> None:
    sections = DOC[DOC.index("## Threats"):DOC.index("## What is not defended here")]
    rows = [r for r in sections.splitlines()
            if r.startswith("| ") and not r.startswith(("| threat", "|---"))]
    assert len(rows) >= 30
    untested = [r[:80] for r in rows if "::test_" not in r]
    assert not untested, untested


def test_every_defence_names_code_that_exists() -> None:
    """A defence cited as `router/x.py` `Name` (or `Class.method`) is defined there."""
    cited = 0
    missing = []
    for row in DOC.splitlines():
        if not row.startswith("|"):
            continue
        for match in re.finditer(r"`(router/[\w/]+\.py)`((?:\s*`[\w.]+`,?)*)", row):
            path = REPO_ROOT / match.group(1)
            if not path.is_file():
                missing.append(match.group(1))
                continue
            source = path.read_text()
            for name in re.findall(r"`([\w.]+)`", match.group(2)):
                cited += 1
                last = re.escape(name.split(".")[-1])
                if not re.search(rf"(def|class)\s+{last}\b|^{last}\s*[:=]", source, re.M):
                    missing.append(f"{match.group(1)} {name}")
    assert cited >= 20
    assert not missing, f"SECURITY.md cites code that is not there: {missing}"
