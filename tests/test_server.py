"""The serve command as a process: health, JSON logs, bad config, graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT, RouterProcess
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
        [sys.executable, "-m", "router.cli", "serve", "--config", str(bad),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert "unknown upstream 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
