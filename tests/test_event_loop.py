"""Nothing blocks the event loop: a GeoIP database swapped in
under load, a config reload that opens one, /readyz on a slow filesystem, and a
log pipe that nobody reads.

A `LagMonitor` ticks every millisecond on the loop under test and records how
late its worst tick woke: whatever holds the loop shows up as a late tick.
Requests go through the real app on 127.0.0.1 (the `edge` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from goproxy_router.base.logs import LineSink, dropped_lines
from goproxy_router.config.loader import parse_config
from goproxy_router.ops.metrics import Metrics
from goproxy_router.routing import geo
from goproxy_router.serving.edge import EDGE
from tests.conftest import REPO_ROOT, free_port
from tests.support.http import MakeEdge
from tests.support.mmdb import write_country_db

TICK = 0.001             # the monitor's period
MAX_LAG = 0.05           # the worst stall allowed
PATIENCE = 15.0          # bound on any wait (an old-style 5 s check interval fits)
BIG = 50 * 1024 * 1024   # bytes of the database swapped in
CLIENT = "36.96.1.1"
NETWORK = "36.96.0.0/11"
MODULE = "example.com/lib"
LOAD_CLIENTS = 4
# One LineSink.write: microseconds, but a busy 2-core machine preempts the test for a
# scheduler tick (4 ms) now and then, whatever the code does; the old sink blocked for good.
MAX_WRITE = 0.02


class LagMonitor:
    """A 1 ms ticker on the running loop; `worst` is how late its latest tick ever woke."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(TICK * 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - started - TICK)
            self.ticks += 1


@contextlib.asynccontextmanager
async def load(client: TestClient) -> AsyncIterator[dict[str, Any]]:
    """LOAD_CLIENTS clients asking, back to back, where clients are (each request looks
    its client up in the GeoIP database); yields the tally of answers."""
    tally: dict[str, Any] = {"answers": 0, "errors": []}

    async def one(n: int) -> None:
        while True:
            try:
                country = await country_of(client, f"36.96.{n}.{tally['answers'] % 250 + 1}")
            except Exception as exc:        # noqa: BLE001 - counted and asserted on
                tally["errors"].append(repr(exc))
                await asyncio.sleep(0.01)
            else:
                tally["answers"] += 1
                tally.setdefault("countries", set()).add(country)

    tasks = [asyncio.create_task(one(n)) for n in range(LOAD_CLIENTS)]
    try:
        yield tally
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def country_of(client: TestClient, address: str = CLIENT) -> str | None:
    async with client.get("/_router/explain", params={"module": MODULE, "client_ip": address},
                          timeout=5) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["country"]


async def wait_for_country(client: TestClient, country: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while (got := await country_of(client)) != country:
        assert time.monotonic() < deadline, f"{CLIENT} still in {got}, want {country}"
        await asyncio.sleep(0.02)


def geo_config(upstream: str, database: Path) -> dict[str, Any]:
    return {
        "upstreams": {"a": {"url": upstream, "countries": ["*"]}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["a"]}],
        "geoip": {"database": str(database)},
    }


def evict_from_page_cache(path: Path) -> None:
    """As a file fresh from an update may be: its reader has to wait for the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def frozen_heap() -> Iterator[None]:
    """Keep the test process's own garbage collection out of the measurements.

    A full collection walks every object pytest and the imports made (~100 ms
    here) and would stall any loop, whatever the router does; frozen, a
    collection sees only what the test itself allocates (as a server that
    calls gc.freeze() after start-up would).
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def big_mmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~50 MB Country database that puts CLIENT in DE (written once, in well under a second)."""
    path = tmp_path_factory.mktemp("geo") / "big.mmdb"
    write_country_db(path, {NETWORK: "DE"}, padding=BIG)
    assert path.stat().st_size >= BIG
    return path


@pytest.fixture
def small_mmdb(tmp_path: Path) -> Path:
    """The database in service before the swap: CLIENT in CN."""
    path = tmp_path / "geo.mmdb"
    write_country_db(path, {NETWORK: "CN"})
    return path


# -- GeoIP -----------------------------------------------------------------------------------

async def test_a_50mb_geoip_database_swapped_in_under_load_never_stalls_the_loop(
        edge: MakeEdge, refused_url: str, big_mmdb: Path, small_mmdb: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geo, "CHECK_INTERVAL", 0.05)
    client = await edge(geo_config(refused_url, small_mmdb))
    assert await country_of(client) == "CN"
    incoming = small_mmdb.with_name("geo.mmdb.new")
    os.link(big_mmdb, incoming)              # as an updater does: whole file, then rename
    evict_from_page_cache(incoming)
    async with LagMonitor() as lag, load(client) as tally:
        await asyncio.sleep(0.3)
        answers_before = tally["answers"]
        os.replace(incoming, small_mmdb)
        await wait_for_country(client, "DE")
        await asyncio.sleep(0.3)              # and the old reader's release
    assert tally["errors"] == []
    assert answers_before > 0 and tally["answers"] > answers_before, tally["answers"]
    assert tally["countries"] == {"CN", "DE"}
    assert lag.ticks > 100
    assert lag.worst < MAX_LAG, f"the loop stalled {lag.worst * 1000:.1f} ms"


async def test_a_reload_opening_a_50mb_geoip_database_never_stalls_the_loop(
        edge: MakeEdge, refused_url: str, big_mmdb: Path, small_mmdb: Path) -> None:
    config = geo_config(refused_url, small_mmdb)
    client = await edge(config)              # (which fills in the test defaults)
    assert await country_of(client) == "CN"
    config["geoip"]["database"] = str(big_mmdb)
    evict_from_page_cache(big_mmdb)
    new = parse_config(yaml.safe_dump(config), "routes.yaml", {})
    async with LagMonitor() as lag, load(client) as tally:
        await asyncio.sleep(0.2)
        await client.server.app[EDGE].reload(new)
        assert await country_of(client) == "DE"
        await asyncio.sleep(0.2)
    assert tally["errors"] == [] and tally["answers"] > 0
    assert lag.worst < MAX_LAG, f"the loop stalled {lag.worst * 1000:.1f} ms"


# -- /readyz ---------------------------------------------------------------------------------

async def test_readyz_probe_write_on_a_slow_filesystem_stays_off_the_loop(
        edge: MakeEdge, refused_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cache write takes 0.2 s; concurrent /readyz share one probe write, in a thread."""
    client = await edge({"upstreams": {"a": {"url": refused_url}},
                         "routes": [{"name": "public", "match": ["*"], "upstreams": ["a"]}]})
    loop_thread = threading.get_ident()
    writes: list[int] = []
    real = tempfile.NamedTemporaryFile

    def slow_filesystem(*args: Any, **kwargs: Any) -> Any:
        writes.append(threading.get_ident())
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", slow_filesystem)
    async with LagMonitor() as lag:
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get("/readyz", timeout=5) for _ in range(5)))
        took = time.monotonic() - started
    for answer in answers:
        answer.release()
    assert [a.status for a in answers] == [200] * 5
    assert took >= 0.2                       # the slow write did happen
    assert lag.worst < MAX_LAG, f"the loop stalled {lag.worst * 1000:.1f} ms"
    assert len(writes) == 1 and writes[0] != loop_thread


# -- the log sink ----------------------------------------------------------------------------

@pytest.fixture
def unread_pipe() -> Iterator[tuple[int, LineSink]]:
    """(read end, a LineSink on the write end) of a pipe nobody reads yet."""
    r, w = os.pipe()
    sink = LineSink(w)
    yield r, sink
    os.close(r)                              # a writer still stuck gets EPIPE
    sink.close()
    os.close(w)


def read_until(fd: int, text: bytes, timeout: float = PATIENCE) -> bytes:
    """What the pipe gives until `text` has come (or the timeout), reading as a log shipper would."""
    data = b""
    deadline = time.monotonic() + timeout
    while text not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data += os.read(fd, 1 << 20)
    assert text in data, f"{text!r} never came ({len(data)} bytes read)"
    return data


def dropped_metric() -> float:
    for family in text_string_to_metric_families(Metrics().render().decode()):
        for sample in family.samples:
            if sample.name == "goproxy_log_lines_dropped_total":
                return sample.value
    raise AssertionError("goproxy_log_lines_dropped_total is not exposed")


async def test_a_log_pipe_nobody_reads_never_blocks_the_loop_and_drops_are_counted(
        unread_pipe: tuple[int, LineSink]) -> None:
    r, sink = unread_pipe
    total_before = dropped_metric()
    lines = 20_000                           # ~4 MB: the pipe and the backlog fill, the rest drops
    slowest = 0.0
    async with LagMonitor() as lag:
        for i in range(lines):
            started = time.perf_counter()
            sink.write(f'{{"event":"request","n":{i:06d},"pad":"{"x" * 160}"}}\n')
            slowest = max(slowest, time.perf_counter() - started)
            if i % 200 == 0:
                await asyncio.sleep(0)       # flush timers and the monitor get their turn
        await asyncio.sleep(LineSink.FLUSH_DELAY * 2)
    assert sink.dropped > 0
    assert slowest < MAX_WRITE, f"a write took {slowest * 1000:.1f} ms"
    assert lag.worst < MAX_LAG, f"the loop stalled {lag.worst * 1000:.1f} ms"
    assert dropped_metric() == total_before + sink.dropped == dropped_lines()

    got = await asyncio.to_thread(read_until, r, b"log lines dropped")   # the reader catches up
    sink.write("after the drain\n")
    got += await asyncio.to_thread(read_until, r, b"after the drain\n")
    *written, after = got.decode().splitlines()
    assert after == "after the drain"
    notices = [json.loads(line) for line in written if "log lines dropped" in line]
    numbers = [int(line.split('"n":')[1][:6]) for line in written if '"n":' in line]
    assert numbers == sorted(numbers) and len(numbers) + sink.dropped == lines
    assert [n["level"] for n in notices] == ["warning"]
    assert sum(n["dropped"] for n in notices) == sink.dropped


def test_a_router_whose_stderr_nobody_reads_keeps_answering_and_stops_in_bounded_time(
        tmp_path: Path, refused_url: str) -> None:
    """The real process, its stderr a pipe nobody reads: an access line per request fills
    the pipe within a few hundred requests (the old sink then blocked the loop for good)."""
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump({
        "upstreams": {"a": {"url": refused_url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["a"]}],
        "probes": {"enabled": False}, "cache": {"dir": str(tmp_path / "cache")}}))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "goproxy_router", "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "router never started"
                time.sleep(0.1)
        for _ in range(1000):               # ~300 bytes of log each: the 64 KiB pipe fills
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PATIENCE) == 0
        assert time.monotonic() - started < 2 * LineSink.EXIT_WAIT + 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=PATIENCE)
        assert proc.stderr is not None
        proc.stderr.close()
