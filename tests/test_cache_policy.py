"""The cache policy on its own: `ArtifactCache` driven with an in-memory `Fetcher`.

No upstream and no app: a fake fetcher answers from a dict and counts its
calls, so each test says exactly how often the cache asked the forwarding
side. A miss fills the cache once and the next request is a hit; a 404 is
remembered for ``negative_ttl`` (on a fake clock) and then asked again;
concurrent misses coalesce into one fetch; a list is a hit within
``metadata_ttl`` and served stale when the fetcher fails after it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from goproxy_router.config.schema import Cache, Timeouts
from goproxy_router.forwarding.fetching import Attempt, Fetched, Fetcher, ForwardPlan, Outcome
from goproxy_router.forwarding.stream import ClientSink
from goproxy_router.protocol.requests import ModuleRequest, parse
from goproxy_router.serving.artifacts import ArtifactCache, Lookup, MetaAnswer
from goproxy_router.serving.exchange import EXCHANGE, Exchange
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.metadata import MetadataCache
from goproxy_router.storage.writer import CacheWriter
from goproxy_router.upstream.client import UpstreamResponse
from goproxy_router.upstream.stats import StatsRegistry
from goproxy_router.upstream.targets import UpstreamTarget

MOD = b"module example.com/m\n"
INFO = b'{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}'
LIST = b"v1.0.0\nv1.1.0\n"
TARGET = UpstreamTarget("mem", "http://127.0.0.1:9")


class MemoryFetcher:
    """A `Fetcher` answering from `bodies` (path -> body; absent: 404); counts fetches.

    `gate`, when set, holds every fetch until it is set, to make requests overlap."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.fetches: Counter[str] = Counter()
        self.failing = False              # every fetch fails (502) instead
        self.gate: asyncio.Event | None = None
        self._stats = StatsRegistry().get(TARGET.name, TARGET.base_url)

    async def fetch(self, plan: ForwardPlan) -> Fetched | None:
        self.fetches[plan.path] += 1
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 5)
        if self.failing:
            plan.attempts.append(Attempt(TARGET.name, Outcome.HTTP_ERROR, 0.0, 502, "HTTP 502"))
            return None
        body = self.bodies.get(plan.path)
        if body is None:
            plan.attempts.append(Attempt(TARGET.name, Outcome.NOT_FOUND, 0.0, 404, "not found"))
            return None
        response = SimpleNamespace(headers={"Content-Type": "text/plain; charset=utf-8"},
                                   content_length=len(body))
        return Fetched(TARGET, self._stats, cast(UpstreamResponse, response), body)

    def answer_headers(self, plan: ForwardPlan, fetched: Fetched) -> dict[str, str]:
        return {"X-Goproxy-Upstream": fetched.target.name, **plan.response_headers}

    def note_ok(self, plan: ForwardPlan, fetched: Fetched) -> None:
        plan.attempts.append(Attempt(fetched.target.name, Outcome.OK, 0.0, 200, "ok"))

    async def pump(self, plan: ForwardPlan, fetched: Fetched, client: ClientSink | None,
                   cache: CacheWriter | None, headers: dict[str, str]) -> CacheEntry | None:
        raise AssertionError("small answers are never streamed")

    async def forward(self, request: web.Request, plan: ForwardPlan) -> web.StreamResponse:
        raise AssertionError("every request here goes through the cache")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ArtifactCache]:
    artifacts = ArtifactCache(Cache(dir=str(tmp_path / "cache"), min_free=0,
                                    negative_ttl=10, metadata_ttl=60))
    try:
        yield artifacts
    finally:
        await artifacts.close()


async def get(cache: ArtifactCache, fetcher: Fetcher, path: str) -> web.Response:
    """One GET of a protocol path through the cache, as the app makes it."""
    req = parse(path)
    assert isinstance(req, ModuleRequest)
    request = make_mocked_request("GET", path)
    request[EXCHANGE] = Exchange(state=cast(Any, None), request_id="r", client_ip=None)
    upstream_path = req.upstream_path()

    def plan() -> ForwardPlan:
        return ForwardPlan("r", "public", path, upstream_path, "GET", [TARGET], Timeouts(),
                           kind=req.kind.value, module=req.module, version=req.version)

    response = await cache.serve(request, req, Lookup("public", upstream_path, 5.0, plan), fetcher)
    assert isinstance(response, web.Response)
    return response


async def test_a_miss_fills_the_cache_once_and_the_next_request_is_a_hit(
        cache: ArtifactCache) -> None:
    fetcher = MemoryFetcher({"/example.com/m/@v/v1.0.0.mod": MOD})
    first = await get(cache, fetcher, "/example.com/m/@v/v1.0.0.mod")
    second = await get(cache, fetcher, "/example.com/m/@v/v1.0.0.mod")
    assert (first.status, first.body, first.headers["X-Goproxy-Cache"]) == (200, MOD, "miss")
    assert (second.status, second.body, second.headers["X-Goproxy-Cache"]) == (200, MOD, "hit")
    assert fetcher.fetches == {"/example.com/m/@v/v1.0.0.mod": 1}
    assert cache.answers == {"miss": 1, "hit": 1}


async def test_a_404_is_remembered_for_negative_ttl_then_asked_again(cache: ArtifactCache) -> None:
    clock = Clock()
    cache.meta = MetadataCache(ttl=60, negative_ttl=10, stale_max_age=86400, timer=clock)
    fetcher = MemoryFetcher({})
    path = "/example.com/gone/@v/v1.0.0.info"
    first = await get(cache, fetcher, path)
    clock.now += 9
    remembered = await get(cache, fetcher, path)
    assert (first.status, remembered.status) == (404, 404)
    assert remembered.headers["X-Goproxy-Cache"] == "hit"
    assert remembered.body == first.body
    assert fetcher.fetches[path] == 1
    clock.now += 2                                     # past negative_ttl: asked again
    fetcher.bodies[path] = INFO
    again = await get(cache, fetcher, path)
    assert (again.status, again.body, again.headers["X-Goproxy-Cache"]) == (200, INFO, "miss")
    assert fetcher.fetches[path] == 2


async def test_concurrent_misses_coalesce_into_one_fetch(cache: ArtifactCache) -> None:
    path = "/example.com/m/@v/v1.0.0.info"
    fetcher = MemoryFetcher({path: INFO})
    fetcher.gate = asyncio.Event()
    requests = [asyncio.ensure_future(get(cache, fetcher, path)) for _ in range(10)]
    for _ in range(50):                                # until the fill is waiting on the gate
        if fetcher.fetches[path]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)                          # the others join the same fill
    fetcher.gate.set()
    responses = await asyncio.wait_for(asyncio.gather(*requests), 10)
    assert {(r.status, r.body) for r in responses} == {(200, INFO)}
    assert fetcher.fetches == {path: 1}


async def test_a_list_is_a_hit_within_metadata_ttl_and_stale_when_the_fetcher_fails(
        cache: ArtifactCache) -> None:
    clock = Clock()
    cache.meta = MetadataCache[MetaAnswer](ttl=60, negative_ttl=10, stale_max_age=86400,
                                           timer=clock)
    path = "/example.com/m/@v/list"
    fetcher = MemoryFetcher({path: LIST})
    miss = await get(cache, fetcher, path)
    hit = await get(cache, fetcher, path)
    assert [(r.body, r.headers["X-Goproxy-Cache"]) for r in (miss, hit)] == [(LIST, "miss"),
                                                                          (LIST, "hit")]
    assert fetcher.fetches[path] == 1
    clock.now += 61
    fetcher.failing = True
    stale = await get(cache, fetcher, path)
    assert (stale.status, stale.body, stale.headers["X-Goproxy-Cache"]) == (200, LIST, "stale")
    assert fetcher.fetches[path] == 2
