"""`validate` warns about valid but risky settings: short tokens, a
literal credential in a world-readable routes.yaml, a `host/*` pattern that leaves the
bare host to a public route. Warnings go to stderr as `file:line: key: warning: ...`,
the exit code stays 0, and `serve` logs the same lines at start-up."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RouterProcess
from tests.test_config import run_cli

LONG = "a-long-enough-token-2f7c9e1d"
BASE = """\
upstreams:
  pub: {url: "https://proxy.golang.org"}
  corp:
    url: "https://corp.example"
    headers: {Authorization: "Bearer ${CORP_SECRET}"}
routes:
  - name: corp
    match: ["git.corp.example", "github.com/corp/private-*"]
    upstreams: [corp]
    sumdb: false
    allow: {tokens_env: CLIENT_TOKENS}
  - name: public
    match: ["*"]
    upstreams: [pub]
admin: {token_env: ADMIN_TOKEN}
"""
ENV = {"CORP_SECRET": "upstream-credential-9d2e", "CLIENT_TOKENS": LONG, "ADMIN_TOKEN": LONG}


def validate(tmp_path: Path, text: str, mode: int = 0o600,
             **env: str) -> tuple[Path, int, str, str]:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    path.chmod(mode)
    result = run_cli("validate", "--config", str(path), env={**os.environ, **ENV, **env})
    return path, result.returncode, result.stdout, result.stderr


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_a_safe_config_has_no_warning(tmp_path: Path) -> None:
    _, code, out, err = validate(tmp_path, BASE, mode=0o644)
    assert (code, err) == (0, ""), err
    assert "OK" in out


def test_a_short_route_token_is_warned_about(tmp_path: Path) -> None:
    path, code, out, err = validate(tmp_path, BASE, CLIENT_TOKENS=f"{LONG},short-1")
    assert code == 0 and "OK" in out
    assert err == (f"{path}:{line_of(BASE, 'tokens_env')}: routes[0].allow.tokens_env: warning: "
                   "1 of the tokens in CLIENT_TOKENS are shorter than 16 characters: "
                   "easy to guess\n")
    assert "short-1" not in err


def test_a_short_admin_token_is_warned_about(tmp_path: Path) -> None:
    path, code, out, err = validate(tmp_path, BASE, ADMIN_TOKEN="adm1n")
    assert code == 0 and "OK" in out
    assert err == (f"{path}:{line_of(BASE, 'admin:')}: admin.token_env: warning: the token in "
                   "ADMIN_TOKEN is shorter than 16 characters: easy to guess\n")


LITERAL = BASE.replace("${CORP_SECRET}", "upstream-credential-9d2e").replace(
    '"https://proxy.golang.org"', '"https://ci:hunter2-pass@mirror.example"')


def test_a_literal_secret_in_a_world_readable_file_is_warned_about(tmp_path: Path) -> None:
    path, code, out, err = validate(tmp_path, LITERAL, mode=0o644)
    assert code == 0 and "OK" in out
    assert err.splitlines() == [
        f"{path}:{line_of(LITERAL, 'pub:')}: upstreams.pub.url: warning: a literal "
        "user:password@ in a world-readable file: use ${VAR}, or chmod o-r",
        f"{path}:{line_of(LITERAL, 'headers:')}: upstreams.corp.headers.Authorization: warning: "
        "a literal credential in a world-readable file: use ${VAR}, or chmod o-r",
    ], err
    assert "hunter2" not in err and "upstream-credential" not in err


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_literal_secret_others_cannot_read_is_fine(tmp_path: Path, mode: int) -> None:
    _, code, _, err = validate(tmp_path, LITERAL, mode=mode)
    assert (code, err) == (0, "")


def test_a_host_star_pattern_that_leaves_the_bare_host_public_is_warned_about(
        tmp_path: Path) -> None:
    text = BASE.replace('["git.corp.example", "github.com/corp/private-*"]',
                        '["git.corp.example/*"]')
    path, code, out, err = validate(tmp_path, text)
    assert code == 0 and "OK" in out
    assert err == (f"{path}:{line_of(text, 'git.corp.example/*')}: routes[0].match[0]: warning: "
                   "'git.corp.example/*' does not cover 'git.corp.example' itself: it goes to "
                   "route 'public' (served without allow and looked up in the checksum "
                   "database); add 'git.corp.example' to this route's match\n")


def test_serve_logs_the_same_warnings_at_start_up(
        router_process: Callable[..., RouterProcess], tmp_path: Path) -> None:
    text = BASE.replace("https://corp.example", "http://127.0.0.1:9") + (
        f'cache: {{dir: "{tmp_path / "cache"}"}}\nprobes: {{enabled: false}}\n')
    router = router_process(text, env={**ENV, "ADMIN_TOKEN": "adm1n"})
    warnings = [json.loads(line) for line in router.stderr().splitlines()
                if '"event":"config warning"' in line]
    assert [w["level"] for w in warnings] == ["warning"]
    assert warnings[0]["warning"].endswith(
        "admin.token_env: warning: the token in ADMIN_TOKEN is shorter than 16 characters: "
        "easy to guess")
