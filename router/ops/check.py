"""`goproxy-router check`: can this edge reach every upstream and checksum database?

For each upstream and each checksum database URL (the database and each of
its mirrors) the check resolves the host, connects, does the TLS handshake
and fetches one cheap path, timing each phase on its own, then prints one
row per target with a plain-language diagnosis: "ok", "DNS failure: ...",
"connection refused", "TLS error: ...", "timeout after 5.0s while
connecting", "HTTP 503 from upstream", ...

Why raw asyncio streams and not aiohttp: aiohttp's trace hooks time DNS
separately, but report TCP connect and TLS handshake as one
``connection_create`` span, which is exactly the split an operator needs
("the firewall drops us" vs "a middlebox breaks TLS"). So each phase here is
its own step, done the way the router's aiohttp client does it, so the
numbers and the verdicts describe what `serve` will see:

- DNS: ``getaddrinfo(host, port, SOCK_STREAM, AI_ADDRCONFIG)`` (aiohttp's
  threaded resolver does the same call). It runs in a daemon thread rather
  than the loop's executor: a resolver that hangs must not keep the command
  from exiting once the timeout has been reported. An IP-literal host is not
  looked up (``dns_ms`` is null, "n/a" in the table).
- TCP connect: ``aiohappyeyeballs.start_connection`` over the resolved
  addresses with a 0.25 s happy-eyeballs delay, as aiohttp connects.
- TLS (https only): ``StreamWriter.start_tls`` on the connected socket with
  ``ssl.create_default_context()`` (the system trust store, aiohttp's
  default) and the URL's host as ``server_hostname``.
- HTTP: one ``GET`` with ``Connection: close``; ``first_byte_ms`` is the time
  from the request being written to the first byte of the response.

What is fetched, and what counts as working:

- An upstream: ``<url><probe_path>`` (``probe_path`` defaults to ``/``, the
  same path the active probes use), sent with the upstream's credentials
  (its ``headers``, and the ``user:password@`` of its URL as Basic auth),
  built by ``UpstreamTarget.for_url`` exactly as `serve` and the probes
  build them, and only to it. A private registry has no known public
  module, so a fixed module path would prove nothing; as for the active
  probes, any answer below 500 means "it is there and speaks HTTP", and the
  status is reported. Two exceptions, stricter than the probes because this
  is a diagnosis tool: 401, 403 and 407 fail ("credentials missing or
  rejected"): the router sends the same headers on every request, so it
  would get the same refusal for real downloads. 5xx fails.
- A checksum database URL: ``<url>/latest``. It must answer 200 with a
  signed tree head: a note whose text starts with ``go.sum database tree``
  (or with the database's name line, as newer checkpoint formats do) and
  that carries a signature line (``— name sig``). A 200 HTML page from a
  captive portal or a wrong URL is not a checksum database.

Fast enough for its routes: an upstream that answers, but later than a
route using it would wait, is not working for that route ("slow: first byte
after 4.0 s, route corp allows 1 s (timeouts.headers)"), and likewise a
connect slower than the route's ``timeouts.connect``. The time compared with
``timeouts.headers`` runs from the start (DNS included) to the first byte of
the answer, as `serve` counts it (``until_first_byte_ms``). Checksum database
URLs are held to the top-level timeouts, which the sumdb proxy uses.

How long each target is given: by default exactly as long as `serve` would
wait for it, the longest ``timeouts.connect`` to connect and the longest
``timeouts.headers`` in all, among the routes that use it; waiting longer
could not change any verdict. ``--timeout`` replaces that with one bound for
all phases: a longer one shows how slow a too-slow upstream really is, a
shorter one is quicker but may fail an upstream `serve` would still wait for
(the output notes which routes allow more). All targets are checked
concurrently, so the command takes about one bound at most.

Exit status (`run`): 0 when every route has at least one working upstream,
1 otherwise (the output names each such route), 2 is left to the CLI for
config errors. A checksum database with no working URL is reported as a
warning but does not change the exit status: the contract is about routes.

Secrets: credentials are sent to their own upstream only, and every printed
string (URL, diagnosis, summary) goes through `goproxy_router.config.secrets.redact` with
every secret of the config first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import aiohappyeyeballs
from yarl import URL

from goproxy_router import __version__
from goproxy_router.config.schema import Config, Timeouts
from goproxy_router.config.secrets import redact
from goproxy_router.upstream.targets import UpstreamTarget, config_secrets, sumdb_targets

USER_AGENT = f"goproxy-router-check/{__version__}"
HAPPY_EYEBALLS_DELAY = 0.25      # seconds; aiohttp's default
MAX_HEAD = 64 * 1024             # status line + headers we are willing to read
MAX_BODY = 64 * 1024             # a signed tree head is a few hundred bytes
TREE_HEAD_PREFIX = "go.sum database tree\n"

TargetKind = Literal["upstream", "sumdb"]          # what a CheckTarget is
# how a check failed: the class of a CheckResult's diagnosis
FailureClass = Literal["dns", "refused", "connect", "tls", "timeout", "slow", "http", "protocol"]


@dataclass(frozen=True)
class Limit:
    """How long `serve` waits for a target on behalf of one route (or of the sumdb proxy)."""

    route: str | None            # None: the top-level timeouts (checksum databases, unused upstreams)
    connect: float
    headers: float

    @property
    def who(self) -> str:
        return f"route {self.route}" if self.route is not None else "serve"


@dataclass(frozen=True)
class CheckTarget:
    """One URL to check: an upstream or one checksum database URL."""

    kind: TargetKind
    target: UpstreamTarget       # base URL without credentials, headers to send, secrets
    path: str                    # the path fetched, appended to the URL's own path
    routes: tuple[str, ...]
    limits: tuple[Limit, ...]
    db_name: str | None = None   # for a checksum database URL: the database's name

    @property
    def name(self) -> str:
        return self.target.name


@dataclass
class CheckResult:
    """One row of the report. Times are milliseconds; None = not reached / not applicable."""

    kind: TargetKind
    name: str
    url: str
    routes: list[str]
    status: Literal["ok", "fail"]
    diagnosis: str
    failure: FailureClass | None = None
    http_status: int | None = None
    path: str = "/"
    address: str | None = None   # the IP:port connected to
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    first_byte_ms: float | None = None
    until_first_byte_ms: float | None = None   # from the start, DNS included: what timeouts.headers limits
    ok_for: list[str] = field(default_factory=list)   # the routes this upstream works for

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "url": self.url, "routes": self.routes,
            "status": self.status, "http_status": self.http_status, "path": self.path,
            "address": self.address, "dns_ms": self.dns_ms, "connect_ms": self.connect_ms,
            "tls_ms": self.tls_ms, "first_byte_ms": self.first_byte_ms,
            "until_first_byte_ms": self.until_first_byte_ms, "ok_for": self.ok_for,
            "failure": self.failure, "diagnosis": self.diagnosis,
        }


@dataclass(frozen=True)
class RouteVerdict:
    route: str
    upstreams: tuple[str, ...]
    working: tuple[str, ...]
    timeouts: Timeouts

    @property
    def ok(self) -> bool:
        return bool(self.working)


# ---------------------------------------------------------------------------
# what to check


def targets(config: Config) -> list[CheckTarget]:
    """Every upstream (config order), then every checksum database URL and mirror."""
    out: list[CheckTarget] = []
    top = Limit(None, config.timeouts.connect, config.timeouts.headers)
    for name, upstream in config.upstreams.items():
        routes = [r for r in config.routes if name in r.upstreams]
        limits = tuple(Limit(r.name, t.connect, t.headers)
                       for r, t in ((r, config.route_timeouts(r)) for r in routes)) or (top,)
        out.append(CheckTarget("upstream", UpstreamTarget.from_config(name, upstream),
                               upstream.probe_path, tuple(r.name for r in routes), limits))
    sumdb_routes = tuple(r.name for r in config.routes if r.sumdb)
    for db in config.sumdb:
        for target in sumdb_targets(db):
            out.append(CheckTarget("sumdb", target, "/latest", sumdb_routes, (top,), db_name=db.name))
    return out


async def check_all(config: Config, timeout: float | None = None) -> list[CheckResult]:
    """Check every upstream and checksum database URL concurrently.

    Each target is given `timeout` seconds, or by default as long as `serve`
    would wait for it (see the module docstring).
    """
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive")
    secrets = config_secrets(config)
    results = await asyncio.gather(*(_check_one(t, timeout) for t in targets(config)))
    for result in results:
        result.url = redact(result.url, secrets)
        result.diagnosis = redact(result.diagnosis, secrets)
    return list(results)


def route_verdicts(config: Config, results: Sequence[CheckResult]) -> list[RouteVerdict]:
    """Per route: its upstreams, and those working for it (answering, and fast enough)."""
    ok_for = {r.name: r.ok_for for r in results if r.kind == "upstream"}
    return [RouteVerdict(route.name, route.upstreams,
                         tuple(u for u in route.upstreams if route.name in ok_for.get(u, ())),
                         config.route_timeouts(route))
            for route in config.routes]


def shorter_than_routes(config: Config, timeout: float | None) -> str | None:
    """A note for when --timeout may have cut a wait that a route's timeouts allow."""
    if timeout is None:
        return None
    longer = [f"route {r.name} {t.headers:g} s" for r, t in
              ((r, config.route_timeouts(r)) for r in config.routes) if t.headers > timeout]
    if not longer:
        return None
    return (f"note: --timeout {timeout:g} is shorter than timeouts.headers ({', '.join(longer)}): "
            "an upstream slower than that is reported as a timeout here, though serve would "
            "still wait for it; run without --timeout to wait as serve does")


# ---------------------------------------------------------------------------
# one target


class _Probe:
    """Runs the phases for one target, remembering which one it is in."""

    def __init__(self, target: CheckTarget, connect_bound: float | None) -> None:
        self.target = target
        self.url = target.target.url_for(target.path)
        self.connect_bound = connect_bound      # None: only the whole target is bounded
        self.connect_cut = False
        self.phase = "resolving the name"
        self.started = time.perf_counter()
        self.result = CheckResult(kind=target.kind, name=target.name, url=target.target.base_url,
                                  routes=list(target.routes), status="fail",
                                  diagnosis="not checked", path=self.url.raw_path_qs)
        self._writer: asyncio.StreamWriter | None = None

    def fail(self, failure: FailureClass, diagnosis: str) -> None:
        self.result.status, self.result.failure, self.result.diagnosis = "fail", failure, diagnosis

    async def run(self) -> None:
        host = self.url.raw_host or ""
        port = self.url.port or (443 if self.url.scheme == "https" else 80)
        bad = next((n for n, v in self.target.target.headers.items()
                    if any(c in v for c in "\r\n\0")), None)
        if bad is not None:
            self.fail("protocol", f"header {bad} has a line break or NUL in its value; not sent")
            return

        self.phase = "resolving the name"
        started = time.perf_counter()
        try:
            infos = await _resolve(host, port)
        except socket.gaierror as exc:
            self.fail("dns", _dns_diagnosis(host, exc))
            return
        if not _is_ip(host):
            self.result.dns_ms = _ms(started)
        if not infos:
            self.fail("dns", f"DNS failure: {host} has no usable address")
            return

        self.phase = "connecting"
        started = time.perf_counter()
        bound = asyncio.timeout(self.connect_bound)
        try:
            async with bound:
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1)
        except OSError as exc:
            if bound.expired():       # as long as serve would try: judged in _check_one
                self.connect_cut = True
                raise
            if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
                self.fail("timeout", f"connection timed out (the OS gave up on {host}:{port})")
            elif exc.errno == errno.ECONNREFUSED:
                self.fail("refused", f"connection refused (nothing listens on {host}:{port})")
            else:
                self.fail("connect", f"cannot connect: {_os_reason(exc)}")
            return
        self.result.connect_ms = _ms(started)
        peer = sock.getpeername()
        self.result.address = f"[{peer[0]}]:{peer[1]}" if sock.family == socket.AF_INET6 \
            else f"{peer[0]}:{peer[1]}"
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
        except BaseException:
            sock.close()
            raise
        self._writer = writer

        if self.url.scheme == "https":
            self.phase = "during the TLS handshake"
            started = time.perf_counter()
            try:
                await writer.start_tls(ssl.create_default_context(), server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                self.fail("tls", f"TLS error: certificate verify failed ({exc.verify_message})")
                return
            except ssl.SSLError as exc:
                self.fail("tls", _tls_diagnosis(exc))
                return
            except (ConnectionError, EOFError) as exc:
                self.fail("tls", "TLS error: the server closed the connection during the handshake"
                          f" ({_os_reason(exc)}); is it really https?")
                return
            self.result.tls_ms = _ms(started)

        self.phase = "waiting for the response"
        writer.write(self._request())
        await writer.drain()
        started = time.perf_counter()
        try:
            first = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            self.fail("protocol", "the server closed the connection without answering")
            return
        except ConnectionError as exc:
            self.fail("protocol", f"connection lost before an answer ({_os_reason(exc)})")
            return
        self.result.first_byte_ms = _ms(started)
        self.result.until_first_byte_ms = _ms(self.started)

        self.phase = "reading the response"
        try:
            status, headers = await _read_head(first, reader)
        except _NotHTTP as exc:
            self.fail("protocol", f"not an HTTP response (starts with {self._snippet(exc.data)!r})")
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self.fail("protocol", "the response headers were cut short")
            return
        self.result.http_status = status
        if self.target.kind == "upstream":
            self._judge_upstream(status)
        else:
            await self._judge_sumdb(status, headers, reader)
        if self.result.ok:
            self._judge_speed()

    def _request(self) -> bytes:
        lines = [f"GET {self.result.path} HTTP/1.1",
                 f"Host: {self.url.host_port_subcomponent}",
                 f"User-Agent: {USER_AGENT}",
                 "Accept: */*",
                 "Accept-Encoding: identity",
                 "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.target.target.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _judge_upstream(self, status: int) -> None:
        if status >= 500:
            self.fail("http", f"HTTP {status} from upstream")
        elif status in (401, 403, 407):
            sent = ", ".join(self.target.target.headers) or "no credential headers configured"
            self.fail("http", f"HTTP {status} from upstream: credentials missing or rejected "
                              f"(sent: {sent})")
        else:
            self.result.status = "ok"
            self.result.diagnosis = "ok" if status == 200 else \
                f"ok: reachable (HTTP {status} for {self.result.path})"

    async def _judge_sumdb(self, status: int, headers: Mapping[str, str],
                           reader: asyncio.StreamReader) -> None:
        if status != 200:
            self.fail("http", f"HTTP {status} from checksum database")
            return
        body = await _read_body(headers, reader)
        text = body.decode("utf-8", "replace")
        name_line = f"{self.target.db_name}\n" if self.target.db_name else TREE_HEAD_PREFIX
        if (text.startswith(TREE_HEAD_PREFIX) or text.startswith(name_line)) and "\n\n\u2014 " in text:
            self.result.status, self.result.diagnosis = "ok", "ok"
        else:
            self.fail("protocol", f"HTTP 200 but {self.result.path} is not a signed tree head "
                                  f"(starts with {self._snippet(body)!r})")

    def _snippet(self, data: bytes) -> str:
        """The start of what the server sent, scrubbed of this target's secrets before
        it is cut (a cut secret would escape a later scrub)."""
        text = redact(data[:400].decode("utf-8", "replace"), self.target.target.secrets)
        return _snippet(text.encode())

    def _judge_speed(self) -> None:
        """An answer that came, but later than a route would have waited for it."""
        r = self.result
        if r.connect_ms is None or r.until_first_byte_ms is None:    # (an answer has both)
            return
        slow, met, _ = _speed(self.target.limits, r.connect_ms / 1000, r.until_first_byte_ms / 1000)
        r.ok_for = [limit.route for limit in met if limit.route is not None]
        if slow:
            self.fail("slow", "slow: " + "; ".join(slow) + _for_routes("; ok for", met))

    def cut(self, waited: float) -> None:
        """The target was given up on after `waited` s: too slow for the routes whose
        limits that reaches; a plain timeout where only --timeout cut it short."""
        connect = None if self.result.connect_ms is None else self.result.connect_ms / 1000
        slow, _, unjudged = _speed(self.target.limits, connect, None, waited,
                                   connecting=self.phase == "connecting")
        if not slow:
            self.fail("timeout", f"timeout after {waited:g}s {_phase_words(self.phase)}")
            return
        self.fail("slow", "slow: " + "; ".join(slow)
                  + _for_routes(f"; not judged (--timeout {waited:g} s is shorter) for", unjudged))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()   # nothing left to say; never wait on a peer


async def _check_one(target: CheckTarget, timeout: float | None) -> CheckResult:
    connect_bound = None
    if timeout is None:      # as serve waits: the most patient route's limits
        connect_bound = max(limit.connect for limit in target.limits)
        bound = max(limit.headers for limit in target.limits)
    else:
        bound = timeout
    probe = _Probe(target, connect_bound)
    deadline = asyncio.timeout(bound)
    try:
        async with deadline:
            await probe.run()
    except TimeoutError:
        if deadline.expired():
            probe.cut(bound)
        elif probe.connect_cut and connect_bound is not None:
            probe.cut(connect_bound)
        else:
            probe.fail("timeout", f"timed out {_phase_words(probe.phase)}")
    except OSError as exc:   # e.g. a reset while writing the request
        probe.fail("connect" if probe.result.first_byte_ms is None else "protocol",
                   f"connection failed {_phase_words(probe.phase)}: {_os_reason(exc)}")
    except Exception as exc:  # a diagnosis tool reports; one odd target must not hide the others
        probe.fail("protocol", f"unexpected error {_phase_words(probe.phase)}: "
                               f"{type(exc).__name__}: {exc}")
    finally:
        probe.close()
    return probe.result


def _speed(limits: Sequence[Limit], connect: float | None, first_byte: float | None,
           waited: float | None = None, connecting: bool = False
           ) -> tuple[list[str], list[Limit], list[Limit]]:
    """Hold connect and first-byte times (seconds; None = not reached) against each
    limit: (what was too slow, as diagnosis parts; limits met; limits not judged,
    because the wait was cut at `waited` seconds before they ran out)."""
    over: dict[str, list[Limit]] = {"connect": [], "headers": []}
    met: list[Limit] = []
    unjudged: list[Limit] = []
    for limit in limits:
        if connect is not None and connect > limit.connect:
            over["connect"].append(limit)
        elif connecting and waited is not None and waited >= limit.connect:
            over["connect"].append(limit)
        elif first_byte is not None:
            (over["headers"] if first_byte > limit.headers else met).append(limit)
        elif waited is not None and waited >= limit.headers:
            over["headers"].append(limit)
        else:
            unjudged.append(limit)
    if connect is not None:
        took = {"connect": f"connected after {_secs(connect)} s"}
    else:
        took = {"connect": f"not connected within {waited:g} s"}
    took["headers"] = (f"first byte after {_secs(first_byte)} s" if first_byte is not None
                       else f"no answer within {waited:g} s")
    parts = [f"{took[name]}, " + ", ".join(f"{limit.who} allows "
                                           f"{getattr(limit, name):g} s" for limit in exceeded)
             + f" (timeouts.{name})" for name, exceeded in over.items() if exceeded]
    return parts, met, unjudged


def _for_routes(prefix: str, limits: Sequence[Limit]) -> str:
    return f"{prefix} {', '.join(limit.who for limit in limits)}" if limits else ""


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2g}"


def _phase_words(phase: str) -> str:
    return phase if phase.startswith(("during", "while")) else f"while {phase}"


# ---------------------------------------------------------------------------
# phases


async def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """getaddrinfo in a daemon thread: a hung resolver can delay a row, never the exit."""
    if _is_ip(host):
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


def _dns_diagnosis(host: str, exc: socket.gaierror) -> str:
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


def _tls_diagnosis(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    words = reason.lower().replace("_", " ") if reason else (str(exc) or type(exc).__name__)
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
        return "TLS error: the server closed the connection during the handshake; is it really https?"
    if reason in _TLS_PLAIN_HTTP:
        return f"TLS error: {words} (the server does not speak TLS here; plain http?)"
    return f"TLS error: {words}"


def _os_reason(exc: BaseException) -> str:
    """"No route to host" -> "no route to host"; the errno's words, else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class _NotHTTP(Exception):
    def __init__(self, data: bytes) -> None:
        super().__init__("not HTTP")
        self.data = data


async def _read_head(first: bytes, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Parse the status line and headers (names lower-cased)."""
    if first != b"H":
        raise _NotHTTP(first + await _peek(reader))
    line = first + await reader.readuntil(b"\n")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _NotHTTP(line)
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


async def _read_body(headers: Mapping[str, str], reader: asyncio.StreamReader) -> bytes:
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


# ---------------------------------------------------------------------------
# output


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _snippet(data: bytes, limit: int = 40) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


_COLUMNS = ("KIND", "NAME", "URL", "ROUTES", "STATUS", "DNS ms", "CONNECT ms", "TLS ms",
            "FIRST BYTE ms", "DIAGNOSIS")
_NUMERIC = {5, 6, 7, 8}


def _cell_ms(value: float | None, applicable: bool = True) -> str:
    if value is not None:
        return f"{value:.1f}"
    return "-" if applicable else "n/a"


def render_table(results: Sequence[CheckResult]) -> str:
    """Aligned plain text, one row per result; "-" = not reached, "n/a" = not applicable."""
    rows = [list(_COLUMNS)]
    for r in results:
        url = URL(r.url)
        rows.append([
            r.kind, r.name, r.url, ",".join(r.routes) or "-", r.status,
            _cell_ms(r.dns_ms, applicable=not _is_ip(url.raw_host or "")),
            _cell_ms(r.connect_ms),
            _cell_ms(r.tls_ms, applicable=url.scheme == "https"),
            _cell_ms(r.first_byte_ms),
            r.diagnosis,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in _NUMERIC and row is not rows[0] else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Summary:
    """The verdicts under the table: per route, per checksum database, and notes."""

    routes: list[tuple[RouteVerdict, str]]        # (verdict, its line)
    sumdb: list[tuple[str, list[str], str]]       # (database, its working URLs' names, its line)
    notes: list[str]

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.routes] + [line for *_, line in self.sumdb] + self.notes

    @property
    def problems(self) -> list[str]:
        """The exit-1 reasons: routes without a working upstream."""
        return [line for verdict, line in self.routes if not verdict.ok]


def summarize(config: Config, results: Sequence[CheckResult], timeout: float | None = None) -> Summary:
    by_name = {r.name: r for r in results if r.kind == "upstream"}
    routes: list[tuple[RouteVerdict, str]] = []
    for verdict in route_verdicts(config, results):
        total = len(verdict.upstreams)
        if verdict.ok:
            line = (f"route {verdict.route}: ok, {len(verdict.working)} of {total} upstreams "
                    f"working ({', '.join(verdict.working)})")
        else:
            why = "; ".join(f"{u}: {by_name[u].diagnosis}" for u in verdict.upstreams if u in by_name)
            line = f"route {verdict.route}: NO WORKING UPSTREAM ({why})"
        routes.append((verdict, line))
    sumdb: list[tuple[str, list[str], str]] = []
    for db in config.sumdb:
        rows = [r for r in results if r.kind == "sumdb"
                and (r.name == db.name or r.name.startswith(f"{db.name} mirror "))]
        working = [r.name for r in rows if r.ok]
        if working:
            line = f"checksum database {db.name}: ok ({', '.join(working)})"
        else:
            line = (f"checksum database {db.name}: warning: no URL works; the go command's "
                    "checksum lookups through this router will fail")
        sumdb.append((db.name, working, line))
    cut = any(r.failure in ("timeout", "slow") for r in results)
    note = shorter_than_routes(config, timeout) if cut else None
    return Summary(routes, sumdb, [note] if note else [])


def render_json(results: Sequence[CheckResult], summary: Summary) -> str:
    """One object: every row ("targets"), each route's verdict, each database's, any notes."""
    return json.dumps({
        "targets": [r.to_json() for r in results],
        "routes": [{"name": v.route, "ok": v.ok, "upstreams": list(v.upstreams),
                    "working": list(v.working),
                    "timeouts": {"connect": v.timeouts.connect, "headers": v.timeouts.headers},
                    "summary": line} for v, line in summary.routes],
        "sumdb": [{"name": name, "ok": bool(working), "working": working, "summary": line}
                  for name, working, line in summary.sumdb],
        "notes": summary.notes,
    }, indent=2)


def run(config: Config, timeout: float | None = None, as_json: bool = False,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Check, print, and return the exit status (0 every route has a working upstream, else 1).

    `timeout` None: each target is given as long as serve would wait for it.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    results = asyncio.run(check_all(config, timeout))
    summary = summarize(config, results, timeout)
    if as_json:
        print(render_json(results, summary), file=out)
        for problem in summary.problems:
            print(f"goproxy-router: {problem}", file=err)
    else:
        print(render_table(results), file=out)
        print(file=out)
        print("\n".join(summary.lines), file=out)
    return 1 if summary.problems else 0
