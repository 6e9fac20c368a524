"""Secrets never echoed: an upstream's error body is redacted before it
is cut, and a value that ${VAR} expansion put into routes.yaml is never quoted back by a
refusal (validate, serve's start-up, a rejected reload)."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from goproxy_router.forwarding.forwarder import ERROR_EXCERPT
from tests.conftest import RouterProcess
from tests.support.http import threaded_http_server
from tests.test_config import run_cli

PASSWORD = "pässwörd-4f0c9e2a7b31d5"             # non-ASCII: several bytes per character
PASSWORD_IN_URL = urllib.parse.quote(PASSWORD, safe="")
TOKEN = "tk-8c1f0e94b2d7a6350f1e"


def prefixes(secret: str) -> list[str]:
    """Every start of `secret` of 4 characters or more (a cut secret leaks one of these)."""
    return [secret[:n] for n in range(4, len(secret) + 1)]


class ErrorEcho(BaseHTTPRequestHandler):
    """A 500 whose body puts a secret across the excerpt's cut: /<which>/<host>/o<offset>/...
    puts the secret's first byte at byte ERROR_EXCERPT - offset of the body."""

    def do_GET(self) -> None:          # noqa: N802 (http.server's naming)
        _, which, _, offset = self.path.split("/")[:4]
        offset = offset.removeprefix("o")
        secret = (PASSWORD if which == "password" else TOKEN).encode()
        body = b"e" * (ERROR_EXCERPT - int(offset)) + secret + b" was refused"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:     # noqa: A002
        pass


@pytest.fixture
def error_echo() -> Iterator[str]:
    with threaded_http_server(ErrorEcho) as port:
        yield f"127.0.0.1:{port}"


def test_a_secret_across_the_error_excerpts_cut_leaks_no_prefix(
        router_process: Callable[..., RouterProcess], error_echo: str) -> None:
    """The upstream's own credentials (a header token; a URL password of multi-byte
    characters), echoed so that the excerpt's limit falls inside them, at several
    offsets: neither the client's 502 body nor the log holds 4 characters of a secret."""
    config = {
        "upstreams": {
            "token": {"url": f"http://{error_echo}/token", "headers": {"X-Api-Key": "${T}"}},
            "password": {"url": f"http://ci:${{P}}@{error_echo}/password"},
        },
        "routes": [{"name": "token", "match": ["token.example"], "upstreams": ["token"]},
                   {"name": "password", "match": ["password.example"], "upstreams": ["password"]}],
        "scoring": {"plugins": [], "breaker": {"threshold": 100}},
        "probes": {"enabled": False},
    }
    router = router_process(config, env={"T": TOKEN, "P": PASSWORD_IN_URL})
    bodies = []
    offsets = {"token": (4, 9, len(TOKEN) - 1),
               # byte offsets landing inside "ä" / "ö" (2 bytes each), past 4 characters
               "password": (len("pässwörd".encode()) - 1, len("pässw".encode()) + 1)}
    for which, cuts in offsets.items():
        for offset in cuts:
            url = f"{router.url}/{which}.example/o{offset}/@v/v1.0.0.info"
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(url, timeout=10)
            assert failed.value.code == 502
            bodies.append(failed.value.read().decode("utf-8", "replace"))
    router.stop()
    log = router.stderr()
    assert len(bodies) == 5 and all("eeee" in body for body in bodies), bodies
    for where, text in {"log": log, **{f"502 body {i}": b for i, b in enumerate(bodies)}}.items():
        for secret in (TOKEN, PASSWORD, PASSWORD_IN_URL):
            leaked = [p for p in prefixes(secret) if p in text]
            assert not leaked, f"{where} holds {leaked[-1]!r} of a secret"


HOST_SECRET = "hs-0b7d93e2c4f1a8"
ENV_ECHO_CASES = {
    "white space in a url": ('upstreams.a.url', 'url: "https://${HOST_SECRET}/x y"'),
    "a url of another scheme": ('upstreams.a.url', 'url: "ftp://${HOST_SECRET}/x"'),
}


def env_echo_config(url_line: str) -> str:
    return ("upstreams:\n"
            f"  a: {{{url_line}}}\n"
            "routes:\n  - {name: r, match: ['*'], upstreams: [a]}\n")


@pytest.mark.parametrize("case", list(ENV_ECHO_CASES))
def test_validate_never_quotes_a_value_from_the_environment(tmp_path: Path, case: str) -> None:
    key, line = ENV_ECHO_CASES[case]
    path = tmp_path / "routes.yaml"
    path.write_text(env_echo_config(line))
    result = run_cli("validate", "--config", str(path),
                     env={**os.environ, "HOST_SECRET": HOST_SECRET})
    assert result.returncode == 1, result.stdout
    assert f"{path}:2: {key}: " in result.stderr, result.stderr
    assert "[redacted]" in result.stderr
    assert not [p for p in prefixes(HOST_SECRET) if p in result.stderr + result.stdout], \
        result.stderr


def test_a_cidr_from_the_environment_is_not_quoted_either(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("upstreams:\n  a: {url: 'https://a.example'}\nroutes:\n"
                    "  - name: r\n    match: ['*']\n    upstreams: [a]\n"
                    "    allow: {cidrs: ['${NET}']}\n")
    result = run_cli("validate", "--config", str(path), env={**os.environ, "NET": HOST_SECRET})
    assert result.returncode == 1
    assert f"{path}:7: routes[0].allow.cidrs: " in result.stderr, result.stderr
    assert HOST_SECRET[:4] not in result.stderr


def test_a_rejected_reload_does_not_log_a_value_from_the_environment(
        router_process: Callable[..., RouterProcess], tmp_path: Path) -> None:
    good = ("upstreams:\n  a: {url: 'http://127.0.0.1:9'}\n"
            "routes:\n  - {name: r, match: ['*'], upstreams: [a]}\n"
            f"cache: {{dir: '{tmp_path / 'cache'}'}}\nprobes: {{enabled: false}}\n")
    router = router_process(good, env={"HOST_SECRET": HOST_SECRET},
                            extra_args=["--watch-interval", "0"])
    router.config_path.write_text(env_echo_config(ENV_ECHO_CASES["a url of another scheme"][1]))
    router.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload rejected" not in router.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = router.stderr()
    assert "reload rejected" in log and "upstreams.a.url" in log, log[-2000:]
    assert HOST_SECRET[:4] not in log
