"""HTTP helpers for in-process router tests: tiny upstream apps and raw requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.fakeproxy import FakeProxy

MakeEdge = Callable[..., Awaitable[TestClient]]
MakeFake = Callable[..., Awaitable[FakeProxy]]


async def upstream_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def raw_get(client: TestClient, path: str) -> tuple[int, dict[str, str], str]:
    """Send the path byte for byte: HTTP clients would normalise "./" and "../" away."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@contextmanager
def threaded_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A plain http.server on 127.0.0.1 in a thread, for upstreams that must answer byte
    for byte; yields its port and stops it (bounded) afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
