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
  same path the active probes use), sent with the upstream's configured
  ``headers`` (and only to it). A private registry has no known public
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

The timeout bounds each target as a whole (all phases), and all targets are
checked concurrently, so the command takes about one timeout at most.

Exit status (`run`): 0 when every route has at least one working upstream,
1 otherwise (the output names each such route), 2 is left to the CLI for
config errors. A checksum database with no working URL is reported as a
warning but does not change the exit status: the contract is about routes.

Secrets: header values are sent to their own upstream only, never logged,
and scrubbed from every diagnosis before anything is printed.
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import aiohappyeyeballs
from pydantic import SecretStr
from yarl import URL

from router import __version__
from router.config import Config

USER_AGENT = f"goproxy-router-check/{__version__}"
HAPPY_EYEBALLS_DELAY = 0.25      # seconds; aiohttp's default
MAX_HEAD = 64 * 1024             # status line + headers we are willing to read
MAX_BODY = 64 * 1024             # a signed tree head is a few hundred bytes
TREE_HEAD_PREFIX = "go.sum database tree\n"

Kind = Literal["upstream", "sumdb"]
Failure = Literal["dns", "refused", "connect", "tls", "timeout", "http", "protocol"]


@dataclass(frozen=True)
class CheckTarget:
    """One URL to check: an upstream or one checksum database URL."""

    kind: Kind
    name: str
    url: str
    path: str                    # the path fetched, appended to the URL's own path
    routes: tuple[str, ...]
    headers: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)
    db_name: str | None = None   # for a checksum database URL: the database's name


@dataclass
class CheckResult:
    """One row of the report. Times are milliseconds; None = not reached / not applicable."""

    kind: Kind
    name: str
    url: str
    routes: list[str]
    status: Literal["ok", "fail"]
    diagnosis: str
    failure: Failure | None = None
    http_status: int | None = None
    path: str = "/"
    address: str | None = None   # the IP:port connected to
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    first_byte_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "url": self.url, "routes": self.routes,
            "status": self.status, "http_status": self.http_status, "path": self.path,
            "address": self.address, "dns_ms": self.dns_ms, "connect_ms": self.connect_ms,
            "tls_ms": self.tls_ms, "first_byte_ms": self.first_byte_ms,
            "failure": self.failure, "diagnosis": self.diagnosis,
        }


@dataclass(frozen=True)
class RouteVerdict:
    route: str
    upstreams: tuple[str, ...]
    working: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return bool(self.working)


# ---------------------------------------------------------------------------
# what to check


def targets(config: Config) -> list[CheckTarget]:
    """Every upstream (config order), then every checksum database URL and mirror."""
    out: list[CheckTarget] = []
    for name, upstream in config.upstreams.items():
        routes = tuple(r.name for r in config.routes if name in r.upstreams)
        out.append(CheckTarget("upstream", name, upstream.url, upstream.probe_path, routes,
                               dict(upstream.headers)))
    sumdb_routes = tuple(r.name for r in config.routes if r.sumdb)
    for db in config.sumdb:
        for i, url in enumerate((db.url, *db.mirrors)):
            # Named as the sumdb proxy names them in logs and errors.
            out.append(CheckTarget("sumdb", db.name if i == 0 else f"{db.name} mirror {i}",
                                   url, "/latest", sumdb_routes, db_name=db.name))
    return out


async def check_all(config: Config, timeout: float) -> list[CheckResult]:
    """Check every upstream and checksum database URL concurrently, each within `timeout` s."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    secrets = _secret_values(config)
    results = await asyncio.gather(*(_check_one(t, timeout) for t in targets(config)))
    for result in results:
        result.diagnosis = redact(result.diagnosis, secrets)
    return list(results)


def route_verdicts(config: Config, results: Sequence[CheckResult]) -> list[RouteVerdict]:
    ok = {r.name for r in results if r.kind == "upstream" and r.ok}
    return [RouteVerdict(route.name, route.upstreams, tuple(u for u in route.upstreams if u in ok))
            for route in config.routes]


# ---------------------------------------------------------------------------
# one target


class _Probe:
    """Runs the phases for one target, remembering which one it is in."""

    def __init__(self, target: CheckTarget) -> None:
        self.target = target
        self.url = URL(target.url)
        self.phase = "resolving the name"
        self.result = CheckResult(kind=target.kind, name=target.name, url=target.url,
                                  routes=list(target.routes), status="fail",
                                  diagnosis="not checked",
                                  path=self.url.raw_path.rstrip("/") + target.path)
        self._writer: asyncio.StreamWriter | None = None

    def fail(self, failure: Failure, diagnosis: str) -> None:
        self.result.status, self.result.failure, self.result.diagnosis = "fail", failure, diagnosis

    async def run(self) -> None:
        host = self.url.raw_host or ""
        port = self.url.port or (443 if self.url.scheme == "https" else 80)
        bad = next((n for n, v in self.target.headers.items()
                    if any(c in v.get_secret_value() for c in "\r\n\0")), None)
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
        try:
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1)
        except OSError as exc:
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

        self.phase = "reading the response"
        try:
            status, headers = await _read_head(first, reader)
        except _NotHTTP as exc:
            self.fail("protocol", f"not an HTTP response (starts with {exc.snippet!r})")
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self.fail("protocol", "the response headers were cut short")
            return
        self.result.http_status = status
        if self.target.kind == "upstream":
            self._judge_upstream(status)
        else:
            await self._judge_sumdb(status, headers, reader)

    def _request(self) -> bytes:
        lines = [f"GET {self.result.path} HTTP/1.1",
                 f"Host: {self.url.host_port_subcomponent}",
                 f"User-Agent: {USER_AGENT}",
                 "Accept: */*",
                 "Accept-Encoding: identity",
                 "Connection: close"]
        lines += [f"{name}: {value.get_secret_value()}" for name, value in self.target.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _judge_upstream(self, status: int) -> None:
        if status >= 500:
            self.fail("http", f"HTTP {status} from upstream")
        elif status in (401, 403, 407):
            sent = ", ".join(self.target.headers) or "no credential headers configured"
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
                                  f"(starts with {_snippet(body)!r})")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()   # nothing left to say; never wait on a peer


async def _check_one(target: CheckTarget, timeout: float) -> CheckResult:
    probe = _Probe(target)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await probe.run()
    except TimeoutError:
        if deadline.expired():
            probe.fail("timeout", f"timeout after {timeout:g}s {_phase_words(probe.phase)}")
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
        self.snippet = _snippet(data)


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
# secrets


def _secret_values(config: Config) -> list[str]:
    """Every configured header value, and the token part of "Scheme token" values."""
    values: set[str] = set()
    for upstream in config.upstreams.values():
        for secret in upstream.headers.values():
            value = secret.get_secret_value().strip()
            if value:
                values.add(value)
                token = value.partition(" ")[2].strip()
                if len(token) >= 4:      # "Bearer <token>": the token alone is the secret too
                    values.add(token)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


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


def render_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2)


def summary_lines(config: Config, results: Sequence[CheckResult]) -> tuple[list[str], list[str]]:
    """(lines about routes and databases, problems): problems are also the exit-1 reasons."""
    by_name = {r.name: r for r in results if r.kind == "upstream"}
    lines: list[str] = []
    problems: list[str] = []
    for verdict in route_verdicts(config, results):
        total = len(verdict.upstreams)
        if verdict.ok:
            lines.append(f"route {verdict.route}: ok, {len(verdict.working)} of {total} upstreams "
                         f"working ({', '.join(verdict.working)})")
        else:
            why = "; ".join(f"{u}: {by_name[u].diagnosis}" for u in verdict.upstreams if u in by_name)
            problem = f"route {verdict.route}: NO WORKING UPSTREAM ({why})"
            lines.append(problem)
            problems.append(problem)
    for db in config.sumdb:
        rows = [r for r in results if r.kind == "sumdb"
                and (r.name == db.name or r.name.startswith(f"{db.name} mirror "))]
        working = [r.name for r in rows if r.ok]
        if working:
            lines.append(f"checksum database {db.name}: ok ({', '.join(working)})")
        else:
            lines.append(f"checksum database {db.name}: warning: no URL works; the go command's "
                         "checksum lookups through this router will fail")
    return lines, problems


def run(config: Config, timeout: float, as_json: bool = False,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Check, print, and return the exit status (0 every route has a working upstream, else 1)."""
    out = out or sys.stdout
    err = err or sys.stderr
    results = asyncio.run(check_all(config, timeout))
    lines, problems = summary_lines(config, results)
    if as_json:
        print(render_json(results), file=out)
        for problem in problems:
            print(f"goproxy-router: {problem}", file=err)
    else:
        print(render_table(results), file=out)
        print(file=out)
        print("\n".join(lines), file=out)
    return 1 if problems else 0
