"""Client connections: a deadline for the first request head, a cap, and the open-files limit.

aiohttp on its own keeps a connection that never sends a request for its
keep-alive timeout (an hour by default), so a few hundred silent clients
could hold every file descriptor the process has, and then nothing else, not
even a health probe, gets accepted. The gate adds what nginx has:

- `limits.header_timeout` (nginx's client_header_timeout): a connection that
  has not sent a whole request head this long after it opened is closed.
  After each answer, aiohttp's keep-alive timer (`limits.keepalive_timeout`,
  which bytes of a partial head do not reset) bounds the wait for the whole
  next head, so a head dribbled out byte by byte is cut off either way.
- `limits.max_connections` (worker_connections): over it, an idle connection
  (one waiting for a request, oldest first: nginx's "reusable" ones) is
  closed to make room, so silent clients cannot lock real ones out; when
  every connection is busy, the new one is answered `503` with
  `Connection: close`, or closed if even the refusals pile up.
- At start-up the soft open-files limit is raised to the hard one, and the
  cap lowered to fit under it, keeping a reserve for upstream sockets, cache
  files, probes and logs.

The hooks sit on the connection's open and close, never on a request: the
hit path pays nothing for them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from goproxy_router.base import compat
from goproxy_router.base.logs import log_event
from goproxy_router.config.schema import Limits

log = logging.getLogger("router.connections")

RESERVE_SHARE = 4            # a quarter of the open-files limit is kept from client connections,
RESERVE_BOUNDS = (64, 4096)  # at least 64 and at most 4096 descriptors
UNBOUNDED_FILES = 1 << 20    # what the soft limit is raised to when the hard one is "unlimited"
REFUSAL_GRACE = 1.0          # seconds a refused connection has to send the request its 503 answers
REFUSING_AT_ONCE = 64        # refused connections waiting for their 503; beyond, closed unanswered
EVICT_SCAN = 32              # connections looked at, oldest first, for an idle one to close
WARN_EVERY = 60.0            # seconds between "connection limit reached" log lines
REFUSAL = "goproxy-router: too many open connections; try again shortly\n"


@dataclass(frozen=True, slots=True)
class FileLimit:
    """The process's RLIMIT_NOFILE: the soft limit found at start-up, and the one in force."""

    before: int
    soft: int
    hard: int        # resource.RLIM_INFINITY when unlimited

    def hard_text(self) -> str:
        return "unlimited" if self.hard == resource.RLIM_INFINITY else str(self.hard)


def raise_open_files_limit() -> FileLimit:
    """Raise the soft open-files limit to the hard one (as the Go runtime and nginx's
    worker_rlimit_nofile do); keep it where the system refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNBOUNDED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FileLimit(soft, now, hard)


def connection_cap(max_connections: int, open_files: int) -> int:
    """`max_connections`, lowered to leave the reserve of descriptors free."""
    if open_files == resource.RLIM_INFINITY:
        return max_connections
    low, high = RESERVE_BOUNDS
    reserve = min(max(open_files // RESERVE_SHARE, low), high)
    return max(1, min(max_connections, open_files - reserve))


def log_limits(limits: Limits, files: FileLimit, cap: int) -> None:
    """The numbers an operator needs at start-up; a warning when the cap had to come down."""
    log_event(log, logging.INFO, "connection limits", open_files=files.soft,
              open_files_at_start=files.before, open_files_hard=files.hard_text(),
              max_connections=cap, header_timeout=limits.header_timeout,
              keepalive_timeout=limits.keepalive_timeout)
    if cap < limits.max_connections:
        log_event(log, logging.WARNING,
                  "the open-files limit is too low for limits.max_connections; accepting fewer",
                  max_connections=limits.max_connections, accepted=cap, open_files=files.soft,
                  open_files_hard=files.hard_text(),
                  fix="raise the hard limit (systemd LimitNOFILE=, ulimit -Hn, docker --ulimit)")


@dataclass(frozen=True, slots=True)
class ConnectionCounts:
    """What /metrics shows of the gate."""

    open: int
    limit: int
    refused: int
    header_timeouts: int
    evicted: int


async def _answer_refused(request: web.BaseRequest) -> web.StreamResponse:
    response = web.Response(status=503, text=REFUSAL, headers={"Retry-After": "1"})
    response.force_close()
    return response


class ConnectionGate:
    """Admits, times and caps the connections of one low-level aiohttp server."""

    def __init__(self, limit: int, header_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self._loop = loop
        # Admitted connections, oldest first, each with its request-head deadline.
        self._admitted: OrderedDict[RequestHandler, asyncio.TimerHandle] = OrderedDict()
        self._refusing: dict[RequestHandler, asyncio.TimerHandle] = {}
        self.refused = 0
        self.header_timeouts = 0
        self.evicted = 0
        self._warned_at = -WARN_EVERY

    def install(self, server: web.Server) -> None:
        """Watch every connection `server` accepts from now on."""
        compat.watch_connections(server, self._made, self._lost)

    def update(self, limit: int, header_timeout: float) -> None:
        """New limits (a reload) for connections accepted from now on."""
        self.limit = limit
        self.header_timeout = header_timeout

    def counts(self) -> ConnectionCounts:
        return ConnectionCounts(len(self._admitted) + len(self._refusing), self.limit,
                                self.refused, self.header_timeouts, self.evicted)

    def _made(self, handler: RequestHandler, transport: object) -> None:
        if len(self._admitted) >= self.limit and not self._make_room():
            self._refuse(handler)
            return
        self._admitted[handler] = self._loop.call_later(self.header_timeout, self._head_due, handler)

    def _lost(self, handler: RequestHandler, exc: object) -> None:
        timer = self._admitted.pop(handler, None) or self._refusing.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _head_due(self, handler: RequestHandler) -> None:
        """The first request head is late: close. Later ones are aiohttp's keep-alive timer's."""
        if handler in self._admitted and compat.request_heads_seen(handler) == 0:
            del self._admitted[handler]
            self.header_timeouts += 1
            handler.force_close()

    def _make_room(self) -> bool:
        """Close one idle connection, oldest first; busy ones go to the back of the line."""
        self._warn("closing idle connections to make room")
        for _ in range(min(EVICT_SCAN, len(self._admitted))):
            handler, timer = self._admitted.popitem(last=False)
            if compat.waiting_for_request(handler):
                timer.cancel()
                self.evicted += 1
                handler.force_close()
                return True
            self._admitted[handler] = timer
        return False

    def _refuse(self, handler: RequestHandler) -> None:
        """Answer the connection's request with 503 and close; close it unanswered if it
        sends none within the grace, or if too many refusals are already waiting."""
        self.refused += 1
        self._warn("every connection is busy; refusing new ones with 503")
        if len(self._refusing) >= REFUSING_AT_ONCE:
            handler.force_close()
            return
        compat.answer_connection_with(handler, _answer_refused)
        self._refusing[handler] = self._loop.call_later(
            min(self.header_timeout, REFUSAL_GRACE), handler.force_close)

    def _warn(self, what: str) -> None:
        now = self._loop.time()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log_event(log, logging.WARNING, f"connection limit reached: {what}",
                      max_connections=self.limit, refused=self.refused, evicted=self.evicted)
