"""A stalled zip body is resumed with a Range request, or the client is cut off (issue 13).

An upstream that stops sending after 40 % of a 20 MB zip and keeps the connection
silent: when it answered with Accept-Ranges and validators, the edge asks it for the
rest (Range + If-Range) after a stall interval derived from the throughput, and the
client gets one unbroken, byte-identical zip that the cache keeps too; without Range
support, with a resume that does not match, or with no budget to pay for it, the
client connection is aborted after `timeouts.read` of silence and nothing is cached.
The stall interval's function is tested on its own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy

from goproxy_router.config.schema import Resume
from goproxy_router.forwarding.resume import (
    MIN_RATE_BYTES,
    Validators,
    observed_rate,
    stall_interval,
)
from goproxy_router.serving.edge import EDGE
from goproxy_router.upstream.client import READ_BUFSIZE, UpstreamResponse
from tests.support import FakeProxy, Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake

ZIP_PATH = "/example.com/big/@v/v1.0.0.zip"
READ = 1.5                 # timeouts.read: the longest silence, and the abort without a resume
FLOOR = 0.3                # resume.stall_floor: a stall is noticed after this, at localhost speed


@functools.cache
def tree() -> ModuleTree:
    """A module whose zip is ~20 MB (incompressible bytes), built once per run."""
    blob = random.Random(13).randbytes(20 * 1000 * 1000)
    return ModuleTree([Module("example.com/big", "v1.0.0", files={"blob.bin": blob})])


def big_zip() -> bytes:
    return tree().respond(ZIP_PATH).body


def config(url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "upstreams": {"a": {"url": url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["a"]}],
        "scoring": {"plugins": []},
        "timeouts": {"connect": 1.0, "headers": 2.0, "read": READ, "deadline": 10.0},
        "resume": {"stall_floor": FLOOR},
        "cache": {"dir": str(tmp_path / "cache")},
        "probes": {"enabled": False},
    }
    cfg.update(extra)
    return cfg


@dataclass
class Got:
    status: int
    headers: CIMultiDict[str]
    body: bytes | None          # None: the transfer was aborted
    elapsed: float


async def fetch(client: TestClient, path: str) -> Got:
    started = time.monotonic()

    async def go() -> Got:
        async with client.get(path) as resp:
            try:
                body: bytes | None = await resp.read()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                body = None
            return Got(resp.status, CIMultiDict(resp.headers), body, time.monotonic() - started)

    return await asyncio.wait_for(go(), 30)


def cached_zips(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*.zip") if p.is_file()
            and p.as_posix().endswith("example.com/big/@v/v1.0.0.zip")]


def stall_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records
            if r.name == "router.forward" and r.getMessage() == "upstream body stalled"]


async def resumes_metric(client: TestClient, outcome: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        name, _, value = line.partition("} ")
        if (name.startswith("goproxy_resumes_total{") and 'upstream="a"' in name
                and f'outcome="{outcome}"' in name):
            return float(value)
    return 0.0


def zip_requests(fake: FakeProxy) -> list[Any]:
    return [r for r in fake.requests if r.raw_path == ZIP_PATH and r.method == "GET"]


async def start(edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path, faults: Faults,
                **extra: Any) -> tuple[FakeProxy, TestClient]:
    fake = await fake_proxy(tree(), name="a", faults=faults)
    return fake, await edge(config(fake.url, tmp_path, **extra))


# -- the stall interval ----------------------------------------------------------------

def test_stall_interval_follows_the_throughput() -> None:
    settings = Resume(stall_floor=2.0, stall_factor=20.0)
    cap = 30.0
    assert stall_interval(None, settings, cap) == cap          # no rate known: as before
    # 20 x the time the next 64 KiB take, within [floor, cap]
    assert stall_interval(100e6, settings, cap) == 2.0          # fast: the floor
    rate = 200e3
    assert stall_interval(rate, settings, cap) == pytest.approx(20 * READ_BUFSIZE / rate)
    assert 2.0 < stall_interval(rate, settings, cap) < cap
    assert stall_interval(rate / 2, settings, cap) == pytest.approx(2 * stall_interval(rate, settings, cap))
    assert stall_interval(1e3, settings, cap) == cap             # slow: never past timeouts.read
    assert stall_interval(100e6, Resume(stall_floor=60.0), cap) == cap   # a floor over the cap


def test_the_rate_is_the_bodys_own_once_it_has_one() -> None:
    assert observed_rate(0, 0.0, None) is None
    assert observed_rate(1000, 0.01, 5e6) == 5e6                # too little yet: the upstream's
    assert observed_rate(MIN_RATE_BYTES * 4, 2.0, 5e6) == MIN_RATE_BYTES * 2
    assert observed_rate(MIN_RATE_BYTES, 0.0, None) is None


def _response(status: int, length: int | None, **headers: str) -> UpstreamResponse:
    fake = type("R", (), {})()
    fake.status = status
    fake.content_length = length
    fake.headers = CIMultiDictProxy(CIMultiDict(headers))
    return cast(UpstreamResponse, fake)


def test_validators_decide_what_can_be_resumed_and_what_matches() -> None:
    first = _response(200, 1000, **{"Accept-Ranges": "bytes", "ETag": '"v1"'})
    v = Validators.of(first)
    assert v is not None and v.request_headers(400) == {"Range": "bytes=400-", "If-Range": '"v1"'}
    assert Validators.of(_response(200, 1000, ETag='"v1"')) is None          # no Accept-Ranges
    assert Validators.of(_response(200, None, **{"Accept-Ranges": "bytes", "ETag": '"v1"'})) is None
    assert Validators.of(_response(200, 1000, **{"Accept-Ranges": "none", "ETag": '"v1"'})) is None
    assert Validators.of(_response(200, 1000, **{"Accept-Ranges": "bytes"})) is None   # nothing
    weak = Validators.of(_response(200, 1000, **{"Accept-Ranges": "bytes", "ETag": 'W/"v1"',
                                                 "Last-Modified": "Mon, 02 Jan 2006 15:04:05 GMT"}))
    assert weak is not None and weak.if_range == "Mon, 02 Jan 2006 15:04:05 GMT"
    good = {"Content-Range": "bytes 400-999/1000", "ETag": '"v1"'}
    assert v.mismatch(_response(206, 600, **good), 400) is None
    assert "200" in (v.mismatch(_response(200, 1000, ETag='"v1"'), 400) or "")
    assert "ETag" in (v.mismatch(_response(206, 600, **{**good, "ETag": '"v2"'}), 400) or "")
    assert "Content-Range" in (v.mismatch(_response(206, 600, **{
        **good, "Content-Range": "bytes 400-999/1001"}), 400) or "")
    assert "Content-Range" in (v.mismatch(_response(206, 500, **{
        **good, "Content-Range": "bytes 500-999/1000"}), 400) or "")


# -- a stalled 20 MB zip ------------------------------------------------------------------

async def test_a_stalled_zip_is_resumed_whole_and_cached(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    body = big_zip()
    assert len(body) > 20_000_000
    fake, client = await start(edge, fake_proxy, tmp_path, Faults(stall=0.4, ranges=True))
    got = await fetch(client, ZIP_PATH)
    assert got.status == 200 and got.body is not None, "the transfer was aborted"
    assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert got.elapsed < READ, f"{got.elapsed:.2f}s: the stall was not noticed before timeouts.read"
    [first, resumed] = zip_requests(fake)
    offset = int(len(body) * 0.4)
    assert first.header("Range") is None
    assert resumed.header("Range") == f"bytes={offset}-"
    assert resumed.header("If-Range") == f'"{hashlib.sha256(body).hexdigest()[:16]}"'  # its ETag
    assert await fake.wait_until(lambda _: first.disconnected, 2.0), "the stalled one was kept open"
    [cached] = cached_zips(tmp_path)
    assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(body).digest()
    [logged] = stall_records(caplog)
    assert logged["resume"] == "resumed" and logged["upstream"] == "a"
    assert logged["offset"] == offset and logged["request_id"] == got.headers["X-Request-Id"]
    assert await resumes_metric(client, "resumed") == 1
    stats = next(s for s in client.server.app[EDGE].registry.all() if s.name == "a")
    assert stats.failures == 1 and (stats.last_error or "").startswith("stalled")
    assert stats.breaker.consecutive_failures == 0      # the body's success came after
    assert stats.throughput is not None
    again = await fetch(client, ZIP_PATH)                # served from the cache
    assert again.body == body and again.headers.get("X-Goproxy-Cache") == "hit"


async def test_without_range_support_the_client_is_cut_off_and_nothing_cached(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    fake, client = await start(edge, fake_proxy, tmp_path, Faults(stall=0.4))
    got = await fetch(client, ZIP_PATH)
    assert got.status == 200 and got.body is None, "a stalled body looked complete"
    assert got.elapsed >= READ - 0.05, "cut before timeouts.read though it could not be resumed"
    assert len(zip_requests(fake)) == 1 and cached_zips(tmp_path) == []
    assert stall_records(caplog) == []
    assert await resumes_metric(client, "resumed") == 0


@pytest.mark.parametrize("faults, why", [
    (Faults(stall=0.4, ranges=True, range_etag='"changed"'), "ETag"),
    (Faults(stall=0.4, ranges=True, range_ignored=True), "HTTP 200 instead of 206"),
])
async def test_a_resume_that_does_not_match_is_refused(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        faults: Faults, why: str) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    fake, client = await start(edge, fake_proxy, tmp_path, faults)
    got = await fetch(client, ZIP_PATH)
    assert got.status == 200 and got.body is None, "a mismatched resume was served"
    assert len(zip_requests(fake)) == 2 and cached_zips(tmp_path) == []
    [logged] = stall_records(caplog)
    assert logged["resume"] == "mismatch" and why in logged["detail"]
    assert await resumes_metric(client, "mismatch") == 1


async def test_a_resume_the_budget_refuses_waits_out_timeouts_read(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.forward")
    fake, client = await start(edge, fake_proxy, tmp_path, Faults(stall=0.4, ranges=True),
                               retry={"budget_ratio": 0, "budget_floor": 0})
    got = await fetch(client, ZIP_PATH)
    assert got.body is None and got.elapsed >= READ - 0.05
    assert len(zip_requests(fake)) == 1 and cached_zips(tmp_path) == []
    [logged] = stall_records(caplog)
    assert logged["resume"] == "budget"
    assert await resumes_metric(client, "budget") == 1
