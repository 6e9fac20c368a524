"""router/base/compat.py: each private aiohttp/asyncio detail is there, does what the edge
needs, and its absence stops `serve` with a line naming it."""

from __future__ import annotations

import asyncio
import asyncio.events
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import http_writer, web, web_protocol

from goproxy_router.base import compat
from goproxy_router.runtime import cli


def _internal(name: str) -> compat.Internal:
    return next(i for i in compat.INTERNALS if i.name == name)


def test_every_internal_is_present_in_the_installed_packages() -> None:
    assert compat.missing() == []
    compat.verify()


def test_the_pin_names_the_tested_minor_series() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    major, minor = compat.TESTED_AIOHTTP.split(".")
    assert f'"aiohttp>={major}.{minor},<{major}.{int(minor) + 1}"' in text
    assert aiohttp.__version__.startswith(compat.TESTED_AIOHTTP + ".")


def _sabotage(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the installed packages look as if an upgrade removed `name`."""
    if name == "aiohttp.ClientSession._retry_connection":
        monkeypatch.setattr(aiohttp.ClientSession, "ATTRS",
                            aiohttp.ClientSession.ATTRS - {"_retry_connection"})
    elif name == "aiohttp.web.FileResponse._sendfile":
        monkeypatch.delattr(web.FileResponse, "_sendfile")
    elif name == "aiohttp.web.FileResponse._sendfile_fallback":
        async def renamed(self: object, writer: object, fobj: object, offset: int) -> None:
            return None
        monkeypatch.setattr(web.FileResponse, "_sendfile_fallback", renamed)
    elif name == "aiohttp.http_writer.StreamWriter._compress":
        monkeypatch.delattr(http_writer.StreamWriter, "_compress")
    elif name == "aiohttp.web.Server.request_handler":
        def init(self: object, manager: object, *args: object, **kwargs: object) -> None:
            return None     # a RequestHandler that no longer copies manager.request_handler
        monkeypatch.setattr(web_protocol.RequestHandler, "__init__", init)
    elif name == "aiohttp.web.Server.connection_made/connection_lost":
        def made(self: object, handler: object) -> None:
            return None     # a server no longer told which transport a connection has
        monkeypatch.setattr(web.Server, "connection_made", made)
    elif name.startswith("aiohttp.web_protocol.RequestHandler._"):
        attribute = name.rsplit(".", 1)[1]
        monkeypatch.setattr(web_protocol.RequestHandler, "__slots__", tuple(
            s for s in web_protocol.RequestHandler.__slots__ if s != attribute))
    elif name == "asyncio.events._get_running_loop":
        monkeypatch.delattr(asyncio.events, "_get_running_loop")
    else:
        raise AssertionError(f"no sabotage for {name}")


@pytest.mark.parametrize("name", [i.name for i in compat.INTERNALS])
def test_a_missing_internal_is_named_with_its_user_and_the_fix(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _sabotage(monkeypatch, name)
    assert [i.name for i in compat.missing()] == [name]
    with pytest.raises(compat.CompatError) as caught:
        compat.verify()
    message = str(caught.value)
    assert name in message and _internal(name).used_by in message
    assert f"aiohttp>={compat.TESTED_AIOHTTP}" in message


def test_serve_refuses_to_start_without_an_internal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _sabotage(monkeypatch, "aiohttp.http_writer.StreamWriter._compress")
    config = tmp_path / "routes.yaml"
    config.write_text("upstreams: {a: {url: 'http://127.0.0.1:9'}}\n"
                      "routes: [{name: all, match: ['*'], upstreams: [a]}]\n"
                      f"cache: {{dir: '{tmp_path / 'cache'}'}}\n")
    # The serve command itself, without main()'s process-wide logging set-up.
    args = cli.build_parser().parse_args(["serve", "--config", str(config), "--listen", "127.0.0.1:0"])
    assert args.run(args) == 1
    err = capsys.readouterr().err
    assert "aiohttp.http_writer.StreamWriter._compress" in err and "Traceback" not in err


# -- each use does what the edge needs it for ------------------------------------------


async def test_disable_hidden_retry_stops_aiohttps_silent_resend() -> None:
    """A pooled connection that drops before answering: aiohttp would send the GET again
    on a new connection by itself; with the retry off, the attempt fails instead."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:      # the client closed the connection
                return
            seen.append(served)
            if served == 1:          # the second request on a kept-alive connection: drop it
                writer.transport.abort()
                return
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def run(disable: bool) -> bool:
        seen.clear()
        async with aiohttp.ClientSession() as session:
            if disable:
                compat.disable_hidden_retry(session)
            async with session.get(f"http://127.0.0.1:{port}/a") as resp:
                assert await resp.read() == b"ok"
            try:
                async with session.get(f"http://127.0.0.1:{port}/b") as resp:
                    await resp.read()
                return True
            except aiohttp.ClientError:
                return False

    try:
        assert await run(disable=False) is True and len(seen) == 3    # re-sent behind our back
        assert await run(disable=True) is False and len(seen) == 2    # the failure is ours to handle
    finally:
        server.close()
        await server.wait_closed()


def test_writer_compresses_tells_a_compressing_writer() -> None:
    loop = asyncio.new_event_loop()
    try:
        class Protocol:
            transport = None

        plain = http_writer.StreamWriter(Protocol(), loop)  # type: ignore[arg-type]
        zipped = http_writer.StreamWriter(Protocol(), loop)  # type: ignore[arg-type]
        zipped.enable_compression("gzip")
        assert compat.writer_compresses(plain) is False
        assert compat.writer_compresses(zipped) is True
    finally:
        loop.close()


async def test_swap_request_handler_answers_before_the_application() -> None:
    async def app_handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="application")

    server = web.Server(app_handler)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def in_front(full: compat.ServerHandler) -> compat.ServerHandler:
        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/front":
                return web.Response(text="front")
            return await full(request)
        return handler

    compat.swap_request_handler(server, in_front)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, sock=sock)
    try:
        async with aiohttp.ClientSession() as session:
            for path, expected in (("/front", "front"), ("/other", "application")):
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert await resp.text() == expected
    finally:
        listener.close()
        await server.shutdown(1)


def test_running_loop_or_none() -> None:
    assert compat.running_loop_or_none() is None

    async def inside() -> asyncio.AbstractEventLoop | None:
        return compat.running_loop_or_none()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(inside()) is loop
    finally:
        loop.close()


async def test_connection_hooks_see_each_connection_its_head_and_its_idleness() -> None:
    """watch_connections reports open and close; request_heads_seen counts whole heads only;
    waiting_for_request tells idle from busy; answer_connection_with answers one connection."""
    release = asyncio.Event()

    async def app_handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="application")

    server = web.Server(app_handler)
    opened: list[web_protocol.RequestHandler] = []
    closed: list[web_protocol.RequestHandler] = []
    compat.watch_connections(server, lambda h, t: opened.append(h), lambda h, e: closed.append(h))
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    async def settle(check: Callable[[], bool]) -> None:
        for _ in range(200):            # at most 2 s
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached within 2 s")

    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await settle(lambda: len(opened) == 1 and compat.waiting_for_request(opened[0]))
        handler = opened[0]
        assert handler in server.connections
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")          # half a head
        await asyncio.sleep(0.05)
        assert compat.request_heads_seen(handler) == 0 and compat.waiting_for_request(handler)
        writer.write(b"\r\n")
        await settle(lambda: not compat.waiting_for_request(handler))
        assert compat.request_heads_seen(handler) == 1
        release.set()
        await reader.readuntil(b"application")
        await settle(lambda: compat.waiting_for_request(handler))    # idle again, kept alive

        async def refuse(request: web.BaseRequest) -> web.StreamResponse:
            return web.Response(status=503, text="refused")

        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", port)
        await settle(lambda: len(opened) == 2)
        compat.answer_connection_with(opened[1], refuse)
        other_writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await other_reader.readuntil(b"refused")).startswith(b"HTTP/1.1 503 ")
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")       # the first is untouched
        assert (await reader.readuntil(b"application")).startswith(b"HTTP/1.1 200 ")
        writer.close()
        other_writer.close()
        await settle(lambda: len(closed) == 2 and set(closed) == set(opened))
    finally:
        listener.close()
        await server.shutdown(1)
