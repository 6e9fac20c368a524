"""HTTP answers built from what the cache holds: headers, conditionals, small answers.

``not_modified`` decides a conditional GET (RFC 9110), ``negative_response``
answers a cached 404/410, and ``PreparedFileResponse`` sends a cached file
with sendfile under a lease the caller holds. No cache state here: the
callers (router/serving/artifacts.py) decide what to answer.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from goproxy_router.serving.filesend import SendfileResponse
from goproxy_router.storage.metadata import NegativeAnswer

__all__ = ["CONTENT_TYPES", "IMMUTABLE", "PreparedFileResponse", "negative_response", "not_modified"]

IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {"info": "application/json", "mod": "text/plain; charset=utf-8",
                 "zip": "application/zip", "list": "text/plain; charset=utf-8",
                 "latest": "application/json"}


def not_modified(request: web.Request, etag: str, mtime: float | None) -> bool:
    """RFC 9110 conditional GET: If-None-Match wins over If-Modified-Since."""
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in (etag, "*") for tag in if_none_match)
    since = request.if_modified_since
    return mtime is not None and since is not None and int(mtime) <= since.timestamp()


def negative_response(negative: NegativeAnswer) -> web.Response:
    """A cached 404/410, answered as a hit."""
    return web.Response(status=negative.status, body=negative.body,
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Goproxy-Cache": "hit"})


class PreparedFileResponse(SendfileResponse):
    """A FileResponse the handler prepares (sends) itself, so that a lease can cover it;
    the body goes out with os.sendfile, also on uvloop (router/serving/filesend.py).

    aiohttp prepares every response a handler returns once more, and
    FileResponse.prepare is not idempotent (it would send the file again and
    fail on the finished writer, breaking the keep-alive connection): here a
    second call does nothing.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)
