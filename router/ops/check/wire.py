"""The low-level steps of a check, and their failures in plain language.

The resolver runs in a daemon thread (a hung resolver delays a row, never the
exit); an answer's head and body are read within MAX_HEAD and MAX_BODY; DNS,
TLS and OS errors become the words an operator reads ("connection refused",
"TLS error: ... plain http?").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

MAX_HEAD = 64 * 1024             # status line + headers we are willing to read
MAX_BODY = 64 * 1024             # a signed tree head is a few hundred bytes


async def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """getaddrinfo in a daemon thread: a hung resolver can delay a row, never the exit."""
    if is_ip(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()

    def settle(result: list[tuple[Any, ...]] | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result or [])

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
        except Exception as exc:
            outcome: tuple[Any, BaseException | None] = (None, exc)
        else:
            outcome = (list(dict.fromkeys(infos)), None)   # drop duplicates, keep order
        with contextlib.suppress(RuntimeError):          # the loop may be gone after a timeout
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name=f"check-resolve-{host}", daemon=True).start()
    return await future


def dns_diagnosis(host: str, exc: socket.gaierror) -> str:
    code = exc.errno
    if code == socket.EAI_NONAME:
        return f"DNS failure: name does not resolve ({host})"
    if code == getattr(socket, "EAI_NODATA", None):
        return f"DNS failure: {host} has no address records"
    if code == socket.EAI_AGAIN:
        return f"DNS failure: temporary failure resolving {host} (is a DNS server reachable?)"
    return f"DNS failure: {exc.strerror or exc} ({host})"


_TLS_PLAIN_HTTP = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE",
                   "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"}


def tls_diagnosis(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    words = reason.lower().replace("_", " ") if reason else (str(exc) or type(exc).__name__)
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
        return "TLS error: the server closed the connection during the handshake; is it really https?"
    if reason in _TLS_PLAIN_HTTP:
        return f"TLS error: {words} (the server does not speak TLS here; plain http?)"
    return f"TLS error: {words}"


def os_reason(exc: BaseException) -> str:
    """"No route to host" -> "no route to host"; the errno's words, else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class NotHTTP(Exception):
    def __init__(self, data: bytes) -> None:
        super().__init__("not HTTP")
        self.data = data


async def read_head(first: bytes, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Parse the status line and headers (names lower-cased)."""
    if first != b"H":
        raise NotHTTP(first + await _peek(reader))
    line = first + await reader.readuntil(b"\n")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise NotHTTP(line)
    status = int(parts[1])
    headers: dict[str, str] = {}
    size = len(line)
    while True:
        line = await reader.readuntil(b"\n")
        size += len(line)
        if size > MAX_HEAD:
            raise asyncio.LimitOverrunError("headers too long", size)
        if line in (b"\r\n", b"\n"):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _peek(reader: asyncio.StreamReader) -> bytes:
    with contextlib.suppress(Exception):
        return await asyncio.wait_for(reader.read(40), 0.2)
    return b""


async def read_body(headers: Mapping[str, str], reader: asyncio.StreamReader) -> bytes:
    """Up to MAX_BODY bytes of the body: Content-Length, chunked, or until close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while len(body) < MAX_BODY:
            size_line = await reader.readuntil(b"\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            await reader.readuntil(b"\n")
        return body[:MAX_BODY]
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        try:
            return await reader.readexactly(min(int(length), MAX_BODY))
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    return await reader.read(MAX_BODY)


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def snippet(data: bytes, limit: int = 40) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()
