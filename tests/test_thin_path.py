"""The thin path for kept hits (router/serving/thin.py) and the cheap per-request parts it relies on.

* a `.info`/`.mod` answered once from the memory tier is answered again
  without the request flow (proved by breaking the route table), with the
  same bytes and headers as the full flow's hit and a fresh request id;
* anything but a plain GET (HEAD, Range, conditionals, a query) takes the
  full flow; private routes are never kept; a reload empties the table;
* counters and the access-log line: in-process (log capture, the fallback)
  and from a real `serve` process (the line written by hand), which must
  have exactly the full flow's fields in the same order;
* one schema (router/serving/accesslog.py) builds both paths' fields and labels, and
  its line renderer writes exactly what JsonFormatter writes;
* X-Forwarded-For and X-Request-Id only from trusted proxies;
* HitTable bounds, LineSink batching and order, Clock, RequestIds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from goproxy_router.base.logs import Clock, JsonFormatter, LineSink, direct_sink
from goproxy_router.config.loader import parse_config
from goproxy_router.routing.identity import PeerBook, RequestIds
from goproxy_router.serving import accesslog
from goproxy_router.serving.thin import HitTable, RenderedResponse
from goproxy_router.storage.entry import CacheEntry
from tests.support import Module, ModuleTree, case_escape
from tests.support.http import MakeEdge, MakeFake
from tests.test_cache_serving import IMMUTABLE, Answer, ask, config, edge_of

MOD = Module("example.com/Thin/Path", "v1.0.0")
PRIVATE = Module("git.corp.example/team/thin", "v0.2.0")
BASE = f"/{case_escape(MOD.path)}/@v/{MOD.version}"
INFO, GOMOD, ZIP = BASE + ".info", BASE + ".mod", BASE + ".zip"
LOG_KEYS = ["ts", "level", "logger", "pid", "event", "request_id", "client", "country", "method",
            "path", "route", "module", "version", "kind", "upstream", "attempts", "cache",
            "status", "bytes", "elapsed"]


async def kept_info(tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> tuple[Any, Answer]:
    """An edge over one upstream that has answered INFO twice (a miss, then the full flow's
    hit, which it keeps): the client and that full-flow hit."""
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    await ask(client, INFO)
    full = await ask(client, INFO)
    assert full.cache == "hit" and edge_of(client).hits.get(INFO) is not None
    return client, full


def _break_routing(client: Any) -> None:
    """Make every request that reaches the full flow fail: what still answers is the thin path."""
    def refuse(module: str) -> None:
        raise AssertionError(f"the full flow looked up a route for {module}")
    edge_of(client).state.routes.match = refuse


async def test_a_kept_hit_is_answered_without_the_request_flow(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    hits = edge_of(client).hits
    for path, body in ((INFO, MOD.info), (GOMOD, MOD.mod)):
        miss = await ask(client, path)
        assert (miss.status, miss.cache, miss.body) == (200, "miss", body)
        assert len(hits) == (1 if path == GOMOD else 0)   # a miss is not kept, the hit is
        full = await ask(client, path)
        assert (full.status, full.cache, full.body) == (200, "hit", body)
    assert len(hits) == 2
    assert [r.raw_path for r in up.requests] == [INFO, GOMOD]

    _break_routing(client)
    ids = set()
    for path, body, content_type in ((INFO, MOD.info, "application/json"),
                                     (GOMOD, MOD.mod, "text/plain; charset=utf-8")):
        full = await ask(client, path, headers={"If-None-Match": '"nothing"'})
        assert full.status == 500          # conditional: the (broken) full flow, as designed
        for _ in range(3):
            thin = await ask(client, path)
            assert (thin.status, thin.body, thin.cache) == (200, body, "hit")
            assert thin.headers["Content-Type"] == content_type
            assert thin.headers["Cache-Control"] == IMMUTABLE
            assert thin.headers["Content-Length"] == str(len(body))
            assert thin.headers["Server"].startswith("goproxy-router/")
            assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', thin.headers["ETag"])
            assert "Last-Modified" in thin.headers and "X-Goproxy-Upstream" not in thin.headers
            ids.add(thin.headers["X-Request-Id"])
    assert len(ids) == 6 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(up.requests) == 2


async def test_thin_and_full_hits_carry_the_same_headers(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    client, full = await kept_info(tmp_path, edge, fake_proxy)
    thin = await ask(client, INFO)
    assert len(edge_of(client).hits) == 1
    ignore = {"x-request-id", "date"}
    assert ({k.lower(): v for k, v in full.headers.items() if k.lower() not in ignore}
            == {k.lower(): v for k, v in thin.headers.items() if k.lower() not in ignore})
    assert full.headers["X-Request-Id"] != thin.headers["X-Request-Id"]
    # The validators of a kept hit still work: the full flow answers the conditional GET.
    again = await ask(client, INFO, headers={"If-None-Match": thin.headers["ETag"]})
    assert (again.status, again.body) == (304, b"")
    since = await ask(client, INFO, headers={"If-Modified-Since": thin.headers["Last-Modified"]})
    assert since.status == 304
    part = await ask(client, INFO, headers={"Range": "bytes=0-4"})
    assert (part.status, part.body) == (206, MOD.info[:5])


async def test_head_and_query_take_the_full_flow_and_a_small_zip_is_kept(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    for path in (INFO, ZIP, ZIP):
        assert (await ask(client, path)).status == 200
    await ask(client, INFO)
    hits = edge_of(client).hits
    assert hits.get(INFO) is not None
    # The module zip is small here (memory tier), and is kept too: it is just as immutable.
    assert hits.get(ZIP) is not None
    head = await ask(client, INFO, method="HEAD")
    assert (head.status, head.cache, head.body) == (200, "hit", b"")
    assert head.headers["Content-Length"] == str(len(MOD.info))
    query = await ask(client, INFO + "?x=1")
    assert (query.status, query.cache) == (200, "hit")
    assert hits.get(INFO + "?x=1") is None and len(hits) == 2
    # Proof of which path answers: with routing broken, only the thin path still can.
    _break_routing(client)
    assert (await ask(client, INFO, method="HEAD")).status == 500
    assert (await ask(client, INFO + "?x=1")).status == 500
    for path, body in ((INFO, MOD.info), (ZIP, MOD.zip)):
        thin = await ask(client, path)
        assert (thin.status, thin.body) == (200, body)


async def test_a_private_route_is_never_kept(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    corp = await fake_proxy(ModuleTree([PRIVATE]), name="corp")
    cfg = config(tmp_path, {"corp": corp.url}, routes=[
        {"name": "corp", "match": ["git.corp.example"], "upstreams": ["corp"], "sumdb": False,
         "allow": {"tokens_env": "CLIENT_TOKENS"}}])
    client = await edge(cfg, {"CLIENT_TOKENS": "alice-token"})
    path = f"/{PRIVATE.path}/@v/{PRIVATE.version}.info"
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-token").decode()}
    for _ in range(3):
        got = await ask(client, path, headers=alice)
        assert (got.status, got.body) == (200, PRIVATE.info)
    assert (await ask(client, path, headers=alice)).cache == "hit"
    assert len(edge_of(client).hits) == 0
    refused = await ask(client, path)
    assert refused.status == 401 and refused.cache is None


async def test_a_reload_empties_the_table(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    cfg = config(tmp_path, {"up": up.url})
    client = await edge(cfg)
    for _ in range(2):
        await ask(client, INFO)
    hits = edge_of(client).hits
    assert len(hits) == 1
    # The same path now belongs to a private route: the kept answer must not outlive that.
    cfg["routes"] = [{"name": "locked", "match": ["example.com"], "upstreams": ["up"],
                      "allow": {"cidrs": ["192.0.2.0/24"]}}]
    await edge_of(client).reload(parse_config(yaml.safe_dump(cfg), "routes.yaml", {}))
    assert len(hits) == 0
    refused = await ask(client, INFO)
    assert refused.status == 403


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every access-log line captured, in order."""
    return [dict(r.fields) for r in caplog.records
            if r.name == "router.access" and r.getMessage() == "request"]


async def test_thin_hits_are_counted_and_logged_like_full_ones(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    for _ in range(5):
        assert (await ask(client, INFO)).status == 200
    assert len(edge_of(client).hits) == 1
    lines = access_lines(caplog)
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit", "hit", "hit"]
    full, thin = lines[1], lines[2]
    assert list(thin) == list(full)
    for key in ("client", "method", "path", "route", "module", "version", "kind", "cache",
                "status", "bytes"):
        assert thin[key] == full[key], key
    assert thin["attempts"] == 0 and thin["upstream"] is None

    async with client.get("/metrics") as resp:
        text = await resp.text()
    counts = {tuple(sorted(s.labels.items())): s.value
              for f in text_string_to_metric_families(text) if f.name == "goproxy_requests"
              for s in f.samples if s.name == "goproxy_requests_total"}
    labels = {"route": "public", "kind": "info", "status": "200"}
    assert counts[tuple(sorted({**labels, "cache": "hit"}.items()))] == 4
    assert counts[tuple(sorted({**labels, "cache": "miss"}.items()))] == 1
    assert edge_of(client).cache.info()["hits"] == 4


async def test_thin_and_full_lines_and_labels_come_from_one_schema(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Change the schema's fields and labels: the full flow's and the thin path's lines and
    counters all change with it, so neither path has a copy of its own."""
    fields, labels = accesslog.fields, accesslog.labels

    def marked_fields(**values: Any) -> dict[str, Any]:
        return {**fields(**values), "schema": "marked"}

    def marked_labels(entry: dict[str, Any]) -> accesslog.Labels:
        route, kind, status, cache = labels(entry)
        return f"{route}-marked", kind, status, cache

    monkeypatch.setattr(accesslog, "fields", marked_fields)
    monkeypatch.setattr(accesslog, "labels", marked_labels)
    caplog.set_level(logging.INFO, logger="router.access")
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    for _ in range(3):
        assert (await ask(client, INFO)).status == 200
    assert len(edge_of(client).hits) == 1
    lines = access_lines(caplog)
    assert [(line["cache"], line["schema"]) for line in lines] == [
        ("miss", "marked"), ("hit", "marked"), ("hit", "marked")]
    assert list(lines[2]) == list(lines[1])            # the thin line: the same fields, in order

    async with client.get("/metrics") as resp:
        text = await resp.text()
    counts = {(s.labels["route"], s.labels["cache"]): s.value
              for f in text_string_to_metric_families(text) if f.name == "goproxy_requests"
              for s in f.samples if s.name == "goproxy_requests_total"}
    assert counts == {("public-marked", "miss"): 1, ("public-marked", "hit"): 2}, counts


def test_the_thin_line_renderer_writes_what_json_formatter_writes() -> None:
    """accesslog.line (the thin path's direct write) against the full flow's emit, byte for byte."""
    entry = accesslog.fields(method="GET", path=INFO, status=200, route="public",
                             module=MOD.path, version=MOD.version, kind="info", cache="hit",
                             bytes=len(MOD.info))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("router.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        accesslog.emit("rid-1", "5.144.1.1", entry, 0.012345)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    [record] = records
    want = JsonFormatter().format(record) + "\n"
    got = accesslog.line(json.loads(want)["ts"], record.process or 0, "rid-1",
                         json.dumps("5.144.1.1"), accesslog.prefix(entry), 0.012345)
    assert got == want
    assert list(json.loads(got)) == LOG_KEYS


def test_a_serve_process_writes_the_thin_line_with_the_full_lines_fields(
        tmp_path: Path, threaded_fake_proxy: Any, router_process: Any) -> None:
    up = threaded_fake_proxy(ModuleTree([MOD]))
    router = router_process({"upstreams": {"up": {"url": up.url}},
                             "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
                             "probes": {"enabled": False}})
    ids = []
    for _ in range(4):
        with urllib.request.urlopen(router.url + INFO, timeout=10) as resp:
            assert resp.status == 200 and resp.read() == MOD.info
            ids.append(resp.headers["X-Request-Id"])
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in router.stderr().splitlines()
                 if '"router.access"' in line and INFO in line]
        if len(lines) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit", "hit"]
    assert [line["request_id"] for line in lines] == ids
    for line in lines:
        assert list(line) == LOG_KEYS, line
    full, thin = lines[1], lines[3]
    for key in LOG_KEYS:
        if key not in ("ts", "request_id", "elapsed"):
            assert thin[key] == full[key], key
    assert isinstance(thin["elapsed"], float) and 0 <= thin["elapsed"] < 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", thin["ts"])


async def test_forwarded_for_and_request_id_only_from_trusted_proxies(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    up = await fake_proxy(ModuleTree([MOD]), name="up")
    cfg = config(tmp_path, {"up": up.url})
    client = await edge(cfg)
    await ask(client, INFO)
    await ask(client, INFO)
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Request-Id": "client-chosen-id"}
    untrusted = await ask(client, INFO, headers=forged)
    assert untrusted.headers["X-Request-Id"] != "client-chosen-id"

    cfg["geoip"] = {"trusted_proxies": ["127.0.0.0/8"]}
    await edge_of(client).reload(parse_config(yaml.safe_dump(cfg), "routes.yaml", {}))
    await ask(client, INFO)                                     # kept again after the reload
    trusted = await ask(client, INFO, headers=forged)
    assert trusted.headers["X-Request-Id"] == "client-chosen-id"
    bad = await ask(client, INFO, headers={"X-Request-Id": "no spaces allowed"})
    assert bad.headers["X-Request-Id"] != "no spaces allowed"
    lines = [dict(r.fields) for r in caplog.records if r.name == "router.access"]
    assert lines[2]["client"] == "127.0.0.1"                    # the untrusted peer itself
    assert lines[-2]["client"] == "203.0.113.9" and lines[-2]["cache"] == "hit"
    assert lines[-2]["request_id"] == "client-chosen-id"


def _exchange(port: int, payload: bytes, expect_responses: int, *, rcvbuf: int | None = None,
              pause: float = 0.0) -> tuple[bytes, bool]:
    """Send raw bytes, read until `expect_responses` answers (or EOF); (bytes, closed by server)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    with sock:
        sock.connect(("127.0.0.1", port))
        sock.sendall(payload)
        time.sleep(pause)
        chunks: list[bytes] = []
        closed = False
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            if chunk.endswith(MOD.info):     # maybe the last answer: count them
                data = b"".join(chunks)
                chunks = [data]
                if data.count(b"HTTP/1.") >= expect_responses:
                    break
        data = b"".join(chunks)
        if not closed:
            sock.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                closed = sock.recv(1) == b""
        return data, closed


def _answers(data: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a stream of HTTP/1.x answers (each with Content-Length) into (status, headers, body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


async def test_kept_hits_on_the_wire_pipelined_http10_and_close(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    client, full = await kept_info(tmp_path, edge, fake_proxy)
    _break_routing(client)                  # from here on, only the thin path can answer
    get11 = f"GET {INFO} HTTP/1.1\r\nHost: t\r\nUser-Agent: Go-http-client/1.1\r\n\r\n".encode()

    data, closed = await asyncio.to_thread(_exchange, client.port, get11 * 3, 3)
    answers = _answers(data)
    assert not closed and len(answers) == 3
    ids = set()
    for status, headers, body in answers:
        assert status == "HTTP/1.1 200 OK" and body == MOD.info
        for name in ("content-type", "cache-control", "etag", "last-modified", "x-goproxy-cache",
                     "server", "content-length"):
            assert headers[name] == full.headers[name], name
        assert "connection" not in headers and headers["date"].endswith(" GMT")
        ids.add(headers["x-request-id"])
    assert len(ids) == 3

    # HTTP/1.0, and HTTP/1.1 asking to close: an ordinary Response, the connection closed.
    for request in (f"GET {INFO} HTTP/1.0\r\nHost: t\r\n\r\n",
                    f"GET {INFO} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
        data, closed = await asyncio.to_thread(_exchange, client.port, request.encode(), 1)
        [(status, headers, body)] = _answers(data)
        assert status.endswith(" 200 OK") and body == MOD.info and closed, request
        assert headers["x-goproxy-cache"] == "hit" and headers["etag"] == full.headers["ETag"]


async def test_a_client_that_does_not_read_gets_every_pipelined_answer(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers beyond what the kernel and the transport hold wait for the client."""
    monkeypatch.setattr(RenderedResponse, "HIGH_WATER", 1024)
    client, _ = await kept_info(tmp_path, edge, fake_proxy)
    get11 = f"GET {INFO} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    count = 12000                            # ~5 MB: more than loopback's socket buffers
    waits = RenderedResponse.waits
    data, closed = await asyncio.to_thread(_exchange, client.port, get11 * count, count,
                                           rcvbuf=16 * 1024, pause=0.5)
    answers = _answers(data)
    assert not closed and len(answers) == count
    assert {(status, body) for status, _, body in answers} == {("HTTP/1.1 200 OK", MOD.info)}
    assert len({headers["x-request-id"] for _, headers, _ in answers}) == count
    assert RenderedResponse.waits > waits, "the answers never waited for the client"


# -- the parts ------------------------------------------------------------------------------


def _entry(size: int) -> CacheEntry:
    return CacheEntry("k", Path("/nonexistent"), size, 1_600_000_000.0, "1-2", b"x" * size)


def _keep(table: HitTable, path: str, size: int) -> None:
    table.keep(path, _entry(size), content_type="application/json", cache_control=IMMUTABLE,
               server="s", route="public", module="example.com/m", version="v1.0.0", kind="info")


def test_hit_table_is_bounded_in_bytes_oldest_out() -> None:
    table = HitTable(max_bytes=100)
    for i in range(4):
        _keep(table, f"/p{i}", 30)
    assert len(table) == 3 and table.size == 90 and table.get("/p0") is None
    _keep(table, "/p3", 50)                                       # replacing counts once
    assert table.size == 30 + 50 and table.get("/p1") is None         # /p2 and the new /p3
    assert table.get("/p2") is not None and table.get("/p3") is not None
    _keep(table, "/huge", 101)
    _keep(table, "/q?x=1", 10)
    assert table.get("/huge") is None and table.get("/q?x=1") is None
    hit = table.get("/p3")
    assert hit is not None and hit.body == b"x" * 50
    assert json.loads("{" + hit.log_fields + "}")["bytes"] == 50
    table.clear()
    assert len(table) == 0 and table.size == 0


def _wait_for_lines(out: Path, count: int) -> None:
    """Block (without yielding to any loop, so no flush timer can run) until the writer
    thread has written `count` lines; bounded."""
    deadline = time.monotonic() + 5
    while out.read_text().count("\n") < count and time.monotonic() < deadline:
        time.sleep(0.002)
    assert out.read_text().count("\n") == count


def test_line_sink_batches_writes_and_keeps_order(tmp_path: Path) -> None:
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sink = LineSink(fd)
    writes: list[int] = []
    real_write = os.write

    def counting_write(f: int, data: Any) -> int:
        if f == fd:
            writes.append(len(data))
        return real_write(f, data)

    async def burst() -> None:
        for i in range(100):
            sink.write(f"loop {i}\n")
        await asyncio.sleep(0)
        time.sleep(0.005)
        assert out.read_text() == "before\n"                    # gathered, not written yet
        deadline = time.monotonic() + 5
        while out.read_text().count("\n") < 101 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert out.read_text().count("\n") == 101               # in one write
        big = "x" * (LineSink.FLUSH_BYTES // 4) + "\n"
        for _ in range(4):                                       # enough bytes: handed over at once
            sink.write(big)
        _wait_for_lines(out, 105)
        sink.write("last\n")

    sink.write("before\n")                                      # no loop: handed over at once
    _wait_for_lines(out, 1)
    os.write = counting_write                                   # type: ignore[assignment]
    try:
        asyncio.run(burst())
        thread = threading.Thread(target=sink.write, args=("thread\n",))
        thread.start()
        thread.join(5)
        _wait_for_lines(out, 107)

        async def next_loop() -> None:        # a new loop while the old one's flush never ran
            sink.write("next loop\n")
            deadline = time.monotonic() + 5
            while "next loop" not in out.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        asyncio.run(next_loop())
    finally:
        sink.close()
        os.write = real_write                                   # type: ignore[assignment]
        os.close(fd)
    lines = out.read_text().splitlines()
    assert lines[:101] == ["before", *(f"loop {i}" for i in range(100))]
    assert lines[105:] == ["last", "thread", "next loop"]
    assert len(writes) == 4        # the burst, the big lines, last + thread, next loop


def test_direct_sink_only_when_setup_logging_alone_listens(
        caplog: pytest.LogCaptureFixture) -> None:
    from goproxy_router.base.logs import JsonLinesHandler
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("router.access")
    try:
        handler = JsonLinesHandler(LineSink(os.open(os.devnull, os.O_WRONLY)))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        assert direct_sink(access, logging.INFO) is handler.sink
        assert direct_sink(access, logging.DEBUG) is None            # level off
        root.addHandler(caplog.handler)
        assert direct_sink(access, logging.INFO) is None             # somebody else listens
        root.removeHandler(caplog.handler)
        logging.getLogger("router").addHandler(logging.NullHandler())
        assert direct_sink(access, logging.INFO) is None
    finally:
        logging.getLogger("router").handlers.clear()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_clock_writes_what_json_formatter_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    for t in (1_700_000_000.0, 1_700_000_000.9996, 1_700_000_001.0421, 1_700_000_001.0429):
        monkeypatch.setattr(time, "time", lambda t=t: t)
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = t, (t - int(t)) * 1000
        assert clock.now() == json.loads(JsonFormatter().format(record))["ts"], t


def test_request_ids_are_unique_and_offered_ids_need_trust() -> None:
    a, b = RequestIds(), RequestIds()
    ids = {a.new() for _ in range(1000)} | {b.new() for _ in range(1000)}
    assert len(ids) == 2000 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert a.choose("lb-1234:abc", True) == "lb-1234:abc"
    assert a.choose("lb-1234:abc", False) != "lb-1234:abc"
    assert a.choose("bad id", True) != "bad id"
    assert a.choose("x" * 129, True) != "x" * 129


def xff(*lines: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(("X-Forwarded-For", line) for line in lines))


def test_peer_book_parses_each_peer_once() -> None:
    import ipaddress
    book = PeerBook([ipaddress.ip_network("10.0.0.0/8")])
    proxy = book.peer("10.1.2.3")
    assert proxy is book.peer("10.1.2.3") and proxy.trusted
    assert str(book.client(proxy, xff("198.51.100.7, 10.9.9.9"))) == "198.51.100.7"
    assert str(book.client(proxy, xff("198.51.100.7", "10.9.9.9"))) == "198.51.100.7"
    stranger = book.peer("::ffff:192.0.2.1")
    assert str(stranger.address) == "192.0.2.1" and not stranger.trusted
    assert stranger.json == '"192.0.2.1"'
    assert str(book.client(stranger, xff("198.51.100.7"))) == "192.0.2.1"
    assert book.peer(None).address is None and book.peer(None).json == '"None"'
