"""Hostile input, generated: request paths, header sets and X-Forwarded-For chains.

Whatever a client sends, the edge itself never answers 5xx (its upstream
here answers every valid request, with 200 or 404), never logs a traceback,
forwards nothing for a path it refused, forwards only paths in the
protocol's canonical form, and opens no file outside its cache directory
(watched with a Python audit hook on `open`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import ModuleTree
from tests.support.http import MakeEdge, MakeFake
from tests.support.modtree import Module

MODULES = [Module("example.com/lib", "v1.0.0"), Module("example.com/Upper/Case", "v0.2.0"),
           Module("corp.example/secret", "v1.1.0")]
TOKEN = "a-long-enough-client-token-1234"

# -- the audit hook: every `open` by the edge while a request is in flight ----------------

_OPENED: list[str] | None = None
_HOOKED = False
_PY_DIRS = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   str(Path(__file__).resolve().parents[1]))})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED is not None:
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str):
            _OPENED.append(path)


def _outside(path: str, cache_dir: Path) -> bool:
    """An open that is neither in the cache directory nor Python importing its own code."""
    real = os.path.realpath(path)
    if real.startswith(str(cache_dir.resolve()) + os.sep) or real == str(cache_dir.resolve()):
        return False
    if real.startswith(_PY_DIRS) and (real.endswith((".py", ".pyc", ".so")) or os.path.isdir(real)):
        return False
    return True


class _Errors(logging.Handler):
    """Collects every log record with a traceback or at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


# -- what a hostile client sends -----------------------------------------------------------

SEGMENT = st.one_of(
    st.sampled_from(["example.com", "lib", "corp.example", "secret", "!upper", "Case", "..", ".",
                     "", "%2e%2e", "%2F", "a%00b", "!", "!!x", "v1.0.0", "@v", "~", "x y", "é",
                     "golang.org", "x", "mod"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
SUFFIX = st.sampled_from(["/@v/list", "/@v/v1.0.0.info", "/@v/v1.0.0.mod", "/@v/v1.0.0.zip",
                          "/@latest", "/@v/master.info", "/@v/v1.0.0+incompatible.mod",
                          "/@v/V1.0.0.info", "/@v/v1.0.0.info/..", "", "/@v/", "/@v/v1.1.0.zip"])
SPECIAL = st.sampled_from(["/healthz", "/readyz", "/metrics", "/_router/status", "/_router/status.json",
                           "/_router/explain?module=example.com/lib", "/sumdb/sum.golang.org/supported",
                           "/sumdb/sum.golang.org/lookup/corp.example/secret@v1.1.0",
                           "/sumdb/sum.golang.org/lookup/example.com/lib@v1.0.0",
                           "/sumdb/sum.golang.org/tile/8/0/000", "/sumdb/../metrics",
                           "/example.com/lib/@v/v1.0.0.zip", "/corp.example/secret/@v/list"])


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(SPECIAL)
    path = "/" + "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=5))) + draw(SUFFIX)
    # What may stand raw in a request target; everything else percent-encoded, as a client would.
    return quote(path, safe="/@!%+~.-_:?=&")


IP = st.one_of(st.ip_addresses().map(str),
               st.sampled_from(["127.0.0.1", "10.1.2.3", "unknown", "", " ", "1.2.3.4:80",
                                "[::1]", "_hidden", "999.1.1.1", "10.0.0.0/8"]))
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                             exclude_characters="\x7f"), max_size=40)


@st.composite
def header_sets(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(0, 3))):          # each X-Forwarded-For line a chain
        headers.append(("X-Forwarded-For", ", ".join(draw(st.lists(IP, max_size=4))).encode()))
    if draw(st.booleans()):
        auth = draw(st.one_of(
            st.just(f"Bearer {TOKEN}"), st.builds(lambda t: f"Bearer {t}", HEADER_TEXT),
            st.builds(lambda t: f"Basic {t}", HEADER_TEXT), HEADER_TEXT))
        headers.append(("Authorization", auth.encode("latin-1")))
    if draw(st.booleans()):                            # raw bytes that are not UTF-8
        headers.append(("Authorization", b"Bearer \xff\xfe" + draw(st.binary(max_size=8)).replace(
            b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")))
    for name in ("Range", "If-None-Match", "If-Modified-Since", "X-Request-Id", "Forwarded",
                 "Accept-Encoding", "If-Range"):
        if draw(st.integers(0, 4)) == 0:
            headers.append((name, draw(HEADER_TEXT).encode("latin-1")))
    return headers


async def _send(port: int, method: str, path: str, headers: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n".encode()
        head += b"".join(name.encode() + b": " + value.strip() + b"\r\n" for name, value in headers)
        writer.write(head + b"\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), data[:200]
    return int(status_line.split()[1]), data


@pytest.fixture
async def hostile_edge(tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> Any:
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    up = await fake_proxy(ModuleTree(MODULES), name="up")
    cache_dir = tmp_path / "edge-cache"
    client = await edge({
        "upstreams": {"up": {"url": up.url}, "corp": {"url": up.url}},
        "routes": [
            {"name": "corp", "match": ["corp.example"], "upstreams": ["corp"], "sumdb": False,
             "allow": {"cidrs": ["10.0.0.0/8"], "tokens_env": "CLIENT_TOKENS"}},
            {"name": "public", "match": ["*"], "upstreams": ["up"]},
        ],
        "sumdb": [{"name": "sum.golang.org", "url": up.url}],
        "geoip": {"trusted_proxies": ["127.0.0.1/32"]},
        "cache": {"dir": str(cache_dir)},
        "scoring": {"plugins": ["latency", "breaker"]},
    }, {"CLIENT_TOKENS": TOKEN})
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        yield client, up, cache_dir, errors
    finally:
        logging.getLogger().removeHandler(errors)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "OPTIONS"]),
       path=request_paths(), headers=header_sets())
async def test_hostile_requests_get_a_clean_answer_and_reach_nothing_they_should_not(
        hostile_edge: Any, method: str, path: str, headers: list[tuple[str, bytes]]) -> None:
    global _OPENED
    client, up, cache_dir, errors = hostile_edge
    before = len(up.requests)
    errors.records.clear()
    _OPENED = []
    try:
        status, data = await _send(client.port, method, path, headers)
    finally:
        opened, _OPENED = _OPENED, None
    event(f"status {status}")                  # --hypothesis-show-statistics: what was reached
    assert status < 500, (status, path, headers, data[:400])
    assert b"Traceback" not in data
    assert not errors.records, [(r.getMessage(), r.exc_info) for r in errors.records]
    forwarded = [r.raw_path for r in up.requests[before:]]
    if status == 400 or method not in ("GET", "HEAD"):
        assert forwarded == [], (status, path)
    for raw in forwarded:                # only the protocol's canonical form ever leaves
        assert raw.startswith("/") and "//" not in raw and "\\" not in raw, raw
        assert not any(part in ("..", ".") for part in raw.split("/")), raw
        assert raw == raw.lower() or raw.startswith("/sumdb/"), raw   # case-encoded
        assert not raw.startswith("/corp.example/") or status != 200 or any(
            name == "Authorization" for name, _ in headers), raw
    outside = [p for p in opened if _outside(p, cache_dir)]
    assert not outside, (path, outside)
