"""Slow and silent clients cannot hold the edge's connections or file descriptors
(router/serving/connections.py): a request-head deadline, a keep-alive idle timeout in
seconds, a connection cap that closes idle connections to make room and answers
503 when every one is busy, and a soft open-files limit raised at start-up."""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from goproxy_router.serving.connections import REFUSAL
from tests.conftest import RouterProcess
from tests.support import Faults, Module, ModuleTree, ThreadedFakeProxy

MOD = Module("example.com/slow", "v1.0.0")
INFO = "/example.com/slow/@v/v1.0.0.info"


def config_for(url: str, **limits: float) -> dict[str, Any]:
    config: dict[str, Any] = {
        "upstreams": {"up": {"url": url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
        "probes": {"enabled": False}}
    if limits:
        config["limits"] = limits
    return config


def connect(router: RouterProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", router.port), timeout=5)


@contextmanager
def silent_connections(router: RouterProcess, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte, closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(connect(router))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def seconds_until_closed(sock: socket.socket, bound: float) -> float:
    """How long until the edge closes `sock` (EOF); fails past `bound` seconds."""
    started = time.monotonic()
    sock.settimeout(bound)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise AssertionError(f"connection still open after {bound}s") from None
    except ConnectionResetError:
        data = b""
    assert data == b"", f"expected the edge to close silently, got {data[:80]!r}"
    return time.monotonic() - started


def closed_now(sock: socket.socket, wait: float = 0.5) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def get(router: RouterProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(router.url + path, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(router: RouterProcess, name: str) -> float:
    status, text = get(router, "/metrics")
    assert status == 200
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def log_events(router: RouterProcess, event: str) -> list[dict[str, Any]]:
    return [entry for line in router.stderr().splitlines() if line.startswith("{")
            and (entry := json.loads(line)).get("event") == event]


def test_a_silent_connection_is_closed_after_the_header_timeout(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url, header_timeout=0.5, keepalive_timeout=5))
    with silent_connections(router, 1) as (sock,):
        elapsed = seconds_until_closed(sock, bound=3.0)
    assert 0.3 <= elapsed <= 2.0
    assert metric(router, "goproxy_connections_header_timeouts_total") == 1


def test_a_request_head_that_never_ends_is_closed_at_the_header_timeout(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    """Slowloris: a header line every 0.1 s, the blank line never."""
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url, header_timeout=0.5, keepalive_timeout=5))
    with silent_connections(router, 1) as (sock,):
        started = time.monotonic()
        sock.sendall(f"GET {INFO} HTTP/1.1\r\nHost: edge\r\n".encode())
        closed = False
        for n in range(30):                          # at most 3 s of dribbling
            try:
                sock.sendall(f"X-Dribble-{n}: x\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_now(sock, wait=0.1):
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed and 0.3 <= elapsed <= 2.0, elapsed


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    """After an answer, the connection may idle for keepalive_timeout (not the shorter
    header_timeout), and a next head left unfinished is cut at the same time."""
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url, header_timeout=0.5, keepalive_timeout=1.5))
    request = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
    for then in (b"", b"GET /healthz HTTP/1.1\r\nHost: ed"):
        with silent_connections(router, 1) as (sock,):
            sock.sendall(request)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer
            sock.sendall(then)
            elapsed = seconds_until_closed(sock, bound=5.0)
        assert 1.2 <= elapsed <= 3.5, (then, elapsed)


def test_over_the_cap_idle_connections_make_room_for_real_requests(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    """30 silent connections against max_connections 20: the oldest silent ones are
    closed at once (long before the header timeout) and real requests are served."""
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url, max_connections=20, header_timeout=20,
                                       keepalive_timeout=20))
    with silent_connections(router, 30) as socks:
        started = time.monotonic()
        assert get(router, INFO)[0] == 200
        assert get(router, "/readyz")[0] == 200
        assert time.monotonic() - started < 5
        closed = [closed_now(sock, wait=0.05) for sock in socks]
        assert sum(closed) >= 10 and all(closed[:10]), closed     # the oldest went first
        assert metric(router, "goproxy_connections_evicted_total") >= 10
        assert metric(router, "goproxy_connections_open") <= 20
        assert metric(router, "goproxy_connections_max") == 20


def test_when_every_connection_is_busy_a_new_one_gets_503_and_connection_close(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up", faults=Faults(delay=2.0,
                                                                         paths=r"\.info$"))
    router = router_process(config_for(up.url, max_connections=3))
    results: list[int] = []
    busy = [threading.Thread(target=lambda: results.append(get(router, INFO)[0]))
            for _ in range(3)]
    for thread in busy:
        thread.start()
    try:
        deadline = time.monotonic() + 1.5            # the three reach the slow upstream
        while INFO not in up.raw_paths() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        with silent_connections(router, 1) as (sock,):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            sock.settimeout(3)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert b"Connection: close" in head and b"Retry-After: 1" in head
        assert body.decode() == REFUSAL
    finally:
        for thread in busy:
            thread.join(timeout=10)
    assert results == [200, 200, 200]
    assert metric(router, "goproxy_connections_refused_total") >= 1


def test_a_reload_applies_new_limits_to_new_connections(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(config_for(up.url, header_timeout=5, keepalive_timeout=5),
                            extra_args=["--watch-interval", "0"])
    router.config_path.write_text(router.config_path.read_text().replace(
        "header_timeout: 5", "header_timeout: 0.5"))
    router.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while len(log_events(router, "connection limits")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_events(router, "connection limits")[-1]["header_timeout"] == 0.5
    with silent_connections(router, 1) as (sock,):
        assert seconds_until_closed(sock, bound=3.0) <= 2.0


def nofile(pid: int) -> tuple[int, int]:
    """The process's soft and hard open-files limits, from /proc."""
    text = Path(f"/proc/{pid}/limits").read_text()
    soft, hard = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.M).groups()  # type: ignore[union-attr]
    return int(soft), int(hard)


def test_start_up_raises_a_low_open_files_limit_and_300_silent_connections_break_nothing(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 1024, "the test needs a hard open-files limit above 1024"
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(
        config_for(up.url),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    assert nofile(router.proc.pid) == (hard, hard)
    (limits,) = log_events(router, "connection limits")
    assert limits["open_files_at_start"] == 256 and limits["open_files"] == hard
    assert limits["max_connections"] == min(10_000, hard - min(hard // 4, 4096))
    with silent_connections(router, 300):
        for path in (INFO, "/healthz", "/readyz", "/metrics"):
            assert get(router, path)[0] == 200, path
        assert metric(router, "goproxy_connections_open") >= 300
    assert "Too many open files" not in router.stderr()


def test_a_hard_limit_too_low_lowers_the_cap_and_still_serves(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]), name="up")
    router = router_process(
        config_for(up.url),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert nofile(router.proc.pid) == (256, 256)
    (warning,) = log_events(
        router, "the open-files limit is too low for limits.max_connections; accepting fewer")
    assert warning["accepted"] == 192 and warning["max_connections"] == 10_000
    with silent_connections(router, 300):
        for path in (INFO, "/healthz", "/readyz"):
            assert get(router, path)[0] == 200, path
        assert metric(router, "goproxy_connections_open") <= 192
    assert "Too many open files" not in router.stderr()
