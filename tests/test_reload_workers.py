"""Hot reload under load, and several workers sharing the port and the disk cache."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import RouterProcess
from tests.support import Module, ModuleTree, ThreadedFakeProxy
from tests.test_operations import parse_metrics, value

MOD = Module("example.com/lib", "v1.0.0")
LATEST = "/example.com/lib/@latest"


def config_for(upstreams: dict[str, str], order: list[str], cache: Path) -> dict[str, Any]:
    return {
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "routes": [{"name": "public", "match": ["*"], "upstreams": order}],
        "scoring": {"plugins": []},                     # config order decides
        "cache": {"dir": str(cache), "metadata_ttl": 0, "negative_ttl": 0},
        "probes": {"enabled": False},
    }


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


class Load:
    """Requests in a loop from a thread, recording who answered and every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.served: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    body = json.loads(response.read())
                    assert body["Version"] == "v1.0.0"
                    self.served.append(response.headers["X-Goproxy-Upstream"])
            except Exception as exc:  # every failure is asserted on below
                self.failures.append(repr(exc))
            time.sleep(0.005)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def wait_for(self, upstream: str, timeout: float = 10) -> None:
        start = len(self.served)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if upstream in self.served[start:]:
                return
            time.sleep(0.05)
        raise AssertionError(f"{upstream} never answered; got {Counter(self.served[start:])}")


def test_reload_valid_and_invalid_under_load(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], tmp_path: Path) -> None:
    tree = ModuleTree([MOD])
    one, two = threaded_fake_proxy(tree, name="one"), threaded_fake_proxy(tree, name="two")
    urls = {"one": one.url, "two": two.url}
    router = router_process(config_for(urls, ["one", "two"], tmp_path / "cache"),
                            extra_args=["--watch-interval", "0.2"])
    path = router.config_path
    with Load(router.url + LATEST) as load:
        load.wait_for("one")
        # A changed file is picked up by the watcher.
        write_atomically(path, yaml.safe_dump(config_for(urls, ["two", "one"], tmp_path / "cache")))
        load.wait_for("two")
        requests_before = json.loads(urllib.request.urlopen(
            router.url + "/_router/explain?module=example.com/lib", timeout=5).read())
        two_before = next(u for u in requests_before["upstreams"] if u["name"] == "two")["requests"]
        # An invalid file is rejected; the old config keeps serving.
        write_atomically(path, "upstreams: {}\nroutes: [{name: r, match: ['*'], upstreams: [gone]}]\n")
        deadline = time.monotonic() + 10
        while "reload rejected" not in router.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload rejected" in router.stderr()
        load.wait_for("two")
        # SIGHUP reloads too (the watcher is not needed for it).
        path.write_text(yaml.safe_dump(config_for(urls, ["one", "two"], tmp_path / "cache")))
        router.proc.send_signal(signal.SIGHUP)
        load.wait_for("one")
    assert load.failures == []
    assert len(load.served) > 20
    after = json.loads(urllib.request.urlopen(
        router.url + "/_router/explain?module=example.com/lib", timeout=5).read())
    two_after = next(u for u in after["upstreams"] if u["name"] == "two")["requests"]
    assert two_after >= two_before > 0          # live stats of an unchanged upstream survived
    log = [json.loads(line) for line in router.stderr().splitlines() if line.startswith("{")]
    rejected = [e for e in log if e["event"] == "reload rejected; the old config keeps serving"]
    assert rejected and "unknown upstream 'gone'" in " ".join(rejected[0]["errors"])


def test_two_workers_share_the_port_and_the_cache(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], tmp_path: Path) -> None:
    modules = [Module(f"example.com/m{i}", "v1.0.0", files={"data.txt": os.urandom(2000)})
               for i in range(20)]
    up = threaded_fake_proxy(ModuleTree(modules), name="up")
    cache = tmp_path / "cache"
    router = router_process(config_for({"up": up.url}, ["up"], cache),
                            extra_args=["--workers", "2"])

    def get(path: str) -> tuple[str, bytes]:
        with urllib.request.urlopen(router.url + path, timeout=10) as response:
            return response.headers["X-Goproxy-Cache"], response.read()

    results: dict[str, tuple[str, bytes]] = {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(
        m.path, get(f"/{m.path}/@v/v1.0.0.zip"))) for m in modules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {m.path: results[m.path][1] for m in modules} == {m.path: m.zip for m in modules}
    for m in modules:                           # the second round is served from the shared cache
        state, body = get(f"/{m.path}/@v/v1.0.0.zip")
        assert state == "hit" and body == m.zip
        assert (cache / f"{m.path}/@v/v1.0.0.zip").read_bytes() == m.zip
    assert len([r for r in up.requests if r.raw_path.endswith(".zip")]) == len(modules)
    log = [json.loads(line) for line in router.stderr().splitlines() if line.startswith("{")]
    pids = {e["pid"] for e in log if e["event"] == "request"}
    assert len(pids) == 2, f"expected both workers to serve, saw pids {pids}"
    assert not list(cache.rglob(".tmp-*"))
    router.stop()
    assert router.proc.returncode == 0


def test_a_rejected_reload_is_counted_and_the_old_config_keeps_serving(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], tmp_path: Path) -> None:
    one = threaded_fake_proxy(ModuleTree([MOD]), name="one")
    router = router_process(config_for({"one": one.url}, ["one"], tmp_path / "cache"),
                            extra_args=["--watch-interval", "0"])    # SIGHUP only

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(router.url + "/metrics", timeout=5) as response:
            samples = parse_metrics(response.read().decode())
        reloads = {result: value(samples, "goproxy_config_reloads_total", result=result)
                   for result in ("ok", "rejected", "error")}
        return {**{k: v for k, v in reloads.items() if v is not None},
                "successful": samples["goproxy_config_last_reload_successful"][()],
                "at": samples["goproxy_config_last_reload_success_timestamp_seconds"][()]}

    def sighup_and_wait(event: str) -> None:
        seen = router.stderr().count(event)
        router.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while router.stderr().count(event) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.stderr().count(event) == seen + 1, router.stderr()[-2000:]

    started = scrape()
    # Every result exists from the start at 0, so `increase(...{result="rejected"}[5m]) > 0` works.
    assert {k: started[k] for k in ("ok", "rejected", "error")} == \
        {"ok": 0, "rejected": 0, "error": 0}
    assert started["successful"] == 1 and started["at"] > 0
    router.config_path.write_text("upstreams: {}\nroutes: [{name: r, match: ['*'], "
                                  "upstreams: [gone]}]\n")
    sighup_and_wait('"event":"reload rejected; the old config keeps serving"')
    rejected = scrape()
    assert (rejected["rejected"], rejected["ok"], rejected["error"]) == (1, 0, 0)
    assert rejected["successful"] == 0 and rejected["at"] == started["at"]
    with urllib.request.urlopen(router.url + LATEST, timeout=10) as response:   # the old config
        assert response.headers["X-Goproxy-Upstream"] == "one"
        assert json.loads(response.read())["Version"] == "v1.0.0"
    # A good file again: ok counted, the gauges recover.
    router.config_path.write_text(yaml.safe_dump(config_for({"one": one.url}, ["one"],
                                                            tmp_path / "cache")))
    sighup_and_wait('"event":"reloaded"')
    fixed = scrape()
    assert (fixed["rejected"], fixed["ok"], fixed["error"]) == (1, 1, 0)
    assert fixed["successful"] == 1 and fixed["at"] >= started["at"]
