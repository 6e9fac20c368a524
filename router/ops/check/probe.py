"""One target probed phase by phase, timed and judged; every target at once.

`check_one` runs DNS, connect, TLS and one GET for a target, within as long
as `serve` would wait for it (or `--timeout`), and turns what happened into a
`CheckResult`: which phase failed and why, or whether the answer counts as
working and was fast enough for each route. `check_all` checks every target
concurrently and scrubs every secret of the config from what it reports.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Mapping, Sequence

import aiohappyeyeballs

from goproxy_router import __version__
from goproxy_router.config.schema import Config
from goproxy_router.config.secrets import redact
from goproxy_router.ops.check.targets import CheckResult, CheckTarget, FailureClass, Limit, targets
from goproxy_router.ops.check.wire import (
    MAX_HEAD,
    NotHTTP,
    dns_diagnosis,
    is_ip,
    ms_since,
    os_reason,
    read_body,
    read_head,
    resolve,
    snippet,
    tls_diagnosis,
)
from goproxy_router.upstream.targets import config_secrets

USER_AGENT = f"goproxy-router-check/{__version__}"
HAPPY_EYEBALLS_DELAY = 0.25      # seconds; aiohttp's default
TREE_HEAD_PREFIX = "go.sum database tree\n"


async def check_all(config: Config, timeout: float | None = None) -> list[CheckResult]:
    """Check every upstream and checksum database URL concurrently.

    Each target is given `timeout` seconds, or by default as long as `serve`
    would wait for it (see goproxy_router.ops.check).
    """
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive")
    secrets = config_secrets(config)
    results = await asyncio.gather(*(check_one(t, timeout) for t in targets(config)))
    for result in results:
        result.url = redact(result.url, secrets)
        result.diagnosis = redact(result.diagnosis, secrets)
    return list(results)


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
            infos = await resolve(host, port)
        except socket.gaierror as exc:
            self.fail("dns", dns_diagnosis(host, exc))
            return
        if not is_ip(host):
            self.result.dns_ms = ms_since(started)
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
            if bound.expired():       # as long as serve would try: judged in check_one
                self.connect_cut = True
                raise
            if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
                self.fail("timeout", f"connection timed out (the OS gave up on {host}:{port})")
            elif exc.errno == errno.ECONNREFUSED:
                self.fail("refused", f"connection refused (nothing listens on {host}:{port})")
            else:
                self.fail("connect", f"cannot connect: {os_reason(exc)}")
            return
        self.result.connect_ms = ms_since(started)
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
                self.fail("tls", tls_diagnosis(exc))
                return
            except (ConnectionError, EOFError) as exc:
                self.fail("tls", "TLS error: the server closed the connection during the handshake"
                          f" ({os_reason(exc)}); is it really https?")
                return
            self.result.tls_ms = ms_since(started)

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
            self.fail("protocol", f"connection lost before an answer ({os_reason(exc)})")
            return
        self.result.first_byte_ms = ms_since(started)
        self.result.until_first_byte_ms = ms_since(self.started)

        self.phase = "reading the response"
        try:
            status, headers = await read_head(first, reader)
        except NotHTTP as exc:
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
        body = await read_body(headers, reader)
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
        return snippet(text.encode())

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


async def check_one(target: CheckTarget, timeout: float | None) -> CheckResult:
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
                   f"connection failed {_phase_words(probe.phase)}: {os_reason(exc)}")
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
