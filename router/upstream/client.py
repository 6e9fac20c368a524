"""One attempt against one upstream: the shared client session and its timeouts.

There is deliberately no total timeout: a 500 MB zip over a slow link may take
minutes and must not be cut. Instead each phase is bounded: connect, time to
response headers, and the idle gap between body chunks. Those clocks run
only while the request is the upstream's business: time spent waiting for a
connection of the edge's own pool (`pool.per_upstream`) is measured apart
(router/upstream/pool.py) and never counted against the upstream. Who a
request goes to, with which credentials, is an `UpstreamTarget`
(router/upstream/targets.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from goproxy_router import __version__
from goproxy_router.base.compat import disable_hidden_retry
from goproxy_router.config.schema import Timeouts
from goproxy_router.upstream.decoding import BodyDecoder, DecodeError, coding_of
from goproxy_router.upstream.pool import PoolObserver, PoolTiming, Queueing, trace_config
from goproxy_router.upstream.redirects import Hop, RedirectPolicy, RedirectRefused, Resolver, system_resolve
from goproxy_router.upstream.targets import UpstreamTarget

USER_AGENT = f"goproxy-router/{__version__}"
# The response body buffer's low-water mark (aiohttp pauses the socket above twice
# this). aiohttp 3.14's default is 256 KiB, so with uvloop handing over up to
# 250 KB per read, a paused body held ~750 KB per upstream connection; at 64 KiB
# it pauses after one read (~250 KB), at the same throughput.
READ_BUFSIZE = 64 * 1024
MAX_REDIRECTS = 3
# The most a compressed body may decode to when no smaller limit is asked for (small
# answers are read with theirs): the go command's own limit for a module zip.
MAX_DECODED = 500 << 20
DEFAULT_POOL = 64              # connections per upstream host, when the config says nothing
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class AttemptTimeout(Exception):
    """A phase of an attempt ran past its limit; `phase` says which."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"timeout after {seconds:g}s {phase}")
        self.phase = phase
        self.seconds = seconds


class AttemptError(Exception):
    """The upstream could not be reached or broke the exchange."""


class UpstreamResponse:
    """Response headers in hand; the body is read on demand, chunk by chunk.

    A body the upstream compressed anyway (despite `Accept-Encoding: identity`)
    is decoded here as it streams (router/upstream/decoding.py), within a limit on its
    decoded size; `headers` and `content_length` then describe the decoded body
    (no Content-Encoding, Content-Length or ETag: those were the coded form's),
    so nothing after this sees the coding.
    """

    def __init__(self, response: aiohttp.ClientResponse, url: URL, read_timeout: float,
                 coding: str | None = None) -> None:
        self._response = response
        self.url = url
        self.status = response.status
        self.reason = response.reason or ""
        self._read_timeout = read_timeout
        self._decoder = BodyDecoder(coding, MAX_DECODED) if coding is not None else None
        headers: CIMultiDictProxy[str] = response.headers
        if coding is not None:
            decoded = CIMultiDict(headers)
            for name in ("Content-Encoding", "Content-Length", "ETag"):   # ETag: of the coded form
                decoded.popall(name, None)
            headers = CIMultiDictProxy(decoded)
        self.headers = headers

    @property
    def content_length(self) -> int | None:
        return None if self._decoder is not None else self._response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the (decoded) body; raise AttemptTimeout on an idle gap, AttemptError
        on a break or a body that does not decode within the limit."""
        decoder = self._decoder
        while True:
            chunk = await self.read_chunk(self._read_timeout)
            if decoder is None:
                if not chunk:
                    return
                yield chunk
                continue
            try:
                if not chunk:
                    decoder.finish()
                    return
                for n, piece in enumerate(decoder.feed(chunk)):
                    if n:
                        await asyncio.sleep(0)    # one inflate step per turn of the loop
                    yield piece
            except DecodeError as exc:
                raise AttemptError(str(exc)) from None

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of the body as it came (b"" at its end), for a caller that
        chooses each wait: AttemptTimeout after `timeout` s of silence (the body may
        still be read on after it), AttemptError on a break."""
        try:
            async with asyncio.timeout(timeout):
                return await self._response.content.readany()
        except TimeoutError:
            raise AttemptTimeout("reading the body", timeout) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise AttemptError(f"body broke off: {_describe(exc)}") from None

    async def read_all(self, limit: int) -> bytes:
        """The whole body (for small answers), refusing one larger than `limit`
        (decoded, for a compressed one)."""
        if self.content_length is not None and self.content_length > limit:
            raise AttemptError(f"body of {self.content_length} bytes exceeds the {limit}-byte limit")
        if self._decoder is not None:
            self._decoder.limit = min(self._decoder.limit, limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise AttemptError(f"body exceeds the {limit}-byte limit")
            parts.append(chunk)
        body = b"".join(parts)
        if self.content_length is not None and len(body) != self.content_length:
            raise AttemptError(f"body ended after {len(body)} of {self.content_length} bytes")
        return body

    async def read_text(self, limit: int) -> str:
        """A short, printable excerpt of the body, for error messages."""
        data = b""
        try:
            async with asyncio.timeout(self._read_timeout):
                while len(data) < limit:
                    chunk = await self._response.content.read(limit - len(data))
                    if not chunk:
                        break
                    data += chunk
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        text = data.decode("utf-8", "replace")
        return " ".join("".join(c if c.isprintable() else " " for c in text).split())

    def close(self) -> None:
        """Drop the connection: used when the body is abandoned half-read."""
        self._response.close()

    def release(self) -> None:
        """Return a fully read connection to the pool."""
        self._response.release()


class UpstreamClient:
    """Owns the one aiohttp ClientSession shared by every request to every upstream.

    `limit_per_host` bounds the connections to one upstream host (the pool);
    a request beyond it waits for one, and that wait is the edge's, not the
    upstream's: timeouts start when it ends, and it is reported to `observer`.
    """

    def __init__(self, *, connection_limit: int = 0, limit_per_host: int = DEFAULT_POOL,
                 observer: PoolObserver | None = None,
                 resolver: Resolver = system_resolve) -> None:
        self._connection_limit = connection_limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None
        self.observer = observer or PoolObserver()
        self._resolver = resolver

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._connection_limit,
            limit_per_host=self._limit_per_host,
            ttl_dns_cache=60,
            keepalive_timeout=10,
            enable_cleanup_closed=True,
        )
        # auto_decompress=False: a compressed body is decoded by UpstreamResponse, bounded.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFSIZE,
            trace_configs=[trace_config()],
        )
        # aiohttp silently re-sends an idempotent request once when the connection
        # drops before the response; the attempt policy owns retries (and counts
        # them against the budget), so that hidden one is turned off. Pooled
        # connections are kept only briefly (keepalive_timeout) so that a stale
        # one, closed by the upstream meanwhile, is rare.
        disable_hidden_retry(self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, target: UpstreamTarget, path: str, method: str, timeouts: Timeouts,
        timing: PoolTiming | None = None, headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait (bounded) for its response headers.

        Redirects are followed here rather than by aiohttp, at most
        MAX_REDIRECTS of them, and only where router/upstream/redirects.py allows (the
        upstream's own origin, or one its `redirects` lists, never into the
        edge's own network); the upstream's own headers (its credentials) go
        only to its own origin. The headers timeout does not run while the
        request waits for a pooled connection; `timing` is told how long it did.
        `headers` go with every hop (a resume's Range and If-Range).
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        timing = timing if timing is not None else PoolTiming()
        url = target.url_for(path)
        policy = RedirectPolicy(url, target.redirects, self._resolver)
        hop = Hop(url)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        queueing: Queueing | None = None
        try:
            async with asyncio.timeout(timeouts.headers) as deadline:
                queueing = Queueing(target.name, timing, self.observer, deadline)
                for _ in range(MAX_REDIRECTS + 1):
                    response = await self._send(target, hop, method, timeout, queueing,
                                                headers)
                    location = response.headers.get("Location")
                    if response.status not in _REDIRECTS or not location:
                        return self._answer(response, hop.url, timeouts)
                    response.release()
                    hop = await policy.next_hop(hop.url, location)
                    if method != "HEAD" and response.status == 303:
                        method = "GET"
                raise AttemptError(f"more than {MAX_REDIRECTS} redirects")
        except RedirectRefused as exc:
            raise AttemptError(f"refused: {exc}") from None
        except TimeoutError:
            raise AttemptTimeout("waiting for headers", timeouts.headers) from None
        except aiohttp.ClientConnectorError as exc:
            raise AttemptError(f"connect failed: {_describe(exc.os_error)}") from None
        except (aiohttp.ClientError, ConnectionError, OSError, ValueError) as exc:
            raise AttemptError(_describe(exc)) from None
        finally:
            if queueing is not None:
                queueing.settle()      # aiohttp does not say when a wait ends in an error

    async def _send(self, target: UpstreamTarget, hop: Hop, method: str,
                    timeout: aiohttp.ClientTimeout, queueing: Queueing,
                    extra: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """One request of a redirect chain: by name, or to the addresses a cross-origin
        redirect was checked against (pinned), tried in turn."""
        assert self._session is not None
        headers = CIMultiDict({"Accept-Encoding": "identity"})
        if hop.same_origin:
            headers.update(target.headers)
        if extra:
            headers.update(extra)
        if not hop.addresses:
            return await self._session.request(
                method, hop.url, headers=headers, allow_redirects=False, timeout=timeout,
                trace_request_ctx=queueing)
        headers["Host"] = hop.url.host_port_subcomponent or ""
        # Not kept for reuse: the pool knows a connection by address, not by name.
        headers["Connection"] = "close"
        server_name = hop.url.host if hop.url.scheme == "https" else None
        failure: aiohttp.ClientConnectorError | None = None
        for address in hop.addresses:
            try:
                return await self._session.request(
                    method, hop.url.with_host(address), headers=headers, allow_redirects=False,
                    timeout=timeout, server_hostname=server_name, trace_request_ctx=queueing)
            except aiohttp.ClientConnectorError as exc:
                failure = exc
        assert failure is not None
        raise failure

    @staticmethod
    def _answer(response: aiohttp.ClientResponse, url: URL,
                timeouts: Timeouts) -> UpstreamResponse:
        """The final response; a 200 in a coding that cannot be decoded is a failed attempt."""
        coding: str | None = None
        if response.status == 200:
            try:
                coding = coding_of(response.headers.get("Content-Encoding"))
            except DecodeError as exc:
                response.close()
                raise AttemptError(str(exc)) from None
        return UpstreamResponse(response, url, timeouts.read, coding)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a network error."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "incomplete body"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
