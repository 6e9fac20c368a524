"""`goproxy-router check`: one row per upstream and checksum database URL, a
plain-language diagnosis for each failure kind, and the exit status.

Every server here is on 127.0.0.1; the DNS case uses the reserved ``.invalid``
TLD, which never resolves. Every wait is bounded by a small --timeout.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from goproxy_router.config.loader import parse_config
from goproxy_router.config.schema import Config
from goproxy_router.config.secrets import REDACTED, redact, secret_values
from goproxy_router.ops.check.probe import check_all
from goproxy_router.ops.check.report import render_table, run
from goproxy_router.ops.check.targets import CheckResult, route_verdicts
from goproxy_router.serving.edge import EdgeState
from goproxy_router.upstream.client import UpstreamClient
from goproxy_router.upstream.stats import StatsRegistry
from tests.conftest import REPO_ROOT
from tests.support import FakeProxy, Faults, Module, ModuleTree, RefusedPort, ThreadedFakeProxy

pytestmark = pytest.mark.timeout(60)

MOD = Module("example.com/m", "v1.0.0")
LIST_PATH = "/example.com/m/@v/list"
DB = "sum.example.com"
TREE_HEAD = (f"go.sum database tree\n1234\nq5Ws6QkR2aO0bF1k6w0z3wYQ1b9hQ2y5m1mI5B9CkXQ=\n\n"
             f"\u2014 {DB} Az3grqnJkvS5mLlFdWbY+bTmiJkkQ3PNwI1u0QoYlYk3AJLsD+2ObJ8Zk4w=\n")
SECRET = "s3cret-token-9f8e7d"
USER, PASSWORD = "ci-deploy", "s3cret-pass"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
NO_DNS = "http://no-such-host.invalid"

MakeFake = Callable[..., Awaitable[FakeProxy]]


def make_config(upstreams: dict[str, dict[str, Any]], routes: list[dict[str, Any]] | None = None,
                sumdb: list[dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                **top: Any) -> Config:
    data: dict[str, Any] = {
        "upstreams": upstreams,
        "routes": routes or [{"name": "public", "match": ["*"], "upstreams": list(upstreams)}],
        **top,
    }
    if sumdb:
        data["sumdb"] = sumdb
    return parse_config(yaml.safe_dump(data, sort_keys=False), "routes.yaml", env or {})


async def check_one(url: str, timeout: float = 3.0, **upstream: Any) -> CheckResult:
    [result] = await check_all(make_config({"up": {"url": url, **upstream}}), timeout)
    return result


# -- servers ------------------------------------------------------------------


async def _aiohttp_site(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                        ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture
async def site() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Factory: ``port = await site(handler, ssl_context=None)``; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def make(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   ssl_context: ssl.SSLContext | None = None) -> int:
        runner, port = await _aiohttp_site(handler, ssl_context)
        runners.append(runner)
        return port

    yield make
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), 10)


async def sumdb_handler(request: web.Request) -> web.Response:
    if request.path == "/latest":
        return web.Response(text=TREE_HEAD, content_type="text/plain")
    return web.Response(status=404, text="not found")


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never sends a byte (released at teardown)."""
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    release.set()
    server.close()
    for writer in writers:
        writer.transport.abort()
    await asyncio.wait_for(server.wait_closed(), 5)


def _certificates(tmp: Path) -> dict[str, Path]:
    """A CA, a leaf for 127.0.0.1 signed by it, and a self-signed leaf (PEM files)."""
    pytest.importorskip("cryptography", reason="cryptography makes the test certificates")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, data: bytes) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key, leaf_key, self_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("check test CA", ca_key, "check test CA", ca_key, ca=True)
    leaf = cert("127.0.0.1", leaf_key, "check test CA", ca_key, ca=False)
    selfsigned = cert("127.0.0.1", self_key, "127.0.0.1", self_key, ca=False)
    pem = serialization.Encoding.PEM
    return {
        "ca": write("ca.pem", ca.public_bytes(pem)),
        "leaf": write("leaf.pem", leaf.public_bytes(pem)),
        "leaf_key": write("leaf.key", key_pem(leaf_key)),
        "self": write("self.pem", selfsigned.public_bytes(pem)),
        "self_key": write("self.key", key_pem(self_key)),
    }


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# -- each failure kind ----------------------------------------------------------


async def test_ok_upstream_fetches_its_probe_path_and_times_each_phase(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    result = await check_one(up.url, probe_path=LIST_PATH)
    assert (result.status, result.failure, result.http_status) == ("ok", None, 200)
    assert result.diagnosis == "ok"
    assert up.raw_paths() == [LIST_PATH]
    assert result.address == f"127.0.0.1:{up.port}"
    assert result.dns_ms is None                    # an IP literal: nothing was looked up
    assert result.tls_ms is None                    # plain http
    assert result.connect_ms is not None and result.first_byte_ms is not None
    assert result.routes == ["public"]


async def test_default_probe_path_accepts_any_answer_below_500_and_reports_it(
        fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")   # "/" is not a module path: 404
    result = await check_one(up.url)
    assert result.ok and result.http_status == 404
    assert result.diagnosis == "ok: reachable (HTTP 404 for /)"
    assert up.raw_paths() == ["/"]


async def test_url_path_prefix_is_kept(site: Callable[..., Awaitable[int]]) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="ok")

    port = await site(handler)
    result = await check_one(f"http://127.0.0.1:{port}/api/go/remote", probe_path="/golang.org/x/mod/@v/list")
    assert result.ok
    assert seen == ["/api/go/remote/golang.org/x/mod/@v/list"]


async def test_http_500(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(name="up", faults=Faults(status=500))
    result = await check_one(up.url)
    assert (result.status, result.failure, result.http_status) == ("fail", "http", 500)
    assert result.diagnosis == "HTTP 500 from upstream"
    assert result.first_byte_ms is not None


async def test_credentials_rejected_is_a_failure(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(name="up", faults=Faults(required_headers={"Authorization": "Bearer right"}))
    config = make_config({"up": {"url": up.url, "headers": {"Authorization": "Bearer wrong"}}})
    [result] = await check_all(config, 3.0)
    assert (result.failure, result.http_status) == ("http", 403)
    assert result.diagnosis == ("HTTP 403 from upstream: credentials missing or rejected "
                                "(sent: Authorization)")
    assert "wrong" not in result.diagnosis


async def test_connection_refused(refused_url: str) -> None:
    result = await check_one(refused_url)
    assert (result.status, result.failure) == ("fail", "refused")
    assert result.diagnosis.startswith("connection refused")
    assert result.connect_ms is None and result.first_byte_ms is None


async def test_timeout_waiting_for_the_response(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(name="up", faults=Faults(hang=True))
    started = time.monotonic()
    result = await check_one(up.url, timeout=0.5)
    assert time.monotonic() - started < 3
    assert (result.status, result.failure) == ("fail", "timeout")
    assert result.diagnosis == "timeout after 0.5s while waiting for the response"
    assert result.connect_ms is not None and result.first_byte_ms is None   # got that far


async def test_timeout_during_the_tls_handshake(silent_server: int) -> None:
    result = await check_one(f"https://127.0.0.1:{silent_server}", timeout=0.5)
    assert result.failure == "timeout"
    assert result.diagnosis == "timeout after 0.5s during the TLS handshake"
    assert result.connect_ms is not None and result.tls_ms is None


async def test_tls_error_against_a_plain_http_server(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(name="up")
    result = await check_one(up.url.replace("http://", "https://"))
    assert (result.status, result.failure) == ("fail", "tls")
    assert result.diagnosis.startswith("TLS error: ")
    assert result.connect_ms is not None and result.tls_ms is None
    assert up.requests == []                       # nothing readable as HTTP was sent


async def test_tls_error_self_signed_certificate(site: Callable[..., Awaitable[int]],
                                                 tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    port = await site(sumdb_handler, _server_context(certs["self"], certs["self_key"]))
    result = await check_one(f"https://127.0.0.1:{port}")
    assert result.failure == "tls"
    assert result.diagnosis == "TLS error: certificate verify failed (self-signed certificate)"


async def test_tls_ok_with_a_trusted_certificate_times_the_handshake(
        site: Callable[..., Awaitable[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs = _certificates(tmp_path)
    port = await site(sumdb_handler, _server_context(certs["leaf"], certs["leaf_key"]))
    url = f"https://127.0.0.1:{port}"
    untrusted = await check_one(url)
    assert untrusted.diagnosis.startswith("TLS error: certificate verify failed (unable to get local")
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))    # the system trust store, per OpenSSL
    config = make_config({"up": {"url": url}}, sumdb=[{"name": DB, "url": url}])
    upstream, db = await check_all(config, 3.0)
    assert upstream.ok and upstream.http_status == 404
    assert db.ok and db.diagnosis == "ok"
    for result in (upstream, db):
        assert None not in (result.connect_ms, result.tls_ms, result.first_byte_ms)


async def test_dns_failure() -> None:
    # .invalid is reserved (RFC 6761): the resolver answers NXDOMAIN without asking anyone
    # real. Make sure this machine's resolver fails fast before relying on it.
    outcome: list[BaseException | object] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo("no-such-host.invalid", 80))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)   # daemon: a hung resolver can't block exit
    thread.start()
    thread.join(timeout=3)
    if not outcome:
        pytest.skip("this machine's resolver does not fail fast for .invalid names")
    if not isinstance(outcome[0], socket.gaierror):
        pytest.skip(f"this machine's resolver answers for .invalid names: {outcome[0]!r}")
    started = time.monotonic()
    result = await check_one(NO_DNS, timeout=3.0)
    assert time.monotonic() - started < 3.5
    assert (result.status, result.failure) == ("fail", "dns")
    assert result.diagnosis.startswith("DNS failure: ")
    assert "no-such-host.invalid" in result.diagnosis
    assert result.dns_ms is None and result.connect_ms is None


async def test_not_http_at_all() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        result = await check_one(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    assert result.failure == "protocol"
    assert result.diagnosis == "not an HTTP response (starts with 'SSH-2.0-OpenSSH_9.6')"


# -- checksum databases ------------------------------------------------------------


async def test_sumdb_latest_must_be_a_signed_tree_head(site: Callable[..., Awaitable[int]]) -> None:
    seen: list[tuple[str, str | None]] = []

    async def html(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.Response(text="<html>welcome to the hotel wifi</html>", content_type="text/html")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (TREE_HEAD[:10], TREE_HEAD[10:]):
            await response.write(part.encode())
        await response.write_eof()
        return response

    good, portal, chunky = await site(sumdb_handler), await site(html), await site(chunked)
    with RefusedPort() as refused:
        config = make_config(
            {"up": {"url": f"http://127.0.0.1:{good}"}},
            sumdb=[{"name": DB, "url": f"http://127.0.0.1:{portal}",
                    "mirrors": [f"http://127.0.0.1:{good}", refused.url, f"http://127.0.0.1:{chunky}"]},
                   {"name": "sum.other.example", "url": f"http://127.0.0.1:{good}/nothing-here"}])
        results = await check_all(config, 3.0)
    upstream, main, mirror, dead, chunk, other = results
    assert [r.kind for r in results] == ["upstream"] + ["sumdb"] * 5
    assert [r.name for r in results[1:5]] == [DB, f"{DB} mirror 1", f"{DB} mirror 2", f"{DB} mirror 3"]
    assert main.failure == "protocol" and main.http_status == 200
    assert main.diagnosis == ("HTTP 200 but /latest is not a signed tree head "
                              "(starts with '<html>welcome to the hotel wifi</html>')")
    assert seen == [("/latest", None)]
    assert mirror.ok and mirror.diagnosis == "ok" and mirror.routes == ["public"]
    assert dead.failure == "refused"
    assert chunk.ok
    assert other.failure == "http" and other.diagnosis == "HTTP 404 from checksum database"
    assert other.path == "/nothing-here/latest"
    assert upstream.ok


# -- concurrency, secrets, routes ------------------------------------------------------


async def test_targets_are_checked_concurrently_each_within_the_timeout(
        fake_proxy: MakeFake, silent_server: int) -> None:
    hung = [await fake_proxy(name=f"hung{i}", faults=Faults(hang=True)) for i in range(3)]
    upstreams = {p.name: {"url": p.url} for p in hung}
    upstreams["silent"] = {"url": f"https://127.0.0.1:{silent_server}"}
    started = time.monotonic()
    results = await check_all(make_config(upstreams), 0.5)
    assert time.monotonic() - started < 2.0
    assert [r.failure for r in results] == ["timeout"] * 4


async def test_secret_header_goes_to_its_upstream_only_and_is_never_printed(
        fake_proxy: MakeFake, site: Callable[..., Awaitable[int]]) -> None:
    private = await fake_proxy(name="private",
                               faults=Faults(required_headers={"Authorization": f"Bearer {SECRET}"}))
    public = await fake_proxy(name="public")

    async def echo_header(request: web.Request) -> web.StreamResponse:
        """A broken server that echoes the credential back as the start of its answer."""
        transport = request.transport
        assert transport is not None
        transport.write(f"{request.headers.get('X-Api-Key')} oops\r\n".encode())
        transport.close()
        return web.Response()

    echo = await site(echo_header)
    config = make_config(
        {"private": {"url": private.url, "headers": {"Authorization": "Bearer ${TOKEN}"}},
         "public": {"url": public.url},
         "echo": {"url": f"http://127.0.0.1:{echo}", "headers": {"X-Api-Key": SECRET}}},
        routes=[{"name": "corp", "match": ["corp.example"], "upstreams": ["private"], "sumdb": False},
                {"name": "public", "match": ["*"], "upstreams": ["public", "echo"]}],
        env={"TOKEN": SECRET})
    results = await check_all(config, 3.0)
    by_name = {r.name: r for r in results}
    assert by_name["private"].ok and by_name["private"].http_status == 404
    assert private.requests[0].header("Authorization") == f"Bearer {SECRET}"
    assert public.requests[0].header("Authorization") is None
    assert by_name["echo"].failure == "protocol"
    assert REDACTED in by_name["echo"].diagnosis
    text = render_table(results) + json.dumps([r.to_json() for r in results])
    assert SECRET not in text
    assert "oops" in text


async def test_route_verdicts(fake_proxy: MakeFake, refused_url: str) -> None:
    up = await fake_proxy(name="up")
    config = make_config(
        {"good": {"url": up.url}, "bad": {"url": refused_url}, "spare": {"url": up.url}},
        routes=[{"name": "mixed", "match": ["a.example"], "upstreams": ["bad", "good"]},
                {"name": "broken", "match": ["*"], "upstreams": ["bad"]}])
    results = await check_all(config, 3.0)
    assert [r.routes for r in results] == [["mixed"], ["mixed", "broken"], []]
    verdicts = route_verdicts(config, results)
    assert [(v.route, v.working) for v in verdicts] == [("mixed", ("good",)), ("broken", ())]


def test_run_prints_table_and_returns_1_naming_the_broken_route(refused_url: str) -> None:
    import io

    config = make_config({"bad": {"url": refused_url}},
                         routes=[{"name": "broken", "match": ["*"], "upstreams": ["bad"]}])
    out, err = io.StringIO(), io.StringIO()
    assert run(config, 2.0, out=out, err=err) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:5] == ["KIND", "NAME", "URL", "ROUTES", "STATUS"]
    assert lines[1].split()[:5] == ["upstream", "bad", refused_url, "broken", "fail"]
    assert any(line.startswith("route broken: NO WORKING UPSTREAM (bad: connection refused")
               for line in lines)


# -- the real command line ------------------------------------------------------------


class _SumdbHandler(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append(dict(self.headers))
        body = TREE_HEAD.encode() if self.path == "/latest" else b"not found\n"
        self.send_response(200 if self.path == "/latest" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def threaded_sumdb() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SumdbHandler)
    _SumdbHandler.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_cli(tmp_path: Path, config: dict[str, Any] | str, *args: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "routes.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "goproxy_router", "check", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=30, env=full_env, cwd=tmp_path)


def test_cli_all_good_exits_0_and_never_prints_the_secret(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        threaded_sumdb: str) -> None:
    private = threaded_fake_proxy(ModuleTree([MOD]), name="private",
                                  faults=Faults(required_headers={"Authorization": f"Bearer {SECRET}"}))
    public = threaded_fake_proxy(ModuleTree([MOD]), name="public")
    config = {
        "upstreams": {"private": {"url": private.url, "probe_path": LIST_PATH,
                                  "headers": {"Authorization": "Bearer ${CHECK_TOKEN}"}},
                      "public": {"url": public.url, "probe_path": LIST_PATH}},
        "routes": [{"name": "corp", "match": ["example.com/m"], "upstreams": ["private"],
                    "sumdb": False},
                   {"name": "public", "match": ["*"], "upstreams": ["public"]}],
        "sumdb": [{"name": DB, "url": threaded_sumdb}],
    }
    env = {"CHECK_TOKEN": SECRET}
    table = run_cli(tmp_path, config, "--timeout", "3", env=env)
    assert table.returncode == 0, table.stdout + table.stderr
    rows = {line.split()[1]: line for line in table.stdout.splitlines()
            if line.startswith(("upstream", "sumdb"))}
    assert set(rows) == {"private", "public", DB}
    assert all(row.split()[4] == "ok" for row in rows.values())
    assert rows["private"].split()[3] == "corp" and rows[DB].split()[3] == "public"
    assert "route corp: ok, 1 of 1 upstreams working (private)" in table.stdout
    assert f"checksum database {DB}: ok ({DB})" in table.stdout

    as_json = run_cli(tmp_path, config, "--json", "--timeout", "3", env=env)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    results = report["targets"]
    assert [(r["kind"], r["name"], r["status"], r["http_status"]) for r in results] == [
        ("upstream", "private", "ok", 200), ("upstream", "public", "ok", 200),
        ("sumdb", DB, "ok", 200)]
    assert set(results[0]) >= {"kind", "name", "url", "routes", "status", "dns_ms", "connect_ms",
                               "tls_ms", "first_byte_ms", "until_first_byte_ms", "ok_for",
                               "diagnosis"}
    assert [(r["name"], r["ok"], r["working"]) for r in report["routes"]] == [
        ("corp", True, ["private"]), ("public", True, ["public"])]
    assert report["routes"][0]["summary"] == "route corp: ok, 1 of 1 upstreams working (private)"
    assert report["sumdb"] == [{"name": DB, "ok": True, "working": [DB],
                                "summary": f"checksum database {DB}: ok ({DB})"}]
    assert report["notes"] == [] and table.stderr == ""
    for run_ in (table, as_json):
        assert SECRET not in run_.stdout + run_.stderr
    assert [r.header("Authorization") for r in private.requests] == [f"Bearer {SECRET}"] * 2
    assert [r.header("Authorization") for r in public.requests] == [None, None]
    assert all("Authorization" not in h for h in _SumdbHandler.seen) and len(_SumdbHandler.seen) == 2


def test_cli_route_without_a_working_upstream_exits_1(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy], refused_url: str) -> None:
    good = threaded_fake_proxy(name="good")
    broken = threaded_fake_proxy(name="broken", faults=Faults(status=503))
    config = {
        "upstreams": {"good": {"url": good.url}, "broken": {"url": broken.url},
                      "gone": {"url": refused_url}, "nodns": {"url": NO_DNS}},
        "routes": [{"name": "private", "match": ["corp.example"], "upstreams": ["broken", "gone"]},
                   {"name": "public", "match": ["*"], "upstreams": ["nodns", "good"]}],
    }
    table = run_cli(tmp_path, config, "--timeout", "3")
    assert table.returncode == 1, table.stdout + table.stderr
    assert ("route private: NO WORKING UPSTREAM (broken: HTTP 503 from upstream; "
            "gone: connection refused") in table.stdout
    assert "route public: ok, 1 of 2 upstreams working (good)" in table.stdout

    as_json = run_cli(tmp_path, config, "--timeout", "3", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    by_name = {r["name"]: r for r in report["targets"]}
    assert {n: r["failure"] for n, r in by_name.items()} == {
        "good": None, "broken": "http", "gone": "refused", "nodns": by_name["nodns"]["failure"]}
    assert by_name["nodns"]["failure"] in ("dns", "timeout")   # "timeout" only if DNS is broken here
    assert "route private: NO WORKING UPSTREAM" in as_json.stderr
    routes = {r["name"]: r for r in report["routes"]}
    assert (routes["private"]["ok"], routes["private"]["working"]) == (False, [])
    assert routes["private"]["summary"].startswith("route private: NO WORKING UPSTREAM (broken: ")
    assert (routes["public"]["ok"], routes["public"]["working"]) == (True, ["good"])
    assert routes["public"]["upstreams"] == ["nodns", "good"]


def test_cli_config_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "upstreams: {}\nroutes: [{name: r, match: ['*'], upstreams: [nope]}]\n")
    assert result.returncode == 2
    assert "unknown upstream 'nope'" in result.stderr
    bad_timeout = run_cli(tmp_path, {"upstreams": {"u": {"url": "http://127.0.0.1:1"}},
                                     "routes": [{"name": "r", "match": ["*"], "upstreams": ["u"]}]},
                          "--timeout", "0")
    assert bad_timeout.returncode == 2 and "--timeout" in bad_timeout.stderr


# -- credentials in the URL, and judged against each route's timeouts --------------------


@pytest.mark.parametrize("given_as", ["url userinfo", "header from ${VAR}"])
def test_cli_basic_auth_upstream_is_healthy_and_its_password_never_printed(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy], given_as: str) -> None:
    """An upstream requiring Basic auth, given as user:password@ in its URL or as an
    Authorization header expanded from the environment: sent as serve sends it, so
    reported healthy; neither the password nor its Basic encoding in any output."""
    locked = threaded_fake_proxy(ModuleTree([MOD]), name="locked",
                                 faults=Faults(required_headers={"Authorization": BASIC}))
    if given_as == "url userinfo":
        upstream = {"url": locked.url.replace("http://", f"http://{USER}:{PASSWORD}@")}
    else:
        upstream = {"url": locked.url, "headers": {"Authorization": "${CHECK_BASIC}"}}
    config = {"upstreams": {"locked": {**upstream, "probe_path": LIST_PATH}},
              "routes": [{"name": "corp", "match": ["*"], "upstreams": ["locked"]}]}
    env = {"CHECK_BASIC": BASIC}
    table = run_cli(tmp_path, config, env=env)
    as_json = run_cli(tmp_path, config, "--json", env=env)
    assert table.returncode == 0, table.stdout + table.stderr
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith("upstream")]
    assert row[1:5] == ["locked", locked.url, "corp", "ok"]
    assert "route corp: ok, 1 of 1 upstreams working (locked)" in table.stdout
    report = json.loads(as_json.stdout)
    [target] = report["targets"]
    assert (target["url"], target["status"], target["http_status"]) == (locked.url, "ok", 200)
    assert [(r["name"], r["ok"]) for r in report["routes"]] == [("corp", True)]
    assert [r.header("Authorization") for r in locked.requests] == [BASIC, BASIC]
    token = BASIC.split()[1]
    for run_ in (table, as_json):
        output = run_.stdout + run_.stderr
        assert PASSWORD not in output and token not in output and USER not in output, output


def test_cli_wrong_url_password_is_rejected_and_not_printed(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    locked = threaded_fake_proxy(name="locked", faults=Faults(required_headers={"Authorization": BASIC}))
    config = {"upstreams": {"locked": {"url": locked.url.replace("http://", f"http://{USER}:wr0ng-pass@")}},
              "routes": [{"name": "corp", "match": ["*"], "upstreams": ["locked"]}]}
    result = run_cli(tmp_path, config, "--json")
    assert result.returncode == 1
    [target] = json.loads(result.stdout)["targets"]
    assert target["diagnosis"] == ("HTTP 403 from upstream: credentials missing or rejected "
                                   "(sent: Authorization)")
    assert "wr0ng-pass" not in result.stdout + result.stderr


async def test_active_probe_sends_the_url_credentials(fake_proxy: MakeFake) -> None:
    """The probes serve starts (EdgeState's Prober) send the upstream's URL credentials."""
    locked = await fake_proxy(name="locked", faults=Faults(required_headers={"Authorization": BASIC}))
    config = make_config({"locked": {"url": locked.url.replace("http://", f"http://{USER}:{PASSWORD}@")}},
                         probes={"interval": 0.1, "timeout": 2.0}, scoring={"plugins": ["latency"]})
    client = UpstreamClient()
    await client.start()
    state = EdgeState(config, client, StatsRegistry(), {})
    state.prober.start()
    try:
        assert await locked.wait_until(lambda requests: len(requests) >= 2, timeout=5)
    finally:
        await state.prober.stop()
        await client.close()
        state.geo.close()
    assert {r.header("Authorization") for r in locked.requests} == {BASIC}
    stats = state.candidates["public"][0].stats
    assert stats.failures == 0 and stats.requests >= 2


async def test_upstream_slower_than_its_routes_headers_timeout_is_not_working_for_it(
        fake_proxy: MakeFake) -> None:
    """First byte after ~1 s: too slow for a route allowing 0.5 s, fine for one allowing 30 s."""
    slow = await fake_proxy(name="slow", faults=Faults(delay=1.0))
    config = make_config(
        {"slow": {"url": slow.url}},
        routes=[{"name": "corp", "match": ["corp.example"], "upstreams": ["slow"],
                 "timeouts": {"headers": 0.5}},
                {"name": "public", "match": ["*"], "upstreams": ["slow"]}])
    started = time.monotonic()
    [result] = await check_all(config)          # waits as long as route public would: 30 s
    assert time.monotonic() - started < 5
    assert (result.status, result.failure, result.ok_for) == ("fail", "slow", ["public"])
    assert result.until_first_byte_ms is not None and result.until_first_byte_ms >= 1000
    seconds = f"{result.until_first_byte_ms / 1000:.1f}"
    assert result.diagnosis == (f"slow: first byte after {seconds} s, route corp allows 0.5 s "
                                "(timeouts.headers); ok for route public")
    assert [(v.route, v.working) for v in route_verdicts(config, [result])] == [
        ("corp", ()), ("public", ("slow",))]


async def test_waits_only_as_long_as_the_routes_allow_by_default(fake_proxy: MakeFake) -> None:
    hung = await fake_proxy(name="hung", faults=Faults(hang=True))
    config = make_config({"hung": {"url": hung.url}}, timeouts={"headers": 0.4})
    started = time.monotonic()
    [result] = await check_all(config)
    assert time.monotonic() - started < 2
    assert result.failure == "slow"
    assert result.diagnosis == "slow: no answer within 0.4 s, route public allows 0.4 s (timeouts.headers)"
    # A --timeout between two routes' limits judges the one it reaches, and says so of the other.
    config = make_config({"hung": {"url": hung.url}}, routes=[
        {"name": "corp", "match": ["corp.example"], "upstreams": ["hung"], "timeouts": {"headers": 0.2}},
        {"name": "public", "match": ["*"], "upstreams": ["hung"]}])
    [result] = await check_all(config, 0.4)
    assert result.diagnosis == ("slow: no answer within 0.4 s, route corp allows 0.2 s "
                                "(timeouts.headers); not judged (--timeout 0.4 s is shorter) "
                                "for route public")


async def test_connect_slower_than_the_routes_connect_timeout(fake_proxy: MakeFake) -> None:
    up = await fake_proxy(name="up")
    config = make_config({"up": {"url": up.url}}, routes=[
        {"name": "corp", "match": ["*"], "upstreams": ["up"], "timeouts": {"connect": 1e-6}}])
    [waited] = await check_all(config, 3.0)       # --timeout: let the connect finish, then judge
    assert (waited.failure, waited.ok_for) == ("slow", [])
    assert waited.diagnosis.startswith("slow: connected after ")
    assert waited.diagnosis.endswith(" s, route corp allows 1e-06 s (timeouts.connect)")
    [cut] = await check_all(config)              # as serve: give up when the connect limit runs out
    assert cut.failure == "slow"
    assert cut.diagnosis == "slow: not connected within 1e-06 s, route corp allows 1e-06 s (timeouts.connect)"


def test_cli_fails_an_upstream_slower_than_its_routes_headers_timeout(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    slow = threaded_fake_proxy(name="slow", faults=Faults(delay=1.0))
    config = {"upstreams": {"slow": {"url": slow.url}},
              "routes": [{"name": "corp", "match": ["*"], "upstreams": ["slow"],
                          "timeouts": {"headers": 0.5}}]}
    table = run_cli(tmp_path, config)
    assert table.returncode == 1, table.stdout + table.stderr
    assert ("route corp: NO WORKING UPSTREAM (slow: slow: no answer within 0.5 s, route corp "
            "allows 0.5 s (timeouts.headers))") in table.stdout
    as_json = run_cli(tmp_path, config, "--json", "--timeout", "3")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    [target] = report["targets"]
    assert target["failure"] == "slow" and target["http_status"] == 404
    assert target["diagnosis"].startswith("slow: first byte after 1.")
    assert target["diagnosis"].endswith(" s, route corp allows 0.5 s (timeouts.headers)")
    assert report["routes"] == [{
        "name": "corp", "ok": False, "upstreams": ["slow"], "working": [],
        "timeouts": {"connect": 5.0, "headers": 0.5},
        "summary": f"route corp: NO WORKING UPSTREAM (slow: {target['diagnosis']})"}]
    assert report["notes"] == []                 # --timeout 3 is longer than corp's 0.5 s


def test_a_short_timeout_notes_the_routes_that_would_wait_longer(
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    import io

    slow = threaded_fake_proxy(name="slow", faults=Faults(delay=1.0))
    config = make_config({"slow": {"url": slow.url}})     # route public: timeouts.headers 30 s
    out = io.StringIO()
    assert run(config, 0.3, out=out, err=io.StringIO()) == 1
    text = out.getvalue()
    assert "timeout after 0.3s while waiting for the response" in text
    assert ("note: --timeout 0.3 is shorter than timeouts.headers (route public 30 s)") in text


def test_one_redact_for_every_output() -> None:
    """What the config's credentials turn into (a URL's Basic token, a header's token)
    is scrubbed, even when an excerpt was cut in the middle of one; an auth scheme
    word alone is not a secret."""
    from goproxy_router.upstream.targets import UpstreamTarget

    target = UpstreamTarget.for_url("u", f"https://{USER}:{PASSWORD}@h.example/base",
                                    {"X-Api-Key": f"Key {SECRET}"})
    assert target.base_url == "https://h.example/base"
    assert target.headers == {"X-Api-Key": f"Key {SECRET}", "Authorization": BASIC}
    assert {PASSWORD, USER, BASIC.split()[1], SECRET} <= set(target.secrets)
    assert "Basic" not in target.secrets
    echoed = f"401: you sent Authorization: {BASIC}\r\nand the excerpt ends in {SECRET[:9]}"
    out = redact(echoed, target.secrets)
    assert out == f"401: you sent Authorization: {REDACTED} and the excerpt ends in {REDACTED}"
    assert redact(f"no user {USER}, pw {PASSWORD}", secret_values([PASSWORD, USER])) == \
        f"no user {REDACTED}, pw {REDACTED}"
