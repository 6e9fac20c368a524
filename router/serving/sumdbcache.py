"""The edge's cache of checksum-database answers: /sumdb/ keeps working when the database does not.

Full tiles and lookups never change: they are kept in the disk cache for
good (``sumdb/<name>/<tail>``, the path the go command asks for, under
``cache.max_size`` with the artifacts), so they survive a restart and a
database outage. ``latest`` and partial tiles (``.p/W``) change as the log
grows: they live in memory for ``cache.sumdb_ttl`` seconds, and the last good
answer is served stale (``X-Goproxy-Cache: stale``, up to
``cache.stale_max_age``) when every database URL fails. Concurrent requests
for one answer make one fetch. A body is checked before it is kept
(router/protocol/sumdbanswers.py): an empty one is a failed attempt; an
implausible one (a full tile of the wrong size, a markup page) makes the
other database URLs be asked, and is served but never kept when none has
better. Private names are the caller's concern (router/serving/sumdb.py):
nothing reaches this module for them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from goproxy_router.base.logs import log_event
from goproxy_router.forwarding.fetching import Fetcher, ForwardPlan, failure_response, text_response
from goproxy_router.protocol.requests import SumdbRequest
from goproxy_router.protocol.sumdbanswers import (
    SumdbKind,
    sumdb_answer_problem,
    sumdb_kind,
    sumdb_verdict,
)
from goproxy_router.serving.exchange import EXCHANGE
from goproxy_router.serving.responses import IMMUTABLE
from goproxy_router.storage.disk import DiskCache
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheError
from goproxy_router.storage.metadata import MetadataCache
from goproxy_router.storage.singleflight import Coalescer

log = logging.getLogger("router.cache")

TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class SumdbAnswer:
    """A database's good answer: served to every coalesced requester, kept in memory or on disk."""

    body: bytes
    upstream: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class SumdbFailure:
    """No database URL answered: the failure text every coalesced requester gets."""

    status: int
    text: str


class SumdbCache:
    """Serves the cacheable /sumdb/ answers; lives as long as the process, across reloads.

    ``answers`` counts what clients were told by (endpoint kind, hit|miss|stale),
    for /metrics; ``rejected`` counts bodies that failed the check.
    """

    def __init__(self, disk: DiskCache, ttl: float, stale_max_age: float) -> None:
        self.disk = disk
        self.ttl = ttl
        self.memory: MetadataCache[SumdbAnswer] = MetadataCache(
            ttl=ttl, stale_max_age=stale_max_age, maxsize=4096)
        self._fills: Coalescer[tuple[str, str], SumdbAnswer | SumdbFailure] = Coalescer()
        self.answers: Counter[tuple[str, str]] = Counter()
        self.rejected = 0

    async def close(self) -> None:
        await self._fills.close()

    async def serve(self, request: web.Request, req: SumdbRequest,
                    plan_for_miss: Callable[[], ForwardPlan],
                    forwarder: Fetcher) -> web.StreamResponse:
        """Answer a lookup, tile or latest request from the cache, fetching on a miss."""
        kind = sumdb_kind(req.tail)
        assert kind is not None, req.tail
        if kind.immutable:
            entry = self.disk.get_sumdb(req.name, req.tail)
            if entry is not None:
                body = await self._read(entry)
                if body is not None:
                    return self._answer(request, kind, body, "hit", None, 0.0)
        else:
            fresh = self.memory.get_fresh((req.name, req.tail))
            if fresh is not None:
                return self._answer(request, kind, fresh.body, "hit", fresh.upstream,
                                    time.monotonic() - fresh.fetched_at)
        plan = plan_for_miss()
        plan.method = "GET"                       # HEAD is answered from a whole GET
        plan.check = functools.partial(sumdb_verdict, req.tail)
        result = await self._fills.run((req.name, req.tail),
                                       lambda: self._fill(plan, forwarder, req, kind))
        if isinstance(result, SumdbAnswer):
            return self._answer(request, kind, result.body, "miss", result.upstream, 0.0)
        if not kind.immutable and result.status != 404:
            stale = self.memory.get_stale((req.name, req.tail))
            if stale is not None:
                answer, age = stale
                return self._answer(request, kind, answer.body, "stale", answer.upstream, age)
        self._count(request, kind, "miss")
        return text_response(result.status, result.text, {"X-Goproxy-Cache": "miss"})

    async def _fill(self, plan: ForwardPlan, forwarder: Fetcher, req: SumdbRequest,
                    kind: SumdbKind) -> SumdbAnswer | SumdbFailure:
        """One fetch through the database URLs; a good body is kept before it is answered."""
        fetched = await forwarder.fetch(plan)
        if fetched is None:
            response = failure_response(plan)
            return SumdbFailure(response.status, response.text or "")
        forwarder.note_ok(plan, fetched)
        assert fetched.body is not None          # plan.check: read whole and checked
        answer = SumdbAnswer(fetched.body, fetched.target.name, time.monotonic())
        problem = sumdb_answer_problem(req.tail, answer.body)
        if problem is not None:                  # doubtful, and no URL had better: not kept
            self.rejected += 1
            log_event(log, logging.WARNING, "checksum database answer served, not cached",
                      request_id=plan.request_id, database=req.name, path=req.tail,
                      upstream=answer.upstream, error=problem)
        elif kind.immutable:
            await self._keep(plan, req, answer.body)
        else:
            self.memory.put((req.name, req.tail), answer)
        return answer

    async def _keep(self, plan: ForwardPlan, req: SumdbRequest, body: bytes) -> None:
        """Commit an answer to disk; a full or failing disk only means it is not kept."""
        if not self.disk.admits():
            return
        try:
            writer = self.disk.sumdb_writer(req.name, req.tail, len(body))
        except CacheError as exc:
            log_event(log, logging.INFO, "not cached", request_id=plan.request_id, error=str(exc))
            return
        try:
            await writer.write(body)
            await writer.commit(len(body))
        except CacheError as exc:                # logged and counted by the cache as well
            writer.abort()
            log_event(log, logging.INFO, "checksum database answer not cached",
                      request_id=plan.request_id, path=req.tail, error=str(exc))

    async def _read(self, entry: CacheEntry) -> bytes | None:
        """A kept answer's bytes: from memory when small, else read (None if evicted meanwhile)."""
        if entry.data is not None:
            return entry.data
        with self.disk.lease(entry):
            try:
                return await asyncio.to_thread(entry.path.read_bytes)
            except FileNotFoundError:
                self.disk.discard(entry)
                return None

    def _answer(self, request: web.Request, kind: SumdbKind, body: bytes, state: str,
                upstream: str | None, age: float) -> web.Response:
        headers = {"Content-Type": BINARY if kind in (SumdbKind.TILE, SumdbKind.PARTIAL) else TEXT,
                   "X-Goproxy-Cache": state}
        if upstream is not None:
            headers["X-Goproxy-Upstream"] = upstream
        if kind.immutable:
            headers["Cache-Control"] = IMMUTABLE
        else:
            max_age = 0 if state == "stale" else max(int(self.ttl - age), 0)
            headers["Cache-Control"] = f"public, max-age={max_age}"
            headers["Age"] = str(int(age))
        self._count(request, kind, state)
        return web.Response(body=body, headers=headers)

    def _count(self, request: web.Request, kind: SumdbKind, state: str) -> None:
        """What the client is told (X-Goproxy-Cache), for the access log and /metrics."""
        request[EXCHANGE].cache = state
        self.answers[(kind.value, state)] += 1
