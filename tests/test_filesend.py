"""Cache hits sent with os.sendfile on the connection's socket (router/serving/filesend.py).

* in process, on uvloop (as ``serve`` runs) and on the plain asyncio loop:
  a zip hit is byte-identical and really goes out through ``os.sendfile``;
  Range (first byte, middle, suffix, open end, past the end: 416), If-Range,
  HEAD, 304 (If-None-Match, If-Modified-Since), 412; a client that leaves
  mid-body (FIN or RST) costs nothing: no error logged, no fd or lease left,
  the next request is answered; a slow reader (the socket fills, the sender
  waits) and 16 concurrent downloads get the right bytes;
* TLS has no raw socket for the plain bytes: aiohttp's own path sends it;
* the real ``goproxy-router serve`` process (uvloop): a 20 MB hit, clients
  that leave mid-body, and its open fds back where they were.

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import http.client
import logging
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from goproxy_router.config.loader import parse_config
from goproxy_router.runtime.app import build_app
from goproxy_router.serving import filesend
from goproxy_router.serving.edge import EDGE
from tests.conftest import RouterProcess
from tests.support import FakeProxy, Module, ModuleTree, ThreadedFakeProxy, case_escape
from tests.test_cache_serving import get_all

KiB, MiB = 1 << 10, 1 << 20
ZIP = Module("example.com/sendfile", "v1.0.0",
             files={"blob.bin": random.Random(7).randbytes(12 * MiB)})
ZIP_PATH = f"/{case_escape(ZIP.path)}/@v/{ZIP.version}.zip"


Run = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Run] = {
    "uvloop": uvloop.run, "asyncio": asyncio.run}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a scenario to the end on uvloop (what ``serve`` uses) or the asyncio loop, within 60 s."""
    runner = LOOPS[request.param]

    def go(scenario: Coroutine[Any, Any, None]) -> None:
        async def bounded() -> None:
            if request.param == "uvloop":
                assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            await asyncio.wait_for(scenario, 60)
        runner(bounded())
    return go


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of every os.sendfile call (any caller) while the test runs."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def router_config(tmp_path: Path, up: str, send_timeout: float = 20, **cache: Any) -> dict[str, Any]:
    return {"upstreams": {"up": {"url": up}},
            "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
            "scoring": {"plugins": []}, "probes": {"enabled": False},
            "timeouts": {"connect": 1, "headers": 5, "read": 5, "deadline": 20,
                         "send": send_timeout},
            "cache": {"dir": str(tmp_path / "cache"), **cache}}


@contextlib.asynccontextmanager
async def cached_zip(tmp_path: Path, send_timeout: float = 20, **cache: Any) -> AsyncIterator[TestClient]:
    """The router app in process, its cache holding ZIP (the first answer was the streamed miss).
    Sendfile only unless `send_buffers` says otherwise (the default copies while it can)."""
    up = await FakeProxy(ModuleTree([ZIP]), name="up").start()
    try:
        config = router_config(tmp_path, up.url, send_timeout, **{"send_buffers": 0, **cache})
        app = build_app(parse_config(yaml.safe_dump(config), "routes.yaml", {}), {})
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            status, headers, body = await get(client, ZIP_PATH)
            assert (status, headers.get("X-Goproxy-Cache"), len(body)) == (200, "miss", len(ZIP.zip))
            yield client
    finally:
        await up.stop()


async def get(client: TestClient, path: str, method: str = "GET",
              headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async def go() -> tuple[int, CIMultiDict[str], bytes]:
        async with client.request(method, path, headers=headers) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()
    return await asyncio.wait_for(go(), 30)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def leases(client: TestClient) -> dict[str, int]:
    return dict(client.server.app[EDGE].cache.disk._leases)


# -- in process, both loops ---------------------------------------------------------------


def test_a_zip_hit_goes_out_with_sendfile_and_arrives_whole(
        run: Run, tmp_path: Path, sendfile_calls: list[int]) -> None:
    run(_whole_hit(tmp_path, sendfile_calls))


async def _whole_hit(tmp_path: Path, sendfile_calls: list[int]) -> None:
    async with cached_zip(tmp_path) as client:
        before, calls_before = filesend.stats.responses, len(sendfile_calls)
        status, headers, body = await get(client, ZIP_PATH)
        assert (status, headers["X-Goproxy-Cache"]) == (200, "hit")
        assert headers["Content-Length"] == str(len(ZIP.zip)) and headers["Content-Type"] == "application/zip"
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert sha(body) == sha(ZIP.zip)
        assert filesend.stats.responses == before + 1
        sent = sendfile_calls[calls_before:]
        assert sum(sent) == len(ZIP.zip), "the body did not go out through os.sendfile"
        assert max(sent) <= filesend.MAX_CHUNK


def test_range_if_range_head_and_conditional_requests(
        run: Run, tmp_path: Path, sendfile_calls: list[int]) -> None:
    run(_ranges_and_conditionals(tmp_path, sendfile_calls))


async def _ranges_and_conditionals(tmp_path: Path, sendfile_calls: list[int]) -> None:
    async with cached_zip(tmp_path) as client:
        data, size = ZIP.zip, len(ZIP.zip)
        status, full, _ = await get(client, ZIP_PATH, "HEAD")
        assert (status, full["Content-Length"], full["Accept-Ranges"]) == (200, str(size), "bytes")
        etag, modified = full["ETag"], full["Last-Modified"]
        cases = {"bytes=0-0": (0, 1), "bytes=1000-2000000": (1000, 2000001),
                 f"bytes={size - 5000}-": (size - 5000, size), "bytes=-3000": (size - 3000, size),
                 f"bytes=5-{size + 100}": (5, size)}
        calls = len(sendfile_calls)
        for spec, (start, end) in cases.items():
            status, headers, body = await get(client, ZIP_PATH, headers={"Range": spec})
            assert status == 206, spec
            assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", spec
            assert headers["Content-Length"] == str(end - start) and body == data[start:end], spec
        assert sum(sendfile_calls[calls:]) == sum(e - s for s, e in cases.values())

        status, headers, body = await get(client, ZIP_PATH, headers={"Range": f"bytes={size}-"})
        assert (status, headers["Content-Range"], body) == (416, f"bytes */{size}", b"")
        # If-Range with the current date: the range; with an older one: the whole file.
        status, _, body = await get(client, ZIP_PATH, headers={"Range": "bytes=10-19", "If-Range": modified})
        assert (status, body) == (206, data[10:20])
        old = formatdate(time.time() - 10 * 365 * 86400, usegmt=True)
        status, _, body = await get(client, ZIP_PATH, headers={"Range": "bytes=10-19", "If-Range": old})
        assert (status, sha(body)) == (200, sha(data))

        status, headers, body = await get(client, ZIP_PATH, "HEAD", headers={"Range": "bytes=0-99"})
        assert (status, headers["Content-Length"], body) == (206, "100", b"")
        for conditional in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
            status, headers, body = await get(client, ZIP_PATH, headers=conditional)
            assert (status, body, headers["ETag"]) == (304, b"", etag), conditional
        status, _, body = await get(client, ZIP_PATH, headers={"If-None-Match": '"other"'})
        assert (status, sha(body)) == (200, sha(data))
        status, _, body = await get(client, ZIP_PATH, headers={"If-Match": '"other"'})
        assert (status, body) == (412, b"")
        assert leases(client) == {}


def _raw_request(port: int, path: str) -> socket.socket:
    """A GET on a socket with a small receive buffer: what the kernel holds in flight (the
    server's send buffer and this) stays well under the file, so the sender really is mid-body."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


async def _read_some_then_leave(port: int, path: str, amount: int, reset: bool) -> None:
    def go() -> None:
        sock = _raw_request(port, path)
        with sock:
            got = 0
            while got < amount:
                chunk = sock.recv(256 * KiB)
                assert chunk, "the body ended early"
                got += len(chunk)
            if reset:       # RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await asyncio.to_thread(go)


def test_a_client_leaving_mid_body_costs_nothing(
        run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    run(_clients_leaving(tmp_path))
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


async def _clients_leaving(tmp_path: Path) -> None:
    async with cached_zip(tmp_path) as client:
        assert sha((await get(client, ZIP_PATH))[2]) == sha(ZIP.zip)
        await asyncio.sleep(0.1)
        fds, started = open_fds(), filesend.stats.responses
        for reset in (False, True, False, True):
            await _read_some_then_leave(client.port, ZIP_PATH, 2 * MiB, reset)
        # A client that asked and never read: the sender waits on a full socket, then sees it go.
        stalled = _raw_request(client.port, ZIP_PATH)
        await asyncio.sleep(0.5)
        stalled.close()
        # Each sender stops (the client's RST or FIN seen by the send, or, as the test server
        # cancels handlers of lost connections, by the cancellation), none is left waiting.
        assert await until(lambda: filesend.stats.active == 0, 10), filesend.stats
        assert filesend.stats.responses == started + 5
        assert await until(lambda: leases(client) == {}, 5), leases(client)
        assert await until(lambda: open_fds() <= fds, 5), (open_fds(), fds)
        status, headers, body = await get(client, ZIP_PATH)
        assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "hit", sha(ZIP.zip))


def test_a_slow_reader_and_many_concurrent_downloads(run: Run, tmp_path: Path) -> None:
    run(_slow_and_concurrent(tmp_path))


async def _slow_and_concurrent(tmp_path: Path) -> None:
    async with cached_zip(tmp_path) as client:
        waits = filesend.stats.waits

        def slow() -> bytes:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", client.port))
            with sock:
                sock.sendall(f"GET {ZIP_PATH} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
                parts = []
                while chunk := sock.recv(64 * KiB):
                    parts.append(chunk)
                    if len(parts) % 16 == 0:
                        time.sleep(0.01)
            return b"".join(parts)

        raw, *bodies = await asyncio.gather(asyncio.to_thread(slow),
                                            *(get(client, ZIP_PATH) for _ in range(16)))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and sha(body) == sha(ZIP.zip)
        assert filesend.stats.waits > waits, "the socket never filled: no wait was exercised"
        assert {(s, sha(b)) for s, _, b in bodies} == {(200, sha(ZIP.zip))}
        assert await until(lambda: leases(client) == {}, 5)


# -- a client that stops reading (timeouts.send) ------------------------------------------


def _read_until_cut(sock: socket.socket) -> int:
    """Bytes a client that stopped reading still gets, until the server's cut (or EOF)."""
    got = 0
    with contextlib.suppress(ConnectionError):
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    return got


@pytest.mark.parametrize("send_buffers", [0, "2MiB"], ids=["sendfile", "copy"])
def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
        run: Run, tmp_path: Path, send_buffers: Any) -> None:
    run(_stalled_reader(tmp_path, send_buffers))


async def _stalled_reader(tmp_path: Path, send_buffers: Any) -> None:
    async with cached_zip(tmp_path, send_timeout=0.5, send_buffers=send_buffers) as client:
        gone, started = filesend.stats.client_gone, time.monotonic()
        stalled = _raw_request(client.port, ZIP_PATH)      # asks, never reads
        try:
            assert await until(lambda: filesend.stats.client_gone > gone, 10), filesend.stats
            assert time.monotonic() - started >= 0.5
            assert await until(lambda: filesend.stats.active == 0 and leases(client) == {}, 5)
            assert await asyncio.to_thread(_read_until_cut, stalled) < len(ZIP.zip)
        finally:
            stalled.close()
        status, _, body = await get(client, ZIP_PATH)         # the next one is served whole
        assert (status, sha(body)) == (200, sha(ZIP.zip))


def test_a_first_requester_that_stops_reading_does_not_hold_the_fill(run: Run, tmp_path: Path) -> None:
    run(_stalled_leader(tmp_path))


async def _stalled_leader(tmp_path: Path) -> None:
    """The first requester of an uncached zip streams the fill; when it stops reading, it
    is cut after timeouts.send and the fill goes on into the cache for the one waiting."""
    up = await FakeProxy(ModuleTree([ZIP]), name="up").start()
    try:
        config = router_config(tmp_path, up.url, send_timeout=0.5)
        app = build_app(parse_config(yaml.safe_dump(config), "routes.yaml", {}), {})
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            leader = _raw_request(client.port, ZIP_PATH)
            try:
                assert await until(lambda: any(r.raw_path == ZIP_PATH for r in up.requests), 5)
                asked = time.monotonic()
                status, headers, body = await get(client, ZIP_PATH)
                assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "miss", sha(ZIP.zip))
                assert time.monotonic() - asked < 10, "the stalled leader held the fill"
                assert await asyncio.to_thread(_read_until_cut, leader) < len(ZIP.zip)
            finally:
                leader.close()
            assert sum(r.raw_path == ZIP_PATH for r in up.requests) == 1
            status, headers, body = await get(client, ZIP_PATH)
            assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "hit", sha(ZIP.zip))
    finally:
        await up.stop()


# -- copying through pool buffers (cache.send_buffers) -------------------------------------


def pool_of(client: TestClient) -> filesend.BufferPool:
    pool = client.server.app[EDGE].cache._buffers
    assert pool is not None
    return pool


def test_copy_mode_sends_whole_hits_and_ranges_without_sendfile(
        run: Run, tmp_path: Path, sendfile_calls: list[int]) -> None:
    run(_copy_mode(tmp_path, sendfile_calls))


async def _copy_mode(tmp_path: Path, sendfile_calls: list[int]) -> None:
    async with cached_zip(tmp_path, send_buffers="2MiB") as client:
        pool = pool_of(client)
        assert pool.capacity == 2
        copied, calls = filesend.stats.copied, len(sendfile_calls)
        status, headers, body = await get(client, ZIP_PATH)
        assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "hit", sha(ZIP.zip))
        assert headers["Content-Length"] == str(len(ZIP.zip))
        size = len(ZIP.zip)
        for spec, (start, end) in {"bytes=0-0": (0, 1), "bytes=1000-3000000": (1000, 3000001),
                                   "bytes=-5000": (size - 5000, size)}.items():
            status, headers, body = await get(client, ZIP_PATH, headers={"Range": spec})
            assert (status, body) == (206, ZIP.zip[start:end]), spec
        status, headers, body = await get(client, ZIP_PATH, "HEAD")
        assert (status, headers["Content-Length"], body) == (200, str(size), b"")
        assert filesend.stats.copied == copied + 4
        assert sendfile_calls[calls:] == [], "copy mode used os.sendfile with a buffer free"
        assert pool.out == 0 and leases(client) == {}


def test_copy_mode_falls_back_to_sendfile_when_every_buffer_is_out(
        run: Run, tmp_path: Path, sendfile_calls: list[int]) -> None:
    run(_copy_mode_busy(tmp_path, sendfile_calls))


async def _copy_mode_busy(tmp_path: Path, sendfile_calls: list[int]) -> None:
    async with cached_zip(tmp_path, send_buffers="2MiB") as client:
        pool = pool_of(client)
        copied, calls = filesend.stats.copied, len(sendfile_calls)
        bodies = await asyncio.gather(*(get(client, ZIP_PATH) for _ in range(12)))
        assert {(s, sha(b)) for s, _, b in bodies} == {(200, sha(ZIP.zip))}
        by_copy = filesend.stats.copied - copied
        assert 1 <= by_copy <= 11, by_copy
        assert sum(sendfile_calls[calls:]) == (12 - by_copy) * len(ZIP.zip)
        assert pool.out == 0 and len(pool._free) <= pool.capacity
        # Clients leaving mid-body give their buffers back too.
        for reset in (False, True):
            await _read_some_then_leave(client.port, ZIP_PATH, 2 * MiB, reset)
        assert await until(lambda: filesend.stats.active == 0 and pool.out == 0, 10)
        assert await until(lambda: leases(client) == {}, 5)
        status, _, body = await get(client, ZIP_PATH)
        assert (status, sha(body)) == (200, sha(ZIP.zip))


def test_the_default_copies_through_eight_buffers_and_zero_means_sendfile(tmp_path: Path) -> None:
    from goproxy_router.serving.artifacts import ArtifactCache
    for cache, capacity in (({}, 8), ({"send_buffers": 0}, None), ({"send_buffers": "3MiB"}, 3)):
        config = parse_config(yaml.safe_dump(router_config(tmp_path, "http://127.0.0.1:9", **cache)),
                              "routes.yaml", {})
        artifacts = ArtifactCache(config.cache)
        pool = artifacts._buffers
        assert (pool.capacity if pool is not None else None) == capacity, cache
        artifacts.disk.close()


def test_buffer_pool_is_bounded() -> None:
    pool = filesend.BufferPool(3 * filesend.COPY_CHUNK + 5)
    taken = [pool.take() for _ in range(4)]
    assert [b is not None for b in taken] == [True, True, True, False]
    first = taken[0]
    assert first is not None and len(first) == filesend.COPY_CHUNK
    pool.give(first)
    assert pool.take() is first and pool.out == 3
    assert filesend.BufferPool(filesend.COPY_CHUNK - 1).take() is None


# -- TLS: aiohttp's own path -------------------------------------------------------------


def _tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pytest.importorskip("cryptography", reason="cryptography makes the test certificate")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=cert_path)
    client.check_hostname = False
    return server, client


def test_tls_falls_back_to_aiohttps_own_path(run: Run, tmp_path: Path, sendfile_calls: list[int]) -> None:
    run(_tls(tmp_path, sendfile_calls))


async def _tls(tmp_path: Path, sendfile_calls: list[int]) -> None:
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    data = random.Random(3).randbytes(3 * MiB)
    (tmp_path / "f.bin").write_bytes(data)

    async def handler(_: web.Request) -> web.StreamResponse:
        return filesend.SendfileResponse(tmp_path / "f.bin")

    app = web.Application()
    app.router.add_get("/f", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    fallbacks = filesend.stats.fallbacks
    try:
        def fetch() -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx, timeout=10)
            try:
                conn.request("GET", "/f")
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()
        status, body = await asyncio.to_thread(fetch)
    finally:
        await runner.cleanup()
    assert (status, sha(body)) == (200, sha(data))
    assert filesend.stats.fallbacks == fallbacks + 1
    assert sendfile_calls == [], "plain bytes were sendfile'd onto a TLS connection"


# -- the real serve process (uvloop) -----------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
           router_process: Callable[..., RouterProcess]) -> Iterator[RouterProcess]:
    up = threaded_fake_proxy(ModuleTree([ZIP]), name="up")
    router = router_process(router_config(tmp_path, up.url))
    yield router


@pytest.mark.timeout(90)
def test_serve_process_sends_hits_whole_and_survives_clients_leaving(served: RouterProcess) -> None:
    port = served.port
    status, headers, body = get_all("127.0.0.1", port, ZIP_PATH)
    assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "miss", sha(ZIP.zip))
    status, headers, body = get_all("127.0.0.1", port, ZIP_PATH)
    assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "hit", sha(ZIP.zip))
    time.sleep(0.2)
    fd_dir = Path(f"/proc/{served.proc.pid}/fd")
    fds = len(os.listdir(fd_dir))
    for reset in (False, True, False):
        sock = _raw_request(port, ZIP_PATH)
        with sock:
            got = 0
            while got < 3 * MiB:
                chunk = sock.recv(256 * KiB)
                assert chunk, "the body ended early"
                got += len(chunk)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    status, headers, body = get_all("127.0.0.1", port, ZIP_PATH)
    assert (status, headers["X-Goproxy-Cache"], sha(body)) == (200, "hit", sha(ZIP.zip))
    status, headers, body = get_all("127.0.0.1", port, ZIP_PATH.replace(".zip", ".info"))
    assert status == 200
    deadline = time.monotonic() + 5
    while len(os.listdir(fd_dir)) > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(fd_dir)) <= fds, "the router kept fds of the clients that left"
    assert served.proc.poll() is None
    logged = served.stderr()
    assert "Traceback" not in logged and '"level":"error"' not in logged, logged[-3000:]
