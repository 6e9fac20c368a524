"""The few private aiohttp and asyncio details the edge relies on, checked at start-up.

Each one is used for a measured reason (named below, with the module that
needs it), and none is part of a public API, so an upgrade may remove one
without a word. pyproject.toml pins aiohttp to the minor series these were
tested on; `verify()` runs when the server starts and refuses to go on,
naming what is missing, rather than let the edge quietly lose a guarantee
(hidden retries past the budget, sendfile, the thin hit path).

Every use goes through a function of this module, so this file is the
whole list.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import http_writer, web, web_protocol

TESTED_AIOHTTP = "3.14"     # the minor series pyproject.toml pins


class CompatError(RuntimeError):
    """The installed aiohttp or Python lacks an internal the edge needs."""


@dataclass(frozen=True)
class Internal:
    """One private detail: what it is, who needs it and why, and how to see it is still there."""

    name: str
    used_by: str
    why: str
    present: Callable[[], bool]


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def _reads(func: Any, attribute: str) -> bool:
    """Whether `func`'s own code reads `attribute` (so overriding or setting it takes effect)."""
    code = getattr(func, "__code__", None)
    return code is not None and attribute in code.co_names


def _has_retry_connection() -> bool:
    return ("_retry_connection" in aiohttp.ClientSession.ATTRS
            and _reads(aiohttp.ClientSession._request, "_retry_connection"))


def _has_sendfile_hook() -> bool:
    method = getattr(web.FileResponse, "_sendfile", None)
    return (inspect.iscoroutinefunction(method)
            and _params(method) == ["self", "request", "fobj", "offset", "count"]
            and any(_reads(f, "_sendfile") for name, f in vars(web.FileResponse).items()
                    if name != "_sendfile"))


def _has_sendfile_fallback() -> bool:
    method = getattr(web.FileResponse, "_sendfile_fallback", None)
    return (inspect.iscoroutinefunction(method)
            and _params(method) == ["self", "writer", "fobj", "offset", "count"])


def _has_writer_compress() -> bool:
    return hasattr(http_writer.StreamWriter, "_compress")


def _has_swappable_handler() -> bool:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        raise NotImplementedError

    server = web.Server(handler, loop=asyncio.new_event_loop())
    try:
        return (getattr(server, "request_handler", None) is handler
                and _reads(web_protocol.RequestHandler.__init__, "request_handler"))
    finally:
        server._loop.close()


def _has_connection_reports() -> bool:
    handler = web_protocol.RequestHandler
    return (_params(web.Server.connection_made) == ["self", "handler", "transport"]
            and _params(web.Server.connection_lost) == ["self", "handler", "exc"]
            and _reads(handler.connection_made, "_manager")
            and _reads(handler.connection_made, "connection_made")
            and _reads(handler.connection_lost, "_manager")
            and _reads(handler.connection_lost, "connection_lost"))


def _has_handler_slot(name: str, method: str) -> Callable[[], bool]:
    """`RequestHandler.<name>` exists and `RequestHandler.<method>` still reads it."""
    def present() -> bool:
        handler = web_protocol.RequestHandler
        return name in handler.__slots__ and _reads(getattr(handler, method), name)
    return present


def _has_get_running_loop() -> bool:
    return callable(getattr(asyncio.events, "_get_running_loop", None))


INTERNALS: tuple[Internal, ...] = (
    Internal("aiohttp.ClientSession._retry_connection", "router/upstream/client.py",
             "turns off aiohttp's hidden re-send of a request whose pooled connection dropped: "
             "the attempt policy owns retries and counts them against the budget",
             _has_retry_connection),
    Internal("aiohttp.web.FileResponse._sendfile", "router/serving/filesend.py",
             "cached files go out with os.sendfile or pooled copies on any loop; aiohttp's own "
             "path falls back to 256 KiB read/write on uvloop", _has_sendfile_hook),
    Internal("aiohttp.web.FileResponse._sendfile_fallback", "router/serving/filesend.py",
             "aiohttp's own body path, kept for TLS and compressed or chunked writers",
             _has_sendfile_fallback),
    Internal("aiohttp.http_writer.StreamWriter._compress", "router/serving/filesend.py",
             "a compressing writer must not get raw file bytes", _has_writer_compress),
    Internal("aiohttp.web.Server.request_handler", "router/runtime/app.py",
             "the thin hit path answers kept hits before routing and middleware",
             _has_swappable_handler),
    Internal("aiohttp.web.Server.connection_made/connection_lost", "router/serving/connections.py",
             "each connection reports to its server as it opens and closes: the connection cap "
             "and the request-head deadline start and end there", _has_connection_reports),
    Internal("aiohttp.web_protocol.RequestHandler._request_count", "router/serving/connections.py",
             "whether a connection has sent a whole request head yet (the header timeout)",
             _has_handler_slot("_request_count", "data_received")),
    Internal("aiohttp.web_protocol.RequestHandler._waiter", "router/serving/connections.py",
             "whether a connection sits idle waiting for a request, so it may be closed to make "
             "room under the connection cap (aiohttp's keep-alive timer asks the same)",
             _has_handler_slot("_waiter", "start")),
    Internal("aiohttp.web_protocol.RequestHandler._request_handler", "router/serving/connections.py",
             "a connection over the cap answers its request with 503 and closes",
             _has_handler_slot("_request_handler", "start")),
    Internal("asyncio.events._get_running_loop", "router/base/logs.py",
             "the log sink asks for the running loop, or None, on every line without raising",
             _has_get_running_loop),
)


def missing() -> list[Internal]:
    """The internals the installed packages no longer provide."""
    found = []
    for internal in INTERNALS:
        try:
            present = internal.present()
        except Exception:            # a changed signature or module counts as missing
            present = False
        if not present:
            found.append(internal)
    return found


def verify() -> None:
    """Raise CompatError naming every missing internal, and what to install instead."""
    gone = missing()
    if gone:
        lines = [f"aiohttp {aiohttp.__version__} lacks internals this edge was built on "
                 f"(tested with aiohttp {TESTED_AIOHTTP}.x; pip install 'aiohttp>={TESTED_AIOHTTP},"
                 f"<3.{int(TESTED_AIOHTTP.split('.')[1]) + 1}'):"]
        lines += [f"  {i.name} (used by {i.used_by}: {i.why})" for i in gone]
        raise CompatError("\n".join(lines))


# -- the uses ---------------------------------------------------------------

def disable_hidden_retry(session: aiohttp.ClientSession) -> None:
    """Stop aiohttp re-sending an idempotent request once when its pooled connection drops."""
    session._retry_connection = False


def writer_compresses(writer: Any) -> bool:
    """Whether aiohttp's writer compresses what is written to it (then raw bytes won't do)."""
    return getattr(writer, "_compress", None) is not None


ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def swap_request_handler(server: web.Server, make: Callable[[ServerHandler], ServerHandler]) -> None:
    """Put `make(current handler)` in front of a low-level server's handler.

    Takes effect for connections accepted afterwards: each connection copies
    the handler when it is made.
    """
    server.request_handler = make(server.request_handler)


ConnectionHook = Callable[[web_protocol.RequestHandler, Any], None]


def watch_connections(server: web.Server, made: ConnectionHook, lost: ConnectionHook) -> None:
    """Call `made(handler, transport)` as each connection opens and `lost(handler, exc)` as it
    closes, after the server's own bookkeeping. Each connection calls its server's methods,
    so setting them on this one server's instance is enough."""
    server_made, server_lost = server.connection_made, server.connection_lost

    def connection_made(handler: web_protocol.RequestHandler, transport: Any) -> None:
        server_made(handler, transport)
        made(handler, transport)

    def connection_lost(handler: web_protocol.RequestHandler,
                        exc: BaseException | None = None) -> None:
        server_lost(handler, exc)
        lost(handler, exc)

    server.connection_made = connection_made        # type: ignore[method-assign]
    server.connection_lost = connection_lost        # type: ignore[method-assign]


def request_heads_seen(handler: web_protocol.RequestHandler) -> int:
    """How many whole request heads (or malformed ones) the connection has sent so far."""
    return handler._request_count


def waiting_for_request(handler: web_protocol.RequestHandler) -> bool:
    """Whether the connection is idle: no request being answered, none queued, waiting for one."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def answer_connection_with(handler: web_protocol.RequestHandler, respond: ServerHandler) -> None:
    """Let `respond` answer every request this one connection sends, instead of the server's
    handler (a connection accepted over the cap gets a 503)."""
    handler._request_handler = respond


def _running_loop_or_none_slowly() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# The running loop or None, without raising: asyncio's own C helper where it exists
# (verify() reports it missing; importing this module must not fail over it).
running_loop_or_none: Callable[[], asyncio.AbstractEventLoop | None] = getattr(
    asyncio.events, "_get_running_loop", _running_loop_or_none_slowly)
