"""Checksum database passthrough: supported, lookups, tiles, mirrors, private names kept in."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.http import MakeEdge, upstream_app


class FakeSumdb:
    """Records every path; answers like a checksum database (or with `status`)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.paths: list[str] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.Response(body=f"answer for {request.raw_path}".encode())

    async def start(self) -> str:
        self.server = await upstream_app(self.handle)
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def sumdbs() -> Any:
    started: list[FakeSumdb] = []

    async def make(status: int = 200) -> tuple[FakeSumdb, str]:
        db = FakeSumdb(status)
        started.append(db)
        return db, await db.start()

    yield make
    for db in started:
        if db.server:
            await db.server.close()


def config(primary: str, mirror: str | None = None) -> dict[str, Any]:
    return {
        "upstreams": {"corp": {"url": "http://127.0.0.1:9"}, "pub": {"url": "http://127.0.0.1:9"}},
        "routes": [
            {"name": "corp", "match": ["git.corp.example", "github.com/corp/private-*"],
             "upstreams": ["corp"], "sumdb": False},
            {"name": "public", "match": ["*"], "upstreams": ["pub"]},
        ],
        "sumdb": [{"name": "sum.golang.org", "url": primary,
                   "mirrors": [mirror] if mirror else []}],
    }


async def test_supported_only_for_configured_databases(edge: MakeEdge, sumdbs: Any) -> None:
    db, url = await sumdbs()
    client = await edge(config(url))
    assert (await client.get("/sumdb/sum.golang.org/supported")).status == 200
    resp = await client.get("/sumdb/sum.example.org/supported")
    assert resp.status == 404
    assert "not proxied here" in await resp.text()
    assert db.paths == []


async def test_lookup_latest_and_tiles_are_proxied(edge: MakeEdge, sumdbs: Any) -> None:
    db, url = await sumdbs()
    client = await edge(config(url))
    for path in ["lookup/github.com/!azure/azure-sdk@v1.0.0", "latest", "tile/8/0/x001/234.p/5",
                 "tile/8/data/000"]:
        resp = await client.get(f"/sumdb/sum.golang.org/{path}")
        assert resp.status == 200
        assert await resp.text() == f"answer for /{path}"
        assert resp.headers["X-Goproxy-Upstream"] == "sum.golang.org"
    assert db.paths == ["/lookup/github.com/!azure/azure-sdk@v1.0.0", "/latest",
                        "/tile/8/0/x001/234.p/5", "/tile/8/data/000"]


@pytest.mark.parametrize("module", ["git.corp.example/team/x", "github.com/corp/private-tools"])
async def test_private_lookup_is_never_forwarded(edge: MakeEdge, sumdbs: Any, module: str) -> None:
    db, url = await sumdbs()
    client = await edge(config(url))
    resp = await client.get(f"/sumdb/sum.golang.org/lookup/{module}@v1.0.0")
    body = await resp.text()
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "GONOSUMDB" in body and "route corp" in body
    assert db.paths == []


async def test_mirror_is_tried_when_the_database_fails(edge: MakeEdge, sumdbs: Any) -> None:
    down, down_url = await sumdbs(status=503)
    mirror, mirror_url = await sumdbs()
    client = await edge(config(down_url, mirror_url))
    resp = await client.get("/sumdb/sum.golang.org/latest")
    assert resp.status == 200
    assert resp.headers["X-Goproxy-Upstream"] == "sum.golang.org mirror 1"
    assert down.paths == ["/latest"] and mirror.paths == ["/latest"]


@pytest.mark.parametrize("path", [
    "/sumdb/sum.golang.org/lookup/github.com/Azure/x@v1.0.0",
    "/sumdb/sum.golang.org/lookup/example.com/x",
    "/sumdb/sum.golang.org/tile/8/0/1234",
    "/sumdb/sum.golang.org/tile/8/0/../../x",
    "/sumdb/sum.golang.org/other",
    "/sumdb/Not_A_Host/latest",
])
async def test_invalid_sumdb_paths_are_refused(edge: MakeEdge, sumdbs: Any, path: str) -> None:
    db, url = await sumdbs()
    client = await edge(config(url))
    resp = await client.get(path)
    assert resp.status in (400, 404)
    assert (await resp.text()).startswith("goproxy-router: ")
    assert db.paths == []


async def test_names_like_localhost_and_host_slash_path_are_served(edge: MakeEdge,
                                                                   sumdbs: Any) -> None:
    """The go command's host[/path] names, including one that prefixes another."""
    dbs = {name: await sumdbs() for name in ("localhost", "sum.corp.example",
                                             "sum.corp.example/go", "localhost:8443")}
    cfg = config(dbs["localhost"][1])
    cfg["sumdb"] = [{"name": name, "url": url} for name, (_, url) in dbs.items()]
    client = await edge(cfg)
    for name in dbs:
        assert (await client.get(f"/sumdb/{name}/supported")).status == 200
    for name, (db, _) in dbs.items():
        lookup = f"lookup/golang.org/x/text@v0.3.{len(name)}"
        resp = await client.get(f"/sumdb/{name}/{lookup}")
        assert resp.status == 200
        assert await resp.text() == f"answer for /{lookup}"
        assert resp.headers["X-Goproxy-Upstream"] == name
        resp = await client.get(f"/sumdb/{name}/tile/8/0/000")
        assert resp.status == 200
        assert db.paths == [f"/{lookup}", "/tile/8/0/000"], name
    resp = await client.get("/sumdb/sum.corp.example/other/supported")
    assert resp.status == 404 and "not proxied here" in await resp.text()
