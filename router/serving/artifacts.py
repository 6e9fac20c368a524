"""Serving from the cache: hits from disk or memory, coalesced fills, stale metadata.

Immutable artifacts (.info/.mod/.zip of a canonical version) live in the
disk cache for good; list, @latest and non-canonical .info live briefly in
memory, and their last good answer is kept to be served stale when every
upstream fails; with no such answer (after a restart), a list is answered
stale from the disk cache's own ``@v/list``, the versions it can serve.
The memory copy stays authoritative: the disk list is never a fresh answer.
Concurrent requests for the same missing thing make one
upstream fetch. For a zip the first requester streams it as it arrives
(teed into the cache); the others wait for the committed file and get it
with sendfile — they would otherwise each hold a reader on a growing file
for the same total time, and a fill that fails reaches them as one clear
error instead of a cut-off body.

A full or failing disk is the cache's problem, never the client's nor the
upstream's: a fill whose cache write fails (ENOSPC, EIO...) or that can
never fit in ``max_size`` goes on uncached. The first requester gets the
whole body as it streams; a coalesced requester of a small artifact gets the
same bytes from memory, and one of a zip (whose body was not kept) makes
its own upstream fetch, streamed to it. While the filesystem has less than
``cache.min_free`` free, requests skip the cache and its coalescing and are
forwarded as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from goproxy_router.base.logs import log_event
from goproxy_router.config.schema import Cache
from goproxy_router.forwarding.fetching import (
    Fetched,
    Fetcher,
    ForwardPlan,
    Outcome,
    failure_response,
    text_response,
)
from goproxy_router.forwarding.stream import ClientSink
from goproxy_router.protocol.requests import ModuleRequest
from goproxy_router.serving.exchange import EXCHANGE
from goproxy_router.serving.filesend import BufferPool
from goproxy_router.serving.responses import (
    CONTENT_TYPES,
    IMMUTABLE,
    PreparedFileResponse,
    negative_response,
    not_modified,
)
from goproxy_router.storage.disk import DiskCache
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheError, CacheUnavailable
from goproxy_router.storage.health import warn_about_size
from goproxy_router.storage.listing import read_list
from goproxy_router.storage.metadata import MetadataCache
from goproxy_router.storage.singleflight import Coalescer
from goproxy_router.storage.writer import CacheWriter

log = logging.getLogger("router.cache")

@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache needs to answer from what it holds: no ranking, no forwarding plan.

    ``plan_for_miss`` ranks the route's upstreams (GeoIP, scoring) and builds
    the ForwardPlan; the cache calls it only on a miss, so a hit never pays
    for ranking.
    """

    route: str
    path: str                      # the escaped upstream path: the key within the route
    send_timeout: float
    plan_for_miss: Callable[[], ForwardPlan]


@dataclass(frozen=True, slots=True)
class FailureAnswer:
    """A fill that did not produce an answer; shared by every coalesced requester."""

    status: int
    text: str


@dataclass(frozen=True, slots=True)
class Filled:
    entry: CacheEntry
    upstream: str


@dataclass(frozen=True, slots=True)
class Uncached:
    """A good answer the cache could not keep (disk full, write error, too large).

    ``body``: a small artifact's bytes, which every coalesced requester is
    answered with; None for a zip, streamed to the first requester only: the
    others fetch it again themselves.
    """

    body: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class MetaAnswer:
    """A list/@latest/.info answer kept in memory."""

    body: bytes
    content_type: str
    upstream: str
    fetched_at: float
    etag: str


class ArtifactCache:
    """The cache in front of the forwarder; lives as long as the process, across reloads.

    The forwarder is any `Fetcher` (router/forwarding/fetching.py): this module never imports
    router.forward, and a test can drive the cache policy with an in-memory one."""

    def __init__(self, config: Cache) -> None:
        self.config = config
        self.disk = DiskCache.open(Path(config.dir), config.max_size,
                                   small_cache_bytes=config.memory, min_free=config.min_free)
        warn_about_size(self.disk)
        self.meta: MetadataCache[MetaAnswer] = MetadataCache(
            ttl=config.metadata_ttl, negative_ttl=config.negative_ttl,
            stale_max_age=config.stale_max_age)
        self._fills: Coalescer[tuple[str, ...], Filled | Uncached | MetaAnswer | FailureAnswer] = Coalescer()
        self.mismatches = 0
        self._buffers = BufferPool(config.send_buffers) if config.send_buffers else None
        # What clients were told (X-Goproxy-Cache), not internal look-ups.
        self.answers: Counter[str] = Counter()

    def info(self) -> dict[str, Any]:
        """Numbers for metrics and the status page."""
        disk = self.disk
        degraded = disk.degraded
        return {"size_bytes": disk.size, "max_size_bytes": self.config.max_size or 0,
                "write_buffered_bytes": disk.write_budget.used,
                "write_budget_bytes": disk.write_budget.limit,
                "write_waits": disk.write_budget.waits,
                "hits": self.answers["hit"], "misses": self.answers["miss"],
                "stale": self.answers["stale"], "evictions": disk.evictions,
                "mismatches": self.mismatches, "reserved_bytes": disk.reserved,
                "degraded": 1 if degraded else 0, "degraded_reason": degraded,
                "write_errors": dict(disk.write_errors)}

    async def close(self) -> None:
        await self._fills.close()
        await self.disk.drain()
        self.disk.close()

    async def serve(self, request: web.Request, req: ModuleRequest, lookup: Lookup,
                    forwarder: Fetcher) -> web.StreamResponse:
        if req.immutable:
            return await self._immutable(request, req, lookup, forwarder)
        return await self._metadata(request, req, lookup, forwarder)

    # -- immutable artifacts -------------------------------------------------------

    async def _immutable(self, request: web.Request, req: ModuleRequest, lookup: Lookup,
                         forwarder: Fetcher) -> web.StreamResponse:
        module, version, ext = req.module, req.version or "", req.kind.value
        entry = self.disk.get(module, version, ext)
        if entry is not None:
            response = await self._send_entry(request, entry, "hit", None, lookup.send_timeout)
            if response is not None:               # else it vanished meanwhile: fetch again
                _answered(self, request, "hit")
                return response
        negative = self.meta.get_negative((lookup.route, lookup.path))
        if negative is not None:
            _answered(self, request, "hit")
            return negative_response(negative)
        _answered(self, request, "miss")
        plan = lookup.plan_for_miss()
        plan.response_headers.update({"X-Goproxy-Cache": "miss", "Cache-Control": IMMUTABLE})
        if request.method == "HEAD":                 # no body to keep: just ask upstream
            return await forwarder.forward(request, plan)
        if not self.disk.admits():                   # low on disk space: serve, keep nothing
            return await forwarder.forward(request, plan)
        sink = ClientSink(request, plan.timeouts.send) if ext == "zip" else None
        result = await self._fills.run(     # per route: its upstreams' answer, 404s included
            ("artifact", plan.route, plan.path),
            lambda: self._fill(plan, forwarder, module, version, ext, sink))
        if sink is not None and sink.started:        # this request led the fill and streamed it
            assert sink.response is not None
            return sink.response
        if isinstance(result, Filled):
            response = await self._send_entry(request, result.entry, "miss", result.upstream,
                                              plan.timeouts.send)
            if response is not None:
                return response
            return text_response(503, "goproxy-router: the cached file vanished; try again\n")
        if isinstance(result, Uncached):
            if result.body is not None:
                return web.Response(body=result.body, headers=result.headers)
            plan.started = time.monotonic()          # its own fetch: a fresh deadline
            return await forwarder.forward(request, plan)
        assert isinstance(result, FailureAnswer)
        return text_response(result.status, result.text)

    async def _fill(self, plan: ForwardPlan, forwarder: Fetcher, module: str, version: str,
                    ext: str, sink: ClientSink | None) -> Filled | Uncached | FailureAnswer:
        """One upstream fetch into the cache (and, for a zip, to the first requester)."""
        fetched = await forwarder.fetch(plan)
        if fetched is None:
            return self._failed(plan)
        headers = forwarder.answer_headers(plan, fetched)
        writer = self._writer(plan, fetched, module, version, ext)
        entry: CacheEntry | None
        try:
            if fetched.body is not None:             # already read whole and checked
                forwarder.note_ok(plan, fetched)
                if writer is None:
                    return Uncached(fetched.body, headers)
                await writer.write(fetched.body)
                entry = await writer.commit(len(fetched.body))
            else:
                entry = await forwarder.pump(plan, fetched, sink, writer, headers)
        except CacheUnavailable:                     # logged and counted by the cache
            if writer is not None:
                writer.abort()
            return Uncached(fetched.body, headers)
        except CacheError as exc:
            if writer is not None:
                writer.abort()
            return FailureAnswer(502, f"goproxy-router: {plan.what}: {fetched.target.name} sent an "
                                f"artifact the cache rejected: {exc}\n")
        if entry is None:
            if _delivered(plan, fetched):            # streamed whole, but the cache kept nothing
                return Uncached(None, headers)
            return FailureAnswer(502, failure_response(plan).text or "")
        if ext in ("zip", "mod"):
            await self._cross_check(module, version, fetched.target.name)
        return Filled(entry, fetched.target.name)

    def _writer(self, plan: ForwardPlan, fetched: Fetched, module: str, version: str,
                ext: str) -> CacheWriter | None:
        """A writer with the body's size reserved, or None when it can never fit."""
        size = len(fetched.body) if fetched.body is not None else fetched.response.content_length
        try:
            return self.disk.writer(module, version, ext, size)
        except CacheUnavailable as exc:
            log_event(log, logging.INFO, "not cached: larger than cache.max_size",
                      request_id=plan.request_id, error=str(exc))
            return None

    async def _cross_check(self, module: str, version: str, upstream: str) -> None:
        """A zip's go.mod must equal the version's .mod; when both are cached and they
        differ, some upstream served inconsistent artifacts: count it and say so."""
        mod_path = self.disk.path_for(module, version, "mod")
        zip_path = self.disk.path_for(module, version, "zip")
        # Read the files directly: a check is not a client's hit, nor a reason to keep them.
        found = await asyncio.to_thread(_consistency_inputs, mod_path, zip_path,
                                        f"{module}@{version}/go.mod")
        if found is None:
            return
        expected, inner = found
        if inner != expected:
            self.mismatches += 1
            log_event(log, logging.ERROR, "checksum mismatch: the zip's go.mod differs from the .mod",
                      module=module, version=version, upstream=upstream)

    def _failed(self, plan: ForwardPlan) -> FailureAnswer:
        response = failure_response(plan)
        text = response.text or ""
        if response.status == 404:
            self.meta.put_negative((plan.route, plan.path), 404, text.encode())
        return FailureAnswer(response.status, text)

    async def _send_entry(self, request: web.Request, entry: CacheEntry, state: str,
                          upstream: str | None,
                          send_timeout: float) -> web.StreamResponse | None:
        """A cached artifact: from memory when small, else sendfile (Range, conditionals).
        None when the file vanished meanwhile (evicted by another worker)."""
        ext = entry.key.rsplit(".", 1)[-1]
        headers = {"Cache-Control": IMMUTABLE, "X-Goproxy-Cache": state,
                   "Content-Type": CONTENT_TYPES[ext]}
        if upstream is not None:
            headers["X-Goproxy-Upstream"] = upstream
        if entry.data is not None and "Range" not in request.headers:
            response: web.StreamResponse
            if not_modified(request, entry.etag, entry.mtime):
                response = web.Response(status=304, headers=headers)
            else:
                response = web.Response(body=entry.data, headers=headers)
                request[EXCHANGE].memory_entry = entry   # the app may keep it for the thin path
            response.etag = entry.etag
            response.last_modified = entry.mtime
            return response
        with self.disk.lease(entry):
            # FileResponse answers a missing file with a 404 of its own: look first.
            if not entry.path.is_file():
                self.disk.discard(entry)
                return None
            response = PreparedFileResponse(entry.path, headers=headers, pool=self._buffers,
                                             send_timeout=send_timeout)
            await response.prepare(request)   # the whole send, under the lease
            return response

    # -- metadata --------------------------------------------------------------------

    async def _metadata(self, request: web.Request, req: ModuleRequest, lookup: Lookup,
                        forwarder: Fetcher) -> web.StreamResponse:
        key = (lookup.route, lookup.path)
        fresh = self.meta.get_fresh(key)
        if fresh is not None:
            _answered(self, request, "hit")
            return self._meta_response(request, fresh, "hit")
        negative = self.meta.get_negative(key)
        if negative is not None:
            _answered(self, request, "hit")
            return negative_response(negative)
        plan = lookup.plan_for_miss()
        plan.method = "GET"                     # HEAD is answered from a whole GET
        result = await self._fills.run(("meta", *key), lambda: self._fetch_meta(plan, forwarder))
        if isinstance(result, MetaAnswer):
            _answered(self, request, "miss")
            return self._meta_response(request, result, "miss")
        assert isinstance(result, FailureAnswer)
        stale = self.meta.get_stale(key) if result.status != 404 else None
        if stale is None and result.status != 404 and plan.kind == "list":
            stale = await self._disk_list(req.module)
        if stale is not None:
            _answered(self, request, "stale")
            return self._meta_response(request, stale[0], "stale")
        _answered(self, request, "miss")
        return text_response(result.status, result.text)

    async def _disk_list(self, module: str) -> tuple[MetaAnswer, float] | None:
        """The disk cache's ``@v/list`` as a stale answer with its age, or None.

        It lists what this cache can serve whole (DiskCache keeps it current),
        so it is true now whatever its age: ``stale_max_age`` does not apply.
        """
        found = await asyncio.to_thread(read_list, self.disk.list_path(module))
        if found is None:
            return None
        body, mtime = found
        age = max(time.time() - mtime, 0.0)
        answer = MetaAnswer(body, CONTENT_TYPES["list"], "cache", time.monotonic() - age,
                            hashlib.blake2b(body, digest_size=8).hexdigest())
        return answer, age

    async def _fetch_meta(self, plan: ForwardPlan, forwarder: Fetcher) -> MetaAnswer | FailureAnswer:
        fetched = await forwarder.fetch(plan)
        if fetched is None:
            return self._failed(plan)
        forwarder.note_ok(plan, fetched)
        body = fetched.body or b""
        content_type = fetched.response.headers.get("Content-Type", CONTENT_TYPES[plan.kind])
        answer = MetaAnswer(body, content_type, fetched.target.name, time.monotonic(),
                            hashlib.blake2b(body, digest_size=8).hexdigest())
        self.meta.put((plan.route, plan.path), answer)
        return answer

    def _meta_response(self, request: web.Request, answer: MetaAnswer, state: str) -> web.Response:
        age = max(time.monotonic() - answer.fetched_at, 0.0)
        max_age = 0 if state == "stale" else max(int(self.config.metadata_ttl - age), 0)
        headers = {"Content-Type": answer.content_type, "X-Goproxy-Cache": state,
                   "X-Goproxy-Upstream": answer.upstream, "Age": str(int(age)),
                   "Cache-Control": f"public, max-age={max_age}"}
        if not_modified(request, answer.etag, None):
            response = web.Response(status=304, headers=headers)
        else:
            response = web.Response(body=answer.body, headers=headers)
        response.etag = answer.etag
        return response


def _consistency_inputs(mod_path: Path, zip_path: Path, member: str) -> tuple[bytes, bytes] | None:
    """(.mod bytes, the zip's go.mod) when both are cached and the zip has a go.mod."""
    try:
        expected = mod_path.read_bytes()
        with zipfile.ZipFile(zip_path) as archive:
            return expected, archive.read(member)
    except (KeyError, OSError, zipfile.BadZipFile):
        return None


def _delivered(plan: ForwardPlan, fetched: Fetched) -> bool:
    """Whether the fetched answer's body went through whole (its attempt ended ok)."""
    last = plan.attempts[-1] if plan.attempts else None
    return last is not None and last.upstream == fetched.target.name and last.outcome is Outcome.OK


def _answered(cache: ArtifactCache, request: web.Request, state: str) -> None:
    """Note what the client is told (X-Goproxy-Cache) for the log line and the counters."""
    request[EXCHANGE].cache = state
    cache.answers[state] += 1
