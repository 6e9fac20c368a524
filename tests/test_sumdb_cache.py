"""The checksum database served from the edge's cache: tiles and lookups for good,
`latest` briefly and stale when the database is down, one fetch for many askers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.http import MakeEdge, upstream_app

NAME = "sum.golang.org"
TILE = "tile/8/0/x001/234"                 # a full hash tile of height 8: 256 hashes
TILE_BODY = bytes(range(256)) * 32          # 8192 bytes = 32 * 2^8
LOOKUP = "lookup/github.com/!azure/azure-sdk@v1.0.0"
LATEST = "latest"
PARTIAL = "tile/8/0/x001/235.p/5"


class FakeSumdb:
    """A checksum database on loopback: fixed answers, a request log, a down switch, a delay."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.down = False
        self.delay = 0.0
        self.tree = 1
        self.answers: dict[str, bytes] = {TILE: TILE_BODY, PARTIAL: TILE_BODY[:160]}
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        path = request.raw_path.lstrip("/")
        self.paths.append(path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            return web.Response(status=503, text="down")
        if path == LATEST:
            return web.Response(text=f"go.sum database tree\n{self.tree}\nhash\n\n— sig\n")
        if path.startswith("lookup/"):
            module, _, version = path[len("lookup/"):].partition("@")
            return web.Response(text=f"7\n{module} {version} h1:x=\n{module} {version}/go.mod "
                                     "h1:y=\n\ngo.sum database tree\n8\nhash\n\n— sig\n")
        if path in self.answers:
            return web.Response(body=self.answers[path])
        return web.Response(status=404, text="not found")

    def count(self, path: str) -> int:
        return self.paths.count(path)

    async def start(self) -> str:
        self.server = await upstream_app(self.handle)
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def sumdbs() -> Any:
    started: list[FakeSumdb] = []

    async def make() -> tuple[FakeSumdb, str]:
        db = FakeSumdb()
        started.append(db)
        return db, await db.start()

    yield make
    for db in started:
        if db.server:
            await db.server.close()


def config(cache_dir: Path, *urls: str, ttl: float = 60.0) -> dict[str, Any]:
    return {
        "upstreams": {"corp": {"url": "http://127.0.0.1:9"}, "pub": {"url": "http://127.0.0.1:9"}},
        "routes": [
            {"name": "corp", "match": ["git.corp.example"], "upstreams": ["corp"], "sumdb": False},
            {"name": "public", "match": ["*"], "upstreams": ["pub"]},
        ],
        "sumdb": [{"name": NAME, "url": urls[0], "mirrors": list(urls[1:])}],
        "cache": {"dir": str(cache_dir), "sumdb_ttl": ttl},
        "retry": {"max_attempts": len(urls)},   # each URL once: exact request logs
    }


async def get(client: Any, tail: str) -> tuple[int, bytes, Any]:
    resp = await client.get(f"/sumdb/{NAME}/{tail}")
    return resp.status, await resp.read(), resp.headers


async def test_full_tile_is_fetched_once_and_kept_across_restarts(
        edge: MakeEdge, sumdbs: Any, tmp_path: Path) -> None:
    db, url = await sumdbs()
    client = await edge(config(tmp_path / "c", url))
    status, body, headers = await get(client, TILE)
    assert (status, body, headers["X-Goproxy-Cache"]) == (200, TILE_BODY, "miss")
    assert headers["Content-Type"] == "application/octet-stream"
    assert "immutable" in headers["Cache-Control"]
    status, body, headers = await get(client, TILE)
    assert (status, body, headers["X-Goproxy-Cache"]) == (200, TILE_BODY, "hit")
    assert (tmp_path / "c" / "sumdb" / NAME / TILE).read_bytes() == TILE_BODY
    await client.close()

    db.down = True                                  # a new edge on the same cache directory
    again = await edge(config(tmp_path / "c", url))
    status, body, headers = await get(again, TILE)
    assert (status, body, headers["X-Goproxy-Cache"]) == (200, TILE_BODY, "hit")
    assert db.count(TILE) == 1


async def test_lookup_is_fetched_once_per_module_version(
        edge: MakeEdge, sumdbs: Any, tmp_path: Path) -> None:
    db, url = await sumdbs()
    client = await edge(config(tmp_path / "c", url))
    first = await get(client, LOOKUP)
    second = await get(client, LOOKUP)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert b"github.com/!azure/azure-sdk v1.0.0 h1:x=" in first[1]
    assert [first[2]["X-Goproxy-Cache"], second[2]["X-Goproxy-Cache"]] == ["miss", "hit"]
    assert first[2]["Content-Type"].startswith("text/plain")
    other = LOOKUP.replace("v1.0.0", "v1.0.1")
    assert (await get(client, other))[0] == 200
    assert (await get(client, other))[2]["X-Goproxy-Cache"] == "hit"
    assert db.count(LOOKUP) == 1 and db.count(other) == 1


async def test_latest_is_refetched_after_the_ttl(edge: MakeEdge, sumdbs: Any,
                                                 tmp_path: Path) -> None:
    db, url = await sumdbs()
    client = await edge(config(tmp_path / "c", url, ttl=0.3))
    assert (await get(client, LATEST))[2]["X-Goproxy-Cache"] == "miss"
    db.tree = 2
    status, body, headers = await get(client, LATEST)
    assert (status, headers["X-Goproxy-Cache"]) == (200, "hit")
    assert body.startswith(b"go.sum database tree\n1\n")
    assert db.count(LATEST) == 1
    await asyncio.sleep(0.4)
    status, body, headers = await get(client, LATEST)
    assert (status, headers["X-Goproxy-Cache"]) == (200, "miss")
    assert body.startswith(b"go.sum database tree\n2\n")
    assert db.count(LATEST) == 2


async def test_database_down_serves_what_was_seen(edge: MakeEdge, sumdbs: Any,
                                                  tmp_path: Path) -> None:
    db, url = await sumdbs()
    mirror, mirror_url = await sumdbs()
    client = await edge(config(tmp_path / "c", url, mirror_url, ttl=0.2))
    warm = {tail: await get(client, tail) for tail in (TILE, LOOKUP, LATEST, PARTIAL)}
    assert all(status == 200 for status, _, _ in warm.values())
    db.down = mirror.down = True
    await asyncio.sleep(0.3)                        # latest and the partial tile are no longer fresh
    for tail, (_, body, _) in warm.items():
        status, again, headers = await get(client, tail)
        assert (status, again) == (200, body), tail
        expected = "stale" if tail in (LATEST, PARTIAL) else "hit"
        assert headers["X-Goproxy-Cache"] == expected, tail
        if expected == "stale":
            assert headers["Cache-Control"] == "public, max-age=0"
    assert db.count(LATEST) >= 2 and mirror.count(LATEST) >= 1   # asked again, both failed
    assert db.count(TILE) == db.count(LOOKUP) == 1                # never asked again
    assert TILE not in mirror.paths and LOOKUP not in mirror.paths
    # What was never seen is an honest failure naming the attempts.
    resp = await client.get(f"/sumdb/{NAME}/tile/8/0/x001/999")
    assert resp.status == 502
    assert "checksum database" in await resp.text()


@pytest.mark.parametrize("module", ["git.corp.example/team/x", "git.corp.example"])
async def test_private_lookup_never_reaches_the_database(
        edge: MakeEdge, sumdbs: Any, tmp_path: Path, module: str) -> None:
    db, url = await sumdbs()
    client = await edge(config(tmp_path / "c", url))
    for _ in range(2):
        resp = await client.get(f"/sumdb/{NAME}/lookup/{module}@v1.0.0")
        body = await resp.text()
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert body == (f"goproxy-router: module {module} is private (route corp); "
                        f"its name is never sent to {NAME}.\n"
                        "Exclude it from checksum verification on the client, e.g.\n"
                        "  go env -w GONOSUMDB=git.corp.example\n")
    assert db.paths == []
    assert not (tmp_path / "c" / "sumdb").exists()


async def test_concurrent_tile_requests_make_one_fetch(edge: MakeEdge, sumdbs: Any,
                                                       tmp_path: Path) -> None:
    db, url = await sumdbs()
    db.delay = 0.2
    client = await edge(config(tmp_path / "c", url))
    answers = await asyncio.gather(*(get(client, TILE) for _ in range(10)))
    assert all(status == 200 and body == TILE_BODY for status, body, _ in answers)
    assert db.count(TILE) == 1


@pytest.mark.parametrize("bad", [TILE_BODY[:-1], TILE_BODY + b"x", b"<html>login</html>"])
async def test_a_wrong_size_full_tile_is_not_kept(edge: MakeEdge, sumdbs: Any,
                                                   tmp_path: Path, bad: bytes) -> None:
    db, url = await sumdbs()
    db.answers[TILE] = bad
    client = await edge(config(tmp_path / "c", url))
    for _ in range(2):                              # served as it came, never kept
        status, body, headers = await get(client, TILE)
        assert (status, body, headers["X-Goproxy-Cache"]) == (200, bad, "miss")
    assert db.count(TILE) == 2
    assert not (tmp_path / "c" / "sumdb" / NAME / TILE).exists()
    db.answers[TILE] = TILE_BODY                    # the database is right again: kept
    assert (await get(client, TILE))[1] == TILE_BODY
    assert (await get(client, TILE))[2]["X-Goproxy-Cache"] == "hit"
    assert db.count(TILE) == 3


async def test_a_mirror_with_the_right_tile_wins_over_a_truncated_one(
        edge: MakeEdge, sumdbs: Any, tmp_path: Path) -> None:
    db, url = await sumdbs()
    mirror, mirror_url = await sumdbs()
    db.answers[TILE] = TILE_BODY[:100]
    client = await edge(config(tmp_path / "c", url, mirror_url))
    status, body, headers = await get(client, TILE)
    assert (status, body) == (200, TILE_BODY)
    assert headers["X-Goproxy-Upstream"] == f"{NAME} mirror 1"
    assert (await get(client, TILE))[2]["X-Goproxy-Cache"] == "hit"
    assert db.count(TILE) == 1 and mirror.count(TILE) == 1


async def test_an_empty_answer_is_no_answer(edge: MakeEdge, sumdbs: Any, tmp_path: Path) -> None:
    db, url = await sumdbs()
    db.answers["tile/8/data/000"] = b""
    client = await edge(config(tmp_path / "c", url))
    resp = await client.get(f"/sumdb/{NAME}/tile/8/data/000")
    assert resp.status == 502
    assert "empty answer" in await resp.text()


async def test_answers_are_counted_by_endpoint_and_cache_result(
        edge: MakeEdge, sumdbs: Any, tmp_path: Path) -> None:
    db, url = await sumdbs()
    client = await edge(config(tmp_path / "c", url))
    for tail in (TILE, TILE, LOOKUP, LATEST, LATEST):
        assert (await get(client, tail))[0] == 200
    text = await (await client.get("/metrics")).text()
    assert 'goproxy_sumdb_answers_total{cache="miss",endpoint="tile"} 1.0' in text
    assert 'goproxy_sumdb_answers_total{cache="hit",endpoint="tile"} 1.0' in text
    assert 'goproxy_sumdb_answers_total{cache="miss",endpoint="lookup"} 1.0' in text
    assert 'goproxy_sumdb_answers_total{cache="hit",endpoint="latest"} 1.0' in text


def test_kept_answers_share_the_artifacts_bound_and_sweep(tmp_path: Path) -> None:
    from goproxy_router.storage.disk import DiskCache

    async def fill() -> None:
        disk = DiskCache.open(tmp_path / "d", max_size=3 * len(TILE_BODY), fsync=False)
        try:
            for n in range(4):
                writer = disk.sumdb_writer(NAME, f"tile/8/0/x001/{n:03d}", len(TILE_BODY))
                await writer.write(TILE_BODY)
                await writer.commit(len(TILE_BODY))
            await disk.drain()
            assert disk.get_sumdb(NAME, "tile/8/0/x001/000") is None     # least recently used
            assert disk.get_sumdb(NAME, "tile/8/0/x001/003") is not None
            assert disk.size == 3 * len(TILE_BODY)
        finally:
            disk.close()

    asyncio.run(fill())
    again = DiskCache.open(tmp_path / "d", max_size=None, fsync=False)   # a restart's sweep
    try:
        assert again.files == 3 and again.size == 3 * len(TILE_BODY)
        assert not (tmp_path / "d" / "sumdb" / NAME / "tile/8/0/x001" / "list").exists()
    finally:
        again.close()


@pytest.mark.parametrize("tail", [LATEST, PARTIAL, "supported"])
def test_answers_that_change_have_no_place_on_disk(tail: str) -> None:
    from goproxy_router.storage.layout import sumdb_relpath

    with pytest.raises(ValueError):
        sumdb_relpath(NAME, tail)


@pytest.mark.parametrize(("tail", "body", "problem"), [
    (TILE, TILE_BODY, None),
    (TILE, TILE_BODY[:-32], "has 8192 bytes, not 8160"),
    ("tile/2/1/000", b"x" * 128, None),
    ("tile/8/data/x001/234", b"any record", None),
    (PARTIAL, b"short", None),
    (LOOKUP, b"  <!DOCTYPE html><html>", "markup"),
    (LOOKUP, b"", "empty"),
    (LATEST, b"go.sum database tree\n", None),
])
def test_the_minimal_check(tail: str, body: bytes, problem: str | None) -> None:
    from goproxy_router.protocol.sumdbanswers import sumdb_answer_problem

    found = sumdb_answer_problem(tail, body)
    assert (found is None) if problem is None else (found is not None and problem in found)
