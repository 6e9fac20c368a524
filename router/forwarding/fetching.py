"""What the cache and the forwarder exchange: a plan, its attempts, a fetched answer.

Plain data and the `Fetcher` protocol the cache depends on, so that the
cache never imports the forwarder (router/forwarding/forwarder.py implements `Fetcher`;
a test can pass an in-memory one). Must not import goproxy_router.forwarding.forwarder nor
router.artifacts.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from goproxy_router.config.schema import Hedge, Retry, Timeouts
from goproxy_router.protocol.integrity import SMALL_KINDS, BodyVerdict
from goproxy_router.upstream.client import UpstreamResponse
from goproxy_router.upstream.stats import UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

if TYPE_CHECKING:
    from goproxy_router.forwarding.stream import ClientSink
    from goproxy_router.storage.entry import CacheEntry
    from goproxy_router.storage.writer import CacheWriter


class Outcome(enum.StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    BROKEN = "broken"
    INVALID = "invalid"
    DOUBTFUL = "doubtful"      # valid, kept only in case no upstream has better (protocol/integrity.py)
    CANCELLED = "cancelled"


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
    kind: str = "sumdb"            # list, info, mod, zip, latest or sumdb
    module: str | None = None
    version: str | None = None            # of .info/.mod/.zip: a .mod must fit module@version
    expected_version: str | None = None   # a canonical .info must report this Version
    retry: Retry = field(default_factory=Retry)
    hedge: Hedge = field(default_factory=Hedge)
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # policy decisions, e.g. budget refusals
    response_headers: dict[str, str] = field(default_factory=dict)   # added to a 200
    started: float = field(default_factory=time.monotonic)
    # A body check of the plan's own (a cached /sumdb/ answer): the body is then read whole
    # and judged by it rather than by the kind's rules (a problem fails the attempt, a doubt
    # asks the other upstreams first).
    check: Callable[[bytes], BodyVerdict] | None = None

    @property
    def reads_whole_body(self) -> bool:
        return (self.kind in SMALL_KINDS or self.check is not None) and self.method == "GET"


@dataclass(slots=True)
class Fetched:
    """A good answer whose status line has not been sent yet."""

    target: UpstreamTarget
    stats: UpstreamStats
    response: UpstreamResponse
    body: bytes | None             # the validated body of a small answer; None: stream it
    headers_at: float = 0.0        # seconds from sending to the response headers


class Fetcher(Protocol):
    """What the cache needs from the forwarding side (router/forwarding/forwarder.py's `Forwarder`)."""

    async def fetch(self, plan: ForwardPlan) -> Fetched | None:
        """A good answer whose status line is not sent yet, or None (see `failure_response`)."""

    def answer_headers(self, plan: ForwardPlan, fetched: Fetched) -> dict[str, str]:
        """The headers a client gets with the fetched 200."""

    def note_ok(self, plan: ForwardPlan, fetched: Fetched) -> None:
        """Record that a small answer (its body read whole) was taken."""

    async def pump(self, plan: ForwardPlan, fetched: Fetched, client: ClientSink | None,
                   cache: CacheWriter | None, headers: dict[str, str]) -> CacheEntry | None:
        """Stream a 200's body to the client and/or the cache; the committed entry or None."""

    async def forward(self, request: web.Request, plan: ForwardPlan) -> web.StreamResponse:
        """Fetch and answer the client, keeping nothing."""


def failure_response(plan: ForwardPlan) -> web.Response:
    """404 when every upstream said not found; 504 when the failures were timeouts; else 502."""
    outcomes = {a.outcome for a in plan.attempts} - {Outcome.CANCELLED}
    deadline_hit = any(note.startswith("deadline") for note in plan.notes)
    if outcomes <= {Outcome.NOT_FOUND} and not plan.notes:
        status, summary = 404, "not found on any upstream"
    elif outcomes - {Outcome.NOT_FOUND} <= {Outcome.TIMEOUT} and (
            Outcome.TIMEOUT in outcomes or deadline_hit):
        status, summary = 504, "upstreams timed out"
    else:
        status, summary = 502, "no upstream could answer"
    lines = [f"goproxy-router: {plan.what}: {summary} (route {plan.route}, request {plan.request_id})"]
    lines += [f"  {attempt.describe()}" for attempt in plan.attempts]
    lines += [f"  {note}" for note in plan.notes]
    return text_response(status, "\n".join(lines) + "\n")


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """A short text/plain answer: what the go command prints to the developer."""
    return web.Response(status=status, text=text, content_type="text/plain",
                        charset="utf-8", headers=headers)
