"""A full or failing cache disk: the cache's problem, never the client's.

* on a real 8 MiB tmpfs, a 20 MiB zip reaches its first requester and a
  coalesced one whole (sha256), the cache keeps no partial file, the upstream
  is not blamed, ``goproxy_cache_write_errors_total{errno="ENOSPC"}`` counts
  it and /readyz says the cache is degraded (skipped where mount is refused);
* the same with ENOSPC injected into the cache's own write threads, for a
  zip (fails mid-stream) and a .mod (fails at commit), then recovery;
* fills reserve their bytes against ``max_size``: two concurrent zip fills
  evict first, so indexed plus in-flight bytes never exceed the bound;
* below ``cache.min_free`` (statvfs) fills are served uncached.

Every wait is bounded; upstreams are FakeProxy instances on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from goproxy_router.storage.disk import DiskCache
from tests.support import FakeProxy, Faults, Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake
from tests.test_cache_serving import Answer, ask, asked, blob, body_of, config, edge_of, paths
from tests.test_operations import parse_metrics, value

MiB = 1 << 20


def files_under(root: Path) -> dict[str, int]:
    """Every file below ``root`` (artifacts, lists and temp files) with its size."""
    out = {}
    for p in root.rglob("*"):
        try:
            if p.is_file():
                out[p.relative_to(root).as_posix()] = p.stat().st_size
        except FileNotFoundError:       # unlinked while we looked
            pass
    return out


def upstream_failures(client: TestClient, name: str) -> tuple[int, int]:
    """(failures recorded, consecutive failures in its breaker) for upstream ``name``."""
    [stats] = [s for s in edge_of(client).registry.all() if s.name == name]
    return stats.failures, stats.breaker.consecutive_failures


async def metrics(client: TestClient) -> Any:
    got = await ask(client, "/metrics")
    assert got.status == 200
    return parse_metrics(got.body.decode())


async def together(client: TestClient, path: str, n: int) -> list[Answer]:
    return list(await asyncio.gather(*(ask(client, path, timeout=30) for _ in range(n))))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a real full filesystem ------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted at the end; skipped where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=10).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


async def test_a_full_tmpfs_streams_a_20mb_zip_whole_and_caches_nothing(
        tmpfs: Path, tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    huge = Module("example.com/huge", "v1.0.0", files={"blob.bin": blob(20, 20 * MiB)})
    want = huge.zip
    assert len(want) > 20 * MiB
    # Headers a little late, so the second request joins the first one's fill.
    up = await fake_proxy(ModuleTree([huge]), name="up", faults=Faults(delay=0.3, paths=r"\.zip$"))
    root = tmpfs / "cache"
    client = await edge(config(tmp_path, {"up": up.url}, dir=str(root), min_free=0))
    path = paths(huge)["zip"]

    first, second = await together(client, path, 2)
    for got in (first, second):
        assert (got.status, len(got.body), sha(got.body)) == (200, len(want), sha(want))
    assert edge_of(client).cache._fills.joined == 1       # the second one waited on the fill ...
    assert asked(up, path) == 2                            # ... then fetched it for itself
    await edge_of(client).cache.disk.drain()
    assert files_under(root) == {}, "a partial or temporary file was left in the cache"
    assert upstream_failures(client, "up") == (0, 0)

    samples = await metrics(client)
    assert (value(samples, "goproxy_cache_write_errors_total", errno="ENOSPC") or 0) >= 1
    assert value(samples, "goproxy_cache_degraded") == 1
    assert value(samples, "goproxy_cache_reserved_bytes") == 0
    assert value(samples, "goproxy_upstream_attempts_total", upstream="up", outcome="ok") == 2
    ready = await ask(client, "/readyz")
    assert ready.status == 200, ready.body
    assert b"cache degraded" in ready.body and b"ENOSPC" in ready.body


# -- ENOSPC injected into the cache's write threads ----------------------------------------

class FullDisk:
    """os.writev from the cache's I/O threads fails with ENOSPC while ``full``."""

    def __init__(self) -> None:
        self.full = True
        self.refused = 0
        self._real = os.writev

    def writev(self, fd: int, buffers: Any) -> int:
        if self.full and threading.current_thread().name.startswith("cache-io"):
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._real(fd, buffers)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    disk = FullDisk()
    monkeypatch.setattr(os, "writev", disk.writev)
    return disk


MIDSIZE = Module("example.com/mid", "v1.0.0", files={"blob.bin": blob(3, 3 * MiB)})


@pytest.mark.parametrize("ext", ["zip", "mod"])
async def test_a_cache_write_error_serves_everyone_whole_and_blames_no_upstream(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, full_disk: FullDisk,
        ext: str) -> None:
    """A zip fails mid-stream (its batches go to disk as it arrives), a .mod at commit."""
    up = await fake_proxy(ModuleTree([MIDSIZE]), name="up", faults=Faults(delay=0.3))
    client = await edge(config(tmp_path, {"up": up.url}))
    root = tmp_path / "cache"
    path, want = paths(MIDSIZE)[ext], body_of(MIDSIZE, ext)

    answers = await together(client, path, 3)
    assert [(a.status, a.cache, sha(a.body)) for a in answers] == [(200, "miss", sha(want))] * 3
    assert full_disk.refused >= 1 and edge_of(client).cache._fills.joined == 2
    # A .mod is shared from memory; a zip's waiters fetch it again themselves.
    assert asked(up, path) == (3 if ext == "zip" else 1)
    await edge_of(client).cache.disk.drain()
    assert files_under(root) == {}
    assert upstream_failures(client, "up") == (0, 0)
    samples = await metrics(client)
    assert value(samples, "goproxy_cache_write_errors_total", errno="ENOSPC") == 1
    assert value(samples, "goproxy_cache_degraded") == 1
    assert value(samples, "goproxy_upstream_attempts_total", upstream="up", outcome="broken") is None
    ready = await ask(client, "/readyz")
    assert ready.status == 200 and b"cache degraded" in ready.body, ready.body

    # Room again: the next fill is cached, and a good commit ends the degraded state.
    full_disk.full = False
    again = await ask(client, path)
    assert (again.status, again.cache, again.body) == (200, "miss", want)
    await edge_of(client).cache.disk.drain()
    assert edge_of(client).cache.disk.get(MIDSIZE.path, MIDSIZE.version, ext) is not None
    assert (await ask(client, path)).cache == "hit"
    assert (await ask(client, "/readyz")).body == b"ready\n"
    assert value(await metrics(client), "goproxy_cache_degraded") == 0


async def test_a_write_error_without_a_client_stops_reading_the_body(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake, full_disk: FullDisk) -> None:
    """The first requester left and the cache gave up: nobody wants the rest of the zip."""
    big = Module("example.com/slow", "v1.0.0", files={"blob.bin": blob(4, 8 * MiB)})
    up = await fake_proxy(ModuleTree([big]), name="up", faults=Faults(throttle=8 * MiB))
    client = await edge(config(tmp_path, {"up": up.url}))
    path = paths(big)["zip"]

    async with client.get(path) as resp:          # take the first bytes, then hang up
        assert resp.status == 200
        await resp.content.readexactly(64 * 1024)
    async with asyncio.timeout(5):
        while len(edge_of(client).cache._fills):
            await asyncio.sleep(0.01)
    assert edge_of(client).cache.disk.write_errors == {"ENOSPC": 1}
    assert upstream_failures(client, "up") == (0, 0)
    samples = await metrics(client)
    assert value(samples, "goproxy_upstream_attempts_total", upstream="up", outcome="ok") == 1
    # The whole body takes 1 s to send; well after that, the fake never finished it.
    await asyncio.sleep(1.5)
    [record] = [r for r in up.requests if r.raw_path == path]
    assert record.fate.get("completed") is not True, record.fate


def test_a_failed_write_is_counted_cleaned_up_and_clears_with_the_next_commit(
        make_cache: Any, full_disk: FullDisk) -> None:
    from goproxy_router.storage.errors import CacheWriteError

    async def run() -> None:
        cache: DiskCache = make_cache(10 * MiB, fsync=False)
        w = cache.writer("example.com/a", "v1.0.0", "mod", 3 * MiB)
        assert cache.reserved == 3 * MiB
        with pytest.raises(CacheWriteError) as caught:
            for _ in range(3):
                await w.write(b"m" * MiB)
            await w.commit()
        assert caught.value.errno == "ENOSPC" and "No space left" in str(caught.value)
        await cache.drain()
        assert w.state == "aborted" and cache.reserved == 0 and cache.write_budget.used == 0
        assert files_under(cache.root) == {} and cache.write_errors == {"ENOSPC": 1}
        assert cache.degraded is not None and "ENOSPC" in cache.degraded
        full_disk.full = False
        w = cache.writer("example.com/a", "v1.0.0", "mod", 5)
        await w.write(b"hello")
        await w.commit(5)
        assert cache.degraded is None and cache.reserved == 0 and cache.size == 5

    asyncio.run(run())


# -- max_size counts fills in progress -------------------------------------------------------

async def test_concurrent_fills_reserve_their_size_and_evict_first(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake) -> None:
    olds = [Module(f"example.com/old{i}", "v1.0.0", files={"b": blob(10 + i, MiB + MiB // 10)})
            for i in range(2)]
    news = [Module(f"example.com/new{i}", "v1.0.0", files={"b": blob(20 + i, MiB + MiB // 10)})
            for i in range(2)]
    bound = 3 * MiB
    assert 2 * len(news[0].zip) <= bound < 3 * len(news[0].zip)
    up = await fake_proxy(ModuleTree(olds + news), name="up")
    client = await edge(config(tmp_path, {"up": up.url}, max_size=bound))
    disk = edge_of(client).cache.disk
    root = tmp_path / "cache"
    for m in olds:
        assert (await ask(client, paths(m)["zip"])).status == 200
    await disk.drain()
    assert disk.size == sum(len(m.zip) for m in olds)

    # Both new fills stream for ~0.3 s at once; sample what they and the index hold.
    up.set_faults(throttle=4 * MiB, paths=r"/new")
    worst: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            temp = sum(size for name, size in files_under(root).items()
                       if name.rpartition("/")[2].startswith(".tmp-"))
            worst.append(max(disk.size + temp, disk.size + getattr(disk, "reserved", 0)))
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        got = await asyncio.gather(*(ask(client, paths(m)["zip"], timeout=30) for m in news))
    finally:
        stop.set()
        await sampler
    assert [(g.status, g.body) for g in got] == [(200, m.zip) for m in news]
    assert len(worst) > 20 and max(worst) <= bound, f"{max(worst)} bytes > max_size {bound}"
    await disk.drain()
    assert disk.reserved == 0 and disk.size == sum(len(m.zip) for m in news)
    on_disk = {k: v for k, v in files_under(root).items() if k.endswith(".zip")}
    assert sum(on_disk.values()) <= bound and len(on_disk) == 2


def test_a_reservation_evicts_lru_and_a_size_that_never_fits_is_refused(make_cache: Any) -> None:
    from goproxy_router.storage.errors import CacheUnavailable

    async def run() -> None:
        cache: DiskCache = make_cache(3000, fsync=False)
        for i in range(3):
            w = cache.writer(f"example.com/m{i}", "v1.0.0", "mod")
            await w.write(b"x" * 1000)
            await w.commit()
        w = cache.writer("example.com/n", "v1.0.0", "mod", 1500)   # evicts m0 and m1 now
        assert (cache.size, cache.reserved, cache.evictions) == (1000, 1500, 2)
        with pytest.raises(CacheUnavailable, match="never fit"):
            cache.writer("example.com/huge", "v1.0.0", "mod", 3001)
        await w.write(b"y" * 2100)                                 # more than declared: grows
        assert cache.reserved == 2100 and cache.size == 0          # ... and evicts m2 for it
        w.abort()
        assert cache.reserved == 0

    asyncio.run(run())


# -- min_free ------------------------------------------------------------------------------------

async def test_below_min_free_fills_are_served_uncached_until_space_is_back(
        tmp_path: Path, edge: MakeEdge, fake_proxy: MakeFake,
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = Module("example.com/roomy", "v1.0.0", files={"blob.bin": blob(5, 2 * MiB)})
    up: FakeProxy = await fake_proxy(ModuleTree([m]), name="up")
    client = await edge(config(tmp_path, {"up": up.url}))     # min_free: the default, 1GB
    disk = edge_of(client).cache.disk
    disk.free_check_interval = 0
    root = tmp_path / "cache"
    real_statvfs = os.statvfs
    # 40 KiB free: far below 1GB.
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(
        (4096, 4096, 1 << 20, 10, 10, 1000, 1000, 1000, 0, 255)))

    for ext in ("mod", "zip", "mod", "zip"):
        got = await ask(client, paths(m)[ext])
        assert (got.status, got.cache, got.body) == (200, "miss", body_of(m, ext))
    assert asked(up, paths(m)["mod"]) == 2 and asked(up, paths(m)["zip"]) == 2
    await disk.drain()
    assert files_under(root) == {}, "cached although the disk is below min_free"
    ready = await ask(client, "/readyz")
    assert ready.status == 200 and b"below cache.min_free" in ready.body, ready.body
    assert value(await metrics(client), "goproxy_cache_degraded") == 1

    monkeypatch.setattr(os, "statvfs", real_statvfs)
    got = await ask(client, paths(m)["zip"])
    assert (got.status, got.body) == (200, m.zip)
    await disk.drain()
    assert disk.get(m.path, m.version, "zip") is not None
    assert (await ask(client, "/readyz")).body == b"ready\n"
    assert value(await metrics(client), "goproxy_cache_degraded") == 0
