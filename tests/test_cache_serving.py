"""The cache in the request path, against the real app.

* hit/miss/stale headers: immutable artifacts (miss, then hit with
  ``immutable`` caching, ETag, Last-Modified), list and @latest (miss, hit
  within the TTL with Age, ``stale`` with Age when every upstream fails after
  it), negative answers for ``negative_ttl`` then asked again;
* route isolation: the same upstream path on two routes (before and after a
  reload, and while a fill is in flight) never gets the other route's answer;
* single flight: 100 concurrent requests for one uncached zip make one
  upstream request and get 100 identical bodies (delayed or throttled upstream);
* eviction keeps the files on disk under ``max_size``;
* SIGKILL of a router process in the middle of a 50 MB zip leaves no entry,
  and the next process serves the right bytes from the same directory;
* Range and conditional requests on cached artifacts (sendfile and memory tier);
* a private artifact is never served from cache to a client the route refuses;
* HEAD on a hit and on a miss;
* cache before ranking: a hit through the full flow neither ranks nor plans.

Upstreams are FakeProxy instances whose request logs count exactly what the
router asked (probes off, config-order failover). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from goproxy_router.config.loader import parse_config
from goproxy_router.routing.geo import GeoDatabase
from goproxy_router.scoring.engine import Engine
from goproxy_router.serving.edge import EDGE
from tests.conftest import RouterProcess
from tests.support import FakeProxy, Faults, Module, ModuleTree, ThreadedFakeProxy, case_escape
from tests.support.http import MakeEdge, MakeFake
from tests.support.mmdb import write_country_db

KiB, MiB = 1 << 10, 1 << 20
IMMUTABLE = "public, max-age=31536000, immutable"
TIMEOUTS = {"connect": 1, "headers": 5, "read": 5, "deadline": 10}
CONTENT_TYPES = {"info": "application/json", "mod": "text/plain; charset=utf-8",
                 "zip": "application/zip"}


def blob(seed: int, size: int) -> bytes:
    """Incompressible deterministic bytes, so a zip really is about ``size`` long."""
    return random.Random(seed).randbytes(size)


# A zip well over the 64 KiB memory-tier limit (served with sendfile) and small .info/.mod.
BIG = Module("example.com/big", "v1.2.3", files={"blob.bin": blob(1, 300 * KiB)})
SMALL = Module("example.com/Small/Lib", "v0.1.0")      # upper case: escaped paths on disk


def config(tmp_path: Path, upstreams: dict[str, str], *, routes: list[dict[str, Any]] | None = None,
           **cache: Any) -> dict[str, Any]:
    """One public route over ``upstreams`` in config order unless ``routes`` are given."""
    return {
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "routes": routes or [{"name": "public", "match": ["*"], "upstreams": list(upstreams)}],
        "scoring": {"plugins": []},
        "timeouts": dict(TIMEOUTS),
        "probes": {"enabled": False},
        "cache": {"dir": str(tmp_path / "cache"), **cache},
    }


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def cache(self) -> str | None:
        return self.headers.get("X-Goproxy-Cache")


async def ask(client: TestClient, path: str, *, method: str = "GET",
              headers: dict[str, str] | None = None, timeout: float = 20.0) -> Answer:
    async def go() -> Answer:
        async with client.request(method, path, headers=headers) as resp:
            return Answer(resp.status, CIMultiDict(resp.headers), await resp.read())
    return await asyncio.wait_for(go(), timeout)


def asked(fake: FakeProxy | ThreadedFakeProxy, path: str, method: str | None = None) -> int:
    """How many requests for ``path`` (raw) the fake received."""
    return sum(r.raw_path == path and (method is None or r.method == method) for r in fake.requests)


def paths(m: Module) -> dict[str, str]:
    base = f"/{case_escape(m.path)}/@v/{case_escape(m.version)}"
    return {"info": base + ".info", "mod": base + ".mod", "zip": base + ".zip"}


def body_of(m: Module, ext: str) -> bytes:
    return {"info": m.info, "mod": m.mod, "zip": m.zip}[ext]


def on_disk(root: Path, m: Module, ext: str) -> Path:
    """Where Go's download-cache layout puts the artifact."""
    return root / case_escape(m.path) / "@v" / f"{case_escape(m.version)}.{ext}"


def disk_etag(path: Path) -> str:
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def edge_of(client: TestClient) -> Any:
    return client.server.app[EDGE]


# -- hit / miss / stale ------------------------------------------------------------------


@pytest.mark.parametrize("module", [BIG, SMALL], ids=["big", "small"])
async def test_immutable_artifacts_miss_then_hit_with_validators(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, module: Module) -> None:
    up = await fake_proxy(ModuleTree([module]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    root = tmp_path / "cache"
    for ext, path in paths(module).items():
        want = body_of(module, ext)
        first = await ask(client, path)
        assert (first.status, first.cache, first.body) == (200, "miss", want), (ext, first.headers)
        assert first.headers["Cache-Control"] == IMMUTABLE
        assert first.headers["X-Goproxy-Upstream"] == "up"
        assert first.headers["Content-Type"] == CONTENT_TYPES[ext]
        # The artifact is in Go's layout, whole.
        file = on_disk(root, module, ext)
        assert file.read_bytes() == want
        if ext != "zip":      # a zip's first requester gets it streamed before the file exists
            assert first.headers["ETag"] == disk_etag(file)
            assert "Last-Modified" in first.headers

        for _ in range(2):
            hit = await ask(client, path)
            assert (hit.status, hit.cache, hit.body) == (200, "hit", want), (ext, hit.headers)
            assert hit.headers["Cache-Control"] == IMMUTABLE
            assert hit.headers["Content-Type"] == CONTENT_TYPES[ext]
            assert hit.headers["Content-Length"] == str(len(want))
            # Memory tier and sendfile agree: the ETag is the file's (mtime_ns, size).
            assert hit.headers["ETag"] == disk_etag(file)
            last_modified = parsedate_to_datetime(hit.headers["Last-Modified"]).timestamp()
            assert abs(last_modified - file.stat().st_mtime) <= 1.0
        assert asked(up, path) == 1, f"{ext}: the upstream was asked again for a cached artifact"


async def test_list_and_latest_hit_within_ttl_then_stale_when_every_upstream_fails(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    ttl = 1.5
    tree = ModuleTree([Module("example.com/meta", "v1.0.0"), Module("example.com/meta", "v1.1.0")])
    a = await fake_proxy(tree, name="a")
    b = await fake_proxy(tree, name="b")
    client = await edge(config(tmp_path, {"a": a.url, "b": b.url}, metadata_ttl=ttl))
    meta = {"/example.com/meta/@v/list": b"v1.0.0\nv1.1.0\n",
            "/example.com/meta/@latest": tree.latest("example.com/meta").info}   # type: ignore[union-attr]

    for path, want in meta.items():
        first = await ask(client, path)
        assert (first.status, first.cache, first.body) == (200, "miss", want)
        assert first.headers["X-Goproxy-Upstream"] == "a"
        assert first.headers["Age"] == "0"
        hit = await ask(client, path)
        assert (hit.status, hit.cache, hit.body) == (200, "hit", want)
        assert 0 <= int(hit.headers["Age"]) <= 1
        max_age = int(hit.headers["Cache-Control"].split("max-age=")[1])
        assert 0 <= max_age <= ttl, hit.headers["Cache-Control"]
        assert hit.headers["Cache-Control"].startswith("public, ")
        assert hit.headers.get("ETag")
        assert asked(a, path) == 1 and asked(b, path) == 0

    # Every upstream fails; once the TTL is over the last good answer is served stale.
    a.set_faults(status=500)
    b.set_faults(status=503)
    await asyncio.sleep(ttl + 0.3)
    for path, want in meta.items():
        stale = await ask(client, path)
        assert (stale.status, stale.cache, stale.body) == (200, "stale", want), stale.headers
        assert int(stale.headers["Age"]) >= 1
        assert stale.headers["Cache-Control"] == "public, max-age=0"
        assert asked(a, path) >= 2 and asked(b, path) >= 1, "stale without asking every upstream"

    # Recovery: stale answers are not sticky; a new version shows up at once.
    tree.add(Module("example.com/meta", "v1.2.0"))
    a.clear_faults()
    b.clear_faults()
    fresh = await ask(client, "/example.com/meta/@v/list")
    assert (fresh.status, fresh.cache, fresh.body) == (200, "miss", b"v1.0.0\nv1.1.0\nv1.2.0\n")
    fresh = await ask(client, "/example.com/meta/@latest")
    assert fresh.cache == "miss" and b'"v1.2.0"' in fresh.body


async def test_after_a_restart_a_failed_list_is_answered_stale_from_the_disk_list(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    versions = [Module("example.com/Meta/lib", v) for v in ("v1.0.0", "v1.1.0", "v1.2.0")]
    up = await fake_proxy(ModuleTree(versions), name="up")
    first = await edge(config(tmp_path, {"up": up.url}))
    for m in versions[:2]:                      # v1.2.0 is never fetched through the edge
        for ext in ("info", "mod"):
            assert (await ask(first, paths(m)[ext])).status == 200
    list_path = "/example.com/!meta/lib/@v/list"
    fresh = await ask(first, list_path)
    assert (fresh.status, fresh.cache, fresh.body) == (200, "miss", b"v1.0.0\nv1.1.0\nv1.2.0\n")

    # A new process (nothing in memory) while every upstream fails: what the cache can serve.
    up.set_faults(status=500)
    second = await edge(config(tmp_path, {"up": up.url}))
    stale = await ask(second, list_path)
    assert (stale.status, stale.cache, stale.body) == (200, "stale", b"v1.0.0\nv1.1.0\n")
    assert stale.headers["X-Goproxy-Upstream"] == "cache"
    assert stale.headers["Cache-Control"] == "public, max-age=0"
    assert stale.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert asked(up, list_path) >= 2, "the upstream was not asked before answering stale"
    # Only a list: @latest has no disk copy; and "not found" upstream is not overridden.
    assert (await ask(second, "/example.com/!meta/lib/@latest")).status == 502
    up.clear_faults()
    up.set_faults(status=404)
    gone = await ask(second, list_path)
    assert gone.status == 404 and gone.cache != "stale"


async def test_without_a_stale_copy_a_failure_is_an_error(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([Module("example.com/meta", "v1.0.0")]), name="up",
                          faults=Faults(status=500))
    client = await edge(config(tmp_path, {"up": up.url}, metadata_ttl=0.2))
    got = await ask(client, "/example.com/meta/@v/list")
    assert got.status == 502 and got.cache != "stale"
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_negative_answers_are_cached_for_negative_ttl_then_asked_again(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    negative_ttl = 0.6
    tree = ModuleTree([Module("example.com/other", "v1.0.0")])
    up = await fake_proxy(tree, name="up")
    client = await edge(config(tmp_path, {"up": up.url}, negative_ttl=negative_ttl))
    later = Module("example.com/later", "v1.0.0")
    info, latest = paths(later)["info"], "/example.com/later/@latest"

    for path in (info, latest):
        first = await ask(client, path)
        assert first.status == 404 and first.cache != "hit"
        assert first.headers["Content-Type"] == "text/plain; charset=utf-8"
        again = await ask(client, path)
        assert (again.status, again.cache, again.body) == (404, "hit", first.body)
        assert asked(up, path) == 1

    # The module appears upstream: still "not found" within negative_ttl, found after it.
    tree.add(later)
    started = time.monotonic()
    cached = await ask(client, info)
    if time.monotonic() - started < negative_ttl / 2:
        assert (cached.status, cached.cache) == (404, "hit")
        assert asked(up, info) == 1
    await asyncio.sleep(negative_ttl + 0.2)
    found = await ask(client, info)
    assert (found.status, found.cache, found.body) == (200, "miss", later.info)
    assert asked(up, info) == 2
    found = await ask(client, latest)
    assert (found.status, found.cache, found.body) == (200, "miss", later.info)
    assert asked(up, latest) == 2
    assert (await ask(client, info)).cache == "hit"


# -- route isolation ---------------------------------------------------------------------

SHARED = "example.com/shared/lib"
PUBLIC_SHARED = ModuleTree([Module(SHARED, "v1.0.0"), Module(SHARED, "v1.1.0")])
CORP_SHARED = ModuleTree([Module(SHARED, "v1.0.0"), Module(SHARED, "v2.0.0+incompatible")])


def split_config(tmp_path: Path, pub: str, corp: str, private: bool) -> dict[str, Any]:
    """Both upstreams known; ``private`` puts the shared path on the corp route."""
    routes = [{"name": "public", "match": ["*"], "upstreams": ["pub"]}]
    if private:
        routes.insert(0, {"name": "corp", "match": ["example.com/shared"], "upstreams": ["corp"],
                          "sumdb": False})
    else:
        routes.insert(0, {"name": "corp", "match": ["corp.example"], "upstreams": ["corp"],
                          "sumdb": False})
    return config(tmp_path, {"pub": pub, "corp": corp}, routes=routes, metadata_ttl=60,
                  negative_ttl=60)


async def reload(client: TestClient, cfg: dict[str, Any]) -> None:
    await edge_of(client).reload(parse_config(yaml.safe_dump(cfg), "routes.yaml", {}))


async def test_metadata_cache_is_per_route_across_a_reload(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    """The same upstream path answered by two routes' upstreams, each remembered per route."""
    pub = await fake_proxy(PUBLIC_SHARED, name="pub")
    corp = await fake_proxy(CORP_SHARED, name="corp")
    public_cfg = split_config(tmp_path, pub.url, corp.url, private=False)
    corp_cfg = split_config(tmp_path, pub.url, corp.url, private=True)
    client = await edge(public_cfg)
    lst, latest = f"/{SHARED}/@v/list", f"/{SHARED}/@latest"
    missing = f"/{SHARED}/@v/v2.0.0+incompatible.info"   # only corp has it

    async def answers() -> dict[str, Answer]:
        return {p: await ask(client, p) for p in (lst, latest, missing)}

    public = await answers()
    assert public[lst].body == b"v1.0.0\nv1.1.0\n" and public[lst].headers["X-Goproxy-Upstream"] == "pub"
    assert b'"v1.1.0"' in public[latest].body
    assert public[missing].status == 404
    assert (await ask(client, lst)).cache == "hit"
    assert (await ask(client, missing)).cache == "hit"     # a remembered 404 on the public route

    await reload(client, corp_cfg)
    private = await answers()
    for p in (lst, latest, missing):
        assert private[p].status == 200 and private[p].cache == "miss", (p, private[p].headers)
        assert private[p].headers["X-Goproxy-Upstream"] == "corp"
    assert private[lst].body == b"v1.0.0\nv2.0.0+incompatible\n"
    assert b'"v2.0.0+incompatible"' in private[latest].body
    assert (await ask(client, lst)).cache == "hit"

    # Back to the public route: its own answers, still fresh, never the corp ones.
    # (The .info is immutable: module@version names one content whoever served it, and
    # the disk cache keeps it in Go's layout for every route.)
    await reload(client, public_cfg)
    again = {p: await ask(client, p) for p in (lst, latest)}
    assert again[lst].body == b"v1.0.0\nv1.1.0\n" and again[lst].cache == "hit"
    assert again[latest].body == public[latest].body and again[latest].cache == "hit"
    assert [asked(pub, p) for p in (lst, latest, missing)] == [1, 1, 1]
    assert [asked(corp, p) for p in (lst, latest, missing)] == [1, 1, 1]


@pytest.mark.parametrize("kind", ["list", "info"])
async def test_a_fill_in_flight_is_not_shared_with_another_route(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, kind: str) -> None:
    """A request on the corp route never joins the public route's fetch of the same path."""
    pub = await fake_proxy(PUBLIC_SHARED, name="pub", faults=Faults(delay=0.8))
    corp = await fake_proxy(CORP_SHARED, name="corp")
    client = await edge(split_config(tmp_path, pub.url, corp.url, private=False))
    path = {"list": f"/{SHARED}/@v/list",
            "info": f"/{SHARED}/@v/v2.0.0+incompatible.info"}[kind]  # public: 404; corp: 200
    public_task = asyncio.ensure_future(ask(client, path))
    assert await pub.wait_until(lambda rs: any(r.raw_path == path for r in rs), timeout=5)
    await reload(client, split_config(tmp_path, pub.url, corp.url, private=True))
    private = await ask(client, path)
    public = await public_task
    assert private.status == 200 and private.headers["X-Goproxy-Upstream"] == "corp", private
    assert asked(corp, path) == 1
    if kind == "list":
        assert public.body == b"v1.0.0\nv1.1.0\n"
        assert private.body == b"v1.0.0\nv2.0.0+incompatible\n"
    else:
        assert public.status == 404
        assert private.body == CORP_SHARED.get(SHARED, "v2.0.0+incompatible").info  # type: ignore[union-attr]


# -- single flight -----------------------------------------------------------------------


@pytest.mark.parametrize("faults", [Faults(delay=1.5, paths=r"\.zip$"),
                                    Faults(throttle=2 * MiB, paths=r"\.zip$")],
                         ids=["delayed", "throttled"])
async def test_100_concurrent_requests_for_one_zip_make_one_upstream_request(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, faults: Faults) -> None:
    module = Module("example.com/popular", "v1.0.0", files={"blob.bin": blob(2, 2 * MiB)})
    zip_path = paths(module)["zip"]
    up = await fake_proxy(ModuleTree([module]), name="up", faults=faults)
    client = await edge(config(tmp_path, {"up": up.url}))
    started = time.monotonic()
    got = await asyncio.gather(*(ask(client, zip_path, timeout=30) for _ in range(100)))
    elapsed = time.monotonic() - started
    assert asked(up, zip_path) == 1
    assert [a.status for a in got] == [200] * 100
    digests = {hashlib.sha256(a.body).hexdigest() for a in got}
    assert digests == {hashlib.sha256(module.zip).hexdigest()}
    # They really overlapped: every one of them joined the single fill.
    assert [a.cache for a in got] == ["miss"] * 100, (sorted({a.cache or "" for a in got}), elapsed)
    assert on_disk(tmp_path / "cache", module, "zip").read_bytes() == module.zip
    again = await ask(client, zip_path)
    assert (again.cache, again.body == module.zip) == ("hit", True)
    assert asked(up, zip_path) == 1


# -- eviction ----------------------------------------------------------------------------


def cache_files(root: Path) -> dict[str, int]:
    """Every file under the cache dir (temporary ones included), with its size, but the
    ``@v/list`` files: not artifacts, they do not count against ``max_size``."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and p.name != "list"}


async def wait_for_size(root: Path, bound: int, timeout: float = 3.0) -> dict[str, int]:
    """Eviction unlinks in a background thread: wait (bounded) for the disk to follow."""
    deadline = time.monotonic() + timeout
    while True:
        files = cache_files(root)
        if sum(files.values()) <= bound or time.monotonic() >= deadline:
            return files
        await asyncio.sleep(0.02)


async def test_eviction_keeps_the_disk_under_max_size(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    max_size = 600 * KiB
    modules = [Module(f"example.com/evict/m{i:02d}", "v1.0.0", files={"blob.bin": blob(100 + i, 90 * KiB)})
               for i in range(24)]
    up = await fake_proxy(ModuleTree(modules), name="up")
    client = await edge(config(tmp_path, {"up": up.url}, max_size=max_size))
    root = tmp_path / "cache"
    total = 0
    for m in modules:
        for ext, path in paths(m).items():
            want = body_of(m, ext)
            total += len(want)
            assert (await ask(client, path)).body == want
        hit = await ask(client, paths(m)["zip"])       # a hit under a lease, then released
        assert (hit.cache, hit.body == m.zip) == ("hit", True)
        files = await wait_for_size(root, max_size)
        assert sum(files.values()) <= max_size, (m.path, sorted(files.items()))
        # The artifacts just fetched are the most recently used: still there.
        assert on_disk(root, m, "zip").read_bytes() == m.zip
    assert total > 3 * max_size

    files = cache_files(root)
    assert not [f for f in files if f.rsplit("/", 1)[-1].startswith(".")], files
    # What is left is whole and in Go's layout.
    by_name = {on_disk(root, m, ext).relative_to(root).as_posix(): body_of(m, ext)
               for m in modules for ext in ("info", "mod", "zip")}
    assert set(files) <= set(by_name)
    assert all((root / f).read_bytes() == by_name[f] for f in files)
    disk = edge_of(client).cache.disk
    assert disk.evictions > 0 and disk.size == sum(files.values()) <= max_size
    # A module's @v/list names its version while both its .info and .mod are left, else is gone.
    await disk.drain()
    lists = {m.path: (on_disk(root, m, "info").parent / "list") for m in modules}
    for m in modules:
        kept = on_disk(root, m, "info").exists() and on_disk(root, m, "mod").exists()
        got = lists[m.path].read_text() if lists[m.path].exists() else None
        assert got == ("v1.0.0\n" if kept else None), (m.path, kept, got)
    assert any(p.exists() for p in lists.values()) and not all(p.exists() for p in lists.values())

    # An evicted artifact is fetched again, correctly.
    first = modules[0]
    assert not on_disk(root, first, "zip").exists()
    again = await ask(client, paths(first)["zip"])
    assert (again.status, again.cache, again.body == first.zip) == (200, "miss", True)
    assert asked(up, paths(first)["zip"]) == 2
    assert sum((await wait_for_size(root, max_size)).values()) <= max_size


# -- SIGKILL mid-download ----------------------------------------------------------------

HUGE = Module("example.com/huge", "v1.0.0", files={"blob.bin": blob(3, 50 * MiB)})


def get_all(url_host: str, port: int, path: str, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_sigkill_mid_zip_leaves_no_entry_and_the_next_process_serves_the_right_bytes(
        tmp_path: Path, threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
        router_process: Callable[..., RouterProcess]) -> None:
    zip_bytes = HUGE.zip
    assert len(zip_bytes) >= 50 * 1000 * 1000
    zip_path = paths(HUGE)["zip"]
    cache_dir = tmp_path / "shared-cache"
    final = on_disk(cache_dir, HUGE, "zip")
    # 50 MB at 10 MB/s: the body takes ~5 s, the kill lands a second or so in.
    up = threaded_fake_proxy(ModuleTree([HUGE]), name="up",
                             faults=Faults(throttle=10 * MiB, throttle_gap=0.02, paths=r"\.zip$"))
    cfg = {"upstreams": {"up": {"url": up.url}},
           "routes": [{"name": "public", "match": ["*"], "upstreams": ["up"]}],
           "scoring": {"plugins": []}, "probes": {"enabled": False},
           "cache": {"dir": str(cache_dir)}}
    first = router_process(cfg)

    conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=10)
    try:
        conn.request("GET", zip_path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("X-Goproxy-Cache") == "miss"
        assert resp.getheader("Content-Length") == str(len(zip_bytes))
        received = 0
        deadline = time.monotonic() + 15
        while received < 8 * MiB and time.monotonic() < deadline:
            chunk = resp.read1(256 * KiB)
            assert chunk, "router ended the body early"
            received += len(chunk)
        assert received >= 8 * MiB, f"only {received} bytes within 15 s"
        # The fill is writing into its temporary file next to the final name.
        temps: list[Path] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            temps = [p for p in final.parent.glob(".tmp-*") if p.stat().st_size > 0]
            if temps:
                break
            time.sleep(0.01)
        assert temps, "no temporary file being written within 10 s"
        assert not final.exists()

        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        # The client can never take what it got for a whole zip: the body stops short.
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()

    assert not final.exists(), "a killed download left a file under the artifact's name"
    leftovers = list(final.parent.glob(".tmp-*"))
    assert leftovers and all(p.stat().st_size < len(zip_bytes) for p in leftovers)
    assert up.requests[-1].raw_path == zip_path and not up.requests[-1].completed

    # The next run: same directory; the leftover is swept and the zip fetched whole.
    up.faults = Faults()
    second = router_process(cfg)
    assert not list(final.parent.glob(".tmp-*")), "the startup sweep left a dead temp file"
    status, headers, body = get_all("127.0.0.1", second.port, zip_path)
    assert (status, headers.get("X-Goproxy-Cache")) == (200, "miss")
    assert hashlib.sha256(body).digest() == hashlib.sha256(zip_bytes).digest()
    assert final.read_bytes() == zip_bytes
    status, headers, body = get_all("127.0.0.1", second.port, zip_path)
    assert (status, headers.get("X-Goproxy-Cache"), body == zip_bytes) == (200, "hit", True)
    assert asked(up, zip_path) == 2


# -- Range and conditional requests -----------------------------------------------------


async def test_range_and_conditional_requests_on_cached_artifacts(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    up = await fake_proxy(ModuleTree([BIG]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    root = tmp_path / "cache"
    for path in paths(BIG).values():
        assert (await ask(client, path)).status == 200
    assert len(BIG.zip) > 64 * KiB                  # sendfile, not the memory tier
    assert len(BIG.mod) < 100 and len(BIG.info) < 100   # memory tier

    for ext, path in paths(BIG).items():
        want = body_of(BIG, ext)
        etag = disk_etag(on_disk(root, BIG, ext))
        plain = await ask(client, path)
        assert plain.cache == "hit" and plain.headers["ETag"] == etag

        # Range: exactly the bytes asked for (Range on a small file works too).
        for first, last in ((0, 99), (10, 19)):
            part = await ask(client, path, headers={"Range": f"bytes={first}-{last}"})
            end = min(last, len(want) - 1)
            assert part.status == 206, (ext, part.status, part.headers)
            assert part.body == want[first:end + 1]
            assert part.headers["Content-Range"] == f"bytes {first}-{end}/{len(want)}"
            assert part.headers["X-Goproxy-Cache"] == "hit"
            assert part.headers["ETag"] == etag      # the same validator as the whole answer
        tail = await ask(client, path, headers={"Range": "bytes=-7"})
        assert (tail.status, tail.body) == (206, want[-7:])

        # Conditionals: 304 without a body, with the validators.
        for headers in ({"If-None-Match": etag},
                        {"If-None-Match": f'"nope", {etag}'},
                        {"If-Modified-Since": plain.headers["Last-Modified"]},
                        {"If-Modified-Since": formatdate(time.time() + 3600, usegmt=True)}):
            got = await ask(client, path, headers=headers)
            assert (got.status, got.body) == (304, b""), (ext, headers, got.status)
            assert got.headers["ETag"] == etag
        for headers in ({"If-None-Match": '"something-else"'},
                        {"If-Modified-Since": formatdate(on_disk(root, BIG, ext).stat().st_mtime - 3600,
                                                         usegmt=True)},
                        # If-None-Match wins over If-Modified-Since (RFC 9110).
                        {"If-None-Match": '"something-else"',
                         "If-Modified-Since": plain.headers["Last-Modified"]}):
            got = await ask(client, path, headers=headers)
            assert (got.status, got.body) == (200, want), (ext, headers, got.status)
    assert all(asked(up, p) == 1 for p in paths(BIG).values())


# -- private artifacts -------------------------------------------------------------------

PRIVATE = Module("git.corp.example/team/secret", "v1.4.0",
                 files={"blob.bin": blob(4, 100 * KiB)})


async def test_a_private_artifact_is_never_served_from_cache_to_a_refused_client(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    upstream_token = "up-" + "x" * 20
    corp = await fake_proxy(ModuleTree([PRIVATE]), name="corp", faults=Faults(
        required_headers={"Authorization": f"Bearer {upstream_token}"}))
    pub = await fake_proxy(ModuleTree([BIG]), name="pub")
    cfg = config(tmp_path, {"corp": corp.url, "pub": pub.url}, routes=[
        {"name": "corp", "match": ["git.corp.example"], "upstreams": ["corp"], "sumdb": False,
         "allow": {"tokens_env": "CLIENT_TOKENS"}},
        {"name": "public", "match": ["*"], "upstreams": ["pub"]},
    ])
    cfg["upstreams"]["corp"]["headers"] = {"Authorization": "Bearer ${CORP_TOKEN}"}
    client = await edge(cfg, {"CLIENT_TOKENS": "alice-token,bob-token", "CORP_TOKEN": upstream_token})
    bearer = {"Authorization": "Bearer alice-token"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"bob:bob-token").decode()}
    private_paths = {**paths(PRIVATE), "list": "/git.corp.example/team/secret/@v/list",
                     "latest": "/git.corp.example/team/secret/@latest"}

    for kind, path in private_paths.items():
        first = await ask(client, path, headers=bearer)
        assert (first.status, first.cache) == (200, "miss"), (kind, first.body[:200])
        assert (await ask(client, path, headers=basic)).cache == "hit"
        for method in ("GET", "HEAD"):
            anonymous = await ask(client, path, method=method)
            assert anonymous.status == 401, (kind, method, anonymous.status)
            assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
            assert anonymous.cache is None
            wrong = await ask(client, path, method=method, headers={"Authorization": "Bearer mallory"})
            assert wrong.status == 403 and wrong.cache is None
            if method == "GET":
                for refused in (anonymous, wrong):
                    assert refused.headers["Content-Type"] == "text/plain; charset=utf-8"
                    assert refused.body != first.body and PRIVATE.version.encode() not in refused.body
        assert asked(corp, path) == 1, f"{kind}: the upstream was asked again"
    assert not pub.requests


# -- HEAD ---------------------------------------------------------------------------------


async def test_head_on_a_miss_and_on_a_hit(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    tree = ModuleTree([BIG])
    up = await fake_proxy(tree, name="up")
    client = await edge(config(tmp_path, {"up": up.url}))
    root = tmp_path / "cache"
    zip_path, info_path = paths(BIG)["zip"], paths(BIG)["info"]

    # Miss: answered by the upstream's HEAD, nothing to keep.
    head = await ask(client, zip_path, method="HEAD")
    assert (head.status, head.cache, head.body) == (200, "miss", b"")
    assert head.headers["Content-Length"] == str(len(BIG.zip))
    assert head.headers["X-Goproxy-Upstream"] == "up"
    assert asked(up, zip_path, "HEAD") == 1
    assert not on_disk(root, BIG, "zip").exists()

    got = await ask(client, zip_path)
    assert (got.cache, got.body == BIG.zip) == ("miss", True)
    for path, want in ((zip_path, BIG.zip), (info_path, None)):
        if want is None:
            assert (await ask(client, path)).status == 200      # fill the .info (memory tier)
            want = BIG.info
        hit = await ask(client, path, method="HEAD")
        assert (hit.status, hit.cache, hit.body) == (200, "hit", b""), path
        assert hit.headers["Content-Length"] == str(len(want))
        assert hit.headers["ETag"] == disk_etag(on_disk(root, BIG, path.rsplit(".", 1)[1]))
        assert hit.headers["Cache-Control"] == IMMUTABLE
    assert asked(up, zip_path, "GET") == 1 and asked(up, info_path) == 1

    # Metadata: a HEAD miss is filled with a GET, so the next request is a hit.
    lst = "/example.com/big/@v/list"
    head = await ask(client, lst, method="HEAD")
    assert (head.status, head.cache, head.body) == (200, "miss", b"")
    assert head.headers["Content-Length"] == str(len(b"v1.2.3\n"))
    got = await ask(client, lst)
    assert (got.cache, got.body) == ("hit", b"v1.2.3\n")
    assert (await ask(client, lst, method="HEAD")).cache == "hit"
    assert [r.method for r in up.requests if r.raw_path == lst] == ["GET"]

    # A HEAD for something nobody has: 404, and still a miss (no body to remember).
    gone = await ask(client, "/example.com/big/@v/v9.9.9.zip", method="HEAD")
    assert gone.status == 404 and gone.body == b""


# -- cache before ranking -----------------------------------------------------------------


async def test_a_hit_through_the_full_flow_does_not_rank_yet_logs_the_country(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranking (scoring, the forward plan) happens on a miss only; a hit looks the client's
    country up for its access-log line alone, and not at all when that line is off."""
    calls: Counter[str] = Counter()
    rank, lookup = Engine.rank, GeoDatabase.lookup

    def counted_rank(self: Engine, *args: Any) -> Any:
        calls["rank"] += 1
        return rank(self, *args)

    def counted_lookup(self: GeoDatabase, *args: Any) -> Any:
        calls["lookup"] += 1
        return lookup(self, *args)

    monkeypatch.setattr(Engine, "rank", counted_rank)
    monkeypatch.setattr(GeoDatabase, "lookup", counted_lookup)
    geo_db = tmp_path / "geo.mmdb"
    write_country_db(geo_db, {"5.144.0.0/14": "DE"})
    up = await fake_proxy(ModuleTree([BIG]), name="up")
    cfg = config(tmp_path, {"up": up.url})
    cfg["geoip"] = {"database": str(geo_db), "trusted_proxies": ["127.0.0.0/8"]}
    client = await edge(cfg)
    from_de = {"X-Forwarded-For": "5.144.1.1"}
    caplog.set_level(logging.INFO, logger="router.access")

    async def logged(request_id: str) -> dict[str, Any]:
        """The request's access-log line (written once the handler is done: wait, bounded)."""
        deadline = time.monotonic() + 5
        while not (lines := [r.fields for r in caplog.records  # type: ignore[attr-defined]
                             if r.name == "router.access" and r.fields["request_id"] == request_id]):
            assert time.monotonic() < deadline, f"no access-log line for {request_id}"
            await asyncio.sleep(0.01)
        [line] = lines
        return dict(line)

    # zip: sendfile; .info: memory tier (its first hit still takes the full flow); list: metadata.
    for path in (paths(BIG)["zip"], paths(BIG)["info"], "/example.com/big/@v/list"):
        for want, ranked in (("miss", 1), ("hit", 0)):
            calls.clear()
            got = await ask(client, path, headers=from_de)
            assert (got.status, got.cache) == (200, want), (path, got.headers)
            assert calls["rank"] == ranked, (path, want, calls)
            assert calls["lookup"] == 1, (path, want, calls)   # to rank, or for the log line
            line = await logged(got.headers["X-Request-Id"])
            assert (line["cache"], line["country"]) == (want, "DE"), line
            assert line["attempts"] == ranked and line["upstream"] == ("up" if ranked else None)

    caplog.set_level(logging.WARNING, logger="router.access")   # no access log: no lookup
    calls.clear()
    got = await ask(client, paths(BIG)["zip"], headers=from_de)
    assert (got.status, got.cache) == (200, "hit")
    assert calls == Counter(), calls
    assert asked(up, paths(BIG)["zip"]) == 1
