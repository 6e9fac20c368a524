"""Send a file body with os.sendfile on the connection's own socket, on any event loop.

Why: aiohttp's ``FileResponse`` sends the body with ``loop.sendfile``, which
uvloop (what ``goproxy-router serve`` runs on) does not implement; aiohttp
then silently falls back to 256 KiB reads in the thread pool, each written
through the transport: about twice nginx's CPU per byte (BENCHMARKS.md).
``SendfileResponse`` keeps everything of ``FileResponse`` (Range,
If-Range, conditional requests, 304/412/416, ETag, Last-Modified,
Content-Length, HEAD, the headers passed in) and replaces only how the body
goes out, by overriding ``FileResponse._sendfile``:

1. prepare the response (aiohttp writes the headers into the transport);
2. wait until the transport's write buffer is empty: uvloop queues small
   writes until the end of the loop iteration, so sending the body before
   the buffer drains would put it ahead of the headers;
3. ``os.sendfile`` from the file to a ``dup`` of the socket's fd, in calls
   of at most ``MAX_CHUNK`` bytes, yielding to the loop between calls so one
   fast download does not starve the others; after a short send or EAGAIN,
   wait for the socket to be writable again.

Waiting for writability: uvloop (and asyncio) refuse ``add_writer`` on an fd
that a transport owns — the transport's own watcher would be clobbered. The
dup is a different fd number for the same open socket, so the loop accepts
it: epoll registers (fd number, open file) pairs, and uvloop removes a
stopped poll's fd from epoll itself (its fix for dup'd fds, MagicStack/uvloop
#61). Sending on the dup rather than on the transport's fd number also means
that if the transport closed its fd meanwhile, the number can never point at
another client's connection. The transport is checked before every call:
once it is closing (client gone, server shutting down), the send stops. A
waiter also wakes every ``RECHECK`` seconds to look again, so a transport
closed while its peer stalls is noticed even without a socket event.

A client that leaves mid-body (EPIPE, ECONNRESET, or the transport closed)
is not an error of the server: the connection is aborted (so a partial body
can never look complete), the response is marked not to be kept alive, and
the handler returns normally — like ``stream.ClientSink`` does for streamed
bodies — so nothing logs a traceback. A server that cancels the handlers of
lost connections (aiohttp's ``handler_cancellation``, on in its TestServer,
off in ``serve``) gets the same abort, and the cancellation goes on. The dup
is closed in every case.

Copying while few bodies are in flight (`cache.send_buffers`, 8 MiB by
default; 0 turns it off): with a BufferPool, a body is read into a 1 MiB
buffer and written from it, as nginx does with `sendfile off; output_buffers
2 1m`. On this project's VM, over loopback, that moves a stream ~1.5x faster
than sendfile (Linux's sendfile goes through a 64 KiB internal pipe per
step) for ~1.3x the CPU per byte (BENCHMARKS.md). The pool bounds the
memory: when every buffer is in use, the next body goes out with sendfile,
so many concurrent downloads, where CPU rather than one stream's speed is
the limit, get the cheaper path.

When this path does not apply, aiohttp's own path runs: TLS (no raw socket
carries the plain bytes), no socket at all, compression, a chunked writer,
``AIOHTTP_NOSENDFILE``, or no ``os.sendfile``. It is used on the plain
asyncio loop too, not only on uvloop: asyncio's ``loop.sendfile`` makes the
same system calls (os.sendfile, waiting on the fd between them), so one code
path for both loops keeps behaviour (disconnects, yielding, counters)
identical and lets the in-process tests, which run on asyncio, exercise it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import IO, Any

from aiohttp import web, web_fileresponse
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_response import StreamResponse

from goproxy_router.base.compat import writer_compresses

# Per os.sendfile call; nginx's sendfile_max_chunk default is 2m. Bounds how long one
# download holds the loop when the socket never fills (a fast client on loopback).
MAX_CHUNK = 2 << 20
# How often a waiter wakes up without a socket event to look at the transport again.
RECHECK = 1.0
# One copy buffer (nginx's output_buffers 1m).
COPY_CHUNK = 1 << 20


@dataclass(slots=True)
class SendfileStats:
    """Process-wide counters (tests and ad hoc checks read them)."""

    responses: int = 0       # bodies sent with os.sendfile (whole or cut short by the client)
    active: int = 0          # of which being sent right now
    calls: int = 0           # os.sendfile calls that sent bytes
    waits: int = 0           # waits for the socket to drain
    fallbacks: int = 0       # bodies sent by aiohttp's own path (TLS, no socket, ...)
    copied: int = 0          # bodies sent from a pool buffer rather than with os.sendfile
    client_gone: int = 0     # bodies cut short because the client left


stats = SendfileStats()
log = logging.getLogger("router.filesend")


class BufferPool:
    """Copy buffers of COPY_CHUNK bytes, at most `total` bytes of them; made on first use."""

    def __init__(self, total: int) -> None:
        self.capacity = max(total // COPY_CHUNK, 0)
        self.out = 0
        self._free: list[bytearray] = []

    def take(self) -> bytearray | None:
        """A buffer, or None when all are in use (then send with os.sendfile)."""
        if self._free:
            self.out += 1
            return self._free.pop()
        if self.out >= self.capacity:
            return None
        self.out += 1
        return bytearray(COPY_CHUNK)

    def give(self, buffer: bytearray) -> None:
        self.out -= 1
        self._free.append(buffer)


class FileShrank(Exception):
    """The file ended before the Content-Length already promised to the client."""


class SendfileResponse(web.FileResponse):
    """``web.FileResponse`` whose body goes out with ``os.sendfile`` on any loop
    (or copied through a buffer of `pool` while it has one free)."""

    def __init__(self, *args: Any, pool: BufferPool | None = None,
                 send_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = pool
        self._send_timeout = send_timeout

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int,
                        count: int) -> AbstractStreamWriter:
        transport = request.transport
        if not _usable(self, transport):
            stats.fallbacks += 1
            return await super()._sendfile(request, fobj, offset, count)
        assert transport is not None
        sock = transport.get_extra_info("socket")
        writer = await StreamResponse.prepare(self, request)   # status line and headers
        assert writer is not None
        if getattr(writer, "chunked", False) or writer_compresses(writer):
            stats.fallbacks += 1                # not raw bytes on the wire: aiohttp's way
            return await self._sendfile_fallback(writer, fobj, offset, count)
        stats.responses += 1
        stats.active += 1
        sock_fd = -1
        buffer = self._pool.take() if self._pool is not None else None
        try:
            try:
                sock_fd = os.dup(sock.fileno())     # ours: never reused while we hold it
            except OSError:                         # the transport closed its fd meanwhile
                raise ConnectionResetError("connection lost before the body") from None
            loop = asyncio.get_running_loop()
            patience = _Patience(self._send_timeout)
            if buffer is not None:
                stats.copied += 1
                await _copy(loop, transport, writer, sock_fd, fobj.fileno(), offset, count,
                            memoryview(buffer), patience)
            else:
                await _send(loop, transport, writer, sock_fd, fobj.fileno(), offset, count,
                            patience)
        except ConnectionError:
            stats.client_gone += 1
            self.force_close()
            transport.abort()                   # a partial body must never look complete
        except FileShrank as exc:
            log.error("cut a response short: %s: %s", self._path, exc)
            self.force_close()
            transport.abort()
        except BaseException:                   # cancelled, or the file unreadable: the
            self.force_close()                  # body is cut short, so is the connection
            transport.abort()
            raise
        finally:
            stats.active -= 1
            if sock_fd >= 0:
                os.close(sock_fd)
            if buffer is not None:
                assert self._pool is not None
                self._pool.give(buffer)
        await StreamResponse.write_eof(self)    # no bytes to write: just the bookkeeping
        return writer


def _usable(response: web.FileResponse, transport: asyncio.BaseTransport | None) -> bool:
    if transport is None or transport.is_closing():
        return False
    if web_fileresponse.NOSENDFILE or response.compression or not hasattr(os, "sendfile"):
        return False
    if (transport.get_extra_info("sslcontext") is not None
            or transport.get_extra_info("ssl_object") is not None):
        return False                            # TLS: the socket carries ciphertext
    sock = transport.get_extra_info("socket")
    return (sock is not None and sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
            and sock.fileno() >= 0)


class _Patience:
    """How much longer a client may accept nothing (`timeouts.send`), from its last progress."""

    __slots__ = ("limit", "since")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since = time.monotonic()

    def progressed(self) -> None:
        self.since = time.monotonic()

    def left(self) -> float:
        """Seconds left; ConnectionResetError (the client is gone, for us) when none."""
        left = self.limit - (time.monotonic() - self.since)
        if left <= 0:
            raise ConnectionResetError(f"the client accepted nothing for {self.limit:g}s")
        return left


async def _send(loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport,
                writer: AbstractStreamWriter, sock_fd: int, file_fd: int, offset: int,
                count: int, patience: _Patience) -> None:
    """``count`` bytes of ``file_fd`` from ``offset`` to the socket, counted in the writer's
    ``output_size`` (which aiohttp reports as the body length) as they go.

    ConnectionError when the client left or the transport closed meanwhile."""
    await _headers_sent(loop, transport, sock_fd, patience)
    while count > 0:
        if transport.is_closing():
            raise ConnectionResetError("connection closed during the body")
        want = min(count, MAX_CHUNK)
        try:
            n = os.sendfile(sock_fd, file_fd, offset, want)
        except BlockingIOError:
            await _writable(loop, sock_fd, patience)
            continue
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                raise ConnectionResetError(exc.errno, exc.strerror) from None
            raise
        if n == 0:                              # the file is shorter than it said
            raise FileShrank(f"the file ended {count} bytes early, at offset {offset}")
        stats.calls += 1
        patience.progressed()
        writer.output_size += n
        offset += n
        count -= n
        if count:
            if n < want:                        # the socket is full: wait until it drains
                await _writable(loop, sock_fd, patience)
            else:                               # let other connections run
                await asyncio.sleep(0)


async def _copy(loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport,
                writer: AbstractStreamWriter, sock_fd: int, file_fd: int, offset: int,
                count: int, buffer: memoryview, patience: _Patience) -> None:
    """Like `_send`, through `buffer`: read a chunk, write it out, wait when the socket is full."""
    await _headers_sent(loop, transport, sock_fd, patience)
    while count > 0:
        if transport.is_closing():
            raise ConnectionResetError("connection closed during the body")
        got = os.preadv(file_fd, [buffer[:min(count, len(buffer))]], offset)
        if got == 0:
            raise FileShrank(f"the file ended {count} bytes early, at offset {offset}")
        sent = 0
        while sent < got:
            try:
                sent += os.write(sock_fd, buffer[sent:got])
                patience.progressed()
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    raise ConnectionResetError(exc.errno, exc.strerror) from None
                raise
            if sent < got:
                if transport.is_closing():
                    raise ConnectionResetError("connection closed during the body")
                await _writable(loop, sock_fd, patience)
        stats.calls += 1
        writer.output_size += got
        offset += got
        count -= got
        if count:
            await asyncio.sleep(0)              # let other connections run


async def _headers_sent(loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport,
                        sock_fd: int, patience: _Patience) -> None:
    """Until the transport holds nothing more: the headers must reach the socket first.
    uvloop writes what it queued at the end of the loop iteration: one turn is usually enough."""
    if transport.get_write_buffer_size():
        await asyncio.sleep(0)
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("connection closed before the body")
        await _writable(loop, sock_fd, patience)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, patience: _Patience) -> None:
    """Until ``fd`` is writable (or errored), or RECHECK seconds passed; ConnectionResetError
    when the client has accepted nothing for longer than it may (`timeouts.send`)."""
    stats.waits += 1
    waiter = loop.create_future()
    timer = loop.call_later(min(RECHECK, patience.left()), _wake, waiter)
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        loop.remove_writer(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
