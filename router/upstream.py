"""One attempt against one upstream: the shared client session and its timeouts.

There is deliberately no total timeout: a 500 MB zip over a slow link may take
minutes and must not be cut. Instead each phase is bounded: connect, time to
response headers, and the idle gap between body chunks.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr
from yarl import URL

from router import __version__
from router.compat import disable_hidden_retry
from router.config import Config, SumDB, Timeouts, Upstream
from router.redact import secret_values

USER_AGENT = f"goproxy-router/{__version__}"
# The response body buffer's low-water mark (aiohttp pauses the socket above twice
# this). aiohttp 3.14's default is 256 KiB, so with uvloop handing over up to
# 250 KB per read, a paused body held ~750 KB per upstream connection; at 64 KiB
# it pauses after one read (~250 KB), at the same throughput.
READ_BUFSIZE = 64 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class AttemptTimeout(Exception):
    """A phase of an attempt ran past its limit; `phase` says which."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"timeout after {seconds:g}s {phase}")
        self.phase = phase
        self.seconds = seconds


class AttemptError(Exception):
    """The upstream could not be reached or broke the exchange."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """A named upstream as the sender sees it: base URL, its own headers, and the
    secrets among them (what `redact` must scrub from anything this upstream says).

    `for_url` is the one place an upstream's request is built, for serving,
    active probes, checksum databases and `check` alike.
    """

    name: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def for_url(cls, name: str, url: str,
                headers: Mapping[str, SecretStr | str] | None = None) -> UpstreamTarget:
        """Credentials in the URL (user:password@) become a Basic Authorization header:
        the base URL itself, which appears in logs and pages, then carries none."""
        sent = {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                for k, v in (headers or {}).items()}
        parsed = URL(url)
        in_url: list[str] = []
        if parsed.user is not None or parsed.password is not None:
            user, password = parsed.user or "", parsed.password or ""
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            sent.setdefault("Authorization", f"Basic {token}")
            # The user too: it may be the token itself (https://TOKEN@host).
            in_url = [v for v in (user, password, parsed.raw_user, parsed.raw_password) if v]
            parsed = parsed.with_user(None)
        return cls(name=name, base_url=str(parsed).rstrip("/"), headers=sent,
                   secrets=secret_values([*sent.values(), *in_url]))

    @classmethod
    def from_config(cls, name: str, upstream: Upstream) -> UpstreamTarget:
        return cls.for_url(name, upstream.url, upstream.headers)

    def url_for(self, path: str) -> URL:
        """Join the base URL (which may carry a path prefix) and an escaped path."""
        return URL(self.base_url + path, encoded=True)


def sumdb_targets(db: SumDB) -> tuple[UpstreamTarget, ...]:
    """A checksum database's URL and its mirrors, named as logs and errors name them."""
    return tuple(UpstreamTarget.for_url(db.name if i == 0 else f"{db.name} mirror {i}", url)
                 for i, url in enumerate((db.url, *db.mirrors)))


def config_secrets(config: Config) -> tuple[str, ...]:
    """Every secret of every upstream and checksum database URL in `config`, longest first."""
    found = {secret for name, upstream in config.upstreams.items()
             for secret in UpstreamTarget.from_config(name, upstream).secrets}
    found.update(secret for db in config.sumdb for target in sumdb_targets(db)
                 for secret in target.secrets)
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


class UpstreamResponse:
    """Response headers in hand; the body is read on demand, chunk by chunk."""

    def __init__(self, response: aiohttp.ClientResponse, url: URL, read_timeout: float) -> None:
        self._response = response
        self.url = url
        self.status = response.status
        self.reason = response.reason or ""
        self.headers: CIMultiDictProxy[str] = response.headers
        self._read_timeout = read_timeout

    @property
    def content_length(self) -> int | None:
        return self._response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body; raise AttemptTimeout on an idle gap, AttemptError on a break."""
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise AttemptTimeout("reading the body", self._read_timeout) from None
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise AttemptError(f"body broke off: {_describe(exc)}") from None
            if not chunk:
                return
            yield chunk

    async def read_all(self, limit: int) -> bytes:
        """The whole body (for small answers), refusing one larger than `limit`."""
        if self.content_length is not None and self.content_length > limit:
            raise AttemptError(f"body of {self.content_length} bytes exceeds the {limit}-byte limit")
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
    """Owns the one aiohttp ClientSession shared by every request to every upstream."""

    def __init__(self, *, connection_limit: int = 0, limit_per_host: int = 64) -> None:
        self._connection_limit = connection_limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._connection_limit,
            limit_per_host=self._limit_per_host,
            ttl_dns_cache=60,
            keepalive_timeout=10,
            enable_cleanup_closed=True,
        )
        # auto_decompress=False: bodies pass through exactly as the upstream sent them.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFSIZE,
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
        self, target: UpstreamTarget, path: str, method: str, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Send one request and wait (bounded) for its response headers.

        Redirects are followed here rather than by aiohttp so that the
        upstream's own headers (its credentials) are sent only to its own
        origin, never to wherever a redirect points.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        url = target.url_for(path)
        origin = url.origin()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        try:
            async with asyncio.timeout(timeouts.headers):
                for _ in range(MAX_REDIRECTS + 1):
                    headers = CIMultiDict({"Accept-Encoding": "identity"})
                    if url.origin() == origin:
                        headers.update(target.headers)
                    response = await self._session.request(
                        method, url, headers=headers, allow_redirects=False, timeout=timeout
                    )
                    location = response.headers.get("Location")
                    if response.status not in _REDIRECTS or not location:
                        return UpstreamResponse(response, url, timeouts.read)
                    response.release()
                    url = url.join(URL(location))
                    if method != "HEAD" and response.status == 303:
                        method = "GET"
                raise AttemptError(f"more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            raise AttemptTimeout("waiting for headers", timeouts.headers) from None
        except aiohttp.ClientConnectorError as exc:
            raise AttemptError(f"connect failed: {_describe(exc.os_error)}") from None
        except (aiohttp.ClientError, ConnectionError, OSError, ValueError) as exc:
            raise AttemptError(_describe(exc)) from None


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
