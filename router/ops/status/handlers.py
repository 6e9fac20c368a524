"""The status page over HTTP: GET /_router/status (HTML) and /_router/status.json.

`setup_status()` registers both on an aiohttp app, and a cleanup context that
runs the history sampler while the app runs. Every answer is `no-store`; the
HTML carries the page's Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from goproxy_router.ops.status.history import StatusHistory
from goproxy_router.ops.status.page import CONTENT_SECURITY_POLICY, render_status
from goproxy_router.ops.status.snapshot import Snapshot, build_snapshot

if TYPE_CHECKING:
    from goproxy_router.serving.edge import EdgeState

STATUS_PATH = "/_router/status"
STATUS_JSON_PATH = "/_router/status.json"


# -- HTTP ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where the handlers read the live state and the cache counters from."""

    get_state: Callable[[], EdgeState]
    get_cache_info: Callable[[], dict[str, Any] | None]


STATUS_HISTORY = web.AppKey("status_history", StatusHistory)
STATUS_SOURCES = web.AppKey("status_sources", StatusSources)

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
             "Referrer-Policy": "no-referrer"}


def _snapshot(request: web.Request) -> Snapshot:
    sources = request.app[STATUS_SOURCES]
    return build_snapshot(sources.get_state(), request.app[STATUS_HISTORY], sources.get_cache_info())


async def status_page(request: web.Request) -> web.Response:
    """GET /_router/status: the HTML page."""
    return web.Response(text=render_status(_snapshot(request)), content_type="text/html",
                        charset="utf-8",
                        headers={**_NO_STORE, "Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def status_json(request: web.Request) -> web.Response:
    """GET /_router/status.json: the same snapshot for scripts."""
    return web.json_response(_snapshot(request), headers=_NO_STORE)


def setup_status(app: web.Application, get_state: Callable[[], EdgeState],
                 get_cache_info: Callable[[], dict[str, Any] | None],
                 history: StatusHistory | None = None) -> StatusHistory:
    """Serve the status page on `app` and sample stats while it runs.

    Registers GET (and HEAD) /_router/status and /_router/status.json, and a
    cleanup context that starts the sampler at start-up and stops it at
    shutdown. Plain paths resolve before a catch-all `/{tail:.*}` whatever
    the registration order (aiohttp's resource index; tested). Returns the
    history, which `history=` can supply (tests, or a custom interval).
    """
    history = history or StatusHistory()
    app[STATUS_HISTORY] = history
    app[STATUS_SOURCES] = StatusSources(get_state, get_cache_info)
    app.router.add_get(STATUS_PATH, status_page)
    app.router.add_get(STATUS_JSON_PATH, status_json)

    async def sampler(app: web.Application) -> AsyncIterator[None]:
        history.start(get_state)
        yield
        await history.stop()

    app.cleanup_ctx.append(sampler)
    return history
