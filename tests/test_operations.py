"""Operations through the real app: /metrics after real traffic, JSON logs,
request ids, secrets kept out of every operator surface, /healthz and /readyz, the
admin surface's protection, and the status page in headless Chromium served by
the router process.

Metrics are read with prometheus_client's own text parser and checked against
the traffic each test caused, series by series. Every upstream is a fake on
127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from goproxy_router.base.logs import JsonFormatter
from goproxy_router.serving.edge import EDGE
from tests.conftest import RouterProcess
from tests.support import Faults, Module, ModuleTree, RefusedPort, ThreadedFakeProxy
from tests.support.http import MakeEdge, MakeFake, raw_get, threaded_http_server
from tests.support.mmdb import write_country_db
from tests.test_status_page import require_browser

LIB = Module("example.com/lib", "v1.0.0", files={"data.txt": b"lib " * 4000})
FAILOVER = Module("example.com/fo", "v1.0.0")
WARM = [Module("example.com/warm", f"v1.0.{i}") for i in range(32)]
CORP = Module("corp.example/tool", "v1.0.0")
ZIPS = [Module("example.com/big", f"v1.0.{i}", files={"blob.bin": bytes([i]) * 20_000})
        for i in range(6)]
TREE = ModuleTree([LIB, FAILOVER, *WARM, CORP, *ZIPS])
MODULE_PATHS = ("example.com", "corp.example", "echo.example")

FAST = {"connect": 1.0, "headers": 2.0, "read": 2.0, "deadline": 5.0}
GEO_NETWORKS = {"5.144.0.0/14": "DE", "8.0.0.0/9": "US"}
DE_CLIENT = "5.144.1.1"
PATIENCE = 10.0          # seconds: the bound on any wait for something to happen
REQUEST_FIELDS = ("request_id", "client", "country", "route", "module", "version", "kind",
                  "upstream", "attempts", "cache", "status", "bytes", "elapsed")
ATTEMPT_FIELDS = ("request_id", "upstream", "timeout", "elapsed", "error", "outcome")


# -- helpers -------------------------------------------------------------------------

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_metrics(text: str) -> Samples:
    """Every sample by name, then by its sorted label pairs, via prometheus_client's parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            assert key not in samples.get(sample.name, {}), f"duplicate series {sample.name}{key}"
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def by_label(samples: Samples, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """A metric's series keyed by the values of `label_names` (which must be all its labels)."""
    out = {}
    for key, v in samples.get(name, {}).items():
        labels = dict(key)
        assert set(labels) == set(label_names), (name, labels)
        out[tuple(labels[n] for n in label_names)] = v
    return out


def assert_labels_bounded(samples: Samples, extra_forbidden: tuple[str, ...] = ()) -> None:
    """No label value is (part of) a module path, a URL or any request-supplied string."""
    for name, series in samples.items():
        for key in series:
            for label, label_value in key:
                assert "/" not in label_value and "@" not in label_value, (name, label, label_value)
                for forbidden in (*MODULE_PATHS, "127.0.0.1", *extra_forbidden):
                    assert forbidden not in label_value, (name, label, label_value)


@dataclass
class Got:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def get(client: TestClient, path: str, headers: Mapping[str, str] | None = None,
              timeout: float = PATIENCE) -> Got:
    async def go() -> Got:
        async with client.get(path, headers=headers, allow_redirects=False) as resp:
            return Got(resp.status, CIMultiDict(resp.headers), await resp.read())

    return await asyncio.wait_for(go(), timeout)


async def scrape(client: TestClient) -> Samples:
    got = await get(client, "/metrics")
    assert got.status == 200, got.text
    assert got.headers["Content-Type"].startswith("text/plain; version=0.0.4"), got.headers
    return parse_metrics(got.text)


def info_path(m: Module) -> str:
    return f"/{m.path}/@v/{m.version}.info"


def cfg(upstreams: Mapping[str, str | Mapping[str, Any]], routes: list[dict[str, Any]],
        **extra: Any) -> dict[str, Any]:
    """A config with upstreams in the given order, no ranking plugins (config order wins)."""
    config: dict[str, Any] = {
        "upstreams": {name: ({"url": u} if isinstance(u, str) else dict(u))
                      for name, u in upstreams.items()},
        "routes": routes,
        "scoring": {"plugins": []},
        "timeouts": dict(FAST),
    }
    config.update(extra)
    return config


def public(*names: str, **extra: Any) -> dict[str, Any]:
    return {"name": "public", "match": ["*"], "upstreams": list(names), **extra}


def edge_of(client: TestClient) -> Any:
    return client.server.app[EDGE]


def records(caplog: pytest.LogCaptureFixture, logger: str, event: str) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records
            if r.name == logger and r.getMessage() == event and isinstance(getattr(r, "fields", None), dict)]


async def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.05)


# -- metrics -------------------------------------------------------------------------

async def test_metrics_count_the_traffic_that_was_sent(edge: MakeEdge, fake_proxy: MakeFake,
                                                       tmp_path: Path) -> None:
    """Hits, misses, a 404 (and its remembered copy), a failover, a hedge and an
    ejection, each visible in its own series with exactly the value caused."""
    a = await fake_proxy(TREE, name="a")
    b = await fake_proxy(TREE, name="b")
    c = await fake_proxy(TREE, name="c", faults=Faults(status=500))
    client = await edge(cfg(
        {"a": a.url, "b": b.url, "c": c.url},
        [{"name": "corp", "match": ["corp.example"], "upstreams": ["c"],
          "retry": {"max_attempts": 1}},
         public("a", "b")],
        scoring={"plugins": [], "breaker": {"threshold": 2, "ejection": 60}},
        hedge={"enabled": True, "min_delay": 0.05, "min_samples": 20}))

    before = await scrape(client)
    assert by_label(before, "goproxy_upstream_breaker_state", "upstream") == {
        ("a",): 0, ("b",): 0, ("c",): 0}
    assert value(before, "goproxy_cache_size_bytes") == 0
    assert "goproxy_requests_total" not in before

    # Immutable artifacts: a miss each, then hits from the cache.
    for path in (info_path(LIB), info_path(LIB), f"/{LIB.path}/@v/v1.0.0.mod",
                 f"/{LIB.path}/@v/v1.0.0.zip", f"/{LIB.path}/@v/v1.0.0.zip",
                 f"/{LIB.path}/@v/list", f"/{LIB.path}/@v/list"):
        got = await get(client, path)
        assert got.status == 200, (path, got.text)
    # Not on any upstream: 404 (both asked), then the remembered 404.
    for _ in range(2):
        got = await get(client, "/example.com/nope/@v/v1.0.0.info")
        assert got.status == 404, got.text
    # Failover: a refuses with 503, b answers; one retry.
    a.set_faults(status=503, paths=r"^/example\.com/fo/")
    got = await get(client, info_path(FAILOVER))
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b", got.text
    a.clear_faults()
    # Hedge: give a 25 latency samples (~10 ms), then let it hang; b answers the hedge.
    a.set_faults(delay=0.01)
    for m in WARM[:25]:
        got = await get(client, info_path(m))
        assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "a"
    a.set_faults(delay=0.0, hang=True)
    started = time.monotonic()
    got = await get(client, info_path(WARM[30]))
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b", got.text
    assert time.monotonic() - started < 1.5, "no hedge: the request waited for a's timeout"
    a.clear_faults()
    # Not a module path at all: refused before routing, counted without the path.
    got = await get(client, "/Example.com/Bad/@v/list")
    assert got.status == 400, got.text
    # An upstream that fails every time: two requests, two failures, ejected (threshold 2).
    for _ in range(2):
        got = await get(client, info_path(CORP))
        assert got.status == 502, got.text

    m = await scrape(client)
    assert by_label(m, "goproxy_requests_total", "route", "kind", "status", "cache") == {
        ("public", "info", "200", "miss"): 1 + 1 + 25 + 1,      # lib, failover, warm-up, hedge
        ("public", "info", "200", "hit"): 1,
        ("public", "mod", "200", "miss"): 1,
        ("public", "zip", "200", "miss"): 1,
        ("public", "zip", "200", "hit"): 1,
        ("public", "list", "200", "miss"): 1,
        ("public", "list", "200", "hit"): 1,
        ("public", "info", "404", "miss"): 1,
        ("public", "info", "404", "hit"): 1,
        ("corp", "info", "502", "miss"): 2,
        ("-", "invalid", "400", "none"): 1,
    }
    assert by_label(m, "goproxy_upstream_attempts_total", "upstream", "outcome") == {
        ("a", "ok"): 4 + 25,                 # lib info/mod/zip/list, warm-up
        ("a", "not_found"): 1,
        ("a", "http_error"): 1,              # the 503 that failed over
        ("a", "cancelled"): 1,               # lost to the hedge
        ("b", "not_found"): 1,
        ("b", "ok"): 2,                      # the failover and the hedge
        ("c", "http_error"): 2,
    }
    assert value(m, "goproxy_retries_total") == 1
    # The hedge went to b, at a's own p95 (25 samples), and b answered first.
    assert by_label(m, "goproxy_hedges_total", "upstream", "source") == {("b", "own"): 1}
    assert by_label(m, "goproxy_hedge_wins_total", "upstream") == {("b",): 1}
    assert value(m, "goproxy_retry_budget_spent_total") == 2
    assert value(m, "goproxy_retry_budget_refusals_total") == 0

    # Latency histograms: one observation per answered attempt (200 or 404).
    for upstream, count in (("a", 4 + 25 + 1), ("b", 1 + 2)):
        assert value(m, "goproxy_upstream_latency_seconds_count", upstream=upstream) == count
        buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                          m["goproxy_upstream_latency_seconds_bucket"].items()
                          if dict(k)["upstream"] == upstream))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{upstream}: buckets not cumulative: {buckets}"
        assert buckets[-1] == (float("inf"), count)
        assert len(buckets) == 13
    a_sum = value(m, "goproxy_upstream_latency_seconds_sum", upstream="a")
    assert a_sum is not None and a_sum >= 25 * 0.01
    # The warm-up answers took >= 10 ms: at most the 5 others fit in the 5 ms bucket.
    assert value(m, "goproxy_upstream_latency_seconds_bucket", upstream="a", le="0.005") <= 5
    assert value(m, "goproxy_upstream_latency_seconds_bucket", upstream="a", le="10.0") == 30
    assert value(m, "goproxy_upstream_latency_seconds_count", upstream="c") is None

    # Live gauges: breaker per upstream, EWMA per upstream, nothing left in flight.
    assert by_label(m, "goproxy_upstream_breaker_state", "upstream") == {
        ("a",): 0, ("b",): 0, ("c",): 2}
    ewma = by_label(m, "goproxy_upstream_latency_ewma_seconds", "upstream")
    assert set(ewma) == {("a",), ("b",), ("c",)}
    assert ewma[("c",)] >= 1.0                       # failures count as the 1 s penalty
    assert 0 < ewma[("b",)] < 1.0
    assert by_label(m, "goproxy_upstream_in_flight", "upstream") == {("a",): 0, ("b",): 0, ("c",): 0}

    # Cache: what is on disk, its hits and misses; no checksum trouble in this traffic.
    cache_dir = Path(edge_of(client).cache.disk.root)
    on_disk = sum(p.stat().st_size for p in cache_dir.rglob("*")     # artifacts, not @v/list
                  if p.is_file() and "/@v/" in p.as_posix() and p.name != "list")
    size = value(m, "goproxy_cache_size_bytes")
    assert size is not None and size >= len(LIB.zip) and size >= on_disk > 0, (size, on_disk)
    assert value(m, "goproxy_cache_evictions_total") == 0
    assert (value(m, "goproxy_cache_hits_total") or 0) >= 3
    assert value(m, "goproxy_checksum_mismatches_total") == 0
    # Fills hold no bytes in memory once done; the budget they share is visible.
    assert value(m, "goproxy_cache_write_buffered_bytes") == 0
    assert (value(m, "goproxy_cache_write_budget_bytes") or 0) >= 1 << 20
    assert value(m, "goproxy_cache_write_waits_total") == 0
    assert_labels_bounded(m)


async def test_cache_hit_and_miss_counters_match_what_clients_saw(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """goproxy_cache_hits/misses count requests answered from / not found in the cache,
    as X-Goproxy-Cache tells the client: internal look-ups are not traffic."""
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")]))
    seen: dict[str, int] = {"hit": 0, "miss": 0}
    for path in (info_path(LIB), info_path(LIB), f"/{LIB.path}/@v/v1.0.0.mod",
                 f"/{LIB.path}/@v/v1.0.0.mod", f"/{LIB.path}/@v/v1.0.0.zip",
                 f"/{LIB.path}/@v/v1.0.0.zip", f"/{LIB.path}/@v/list", f"/{LIB.path}/@v/list",
                 "/example.com/nope/@v/v1.0.0.info", "/example.com/nope/@v/v1.0.0.info"):
        got = await get(client, path)
        seen[got.headers.get("X-Goproxy-Cache", "miss")] += 1      # a first 404 has none
    assert seen == {"hit": 5, "miss": 5}
    m = await scrape(client)
    requests = by_label(m, "goproxy_requests_total", "route", "kind", "status", "cache")
    assert sum(v for k, v in requests.items() if k[3] == "hit") == 5
    counters = {"hits": value(m, "goproxy_cache_hits_total"),
                "misses": value(m, "goproxy_cache_misses_total")}
    assert counters == {"hits": 5, "misses": 5}


async def test_budget_refusals_and_429_are_counted(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """An empty retry budget: a's 429 cannot be retried on b; the refusal is counted."""
    a = await fake_proxy(TREE, name="a", faults=Faults(status=429, retry_after=30))
    b = await fake_proxy(TREE, name="b")
    client = await edge(cfg({"a": a.url, "b": b.url}, [public("a", "b")],
                            retry={"budget_ratio": 0, "budget_floor": 0}))
    got = await get(client, info_path(LIB))
    assert got.status == 502 and "budget" in got.text, got.text
    assert b.requests == []
    m = await scrape(client)
    assert value(m, "goproxy_retry_budget_refusals_total") == 1
    assert value(m, "goproxy_retry_budget_spent_total") == 0
    assert value(m, "goproxy_retries_total") == 0
    assert by_label(m, "goproxy_upstream_attempts_total", "upstream", "outcome") == {
        ("a", "http_error"): 1}
    assert value(m, "goproxy_requests_total", route="public", kind="info", status="502",
                 cache="miss") == 1
    assert_labels_bounded(m)


async def test_cache_size_and_evictions_follow_the_bound(edge: MakeEdge, fake_proxy: MakeFake,
                                                         tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a")
    bound = 3 * len(ZIPS[0].zip)
    client = await edge(cfg({"a": a.url}, [public("a")],
                            cache={"dir": str(tmp_path / "small-cache"), "max_size": bound}))
    for m in ZIPS:
        got = await get(client, f"/{m.path}/@v/{m.version}.zip")
        assert got.status == 200 and got.body == m.zip

    async def evicted() -> bool:
        samples = await scrape(client)
        return (value(samples, "goproxy_cache_evictions_total") or 0) > 0
    await wait_for(evicted, what="an eviction")
    m = await scrape(client)
    size = value(m, "goproxy_cache_size_bytes")
    assert size is not None and 0 < size <= bound
    assert value(m, "goproxy_cache_max_size_bytes") == bound
    assert value(m, "goproxy_cache_misses_total") >= len(ZIPS)
    assert_labels_bounded(m)


async def test_an_attempt_is_counted_under_one_outcome(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """An upstream's 200 whose .info is not valid JSON is one failed attempt, not also an "ok" one."""
    a = await fake_proxy(TREE, name="a", faults=Faults(corrupt=b"not json"))
    b = await fake_proxy(TREE, name="b")
    client = await edge(cfg({"a": a.url, "b": b.url}, [public("a", "b")]))
    got = await get(client, info_path(LIB))
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b"
    m = await scrape(client)
    attempts = by_label(m, "goproxy_upstream_attempts_total", "upstream", "outcome")
    assert sum(attempts.values()) == len(a.requests) + len(b.requests) == 2, attempts
    assert attempts == {("a", "invalid"): 1, ("b", "ok"): 1}


# -- logs and request ids ------------------------------------------------------------------

async def test_request_and_failed_attempt_log_lines(edge: MakeEdge, fake_proxy: MakeFake,
                                                    tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Behind a trusted proxy: the offered request id and the real client (with its country)
    are logged; a timed-out attempt gets its own line; everything renders as JSON."""
    caplog.set_level(logging.INFO, logger="router")
    geo_db = tmp_path / "geo.mmdb"
    write_country_db(geo_db, GEO_NETWORKS)
    a = await fake_proxy(TREE, name="a", faults=Faults(hang=True))
    b = await fake_proxy(TREE, name="b")
    client = await edge(cfg({"a": a.url, "b": b.url}, [public("a", "b")],
                            timeouts={**FAST, "headers": 0.3},
                            geoip={"database": str(geo_db), "trusted_proxies": ["127.0.0.0/8"]}))
    got = await get(client, f"/{LIB.path}/@v/v1.0.0.mod",
                    headers={"X-Request-Id": "lb-7f3a.42:x", "X-Forwarded-For": DE_CLIENT})
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "b", got.text
    assert got.headers["X-Request-Id"] == "lb-7f3a.42:x"

    [line] = [r for r in records(caplog, "router.access", "request")
              if r["request_id"] == "lb-7f3a.42:x"]
    for name in REQUEST_FIELDS:
        assert name in line, (name, line)
    assert line["client"] == DE_CLIENT and line["country"] == "DE"
    assert (line["route"], line["module"], line["version"], line["kind"]) == (
        "public", LIB.path, "v1.0.0", "mod")
    assert line["upstream"] == "b" and line["attempts"] == 2
    assert line["cache"] == "miss" and line["status"] == 200
    assert line["bytes"] == len(LIB.mod) and line["bytes"] == len(got.body)
    assert isinstance(line["elapsed"], float) and 0.3 <= line["elapsed"] < 5

    [failed] = [r for r in records(caplog, "router.forward", "upstream attempt failed")
                if r["request_id"] == "lb-7f3a.42:x"]
    for name in ATTEMPT_FIELDS:
        assert name in failed, (name, failed)
    assert failed["upstream"] == "a" and failed["outcome"] == "timeout"
    assert failed["timeout"] == 0.3 and failed["elapsed"] >= 0.29
    assert "0.3" in failed["error"] and "headers" in failed["error"]

    # What the process writes: the same records as JSON lines.
    formatter = JsonFormatter()
    for record in caplog.records:
        if record.name in ("router.access", "router.forward"):
            entry = json.loads(formatter.format(record))
            assert entry["logger"] == record.name and "\n" not in formatter.format(record)


@pytest.mark.parametrize("trusted, offered, honoured", [
    (["127.0.0.0/8"], "trusted-lb-1", True),
    ([], "forged-by-client", False),                       # not from one of our proxies
    (["10.0.0.0/8"], "forged-by-client", False),
    (["127.0.0.0/8"], "has space", False),                 # from a proxy, but not an id
    (["127.0.0.0/8"], "x" * 129, False),
])
async def test_request_id_is_accepted_only_from_a_trusted_proxy(
        edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture,
        trusted: list[str], offered: str, honoured: bool) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")], geoip={"trusted_proxies": trusted}))
    ids = set()
    for path in (info_path(LIB), "/healthz", "/bad/@v/UPPER.info"):
        got = await get(client, path, headers={"X-Request-Id": offered})
        rid = got.headers["X-Request-Id"]
        if honoured:
            assert rid == offered
        else:
            assert rid != offered and re.fullmatch(r"[0-9a-f]{16}", rid), rid
            ids.add(rid)
        assert [r["request_id"] for r in records(caplog, "router.access", "request")][-1] == rid
    assert honoured or len(ids) == 3, "generated ids must differ per request"


# -- secrets ---------------------------------------------------------------------------------

class EchoHandler(BaseHTTPRequestHandler):
    """An upstream that fails and echoes the request headers in its error body."""

    def do_GET(self) -> None:          # noqa: N802 (http.server's naming)
        body = ("upstream exploded; you sent:\n" + "".join(
            f"{k}: {v}\n" for k, v in self.headers.items())).encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:     # noqa: A002
        pass


@pytest.fixture
def echo_upstream() -> Iterator[str]:
    """http://127.0.0.1:PORT of an EchoHandler server on a thread."""
    with threaded_http_server(EchoHandler) as port:
        yield f"http://127.0.0.1:{port}"


@dataclass
class Secrets:
    upstream: str = "up" + secrets.token_hex(12)        # upstream header (Bearer)
    password: str = "pw" + secrets.token_hex(12)        # upstream URL userinfo
    route: str = "rt" + secrets.token_hex(12)           # a route's allow.tokens_env
    admin: str = "ad" + secrets.token_hex(12)           # admin.token_env

    def all(self) -> dict[str, str]:
        return {"upstream header": self.upstream, "upstream URL password": self.password,
                "route token": self.route, "admin token": self.admin}

    def env(self) -> dict[str, str]:
        return {"OPS_UP_TOKEN": self.upstream, "OPS_UP_PASSWORD": self.password,
                "OPS_CLIENT_TOKENS": f"other-{secrets.token_hex(4)},{self.route}",
                "OPS_ADMIN_TOKEN": self.admin}


def secret_config(s: Secrets, corp_url: str, echo_url: str, pub_url: str,
                  refused_url: str) -> dict[str, Any]:
    auth = {"Authorization": "Bearer ${OPS_UP_TOKEN}"}
    refused = refused_url.replace("http://", "http://deploy:${OPS_UP_PASSWORD}@")
    return {
        "upstreams": {
            "corp": {"url": corp_url, "headers": auth},
            "echo": {"url": echo_url, "headers": {**auth, "X-Api-Key": "k-${OPS_UP_TOKEN}"}},
            "locked": {"url": refused},
            "pub": {"url": pub_url},
        },
        "routes": [
            {"name": "corp", "match": ["corp.example"], "upstreams": ["corp"],
             "allow": {"tokens_env": "OPS_CLIENT_TOKENS"}},
            {"name": "echo", "match": ["echo.example"], "upstreams": ["echo", "locked"]},
            {"name": "public", "match": ["*"], "upstreams": ["pub"]},
        ],
        "scoring": {"plugins": ["latency", "breaker"]},
        "admin": {"token_env": "OPS_ADMIN_TOKEN"},
        "timeouts": dict(FAST),
        "probes": {"enabled": True, "interval": 0.3, "timeout": 1.0},
    }


def http_get(url: str, headers: Mapping[str, str] | None = None,
             timeout: float = PATIENCE) -> tuple[int, CIMultiDict[str], str]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, CIMultiDict(resp.headers.items()), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, CIMultiDict(exc.headers.items()), exc.read().decode("utf-8", "replace")


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"ci:{password}".encode()).decode()


def drive_secret_traffic(router: RouterProcess, s: Secrets, corp: ThreadedFakeProxy) -> None:
    """Authorised, unauthorised and failing traffic, with every secret in play."""
    corp_info = router.url + info_path(CORP)
    assert http_get(corp_info)[0] == 401
    assert http_get(corp_info, {"Authorization": "Bearer wrong-" + s.route})[0] == 403
    assert http_get(corp_info, {"Authorization": "Bearer " + s.admin})[0] == 403
    status, headers, body = http_get(corp_info, {"Authorization": "Bearer " + s.route})
    assert status == 200 and headers["X-Goproxy-Upstream"] == "corp", body
    status, _, body = http_get(router.url + f"/{CORP.path}/@v/v1.0.0.mod",
                               {"Authorization": basic(s.route)})
    assert status == 200, body
    # The router sent its own credential upstream, never the client's.
    sent = [r.header("Authorization") for r in corp.requests if r.path.startswith("/corp.")]
    assert sent and set(sent) == {"Bearer " + s.upstream}
    assert http_get(router.url + info_path(LIB), {"Authorization": "Bearer " + s.route})[0] == 200
    assert http_get(router.url + "/sumdb/sum.golang.org/supported")[0] in (404, 410)
    for admin_path in ("/metrics", "/_router/status", "/_router/explain?module=corp.example/x"):
        assert http_get(router.url + admin_path, {"Authorization": "Bearer " + s.admin})[0] == 200
        # From loopback (an admin network) a wrong token does not matter; it is only sent.
        assert http_get(router.url + admin_path, {"Authorization": "Bearer bad" + s.admin})[0] == 200


def operator_views(router: RouterProcess, s: Secrets) -> dict[str, str]:
    """Everything an operator can read over HTTP."""
    views = {}
    for path in ("/metrics", "/_router/status", "/_router/status.json", "/readyz", "/healthz",
                 "/_router/explain?module=corp.example/tool",
                 "/_router/explain?module=echo.example/thing&client_ip=5.144.1.1",
                 "/_router/explain?module=example.com/lib"):
        status, _, body = http_get(router.url + path, {"Authorization": "Bearer " + s.admin})
        assert status in (200, 503), (path, status, body)
        views[path] = body
    return views


def find_secrets(texts: Mapping[str, str], s: Secrets) -> list[str]:
    return [f"{what} found in {where}" for where, text in texts.items()
            for what, secret in s.all().items() if secret in text]


def test_no_secret_in_logs_metrics_explain_or_status(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    """Upstream headers, URL credentials, route tokens and the admin token, all in use
    (401s, 403s, probes of a refused upstream): none of them in any output."""
    s = Secrets()
    corp = threaded_fake_proxy(TREE, name="corp",
                               faults=Faults(required_headers={"Authorization": "Bearer " + s.upstream}))
    pub = threaded_fake_proxy(TREE, name="pub")
    quiet_echo = threaded_fake_proxy(TREE, name="echo", faults=Faults(status=500))
    with RefusedPort() as refused:
        router = router_process(secret_config(s, corp.url, quiet_echo.url, pub.url, refused.url),
                                env=s.env())
        drive_secret_traffic(router, s, corp)
        status, _, body = http_get(router.url + "/echo.example/thing/@v/v1.0.0.info")
        assert status == 502 and "echo" in body and "locked" in body, body
        time.sleep(1.0)                  # a few probe rounds, failing ones included
        views = operator_views(router, s)
        router.stop()
    stderr = router.stderr()
    assert find_secrets({"stderr": stderr, "stdout": router.stdout_path.read_text(), **views},
                        s) == []
    assert '"event":"probe failed"' in stderr
    assert json.loads(views["/_router/status.json"])["routes"]


def test_an_upstream_echoing_its_credentials_leaks_nothing(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], echo_upstream: str) -> None:
    """An upstream whose 500 body repeats the request headers (its Authorization among
    them): the excerpt must not carry the credential into logs, status or the client."""
    s = Secrets()
    corp = threaded_fake_proxy(TREE, name="corp",
                               faults=Faults(required_headers={"Authorization": "Bearer " + s.upstream}))
    pub = threaded_fake_proxy(TREE, name="pub")
    with RefusedPort() as refused:
        router = router_process(secret_config(s, corp.url, echo_upstream, pub.url, refused.url),
                                env=s.env())
        drive_secret_traffic(router, s, corp)
        status, _, client_body = http_get(router.url + "/echo.example/thing/@v/v1.0.0.info")
        assert status == 502 and "upstream exploded" in client_body, client_body
        views = operator_views(router, s)
        router.stop()
    stderr = router.stderr()
    assert "upstream exploded" in stderr, "the attempt's error line is missing"
    leaks = find_secrets({"stderr": stderr, **views, "the client's error body": client_body}, s)
    assert leaks == [], "\n".join(leaks + [line for line in stderr.splitlines()
                                          if s.upstream in line][:3])


async def test_url_credentials_and_an_authorization_header_do_not_crash_a_request(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """An upstream with both user:password@ in its URL and an Authorization header is either
    refused by the config check or fails over like any broken upstream: never a 500."""
    import yaml

    from goproxy_router.config.loader import ConfigError, parse_config

    good = await fake_proxy(TREE, name="good")
    with RefusedPort() as refused:
        both = {"url": refused.url.replace("http://", "http://u:p4ssw0rd@"),
                "headers": {"Authorization": "Bearer t0ken-t0ken"}}
        config = cfg({"both": both, "good": good.url}, [public("both", "good")])
        try:
            parse_config(yaml.safe_dump(config), "routes.yaml", {})
        except ConfigError as exc:
            assert "both" in str(exc)
            return
        client = await edge(config)
        got = await get(client, info_path(LIB))
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "good", got.text


# -- JSON logs from the process ------------------------------------------------------------

def test_process_writes_one_json_line_per_request_and_per_failed_attempt(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy]) -> None:
    bad = threaded_fake_proxy(TREE, name="bad", faults=Faults(status=503))
    good = threaded_fake_proxy(TREE, name="good")
    router = router_process({**cfg({"bad": bad.url, "good": good.url}, [public("bad", "good")]),
                             "probes": {"enabled": False}})
    sent: dict[str, tuple[str, int]] = {}
    for path in (info_path(LIB), info_path(LIB), f"/{LIB.path}/@v/v1.0.0.zip",
                 "/example.com/nope/@latest", "/Bad/Path/@v/list", "/healthz"):
        status, headers, _ = http_get(router.url + path)
        sent[headers["X-Request-Id"]] = (path, status)
    router.stop()
    lines = [line for line in router.stderr().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]           # every line is one JSON object
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "event"} <= set(e) for e in entries)
    access = {e["request_id"]: e for e in entries if e["event"] == "request"}
    assert set(sent) <= set(access)
    assert {e["path"] for rid, e in access.items() if rid not in sent} == {"/healthz"}, \
        "only the fixture's readiness polls are not ours"
    for rid, (path, status) in sent.items():
        entry = access[rid]
        assert set(REQUEST_FIELDS) <= set(entry), (path, entry)
        assert entry["status"] == status and entry["path"] == path.split("?")[0]
        assert entry["client"] == "127.0.0.1"
    first, second = (access[rid] for rid, (p, _) in sent.items() if p == info_path(LIB))
    assert (first["cache"], first["upstream"], first["attempts"]) == ("miss", "good", 2)
    assert (second["cache"], second["upstream"], second["attempts"]) == ("hit", None, 0)
    assert first["bytes"] == second["bytes"] == len(LIB.info)
    failed = [e for e in entries if e["event"] == "upstream attempt failed"]
    assert failed and all(set(ATTEMPT_FIELDS) <= set(e) for e in failed)
    assert {e["upstream"] for e in failed if e["outcome"] == "http_error"} == {"bad"}
    assert all(e["request_id"] in access for e in failed)
    assert all("503" in e["error"] and e["timeout"] is None for e in failed
               if e["outcome"] == "http_error")


# -- health ------------------------------------------------------------------------------------

async def test_readyz_flips_when_every_upstream_of_a_route_is_ejected(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    c1 = await fake_proxy(TREE, name="c1", faults=Faults(status=502))
    c2 = await fake_proxy(TREE, name="c2")
    pub = await fake_proxy(TREE, name="pub")
    client = await edge(cfg(
        {"c1": c1.url, "c2": c2.url, "pub": pub.url},
        [{"name": "corp", "match": ["corp.example"], "upstreams": ["c1", "c2"],
          "retry": {"max_attempts": 2}},
         public("pub")],
        scoring={"plugins": [], "breaker": {"threshold": 1, "ejection": 1.0, "max_ejection": 2.0}}))
    got = await get(client, "/readyz")
    assert (got.status, got.text) == (200, "ready\n")

    # One of two ejected: the route still has an upstream, so still ready.
    got = await get(client, info_path(CORP))
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "c2"
    m = await scrape(client)
    assert value(m, "goproxy_upstream_breaker_state", upstream="c1") == 2
    assert (await get(client, "/readyz")).status == 200

    # Both ejected: not ready, and the body says which route and which upstreams.
    c2.set_faults(status=503)
    got = await get(client, f"/{CORP.path}/@v/v1.0.0.mod")
    assert got.status == 502, got.text
    got = await get(client, "/readyz")
    assert got.status == 503, got.text
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "route corp" in got.text and "c1" in got.text and "c2" in got.text, got.text
    assert "public" not in got.text and "cache" not in got.text, got.text
    assert (await get(client, "/healthz")).status == 200, "alive even when not ready"
    m = await scrape(client)
    assert by_label(m, "goproxy_upstream_breaker_state", "upstream") == {
        ("c1",): 2, ("c2",): 2, ("pub",): 0}
    # Module requests of the other route are still served.
    assert (await get(client, info_path(LIB))).status == 200

    # An ejection ends (half-open): ready again. Once c1's has ended too, its good answer
    # closes its breaker.
    c1.clear_faults()
    c2.clear_faults()

    async def ready() -> bool:
        return (await get(client, "/readyz")).status == 200
    await wait_for(ready, timeout=5.0, what="ready after the ejection")

    async def c1_half_open() -> bool:
        return value(await scrape(client), "goproxy_upstream_breaker_state", upstream="c1") == 1
    await wait_for(c1_half_open, timeout=5.0, what="c1 half-open")
    got = await get(client, f"/{CORP.path}/@v/list")
    assert got.status == 200 and got.headers["X-Goproxy-Upstream"] == "c1", got.text
    m = await scrape(client)
    assert value(m, "goproxy_upstream_breaker_state", upstream="c1") == 0
    assert (await get(client, "/readyz")).status == 200


async def test_readyz_names_a_cache_directory_that_is_gone(edge: MakeEdge, fake_proxy: MakeFake,
                                                           tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a")
    cache_dir = tmp_path / "vanishing-cache"
    client = await edge(cfg({"a": a.url}, [public("a")], cache={"dir": str(cache_dir)}))
    root = Path(edge_of(client).cache.disk.root)
    assert (await get(client, "/readyz")).status == 200
    shutil.rmtree(root)
    got = await get(client, "/readyz")
    assert got.status == 503 and str(root) in got.text and "cache" in got.text, got.text
    assert (await get(client, "/healthz")).status == 200
    root.mkdir()
    assert (await get(client, "/readyz")).status == 200


@pytest.mark.parametrize("mode", [0o644, 0o755], ids=["file-0644", "file-0755"])
async def test_readyz_names_a_cache_path_that_is_not_a_directory(
        edge: MakeEdge, fake_proxy: MakeFake, tmp_path: Path, mode: int) -> None:
    """Replaced by a file (root ignores permission bits, so this is how a test makes
    the cache unwritable): no cache write can succeed, so not ready."""
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")], cache={"dir": str(tmp_path / "c")}))
    root = Path(edge_of(client).cache.disk.root)
    shutil.rmtree(root)
    root.write_bytes(b"not a directory")
    root.chmod(mode)
    got = await get(client, f"/{LIB.path}/@v/v1.0.0.mod")
    assert got.status != 200 or got.headers.get("X-Goproxy-Cache") == "miss"
    got = await get(client, "/readyz")
    assert got.status == 503 and str(root) in got.text, got.text


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through a read-only mode; covered by the tests above")
async def test_readyz_names_a_read_only_cache_directory(edge: MakeEdge, fake_proxy: MakeFake,
                                                        tmp_path: Path) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")], cache={"dir": str(tmp_path / "ro")}))
    root = Path(edge_of(client).cache.disk.root)
    root.chmod(0o555)
    try:
        got = await get(client, "/readyz")
        assert got.status == 503 and str(root) in got.text, got.text
    finally:
        root.chmod(0o755)
    assert (await get(client, "/readyz")).status == 200


# -- the admin surface -------------------------------------------------------------------------

ADMIN_PATHS = ("/metrics", "/_router/status", "/_router/status.json",
               "/_router/explain?module=example.com/lib")
OPEN_PATHS = ("/healthz", "/readyz")


async def test_admin_surface_is_open_to_loopback_by_default(edge: MakeEdge,
                                                            fake_proxy: MakeFake) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")]))
    for path in ADMIN_PATHS + OPEN_PATHS:
        got = await get(client, path)
        assert got.status == 200, (path, got.text)
    explained = json.loads((await get(client, ADMIN_PATHS[-1])).body)
    assert explained["route"] == "public" and explained["order"] == ["a"]


async def test_admin_surface_is_closed_outside_admin_networks(
        edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    token = "adm-" + secrets.token_hex(16)
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")],
                            admin={"cidrs": ["10.0.0.0/8", "fd00::/8"], "token_env": "OPS_ADMIN"}),
                        env={"OPS_ADMIN": token})
    for path in ADMIN_PATHS:
        for headers in ({}, {"Authorization": "Bearer wrong-" + token},
                        {"Authorization": f"Bearer {token}x"}, {"Authorization": token},
                        {"Authorization": basic(token)}, {"X-Admin-Token": token}):
            got = await get(client, path, headers)
            assert got.status == 403, (path, headers, got.status)
            assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert "admin" in got.text and token not in got.text
            assert b"goproxy_" not in got.body and b"<html" not in got.body
        for auth in (f"Bearer {token}", f"bearer  {token} "):
            got = await get(client, path, {"Authorization": auth})
            assert got.status == 200, (path, auth, got.text)
    # Health and the module proxy itself are for everyone.
    for path in OPEN_PATHS + (info_path(LIB), f"/{LIB.path}/@v/list"):
        got = await get(client, path)
        assert got.status == 200, (path, got.text)
    # The refusals were logged as 403s, without the token.
    refused = [r for r in records(caplog, "router.access", "request") if r["status"] == 403]
    assert len(refused) == len(ADMIN_PATHS) * 6
    assert not any(token in json.dumps(r) for r in records(caplog, "router.access", "request"))


async def test_admin_networks_apply_to_the_client_behind_a_trusted_proxy(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")], admin={"cidrs": ["10.0.0.0/8"]},
                            geoip={"trusted_proxies": ["127.0.0.0/8"]}))
    for path in ADMIN_PATHS:
        assert (await get(client, path, {"X-Forwarded-For": "10.1.2.3"})).status == 200, path
        assert (await get(client, path, {"X-Forwarded-For": "10.1.2.3, 8.8.8.8"})).status == 403
        assert (await get(client, path)).status == 403, path            # loopback is not admin
    # Default admin networks (loopback): a public client behind the proxy is refused.
    client = await edge(cfg({"a": a.url}, [public("a")], geoip={"trusted_proxies": ["127.0.0.0/8"]}))
    assert (await get(client, "/metrics", {"X-Forwarded-For": "8.8.8.8"})).status == 403
    assert (await get(client, "/metrics")).status == 200
    # Without trusted proxies a forged X-Forwarded-For changes nothing.
    client = await edge(cfg({"a": a.url}, [public("a")], admin={"cidrs": ["10.0.0.0/8"]}))
    assert (await get(client, "/metrics", {"X-Forwarded-For": "10.1.2.3"})).status == 403


@pytest.mark.parametrize("path", [
    "/%6Detrics", "/%6detrics", "/_router/%73tatus", "/_router/status.%6Ason", "/%5Frouter/status",
    "/_router/explain%3Fmodule=example.com/lib", "/_router//status", "/_router/./status",
    "/x/../metrics", "/_router/x/../status.json", "/metrics?x=1", "/_router/status?y",
    "/METRICS", "/_Router/status",
])
async def test_admin_paths_cannot_be_reached_by_another_spelling(
        edge: MakeEdge, fake_proxy: MakeFake, path: str) -> None:
    a = await fake_proxy(TREE, name="a")
    client = await edge(cfg({"a": a.url}, [public("a")], admin={"cidrs": ["10.0.0.0/8"]}))
    status, _, body = await raw_get(client, path)
    assert status != 200, (path, body[:200])
    assert "goproxy_requests" not in body and "goproxy_upstream" not in body
    assert "<html" not in body and '"routes"' not in body and '"order"' not in body
    assert a.requests == [], "an operator path was forwarded upstream"


# -- the status page, through the router process, in Chromium ----------------------------------

def run_chromium(chromium: str, profile: Path, *args: str,
                 timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
           "--no-default-browser-check", f"--user-data-dir={profile}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, HOME=str(profile)), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-3000:]}"
    return result


def test_status_page_in_chromium_from_the_router_process(
        router_process: Callable[..., RouterProcess],
        threaded_fake_proxy: Callable[..., ThreadedFakeProxy], tmp_path: Path) -> None:
    chromium = require_browser()
    s = Secrets()
    good = threaded_fake_proxy(TREE, name="good")
    broken = threaded_fake_proxy(TREE, name="broken", faults=Faults(status=500))
    router = router_process({
        **cfg({"broken": {"url": broken.url, "headers": {"Authorization": "Bearer ${OPS_UP_TOKEN}"}},
               "good": good.url},
              [{"name": "corp", "match": ["corp.example"], "upstreams": ["broken"],
                "retry": {"max_attempts": 1}},
               public("broken", "good")],
              scoring={"plugins": ["breaker", "latency"],
                       "breaker": {"threshold": 1, "ejection": 600}}),
        "probes": {"enabled": False},
    }, env=s.env())
    for path in (info_path(LIB), info_path(LIB), f"/{LIB.path}/@v/v1.0.0.mod", info_path(LIB),
                 info_path(CORP)):
        http_get(router.url + path)
    snapshot = json.loads(http_get(router.url + "/_router/status.json")[2])
    hit_ratio = snapshot["cache"]["hit_ratio"]
    assert 0 < hit_ratio < 1, snapshot["cache"]

    result = run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=7000",
                          "--dump-dom", router.url + "/_router/status")
    dom = result.stdout
    assert 'id="status"' in dom, dom[:2000]
    # The page's script ran against the real router and swapped in a fresh copy.
    assert re.search(r'data-refreshes="[12]"', dom), dom[:3000]
    assert 'class="on"' in dom and "live · updated" in dom
    for text in ('data-route="corp"', 'data-route="public"', 'data-upstream="good"',
                 'data-upstream="broken"', f'data-hit-ratio="{hit_ratio:.4f}"', "<svg"):
        assert text in dom, text
    public_section = dom[dom.index('data-route="public"'):]
    broken_row = public_section[public_section.index('data-upstream="broken"'):][:4000]
    good_row = public_section[public_section.index('data-upstream="good"'):][:4000]
    assert 'data-breaker="open"' in broken_row and "HTTP 500" in broken_row
    assert 'data-breaker="closed"' in good_row
    assert s.upstream not in dom
    router.stop()
    access = [json.loads(line) for line in router.stderr().splitlines()
              if '"event":"request"' in line]
    status_hits = [e for e in access if e["path"] == "/_router/status"]
    assert len(status_hits) >= 2 and all(e["status"] == 200 for e in status_hits)


# -- self-checks of the helpers ----------------------------------------------------------------

def test_label_scan_catches_a_module_path() -> None:
    text = ('# HELP x_total x\n# TYPE x_total counter\n'
            'x_total{module="example.com/lib"} 1\n')
    with pytest.raises(AssertionError):
        assert_labels_bounded(parse_metrics(text))
