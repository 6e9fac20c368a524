"""The attempt policy: try a route's upstreams in order and stream the first good answer.

Only 200 is success in the GOPROXY protocol. 404/410 mean "not here", so the
next upstream is asked; connect errors, timeouts before headers and any other
status are failures, and the next upstream is asked too. Once the status line
has gone to the client there is no way back: if the body then breaks, the
client connection is aborted so the go command sees an error, never a
complete-looking truncated 200.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from router.config import Timeouts
from router.logs import log_event
from router.stats import StatsRegistry, UpstreamStats
from router.upstream import (
    AttemptError,
    AttemptTimeout,
    UpstreamClient,
    UpstreamResponse,
    UpstreamTarget,
)

log = logging.getLogger("router.forward")

# Headers copied from an upstream answer. An allow-list: hop-by-hop headers,
# cookies and server identity of the upstream never reach the client.
PASSED_HEADERS = ("Content-Type", "Content-Encoding", "ETag", "Last-Modified")
ERROR_EXCERPT = 300


class Outcome(enum.StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one upstream did for one request, in words a developer can act on."""

    upstream: str
    outcome: Outcome
    elapsed: float
    status: int | None = None
    detail: str = ""

    def describe(self) -> str:
        return f"{self.upstream}: {self.detail} ({self.elapsed:.2f}s)"


@dataclass(slots=True)
class ForwardPlan:
    """Everything needed to fetch one protocol path from a route's upstreams."""

    request_id: str
    route: str
    what: str                      # e.g. "example.com/m@v1.2.3 .mod", for messages
    path: str                      # escaped upstream path, e.g. "/example.com/m/@v/v1.2.3.mod"
    method: str
    targets: Sequence[UpstreamTarget]
    timeouts: Timeouts
    attempts: list[Attempt] = field(default_factory=list)


class Forwarder:
    """Sends a plan's requests through the shared client and streams the winner.

    Every attempt's outcome is reported to the upstream's live stats: time to
    headers as a latency sample, failures as penalty samples for the breaker.
    """

    def __init__(self, client: UpstreamClient, registry: StatsRegistry) -> None:
        self._client = client
        self._registry = registry

    async def forward(self, request: web.Request, plan: ForwardPlan) -> web.StreamResponse:
        for target in plan.targets:
            stats = self._registry.get(target.name, target.base_url)
            stats.begin()
            try:
                response = await self._try(target, plan, stats)
                if response is not None:
                    return await self._stream(request, plan, target, response, stats)
            finally:
                stats.end()
        return failure_response(plan)

    async def _try(self, target: UpstreamTarget, plan: ForwardPlan,
                   stats: UpstreamStats) -> UpstreamResponse | None:
        """One attempt up to the response headers; None (and a recorded Attempt) unless 200."""
        started = time.monotonic()
        try:
            response = await self._client.open(target, plan.path, plan.method, plan.timeouts)
        except AttemptTimeout as exc:
            self._record(plan, target, stats, Outcome.TIMEOUT, started, None, str(exc))
            return None
        except AttemptError as exc:
            outcome = Outcome.CONNECT_ERROR if str(exc).startswith("connect") else Outcome.BROKEN
            self._record(plan, target, stats, outcome, started, None, str(exc))
            return None
        if response.status == 200:
            stats.record_success(time.monotonic() - started)
            return response
        excerpt = "" if plan.method == "HEAD" else await response.read_text(ERROR_EXCERPT)
        response.close()
        status_line = f"{response.status} {response.reason}".strip()
        if response.status in (404, 410):
            detail = f"not found ({status_line})" + (f": {excerpt}" if excerpt else "")
            self._record(plan, target, stats, Outcome.NOT_FOUND, started, response.status, detail)
        else:
            detail = f"HTTP {status_line}" + (f": {excerpt}" if excerpt else "")
            self._record(plan, target, stats, Outcome.HTTP_ERROR, started, response.status, detail)
        return None

    def _record(self, plan: ForwardPlan, target: UpstreamTarget, stats: UpstreamStats,
                outcome: Outcome, started: float, status: int | None, detail: str) -> None:
        attempt = Attempt(target.name, outcome, time.monotonic() - started, status, detail)
        plan.attempts.append(attempt)
        if outcome is Outcome.NOT_FOUND:
            stats.record_success(attempt.elapsed)    # it answered; "not here" is healthy
        else:
            stats.record_failure(attempt.elapsed, detail)
        level = logging.INFO if outcome is Outcome.NOT_FOUND else logging.WARNING
        log_event(log, level, "upstream attempt failed", request_id=plan.request_id,
                  route=plan.route, upstream=target.name, path=plan.path,
                  attempt=len(plan.attempts), outcome=outcome.value, status=status,
                  timeout=plan.timeouts.headers if outcome is Outcome.TIMEOUT else None,
                  elapsed=round(attempt.elapsed, 4), error=detail)

    async def _stream(self, request: web.Request, plan: ForwardPlan, target: UpstreamTarget,
                      upstream: UpstreamResponse, stats: UpstreamStats) -> web.StreamResponse:
        """Copy a 200 to the client chunk by chunk, awaiting each write (backpressure)."""
        started = time.monotonic()
        response = web.StreamResponse(status=200)
        for name in PASSED_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        response.headers["X-Goproxy-Upstream"] = target.name
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        if plan.method == "HEAD":
            upstream.release()
            await response.write_eof()
            plan.attempts.append(Attempt(target.name, Outcome.OK, time.monotonic() - started, 200, "ok"))
            return response
        sent = 0
        try:
            async for chunk in upstream.chunks():
                sent += len(chunk)
                await response.write(chunk)
            expected = upstream.content_length
            if expected is not None and sent != expected:
                raise AttemptError(f"body ended after {sent} of {expected} bytes")
        except (AttemptError, AttemptTimeout) as exc:
            upstream.close()
            self._record(plan, target, stats, Outcome.BROKEN, started, 200, f"{exc} after {sent} bytes")
            abort_client(request)
            return response
        except (ConnectionError, OSError):
            # The client went away: drop the upstream connection, nothing to report to it.
            upstream.close()
            raise
        upstream.release()
        await response.write_eof()
        plan.attempts.append(Attempt(target.name, Outcome.OK, time.monotonic() - started, 200, "ok"))
        return response


def abort_client(request: web.Request) -> None:
    """Cut the client connection so a partial body can never look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def failure_response(plan: ForwardPlan) -> web.Response:
    """404 when every upstream said not found; 504 when all failures were timeouts; else 502."""
    outcomes = {a.outcome for a in plan.attempts}
    if outcomes <= {Outcome.NOT_FOUND}:
        status, summary = 404, "not found on any upstream"
    elif outcomes - {Outcome.NOT_FOUND} == {Outcome.TIMEOUT}:
        status, summary = 504, "upstreams timed out"
    else:
        status, summary = 502, "no upstream could answer"
    lines = [f"goproxy-router: {plan.what}: {summary} (route {plan.route}, request {plan.request_id})"]
    lines += [f"  {attempt.describe()}" for attempt in plan.attempts]
    return text_response(status, "\n".join(lines) + "\n")


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """A short text/plain answer: what the go command prints to the developer."""
    return web.Response(status=status, text=text, content_type="text/plain",
                        charset="utf-8", headers=headers)
