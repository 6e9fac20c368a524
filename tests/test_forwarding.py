"""Forwarding through the router to fake upstreams: failover, error bodies, streaming,
header hygiene, and bad input that never reaches an upstream."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import time
import zipfile
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support import FakeProxy, Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake, raw_get, upstream_app

MOD = Module("example.com/lib", "v1.2.3")
UPPER = Module("github.com/Azure/azure-sdk", "v0.1.0")
SECRET = Module("git.corp.example/team/secret", "v1.0.0")
PUBLIC_TREE = ModuleTree([MOD, UPPER])



def public_config(*upstreams: tuple[str, str]) -> dict[str, Any]:
    """Upstreams tried in config order: no scoring plugins, so every cost ties."""
    return {
        "upstreams": {name: {"url": url} for name, url in upstreams},
        "routes": [{"name": "public", "match": ["*"], "upstreams": [n for n, _ in upstreams]}],
        "scoring": {"plugins": []},
    }


INFO = "/example.com/lib/@v/v1.2.3.info"


@pytest.mark.parametrize("fault", [
    Faults(status=404), Faults(status=410), Faults(status=500), Faults(status=503),
    Faults(status=403),
])
async def test_failover_on_status(edge: MakeEdge, fake_proxy: MakeFake, fault: Faults) -> None:
    first = await fake_proxy(PUBLIC_TREE, name="first", faults=fault)
    second = await fake_proxy(PUBLIC_TREE, name="second")
    client = await edge(public_config(("first", first.url), ("second", second.url)))
    for path, body in [(INFO, MOD.info), ("/example.com/lib/@v/v1.2.3.zip", MOD.zip),
                       ("/github.com/%21azure/azure-sdk/@v/v0.1.0.mod", UPPER.mod)]:
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.headers["X-Goproxy-Upstream"] == "second"
        assert await resp.read() == body
    assert len(first.requests) == 3 and len(second.requests) == 3


async def test_failover_on_refused_connection(edge: MakeEdge, fake_proxy: MakeFake,
                                              refused_url: str) -> None:
    second = await fake_proxy(PUBLIC_TREE, name="second")
    client = await edge(public_config(("dead", refused_url), ("second", second.url)))
    resp = await client.get(INFO)
    assert resp.status == 200 and await resp.read() == MOD.info
    assert resp.headers["X-Goproxy-Upstream"] == "second"


async def test_failover_on_hang_is_bounded_by_headers_timeout(edge: MakeEdge,
                                                              fake_proxy: MakeFake) -> None:
    first = await fake_proxy(PUBLIC_TREE, name="hung", faults=Faults(hang=True))
    second = await fake_proxy(PUBLIC_TREE, name="second")
    client = await edge(public_config(("hung", first.url), ("second", second.url)))
    started = time.monotonic()
    resp = await client.get(INFO)
    elapsed = time.monotonic() - started
    assert resp.status == 200 and await resp.read() == MOD.info
    assert len(first.requests) == 1
    assert 0.45 <= elapsed < 3.0, elapsed


async def test_all_not_found_is_404_listing_each_upstream(edge: MakeEdge,
                                                          fake_proxy: MakeFake) -> None:
    a = await fake_proxy(ModuleTree(), name="a")
    b = await fake_proxy(ModuleTree(), name="b", faults=Faults(status=410))
    client = await edge(public_config(("a", a.url), ("b", b.url)))
    resp = await client.get("/example.com/missing/@v/v1.0.0.info")
    body = await resp.text()
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    lines = body.splitlines()
    assert lines[0].startswith("goproxy-router: example.com/missing@v1.0.0 .info: "
                               "not found on any upstream (route public, request ")
    assert lines[1].startswith("  a: not found (404 Not Found)")
    assert lines[2].startswith("  b: not found (410 Gone): b: injected status 410")
    assert len(lines) == 3


async def test_mixed_failures_are_502_naming_each_upstream(edge: MakeEdge, fake_proxy: MakeFake,
                                                           refused_url: str) -> None:
    a = await fake_proxy(PUBLIC_TREE, name="a", faults=Faults(status=500))
    b = await fake_proxy(ModuleTree(), name="b")
    client = await edge(public_config(("a", a.url), ("dead", refused_url), ("b", b.url)))
    resp = await client.get(INFO)
    body = await resp.text()
    assert resp.status == 502, body
    assert "no upstream could answer" in body
    assert "  a: HTTP 500 Internal Server Error: a: injected status 500 (" in body
    assert "  dead: connect failed: connection refused (" in body
    assert "  b: not found (404 Not Found)" in body
    assert resp.headers["X-Request-Id"] in body


async def test_all_timeouts_are_504(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    a = await fake_proxy(PUBLIC_TREE, name="a", faults=Faults(hang=True))
    b = await fake_proxy(ModuleTree(), name="b")
    client = await edge(public_config(("a", a.url), ("b", b.url)))
    started = time.monotonic()
    resp = await client.get(INFO)
    body = await resp.text()
    assert time.monotonic() - started < 3.0
    assert resp.status == 504, body
    assert "  a: timeout after 0.5s waiting for headers (" in body


async def test_body_broken_after_headers_aborts_the_client(edge: MakeEdge,
                                                           fake_proxy: MakeFake) -> None:
    """The status line is out: the only honest thing left is to cut the connection."""
    a = await fake_proxy(PUBLIC_TREE, name="a", faults=Faults(truncate=True))
    client = await edge(public_config(("a", a.url)))
    resp = await client.get("/example.com/lib/@v/v1.2.3.zip")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(MOD.zip))
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


def stored_zip(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("example.com/lib@v1.2.3/blob.bin", os.urandom(size))
    return buffer.getvalue()


async def test_streams_before_the_upstream_finishes(edge: MakeEdge) -> None:
    """The first half reaches the client while the upstream still holds the rest."""
    release = asyncio.Event()
    body = stored_zip(300_000)
    half = len(body) // 2

    async def slow_zip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:half])
        await asyncio.wait_for(release.wait(), 10)
        await resp.write(body[half:])
        return resp

    server = await upstream_app(slow_zip)
    try:
        client = await edge(public_config(("slow", str(server.make_url("")).rstrip("/"))))
        resp = await client.get("/example.com/lib/@v/v1.2.3.zip")
        first = await asyncio.wait_for(resp.content.readexactly(half - 1), 5)
        assert first == body[:half - 1]
        release.set()
        assert await asyncio.wait_for(resp.read(), 5) == body[half - 1:]
    finally:
        release.set()
        await server.close()


async def test_response_headers_are_filtered_and_compressed_bodies_are_decoded(
        edge: MakeEdge) -> None:
    """Upstreams are asked for identity. One that compresses anyway has its body decoded
    (bounded, router/upstream/decoding.py) and checked: small answers and zips alike reach the
    client and the cache as identity bytes, without the coded form's headers."""
    info = b'{"Version":"v1.2.3"}'
    plain_zip = stored_zip(1000)
    seen: list[dict[str, str]] = []

    async def gzipping(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = gzip.compress(info if request.path.endswith(".info") else plain_zip)
        return web.Response(body=body, headers={
            "Content-Type": "application/octet-stream", "Content-Encoding": "gzip",
            "Set-Cookie": "session=upstream", "X-Upstream-Internal": "1",
            "Connection": "keep-alive, X-Upstream-Internal", "ETag": '"abc"',
        })

    server = await upstream_app(gzipping)
    try:
        client = await edge(public_config(("gz", str(server.make_url("")).rstrip("/"))))
        resp = await client.get(INFO, auto_decompress=False)
        assert resp.status == 200
        assert await resp.read() == info
        assert "Content-Encoding" not in resp.headers
        for _ in range(2):                          # the fill, then the cached copy
            resp = await client.get("/example.com/lib/@v/v1.2.3.zip", auto_decompress=False)
            assert resp.status == 200
            assert await resp.read() == plain_zip
            assert resp.headers.get("ETag") != '"abc"'      # the coded form's, not this
            for name in ("Content-Encoding", "Set-Cookie", "X-Upstream-Internal"):
                assert name not in resp.headers
        assert len(seen) == 2                       # the zip was cached, decoded
        assert {h["Accept-Encoding"] for h in seen} == {"identity"}
    finally:
        await server.close()


PRIVATE_CONFIG: dict[str, Any] = {
    "routes": [
        {"name": "corp", "match": ["git.corp.example"], "upstreams": ["corp"], "sumdb": False,
         "allow": {"cidrs": ["10.0.0.0/8"], "tokens_env": "CLIENT_TOKENS"}},
        {"name": "public", "match": ["*"], "upstreams": ["public"]},
    ],
}
ENV = {"CORP_TOKEN": "upstream-secret", "CLIENT_TOKENS": "client-token"}


async def private_edge(edge: MakeEdge, corp: FakeProxy, public: FakeProxy) -> TestClient:
    config = dict(PRIVATE_CONFIG, upstreams={
        "corp": {"url": corp.url, "headers": {"Authorization": "Bearer ${CORP_TOKEN}",
                                              "X-Corp-Key": "k-${CORP_TOKEN}"}},
        "public": {"url": public.url},
    })
    return await edge(config, ENV)


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"dev:{token}".encode()).decode()


async def test_header_hygiene(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    corp = await fake_proxy(ModuleTree([SECRET]), name="corp", faults=Faults(
        required_headers={"Authorization": "Bearer upstream-secret"}))
    public = await fake_proxy(PUBLIC_TREE, name="public")
    client = await private_edge(edge, corp, public)
    headers = {"Authorization": basic("client-token"), "Cookie": "c=1",
               "Proxy-Authorization": "Basic eA==", "X-Custom": "1"}
    resp = await client.get("/git.corp.example/team/secret/@v/v1.0.0.mod", headers=headers)
    assert resp.status == 200 and await resp.read() == SECRET.mod
    resp = await client.get(INFO, headers={"Authorization": "Bearer client-token"})
    assert resp.status == 200 and await resp.read() == MOD.info
    [corp_request] = corp.requests
    assert corp_request.header("Authorization") == "Bearer upstream-secret"
    assert corp_request.header("X-Corp-Key") == "k-upstream-secret"
    assert corp_request.header("Cookie") is None
    assert corp_request.header("Proxy-Authorization") is None
    [public_request] = public.requests
    values = " ".join(v for _, v in public_request.headers)
    assert "upstream-secret" not in values and "client-token" not in values
    assert public_request.header("Authorization") is None
    assert public_request.header("X-Corp-Key") is None
    assert "secret" not in public_request.raw_path


async def test_credentials_are_dropped_on_cross_origin_redirect(edge: MakeEdge,
                                                               fake_proxy: MakeFake) -> None:
    elsewhere = await fake_proxy(PUBLIC_TREE, name="elsewhere")

    async def redirecting(request: web.Request) -> web.Response:
        if request.path.startswith("/moved"):
            return web.Response(body=MOD.info)
        target = "/moved" if "local" in request.query else elsewhere.url + request.path
        raise web.HTTPFound(target)

    server = await upstream_app(redirecting)
    try:
        config = {"upstreams": {"corp": {"url": str(server.make_url("")).rstrip("/"),
                                         "headers": {"Authorization": "Bearer ${CORP_TOKEN}"},
                                         "redirects": [elsewhere.url]}},
                  "routes": [{"name": "r", "match": ["*"], "upstreams": ["corp"]}]}
        client = await edge(config, ENV)
        resp = await client.get(INFO)
        assert resp.status == 200 and await resp.read() == MOD.info
        [seen] = elsewhere.requests
        assert seen.header("Authorization") is None
    finally:
        await server.close()


@pytest.mark.parametrize("headers, peer_allowed, status", [
    ({}, False, 401),
    ({"Authorization": "Bearer wrong"}, False, 403),
    ({"Authorization": basic("client-token")}, False, 200),
    ({"Authorization": "Bearer client-token"}, False, 200),
])
async def test_private_route_access(edge: MakeEdge, fake_proxy: MakeFake,
                                    headers: dict[str, str], peer_allowed: bool,
                                    status: int) -> None:
    corp = await fake_proxy(ModuleTree([SECRET]), name="corp")
    public = await fake_proxy(PUBLIC_TREE, name="public")
    client = await private_edge(edge, corp, public)
    resp = await client.get("/git.corp.example/team/secret/@v/list", headers=headers)
    body = await resp.text()
    assert resp.status == status, body
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")
    if status != 200:
        assert "route corp" in body and corp.requests == []
    assert public.requests == []


INVALID_PATHS = [
    "/github.com/Azure/x/@v/list",            # raw upper case
    "/github.com/!!azure/x/@v/list",          # "!" not followed by a letter
    "/example.com/../etc/passwd/@v/list",
    "/example.com/./x/@v/list",
    "/example.com/.hidden/@v/list",
    "/example.com//x/@v/list",
    "/example.com/x%00/@v/list",
    "/example.com/x%5cy/@v/list",
    "/example.com/x/@v/v1.0.info/extra",
    "/example.com/x/@v/master.zip",           # .zip needs a canonical version
    "/example.com/x/@v/v1.0.mod",
    "/nodot/x/@v/list",
    "/example.com/x/v1/@v/list",              # v1 is not a valid major suffix
    "/example.com/x/@v/",
    "/example.com/x",
    "/",
    "/%ff%fe/@v/list",
]


@pytest.mark.parametrize("path", INVALID_PATHS)
async def test_invalid_paths_are_refused_and_never_forwarded(edge: MakeEdge, fake_proxy: MakeFake,
                                                             path: str) -> None:
    up = await fake_proxy(PUBLIC_TREE, name="up")
    client = await edge(public_config(("up", up.url)))
    status, headers, body = await raw_get(client, path)
    assert status in (400, 404), body
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.startswith("goproxy-router: ") and "Traceback" not in body
    assert up.requests == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(edge: MakeEdge, fake_proxy: MakeFake, method: str) -> None:
    up = await fake_proxy(PUBLIC_TREE, name="up")
    client = await edge(public_config(("up", up.url)))
    resp = await client.request(method, INFO)
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    assert up.requests == []


async def test_head_is_forwarded_without_a_body(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(PUBLIC_TREE, name="up")
    client = await edge(public_config(("up", up.url)))
    resp = await client.head("/example.com/lib/@v/v1.2.3.zip")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(MOD.zip))
    assert [r.method for r in up.requests] == ["HEAD"]


async def test_module_without_a_route_is_404(edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(PUBLIC_TREE, name="up")
    config = {"upstreams": {"up": {"url": up.url}},
              "routes": [{"name": "only", "match": ["only.example"], "upstreams": ["up"]}]}
    client = await edge(config)
    resp = await client.get(INFO)
    assert resp.status == 404
    assert "no route in routes.yaml matches module example.com/lib" in await resp.text()
    assert up.requests == []


async def test_upstream_base_path_and_escaping(edge: MakeEdge) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        if request.path.endswith(".info"):
            return web.json_response({"Version": "v2.0.0+incompatible"})
        return web.Response(body=b"v0.1.0\n")

    server = await upstream_app(record)
    try:
        base = str(server.make_url("/artifactory/api/go/remote"))
        client = await edge(public_config(("art", base)))
        resp = await client.get("/github.com/%21azure/azure-sdk/@v/list")
        assert resp.status == 200
        resp = await client.get("/github.com/!azure/azure-sdk/@v/v2.0.0+incompatible.info")
        assert resp.status == 200
        assert seen[0] == "/artifactory/api/go/remote/github.com/!azure/azure-sdk/@v/list"
        assert seen[1].endswith("/github.com/!azure/azure-sdk/@v/v2.0.0+incompatible.info")
    finally:
        await server.close()
