"""Streaming an upstream's 200 to the client and teeing it into the cache.

Which upstream answered, and whether it is to be trusted, is settled before
this (router/forwarding/forwarder.py); here one fetched body goes out chunk by chunk.
Must not import goproxy_router.forwarding.forwarder nor router.artifacts: the outcome of the
stream is reported through the `failed` and `delivered` callbacks. A zip body that
stalls is resumed where it allows it (router/forwarding/resume.py): the chunks below
are then of one unbroken stream, whatever answer they came in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from goproxy_router.forwarding.fetching import Attempt, Fetched, ForwardPlan, Outcome
from goproxy_router.forwarding.resume import MIN_RATE_BYTES, Resumer
from goproxy_router.protocol.integrity import MAX_ZIP_FILE, ZipTail
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheError, CacheIntegrityError, CacheUnavailable
from goproxy_router.storage.writer import CacheWriter
from goproxy_router.upstream.client import AttemptError, AttemptTimeout, UpstreamResponse
from goproxy_router.upstream.stats import UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

# (plan, target, stats, outcome, started, status, detail): records a failed attempt.
Failed = Callable[[ForwardPlan, UpstreamTarget, UpstreamStats, Outcome, float, int | None, str],
                  Attempt]
# (plan, fetched, elapsed, detail): records an answer that went through.
Delivered = Callable[[ForwardPlan, Fetched, float, str], None]


async def pump(plan: ForwardPlan, fetched: Fetched, client: ClientSink | None,
               cache: CacheWriter | None, headers: dict[str, str], *,
               failed: Failed, delivered: Delivered,
               resumer: Resumer | None = None) -> CacheEntry | None:
    """Stream a 200's body to the client and/or the cache, chunk by chunk.

    Each write is awaited (backpressure). A client that goes away only
    detaches: the body still fills the cache. A zip's very last byte is
    held back from the client until its end-of-archive record has been
    seen and the cache commit passed its checks; if anything fails, the
    client is cut off one byte short and can never take the body for
    complete, and the cache keeps nothing. A cache that cannot take the
    body (its disk is full or failing: CacheUnavailable, logged and counted
    by the cache) is dropped and the body goes on to the client: not the
    upstream's failure; with no client left either, the read stops there.
    Returns the committed entry (None when nothing was cached). With a `resumer`, a
    stalled zip body is resumed from the byte reached rather than failed.
    """
    upstream, target, stats = fetched.response, fetched.target, fetched.stats
    reader = resumer.body(plan, fetched) if resumer is not None else None

    def current() -> UpstreamResponse:
        """The answer being read: the first, or the resume that followed a stall."""
        return reader.response if reader is not None else upstream

    started = time.monotonic()
    try:
        if client is not None:
            await client.start(headers, upstream.content_length)
        if plan.method == "HEAD":
            upstream.close()
            if client is not None:
                await client.finish(b"")
            stats.record_success(fetched.headers_at, sample=False)
            delivered(plan, fetched, 0.0, "ok")
            return None
        tail = ZipTail() if plan.kind == "zip" else None
        received = 0
        held = b""
        dropped = False                   # the cache gave up on this body
        try:
            async for chunk in (reader.chunks() if reader is not None else upstream.chunks()):
                received += len(chunk)
                if tail is not None and received > MAX_ZIP_FILE:
                    raise _Invalid(f"invalid .zip: over the go command's limit of "
                                   f"{MAX_ZIP_FILE} bytes")
                if cache is not None:
                    try:
                        await cache.write(chunk)
                    except CacheUnavailable:
                        cache, dropped = None, True
                if dropped and (client is None or client.gone):
                    current().close()     # nobody wants the rest: stop reading
                    stats.record_success(fetched.headers_at, sample=False)
                    delivered(plan, fetched, time.monotonic() - started,
                              "ok (not cached, nobody to send it to)")
                    return None
                if tail is not None:
                    tail.feed(chunk)
                if client is not None:
                    if tail is None:
                        await client.write(chunk)
                    else:
                        await client.write(held)
                        held = chunk[-1:]
                        await client.write(memoryview(chunk)[:-1])
            expected = upstream.content_length
            if expected is not None and received != expected:
                raise AttemptError(f"body ended after {received} of {expected} bytes")
            problem = tail.problem() if tail is not None else None
            if problem is not None:
                raise _Invalid(f"invalid .zip: {problem}")
            entry = None
            if cache is not None:
                try:
                    entry = await cache.commit(received)
                except CacheUnavailable:
                    dropped = True
        except (AttemptError, AttemptTimeout, CacheError) as exc:
            current().close()
            if cache is not None:
                cache.abort()
            aborted = " (the client connection was aborted)" if client and client.started else ""
            # A body that arrived but is not what was asked for is the upstream's fault
            # as much as a broken one: both count towards its ejection.
            invalid = isinstance(exc, (_Invalid, CacheIntegrityError))
            failed(plan, target, stats, Outcome.INVALID if invalid else Outcome.BROKEN,
                   started, 200, f"{exc}{aborted}")
            if client is not None:
                client.abort()
            return None
        current().release()
        stats.record_success(fetched.headers_at, sample=False)
        if tail is not None and received >= MIN_RATE_BYTES:
            stats.record_throughput(received, time.monotonic() - started)
        if client is not None:
            await client.finish(held)
        delivered(plan, fetched, time.monotonic() - started,
                  "ok (not cached)" if dropped else "ok")
        return entry
    finally:
        fetched.stats.end()


class ClientSink:
    """The client end of a stream: prepared on demand, detached if the client leaves,
    or if it accepts nothing for `send_timeout` seconds (then its connection is cut:
    the body, which may be filling the cache for others, goes on without it)."""

    __slots__ = ("request", "response", "gone", "send_timeout")

    def __init__(self, request: web.Request, send_timeout: float) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.gone = False
        self.send_timeout = send_timeout

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self, headers: dict[str, str], content_length: int | None) -> None:
        response = web.StreamResponse(status=200, headers=headers)
        if content_length is not None:
            response.content_length = content_length
        self.response = response
        try:
            await response.prepare(self.request)
        except (ConnectionError, OSError):
            self.gone = True

    async def write(self, data: bytes | memoryview) -> None:
        if self.gone or not data or self.response is None:
            return
        await self._deliver(self.response.write(data))

    async def finish(self, last: bytes) -> None:
        await self.write(last)
        if self.gone or self.response is None:
            return
        await self._deliver(self.response.write_eof())

    async def _deliver(self, step: Coroutine[Any, Any, None]) -> None:
        """One write to the client (a task per chunk, as wait_for makes, is avoided); a
        client that left, or accepted nothing for send_timeout, is gone (and the latter
        cut off), while the caller keeps reading: the body may still fill the cache."""
        try:
            async with asyncio.timeout(self.send_timeout):
                await step
        except TimeoutError:     # (an OSError too: first) it stopped reading
            self.gone = True
            abort_client(self.request)
        except (ConnectionError, OSError):
            self.gone = True

    def abort(self) -> None:
        abort_client(self.request)


class _Invalid(AttemptError):
    """A streamed body that arrived but is not a valid answer (a zip over the limits)."""


def abort_client(request: web.Request) -> None:
    """Cut the client connection so a partial body can never look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()
