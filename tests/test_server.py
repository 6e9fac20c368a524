"""The serve command as a process: health, JSON logs, bad config, graceful shutdown."""

from __future__ import annotations

import errno
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from goproxy_router.runtime.cli import build_parser
from goproxy_router.runtime.server import listen_error
from tests.conftest import REPO_ROOT, RouterProcess, free_port
from tests.support import Faults, Module, ModuleTree, ThreadedFakeProxy

MOD = Module("example.com/slow", "v1.0.0", files={"big.txt": b"0123456789" * 200_000})


def config_for(url: str) -> dict[str, Any]:
    return {"upstreams": {"up": {"url": url}},
            "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}]}


def test_healthz_and_json_request_log(router_process: Callable[..., RouterProcess],
                                      threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url))
    with urllib.request.urlopen(router.url + "/example.com/slow/@v/v1.0.0.info", timeout=10) as r:
        assert r.status == 200
        assert r.headers["X-Goproxy-Upstream"] == "up"
        request_id = r.headers["X-Request-Id"]
        assert json.loads(r.read())["Version"] == "v1.0.0"
    router.stop()
    lines = [json.loads(line) for line in router.stderr().splitlines() if line.strip()]
    access = [entry for entry in lines if entry.get("event") == "request"
              and entry.get("request_id") == request_id]
    assert len(access) == 1
    entry = access[0]
    assert entry["module"] == "example.com/slow" and entry["version"] == "v1.0.0"
    assert entry["kind"] == "info" and entry["route"] == "public"
    assert entry["upstream"] == "up" and entry["status"] == 200
    assert isinstance(entry["elapsed"], float)


def test_sigterm_lets_in_flight_downloads_finish(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up",
                             faults=Faults(delay=1.5, paths=r"\.zip$"))
    router = router_process(config_for(up.url))
    result: dict[str, Any] = {}

    def download() -> None:
        try:
            with urllib.request.urlopen(router.url + "/example.com/slow/@v/v1.0.0.zip",
                                        timeout=15) as r:
                result["status"] = r.status
                result["body"] = r.read()
        except Exception as exc:  # recorded and asserted below
            result["error"] = exc

    worker = threading.Thread(target=download)
    worker.start()
    deadline = time.monotonic() + 5
    while not up.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.requests, "the download never reached the upstream"
    router.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert result.get("status") == 200, result.get("error")
    assert result["body"] == MOD.zip
    assert router.proc.wait(timeout=10) == 0
    assert '"event":"stopped"' in router.stderr()


def test_serve_with_a_bad_config_exits_1_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("upstreams: {}\nroutes:\n  - {name: r, match: ['*'], upstreams: [nope]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "goproxy_router", "serve", "--config", str(bad),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert "unknown upstream 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def serve_once(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`serve` expected to stop by itself (a start-up failure), bounded."""
    return subprocess.run([sys.executable, "-m", "goproxy_router", "serve", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config_for(url) | {
        "cache": {"dir": str(tmp_path / "cache"), "max_size": "10MB"},
        "probes": {"enabled": False}}))
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, refused_url: str,
                                              workers: str) -> None:
    config = write_config(tmp_path, refused_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_once(config, "--listen", f"127.0.0.1:{port}", "--workers", workers)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"goproxy-router: cannot listen on 127.0.0.1:{port}: "
                               "address already in use"), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_of_no_local_interface_is_one_line_and_exit_1(
        tmp_path: Path, refused_url: str, workers: str) -> None:
    config = write_config(tmp_path, refused_url)
    port = free_port()
    result = serve_once(config, "--listen", f"192.0.2.1:{port}", "--workers", workers)  # TEST-NET-1
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"goproxy-router: cannot listen on 192.0.2.1:{port}: cannot assign requested address "
        "(no interface of this machine has that address)"]


def test_a_privileged_port_says_what_it_needs() -> None:
    # The tests run as root here, so the kernel's refusal is given rather than provoked.
    error = listen_error("0.0.0.0", 80, PermissionError(errno.EACCES, "Permission denied"))
    assert str(error) == ("cannot listen on 0.0.0.0:80: permission denied "
                          "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")
    assert str(listen_error("::1", 8080, OSError(errno.EADDRINUSE, "x"))).startswith(
        "cannot listen on [::1]:8080: address already in use")


def test_log_level_after_the_subcommand(router_process: Callable[..., RouterProcess],
                                        refused_url: str) -> None:
    quiet = router_process(config_for(refused_url), extra_args=["--log-level", "error"])
    loud = router_process(config_for(refused_url))
    for router in (quiet, loud):
        with urllib.request.urlopen(router.url + "/healthz", timeout=10) as response:
            assert response.status == 200
        router.stop()
    assert '"event":"listening"' in loud.stderr()
    assert '"level":"info"' not in quiet.stderr()
    parse = build_parser().parse_args
    assert parse(["serve", "--log-level", "debug"]).log_level == "debug"
    assert parse(["--log-level", "warning", "serve"]).log_level == "warning"
    assert parse(["serve"]).log_level == "info"


@pytest.mark.parametrize(("command", "defaults"), [
    ([], ["default: info"]),
    (["serve"], ["default: 30)", "default: 1)", "default: 2)", "default: routes.yaml",
                 "default: listen: in the config"]),
    (["validate"], ["default: routes.yaml"]),
    (["check"], ["default: as long as serve would wait", "default: routes.yaml"]),
    (["explain"], ["default: routes.yaml", "default: explain locally"]),
])
def test_help_shows_defaults(command: list[str], defaults: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "goproxy_router", *command, "--help"],
                            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())          # argparse wraps lines
    for default in defaults:
        assert default in text, (default, result.stdout)
    assert "default: None" not in text and "default: False" not in text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_cache_that_cannot_be_created_stops_start_up_without_restarts(
        tmp_path: Path, refused_url: str, workers: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(config_for(refused_url) | {
        "cache": {"dir": str(tmp_path / "file" / "cache"), "max_size": "10MB"}}))
    started = time.monotonic()
    result = serve_once(config, "--listen", f"127.0.0.1:{free_port()}", "--workers", workers)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "restarting" not in result.stderr
    failures = [line for line in result.stderr.splitlines() if "goproxy-router: cannot start" in line]
    assert 1 <= len(failures) <= int(workers), result.stderr   # at most one line per worker
    assert "Not a directory" in failures[0]
    assert time.monotonic() - started < 20                     # no restart loop


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unset_admin_token_variable_stops_start_up_without_a_traceback(
        tmp_path: Path, refused_url: str, workers: str) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(config_for(refused_url) | {
        "cache": {"dir": str(tmp_path / "cache"), "max_size": "10MB"},
        "admin": {"token_env": "SERVE_TEST_UNSET_ADMIN_TOKEN"}}))
    result = serve_once(config, "--listen", f"127.0.0.1:{free_port()}", "--workers", workers)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "restarting" not in result.stderr
    assert "SERVE_TEST_UNSET_ADMIN_TOKEN is not set" in result.stderr
