"""router.cache: the disk store (Go's download-cache layout, atomic commits,
crash safety, LRU size bound, memory tier), the metadata cache and the
single-flight coalescer. Every wait is bounded; nothing touches the network.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goproxy_router.base.logs import JsonFormatter
from goproxy_router.config.schema import Cache
from goproxy_router.protocol.paths import ProtocolError
from goproxy_router.serving.artifacts import ArtifactCache
from goproxy_router.storage.disk import DiskCache
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.errors import CacheError, CacheIntegrityError
from goproxy_router.storage.layout import artifact_relpath
from goproxy_router.storage.listing import list_body
from goproxy_router.storage.metadata import MetadataCache, NegativeAnswer
from goproxy_router.storage.singleflight import Coalescer
from tests.conftest import REPO_ROOT, GoEnv
from tests.support import Module, download_cache_paths

MiB = 1 << 20


async def store(cache: DiskCache, module: str, version: str, ext: str, body: bytes,
                chunk: int = 64 * 1024) -> CacheEntry:
    async with cache.writer(module, version, ext) as w:
        for i in range(0, len(body), chunk):
            await w.write(body[i:i + chunk])
        return await w.commit(len(body))


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


def artifacts(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")}


def mod_key(i: int) -> str:
    return artifact_relpath(f"example.com/m{i}", "v1.0.0", "mod")


async def put_mod(cache: DiskCache, i: int, size: int) -> CacheEntry:
    """A .mod of ``size`` bytes (no content checks apply to .mod)."""
    return await store(cache, f"example.com/m{i}", "v1.0.0", "mod", bytes([65 + i % 26]) * size)


# -- layout -----------------------------------------------------------------------

def test_layout_is_gos_download_cache_layout() -> None:
    assert artifact_relpath("github.com/Azure/x", "v1.0.0", "zip") == "github.com/!azure/x/@v/v1.0.0.zip"
    cases = [("github.com/Azure/x", "v1.0.0"), ("example.com/BigCo/Lib", "v1.2.3-RC1"),
             ("example.com/old", "v2.0.0+incompatible"), ("gopkg.in/yaml.v3", "v3.0.1")]
    for ext in ("info", "mod", "zip"):
        assert {artifact_relpath(p, v, ext) for p, v in cases} == download_cache_paths(cases, ext)


def test_only_canonical_artifacts_and_valid_paths() -> None:
    with pytest.raises(ValueError, match="canonical"):
        artifact_relpath("example.com/a", "master", "info")
    with pytest.raises(ValueError, match="canonical"):
        artifact_relpath("example.com/a", "v1.2", "zip")
    with pytest.raises(ValueError, match="extension"):
        artifact_relpath("example.com/a", "v1.0.0", "list")
    with pytest.raises(ProtocolError):
        artifact_relpath("example.com/../etc", "v1.0.0", "zip")
    with pytest.raises(ProtocolError):
        artifact_relpath("Example.com/a", "v1.0.0", "zip")


@pytest.mark.e2e
async def test_real_go_downloads_from_the_cache_dir_as_a_file_proxy(
        make_cache: Callable[..., DiskCache], go_env: GoEnv, tmp_path: Path) -> None:
    cache = make_cache()
    mods = [Module("github.com/Azure/x", "v1.0.0"), Module("example.com/BigCo/lib", "v1.2.3-RC1")]
    for m in mods:
        for ext, body in (("info", m.info), ("mod", m.mod), ("zip", m.zip)):
            await store(cache, m.path, m.version, ext, body)
    assert temp_files(cache.root) == []
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = [f"{m.path}@{m.version}" for m in mods]
    result = await asyncio.to_thread(go_env.run, "mod", "download", "-json", *args,
                                     cwd=workdir, goproxy=cache.root.as_uri(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    decoder, text, out = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        obj, end = decoder.raw_decode(text)
        out.append(obj)
        text = text[end:].strip()
    assert sorted((o["Path"], o["Version"]) for o in out) == sorted(m.key for m in mods)
    assert all("Error" not in o and o["Sum"].startswith("h1:") for o in out), out
    # The go command stored the same bytes under the same relative paths.
    for ext in ("info", "mod", "zip"):
        for rel in download_cache_paths([m.key for m in mods], ext):
            assert (go_env.download_dir / rel).read_bytes() == (cache.root / rel).read_bytes(), rel


# -- writing ------------------------------------------------------------------------

async def test_commit_publishes_the_whole_file(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    body = os.urandom(3 * MiB + 12345)
    entry = await store(cache, "example.com/Big", "v1.0.0", "mod", body, chunk=50_000)
    path = cache.root / "example.com/!big/@v/v1.0.0.mod"
    assert entry.path == path and entry.key == "example.com/!big/@v/v1.0.0.mod"
    assert path.read_bytes() == body
    st = path.stat()
    assert (entry.size, entry.mtime) == (len(body), st.st_mtime)
    assert entry.etag == f"{st.st_mtime_ns:x}-{st.st_size:x}"
    assert entry.data is None   # too large for the memory tier
    assert (cache.size, cache.files, cache.commits) == (len(body), 1, 1)
    assert temp_files(cache.root) == []
    again = cache.get("example.com/Big", "v1.0.0", "mod")
    assert again is not None and again.etag == entry.etag and again.data is None
    assert cache.get("example.com/Big", "v1.0.1", "mod") is None
    assert (cache.hits, cache.misses) == (1, 1)


async def test_abort_and_context_manager_leave_nothing(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    w = cache.writer("example.com/a", "v1.0.0", "mod")
    for _ in range(5):
        await w.write(b"x" * 700_000)          # several flushes: a temp file exists
    w.abort()
    w.abort()                                  # idempotent
    assert w.state == "aborted"
    with pytest.raises(CacheError):
        await w.write(b"more")
    with pytest.raises(CacheError):
        await w.commit()

    async with cache.writer("example.com/a", "v1.0.0", "mod") as w2:
        await w2.write(b"module example.com/a\n")   # left without commit
    assert w2.state == "aborted"

    with pytest.raises(RuntimeError, match="upstream died"):
        async with cache.writer("example.com/a", "v1.0.0", "zip") as w3:
            await w3.write(b"PK" * 1_000_000)
            raise RuntimeError("upstream died")
    await cache.drain()
    assert artifacts(cache.root) == set() and temp_files(cache.root) == []
    assert cache.get("example.com/a", "v1.0.0", "mod") is None and cache.size == 0


async def test_size_mismatch_is_refused(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    w = cache.writer("example.com/a", "v1.0.0", "mod")
    await w.write(b"y" * (2 * MiB))
    with pytest.raises(CacheIntegrityError, match="expected"):
        await w.commit(expected_size=2 * MiB + 1)
    assert w.state == "aborted"
    await cache.drain()
    assert artifacts(cache.root) == set() and temp_files(cache.root) == []
    assert cache.rejected == 1 and cache.size == 0


async def test_integrity_checks_refuse_bad_bodies(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    m = Module("example.com/a", "v1.0.0")
    other = Module("example.com/b", "v1.0.0")
    bad: list[tuple[str, bytes, str]] = [
        ("info", b'{"Version":"v1.0.1","Time":"2021-01-01T00:00:00Z"}', "is not the requested"),
        ("info", b"<html>rate limited</html>", "not JSON"),
        ("zip", m.zip[:-30], "not a readable zip"),            # truncated, length unknown
        ("zip", b"<html>oops</html>", "not a readable zip"),
        ("zip", other.zip, "outside"),
    ]
    for ext, body, why in bad:
        w = cache.writer(m.path, m.version, ext)
        await w.write(body)
        with pytest.raises(CacheIntegrityError, match=why):
            await w.commit()          # no expected size: the content checks still apply
    assert cache.rejected == len(bad)
    assert artifacts(cache.root) == set() and temp_files(cache.root) == []
    for ext, body in (("info", m.info), ("zip", m.zip)):
        assert (await store(cache, m.path, m.version, ext, body)).data == body


async def test_artifact_name_never_shows_a_partial_file(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    body = os.urandom(8 * MiB)
    final = cache.path_for("example.com/a", "v1.0.0", "mod")
    seen: list[int] = []
    listings: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(final.stat().st_size)
            except FileNotFoundError:
                pass
            if final.parent.is_dir():
                listings.update(os.listdir(final.parent))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        async with asyncio.timeout(20):
            await store(cache, "example.com/a", "v1.0.0", "mod", body, chunk=32 * 1024)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert seen and set(seen) == {len(body)}          # never visible until whole
    assert any(name.startswith(".tmp-") for name in listings)
    assert {n for n in listings if not n.startswith(".tmp-")} == {"v1.0.0.mod"}
    assert all(n.endswith(".part") for n in listings if n.startswith(".tmp-"))


KILL_SCRIPT = r"""
import asyncio, sys
from pathlib import Path
from goproxy_router.storage.disk import DiskCache

async def main() -> None:
    cache = DiskCache(Path(sys.argv[1]), None)
    writer = cache.writer("example.com/big", "v1.0.0", "zip")
    chunk = bytes(1 << 20)
    for i in range(50):                    # a 50 MiB artifact
        await writer.write(chunk)
        if i == 25:
            print("half", flush=True)
        if i >= 25:
            await asyncio.sleep(0.2)       # still writing when the parent kills us
    print("finished without being killed", flush=True)

asyncio.run(asyncio.wait_for(main(), 60))
"""


def test_sigkill_mid_write_leaves_no_entry_and_sweep_removes_temp(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "writer subprocess did not reach half-way within 15 s"
        assert proc.stdout is not None and proc.stdout.readline() == b"half\n"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            temps = temp_files(root)
            if temps and temps[0].stat().st_size >= 20 * MiB:
                break
            time.sleep(0.01)
        else:
            pytest.fail("no temp file with 20 MiB written within 10 s")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    final = root / "example.com/big/@v/v1.0.0.zip"
    assert not final.exists()
    (leftover,) = temp_files(root)
    assert 20 * MiB <= leftover.stat().st_size < 50 * MiB

    cache = DiskCache(root, None)
    try:
        report = cache.sweep()
        assert (report.removed_temp, report.busy_temp, report.files, report.size) == (1, 0, 0, 0)
        assert temp_files(root) == [] and not final.exists()
        assert cache.get("example.com/big", "v1.0.0", "zip") is None
        assert cache.swept == 1
    finally:
        cache.close()


async def test_sweep_spares_a_live_writers_temp_file(make_cache: Callable[..., DiskCache]) -> None:
    a = make_cache()
    w = a.writer("example.com/a", "v1.0.0", "mod")
    body = b"z" * (3 * MiB)
    await w.write(body[:2 * MiB])
    async with asyncio.timeout(5):             # bytes in it: the writer holds its lock
        while not any(t.stat().st_size for t in temp_files(a.root)):
            await asyncio.sleep(0.005)
    stale = a.root / "example.com/a/@v/.tmp-deadbeef-v1.0.0.mod.part"   # a crashed writer's
    stale.write_bytes(b"junk")
    b = make_cache(root=a.root, sweep=False)   # another worker starting up on the same directory
    report = b.sweep()
    assert (report.removed_temp, report.busy_temp) == (1, 1)
    assert not stale.exists() and len(temp_files(a.root)) == 1
    await w.write(body[2 * MiB:])
    await w.commit(len(body))
    assert temp_files(a.root) == []
    # b adopts what a committed (one stat on its index miss)
    entry = b.get("example.com/a", "v1.0.0", "mod")
    assert entry is not None and entry.size == len(body) and b.size == len(body)


async def test_sweep_indexes_existing_files_oldest_first(
        make_cache: Callable[..., DiskCache], tmp_path: Path) -> None:
    a = make_cache()
    for i in range(4):
        await put_mod(a, i, 1000)
    now = time.time()
    for i, age in enumerate([300, 100, 400, 200]):           # LRU order: 2, 0, 3, 1
        os.utime(a.root / mod_key(i), (now - age, now - age))
    (a.root / "example.com/m0/@v/list").write_text("v1.0.0\n")         # not an artifact
    (a.root / "example.com/m0/@v/v1.0.0.lock").write_text("")          # a stranger
    b = DiskCache(a.root, 2500, fsync=False)
    try:
        report = b.sweep()
        assert report.files == 2 and report.size == 2000 and report.evicted == 2
        # m0's list named a version without .info (and now without .mod): removed.
        assert report.lists == 1
        assert artifacts(a.root) == {mod_key(1), mod_key(3), "example.com/m0/@v/v1.0.0.lock"}
        assert (b.size, b.files, b.evictions) == (2000, 2, 2)
    finally:
        b.close()


async def test_concurrent_writers_of_one_artifact_are_harmless(
        make_cache: Callable[..., DiskCache]) -> None:
    m = Module("example.com/a", "v1.0.0", files={"blob.bin": os.urandom(300_000)})
    one, two = make_cache(fsync=False), make_cache(fsync=False)  # two "processes", one directory
    entries = await asyncio.gather(store(one, m.path, m.version, "zip", m.zip, chunk=4096),
                                   store(one, m.path, m.version, "zip", m.zip, chunk=5000),
                                   store(two, m.path, m.version, "zip", m.zip, chunk=7000))
    assert {e.size for e in entries} == {len(m.zip)}
    assert one.path_for(m.path, m.version, "zip").read_bytes() == m.zip
    assert (one.files, one.size) == (1, len(m.zip)) and (two.files, two.size) == (1, len(m.zip))
    assert temp_files(one.root) == []


async def test_a_file_gone_behind_our_back_is_a_miss(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    big = await put_mod(cache, 1, 100_000)
    small = await put_mod(cache, 2, 100)
    fresh = make_cache(root=cache.root)           # index from disk, memory tier empty
    os.unlink(big.path)
    os.unlink(small.path)
    assert fresh.get("example.com/m2", "v1.0.0", "mod") is None   # the read notices
    entry = fresh.get("example.com/m1", "v1.0.0", "mod")           # index hit: no syscall
    assert entry is not None
    fresh.discard(entry)                                           # serving it failed
    assert fresh.get("example.com/m1", "v1.0.0", "mod") is None
    assert (fresh.files, fresh.size) == (0, 0)


async def test_disk_errors_surface_as_cache_errors_and_leave_nothing(
        make_cache: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch) -> None:
    from goproxy_router.storage import fileops

    cache = make_cache()
    real_write_all = fileops.write_all
    calls = 0

    def flaky_write_all(fd: int, data: bytes | memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(fileops, "write_all", flaky_write_all)
    with pytest.raises(CacheError, match="No space left"):
        async with cache.writer("example.com/a", "v1.0.0", "mod") as w:
            for _ in range(10):
                await w.write(b"n" * 600_000)
            await w.commit()
    await cache.drain()
    assert artifacts(cache.root) == set() and temp_files(cache.root) == []

    cache.close()
    with pytest.raises(CacheError, match="closed"):
        async with cache.writer("example.com/a", "v1.0.0", "mod") as w:
            await w.write(b"module example.com/a\n")
            await w.commit()


# -- cancellation ----------------------------------------------------------------------

async def test_cancelled_writer_cleans_up(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    started = asyncio.Event()

    async def tee() -> None:
        async with cache.writer("example.com/a", "v1.0.0", "mod") as w:
            for _ in range(1000):
                await w.write(b"q" * 300_000)
                started.set()
                await asyncio.sleep(0)

    task = asyncio.create_task(tee())
    async with asyncio.timeout(5):
        await started.wait()
        while not temp_files(cache.root):
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await cache.drain()
    assert temp_files(cache.root) == [] and artifacts(cache.root) == set()


async def test_commit_finishes_even_if_its_caller_is_cancelled(
        make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache()
    body = b"c" * (5 * MiB)
    w = cache.writer("example.com/a", "v1.0.0", "mod")
    await w.write(body)
    task = asyncio.create_task(w.commit(len(body)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.__aexit__(None, None, None)       # the caller's `async with` exit: no-op now
    async with asyncio.timeout(5):
        while w.state != "committed":
            await asyncio.sleep(0.005)
    entry = cache.get("example.com/a", "v1.0.0", "mod")
    assert entry is not None and entry.path.read_bytes() == body
    assert temp_files(cache.root) == []


# -- eviction ---------------------------------------------------------------------------

async def test_eviction_is_lru_and_keeps_size_bounded(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(3000, fsync=False)
    for i in range(3):
        await put_mod(cache, i, 1000)
    assert cache.size == 3000 and cache.evictions == 0
    assert cache.get("example.com/m0", "v1.0.0", "mod") is not None   # m0 is now most recent
    await put_mod(cache, 3, 1000)                                      # evicts m1, the LRU
    await put_mod(cache, 4, 1500)                                      # evicts m2 and m0
    await cache.drain()
    assert artifacts(cache.root) == {mod_key(3), mod_key(4)}
    assert (cache.size, cache.files, cache.evictions, cache.evicted_bytes) == (2500, 2, 3, 3000)
    assert cache.get("example.com/m1", "v1.0.0", "mod") is None


async def test_each_eviction_is_logged_with_key_size_and_reason(
        make_cache: Callable[..., DiskCache], caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(2000, fsync=False)
    caplog.set_level(logging.INFO, logger="router.cache")
    for i in range(3):
        await put_mod(cache, i, 1000)                                  # the third evicts m0
    await cache.drain()
    [record] = [r for r in caplog.records if r.getMessage() == "cache eviction"]
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["key"], fields["size"], fields["reason"]) == (mod_key(0), 1000, "max_size")
    assert json.loads(JsonFormatter().format(record))["key"] == mod_key(0)   # a JSON log line


@pytest.mark.parametrize("max_size, message", [
    ("unlimited", "cache.max_size is unlimited"),
    ("1000TB", "cache.max_size is more than the cache's disk has free"),
])
async def test_a_cache_that_may_fill_its_disk_is_warned_about_at_startup(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, max_size: str, message: str) -> None:
    config = Cache.model_validate({"dir": str(tmp_path / "c"), "max_size": max_size})
    caplog.set_level(logging.WARNING, logger="router.cache")
    artifacts = ArtifactCache(config)
    await artifacts.close()
    assert [r.levelno for r in caplog.records if r.getMessage().startswith(message)] == [logging.WARNING]
    caplog.clear()
    artifacts = ArtifactCache(Cache.model_validate({"dir": str(tmp_path / "c"), "max_size": "1MB"}))
    await artifacts.close()
    assert caplog.records == []


async def test_eviction_never_removes_a_leased_file(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(3000, fsync=False)
    for i in range(3):
        await put_mod(cache, i, 1000)
    entry = cache.get("example.com/m0", "v1.0.0", "mod")
    assert entry is not None
    lease = cache.lease(entry)
    cache.get("example.com/m1", "v1.0.0", "mod")
    cache.get("example.com/m2", "v1.0.0", "mod")      # m0 is the LRU, but leased
    for i in range(3, 6):
        await put_mod(cache, i, 1000)
    await cache.drain()
    assert mod_key(0) in artifacts(cache.root) and mod_key(0) in cache
    assert cache.size <= 3000
    lease.release()
    lease.release()                                    # idempotent

    # Everything leased: the bound is exceeded only until a lease ends.
    held = []
    for i in (0, 4, 5):
        e = cache.get(f"example.com/m{i}", "v1.0.0", "mod")
        assert e is not None
        held.append(cache.lease(e))
    with cache.lease(await put_mod(cache, 6, 1000)) as e6:
        assert e6.key == mod_key(6) and e6.path.read_bytes() == b"G" * 1000
        assert cache.size == 4000 and all(mod_key(i) in cache for i in (0, 4, 5, 6))
        held[0].release()                  # m0, the least recently used, may go now
        await cache.drain()
        assert cache.size == 3000 and mod_key(0) not in cache
    for lease in held[1:]:
        lease.release()
    await cache.drain()
    assert artifacts(cache.root) == {mod_key(i) for i in (4, 5, 6)}


async def test_an_evicted_file_is_not_readopted_before_its_unlink(
        make_cache: Callable[..., DiskCache]) -> None:
    """Regression (found by the LRU model test): a miss stats the disk to adopt
    other processes' files; it must not resurrect a file whose unlink is queued."""
    cache = make_cache(1000, fsync=False)
    await put_mod(cache, 1, 600)
    gate = threading.Event()
    cache._namespace.submit(gate.wait, 5)     # hold the rename/unlink thread: unlinks stay queued
    try:
        # A commit needs that thread too, so evict by adopting another process's file.
        other = make_cache(root=cache.root, fsync=False, sweep=False)
        await put_mod(other, 2, 600)
        assert cache.get("example.com/m2", "v1.0.0", "mod") is not None   # adopted, m1 evicted
        assert mod_key(1) not in cache and cache.path_for("example.com/m1", "v1.0.0", "mod").exists()
        assert cache.get("example.com/m1", "v1.0.0", "mod") is None
    finally:
        gate.set()
    await cache.drain()
    assert mod_key(1) not in artifacts(cache.root) and cache.size == 600


async def test_a_file_larger_than_the_bound_is_served_then_evicted(
        make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(1000, fsync=False)
    await put_mod(cache, 0, 500)
    huge = await put_mod(cache, 1, 5000)        # the entry commit returns stays servable
    await cache.drain()
    assert huge.path.read_bytes() == b"B" * 5000 and mod_key(0) not in cache
    await put_mod(cache, 2, 100)                # the next commit restores the bound
    await cache.drain()
    assert cache.size == 100 and artifacts(cache.root) == {mod_key(2)}


def test_eviction_matches_an_lru_model(tmp_path: Path) -> None:
    """Random puts and gets against an OrderedDict model of LRU with a byte bound."""
    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 7),
                              st.integers(1, 600)), max_size=25))
    def run(ops: list[tuple[str, int, int]]) -> None:
        asyncio.run(check(ops, tmp_path / f"c{next(counter)}"))

    async def check(ops: list[tuple[str, int, int]], root: Path) -> None:
        cache = DiskCache.open(root, 1000, fsync=False, small_max_bytes=100, small_cache_bytes=300)
        model: OrderedDict[int, int] = OrderedDict()
        try:
            for op, i, size in ops:
                if op == "put":
                    await put_mod(cache, i, size)
                    model[i] = size
                    model.move_to_end(i)
                    while sum(model.values()) > 1000:
                        model.popitem(last=False)
                else:
                    hit = cache.get(f"example.com/m{i}", "v1.0.0", "mod")
                    assert (hit is not None) == (i in model)
                    if hit is not None:
                        model.move_to_end(i)
                        assert hit.size == model[i]
                        assert hit.data is None or hit.data == hit.path.read_bytes()
                assert cache.size == sum(model.values()) <= 1000
                assert cache.memory_size <= 300
            await cache.drain()
            assert artifacts(root) == {mod_key(i) for i in model}
            assert list(cache._index) == [mod_key(i) for i in model]   # same recency order
        finally:
            cache.close()

    run()


# -- @v/list ------------------------------------------------------------------------------

def info_body(version: str) -> bytes:
    return json.dumps({"Version": version, "Time": "2024-01-02T03:04:05Z"}).encode()


async def put_version(cache: DiskCache, module: str, version: str,
                      exts: tuple[str, ...] = ("info", "mod")) -> None:
    """A version's .info and/or .mod (the .mod's content is not checked)."""
    for ext in exts:
        body = info_body(version) if ext == "info" else f"module {module}\n".encode()
        await store(cache, module, version, ext, body)


def listed(cache: DiskCache, module: str) -> list[str] | None:
    """The versions in the module's @v/list, or None when there is no list file."""
    try:
        text = cache.list_path(module).read_text()
    except FileNotFoundError:
        return None
    assert text.endswith("\n"), f"list without its final newline: {text!r}"
    return text.splitlines()


def test_list_body_lists_resolvable_versions_in_semver_order() -> None:
    names = ["v1.10.0.info", "v1.10.0.mod", "v1.2.0.mod", "v1.2.0.info", "v1.2.0.zip",
             "v1.2.0-!r!c1.info", "v1.2.0-!r!c1.mod",                   # v1.2.0-RC1
             "v1.2.0-rc.2.info", "v1.2.0-rc.2.mod", "v1.2.0-rc.10.info", "v1.2.0-rc.10.mod",
             "v0.0.0-20240102030405-abcdefabcdef.info", "v0.0.0-20240102030405-abcdefabcdef.mod",
             "v2.0.0+incompatible.info", "v2.0.0+incompatible.mod",
             "v1.3.0.mod",                       # no .info: cannot be resolved
             "v1.4.0.info", "v1.4.0.zip",        # no .mod: cannot be built with
             "v1.5.0.info.lock", ".tmp-0a1b-v1.6.0.info.part", "list", "v1.7.info", "v1.7.mod",
             "v1.8.0-!bad!.info", "v1.8.0-!bad!.mod"]
    assert list_body(names).decode().splitlines() == [
        "v0.0.0-20240102030405-abcdefabcdef", "v1.2.0-RC1", "v1.2.0-rc.2", "v1.2.0-rc.10",
        "v1.2.0", "v1.10.0", "v2.0.0+incompatible"]
    assert list_body(["v1.0.0.info", "v1.0.0.zip"]) == b""


async def test_list_is_kept_by_commits_without_any_list_request(
        make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(fsync=False)
    module = "example.com/BigCo/lib"
    await put_version(cache, module, "v1.1.0", ("mod",))
    assert listed(cache, module) is None                 # a .mod alone resolves nothing
    await put_version(cache, module, "v1.1.0", ("info",))
    assert listed(cache, module) == ["v1.1.0"]           # the .info commit listed it
    await put_version(cache, module, "v1.0.0-RC1")
    await put_version(cache, module, "v1.10.0")
    await store(cache, module, "v1.2.0", "info", info_body("v1.2.0"))
    assert listed(cache, module) == ["v1.0.0-RC1", "v1.1.0", "v1.10.0"]
    assert cache.list_path(module) == cache.root / "example.com/!big!co/lib/@v/list"
    # The list is no artifact: not indexed, not counted, and a fresh index agrees.
    assert (cache.files, cache.size) == (7, sum(p.stat().st_size for p in cache.root.rglob("v*.*")))
    again = make_cache(root=cache.root, fsync=False)
    assert (again.files, again.size) == (cache.files, cache.size) and again.lists_written == 0
    assert temp_files(cache.root) == []


async def test_list_is_replaced_atomically_never_half_written(
        make_cache: Callable[..., DiskCache]) -> None:
    """A reader polling the list while 40 versions are committed sees only whole lists,
    each a prefix of the commit order, and every rewrite is a new inode (a rename)."""
    cache = make_cache()
    module = "example.com/a"
    versions = [f"v1.{i}.0" for i in range(40)]
    path = cache.list_path(module)
    seen: set[tuple[str, ...]] = set()
    inodes: set[int] = set()
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    inodes.add(os.fstat(f.fileno()).st_ino)
                    text = f.read().decode()
            except FileNotFoundError:
                continue
            lines = text.splitlines()
            if not text.endswith("\n") or lines != versions[:len(lines)]:
                bad.append(text)
            seen.add(tuple(lines))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in versions:
            await put_version(cache, module, v)
    finally:
        stop.set()
        thread.join(10)
    assert not bad, bad[:3]
    assert listed(cache, module) == versions
    assert len(seen) > 5 and len(inodes) >= len(seen)     # the reader did see it change
    assert cache.lists_written == len(versions) and temp_files(cache.root) == []


async def test_an_evicted_version_leaves_the_list(make_cache: Callable[..., DiskCache]) -> None:
    info_size = len(info_body("v1.0.0"))
    bound = 3 * (info_size + 300) + 10
    cache = make_cache(bound, fsync=False)
    module = "example.com/a"
    for v in ("v1.0.0", "v1.1.0", "v1.2.0"):
        await store(cache, module, v, "info", info_body(v))
        await store(cache, module, v, "mod", b"m" * 300)
    assert listed(cache, module) == ["v1.0.0", "v1.1.0", "v1.2.0"]
    assert cache.get(module, "v1.1.0", "info") is not None       # v1.1.0.info used lately
    # LRU order: 1.0.0.info, 1.0.0.mod, 1.1.0.mod, 1.2.0.info, 1.2.0.mod, 1.1.0.info
    await store(cache, "example.com/other", "v1.0.0", "mod", b"o" * (info_size + 300))
    await cache.drain()
    assert not cache.path_for(module, "v1.0.0", "info").exists()
    assert listed(cache, module) == ["v1.1.0", "v1.2.0"]
    # v1.1.0 keeps its .info but loses its .mod: it can no longer be built, so not listed.
    await store(cache, "example.com/other", "v1.1.0", "mod", b"o" * 300)
    await cache.drain()
    assert cache.path_for(module, "v1.1.0", "info").exists()
    assert not cache.path_for(module, "v1.1.0", "mod").exists()
    assert listed(cache, module) == ["v1.2.0"]
    await store(cache, "example.com/other", "v1.2.0", "mod", b"o" * bound)  # evicts the rest
    await cache.drain()
    assert listed(cache, module) is None                  # nothing left to list: no list
    assert temp_files(cache.root) == []


async def test_sweep_repairs_lists_left_by_a_crash_or_an_older_release(
        make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(fsync=False)
    await put_version(cache, "example.com/a", "v1.0.0")
    await put_version(cache, "example.com/b", "v0.1.0")
    await put_version(cache, "example.com/b", "v0.2.0")
    cache.list_path("example.com/a").unlink()                        # never written
    cache.list_path("example.com/b").write_text("v0.1.0\nv0.2.0\nv0.3.0\n")   # one unlinked
    stale = cache.list_path("example.com/b").parent / ".tmp-0123456789ab-list.part"
    stale.write_text("v0.")                                          # a killed rewrite's temp
    report = make_cache(root=cache.root, sweep=False).sweep()
    assert (report.lists, report.removed_temp, report.files) == (2, 1, 6)
    assert listed(cache, "example.com/a") == ["v1.0.0"]
    assert listed(cache, "example.com/b") == ["v0.1.0", "v0.2.0"]
    assert make_cache(root=cache.root, sweep=False).sweep().lists == 0    # nothing to do now


LIST_WRITER_SCRIPT = r"""
import asyncio, json, sys, time
from pathlib import Path
from goproxy_router.storage.disk import DiskCache

async def main() -> None:
    root, module, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    cache = DiskCache(root, None, fsync=False)
    time.sleep(max(0.0, start - time.time()))          # both processes begin together
    mine, lost = [], set()
    for v in sys.argv[4:]:
        for ext, body in (("mod", b"module x\n"), ("info", json.dumps({"Version": v}).encode())):
            async with cache.writer(module, v, ext) as w:
                await w.write(body)
                await w.commit(len(body))
        mine.append(v)
        # Once a commit returned, its version stays listed, whatever the other process does.
        lost |= set(mine) - set((root / module / "@v/list").read_text().split())
    await cache.drain()
    cache.close()
    print(json.dumps(sorted(lost)))

asyncio.run(asyncio.wait_for(main(), 60))
"""


def test_concurrent_list_updates_from_two_processes_lose_no_version(tmp_path: Path) -> None:
    root, module = tmp_path / "cache", "example.com/shared"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    start = time.time() + 1.5
    halves = [[f"v1.{i}.0" for i in range(k, 240, 2)] for k in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", LIST_WRITER_SCRIPT, str(root), module,
                               str(start), *half], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for half in halves]
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert json.loads(out) == [], f"versions that went missing from the list: {out!r}"
    cache = DiskCache(root, None, fsync=False)
    try:
        assert listed(cache, module) == [f"v1.{i}.0" for i in range(240)]
        assert temp_files(root) == []
    finally:
        cache.close()


# -- memory tier -----------------------------------------------------------------------

async def test_small_files_are_served_from_memory(make_cache: Callable[..., DiskCache]) -> None:
    m = Module("example.com/a", "v1.0.0", files={"big.bin": os.urandom(80_000)})
    cache = make_cache()
    info = await store(cache, m.path, m.version, "info", m.info)
    mod = await store(cache, m.path, m.version, "mod", m.mod)
    zipped = await store(cache, m.path, m.version, "zip", m.zip)
    assert (info.data, mod.data, zipped.data) == (m.info, m.mod, None)   # zip > 64 KiB

    fresh = make_cache(root=cache.root)      # after a restart: read once, then memory
    first = fresh.get(m.path, m.version, "info")
    assert first is not None and first.data == m.info and fresh.memory_hits == 0
    os.unlink(first.path)                   # proves the next hit never touches the disk
    again = fresh.get(m.path, m.version, "info")
    assert again is not None and again.data == m.info and fresh.memory_hits == 1
    assert again.etag == info.etag
    z = fresh.get(m.path, m.version, "zip")
    assert z is not None and z.data is None and z.path.read_bytes() == m.zip


async def test_memory_tier_is_bounded(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(small_max_bytes=200, small_cache_bytes=250, fsync=False)
    for i in range(3):
        assert (await put_mod(cache, i, 100)).data == bytes([65 + i]) * 100
    assert cache.memory_size == 200                    # m0 dropped from memory, not from disk
    assert (await put_mod(cache, 3, 201)).data is None  # over small_max_bytes
    hit = cache.get("example.com/m0", "v1.0.0", "mod")
    assert hit is not None and hit.data == b"A" * 100 and cache.memory_size <= 250
    assert cache.files == 4


# -- metadata ---------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_metadata_ttl_and_stale_if_error() -> None:
    clock = FakeClock()
    meta: MetadataCache[bytes] = MetadataCache(ttl=60, negative_ttl=10, stale_max_age=3600,
                                               timer=clock)
    key = ("public", "/example.com/a/@v/list")
    assert meta.get_fresh(key) is None and meta.get_stale(key) is None
    meta.put(key, b"v1.0.0\n")
    clock.now += 59
    assert meta.get_fresh(key) == b"v1.0.0\n"
    clock.now += 2
    assert meta.get_fresh(key) is None                  # TTL over
    assert meta.get_stale(key) == (b"v1.0.0\n", 61)     # kept, with its age
    meta.put(key, b"v1.0.0\nv1.1.0\n")
    clock.now += 5
    assert meta.get_fresh(key) == b"v1.0.0\nv1.1.0\n"
    assert meta.get_stale(key) == (b"v1.0.0\nv1.1.0\n", 5)
    clock.now += 3600
    assert meta.get_stale(key) is None                  # beyond stale_max_age


def test_metadata_negative_answers() -> None:
    clock = FakeClock()
    meta: MetadataCache[bytes] = MetadataCache(ttl=60, negative_ttl=10, timer=clock)
    key = ("public", "/example.com/gone/@latest")
    meta.put(key, b'{"Version":"v1.0.0"}')
    meta.put_negative(key, 410, b"gone\n")
    assert meta.get_negative(key) == NegativeAnswer(410, b"gone\n")
    assert meta.get_fresh(key) is None                    # a newer 404/410 wins...
    assert meta.get_stale(key) == (b'{"Version":"v1.0.0"}', 0)   # ...the fallback stays
    clock.now += 9.9
    assert meta.get_negative(key) is not None
    clock.now += 0.2
    assert meta.get_negative(key) is None
    meta.put_negative(key, 404, b"not found\n")
    meta.put(key, b'{"Version":"v1.1.0"}')                # a good answer clears the negative
    assert meta.get_negative(key) is None and meta.get_fresh(key) == b'{"Version":"v1.1.0"}'
    with pytest.raises(ValueError, match="404 and 410"):
        meta.put_negative(key, 500, b"boom\n")
    meta.invalidate(key)
    assert meta.get_fresh(key) is None and meta.get_stale(key) is None


def test_metadata_routes_never_mix_and_stale_count_is_bounded() -> None:
    clock = FakeClock()
    meta: MetadataCache[str] = MetadataCache(ttl=60, stale_maxsize=3, timer=clock)
    path = "/corp.example/x/@v/list"
    meta.put(("private", path), "v1.0.0\nv1.1.0\n")
    assert meta.get_fresh(("public", path)) is None and meta.get_stale(("public", path)) is None
    meta.put_negative(("public", path), 404, b"no\n")
    assert meta.get_negative(("private", path)) is None
    assert meta.get_fresh(("private", path)) == "v1.0.0\nv1.1.0\n"
    for i in range(5):
        meta.put(("public", f"/example.com/m{i}/@v/list"), str(i))
    stale = [meta.get_stale(("public", f"/example.com/m{i}/@v/list")) for i in range(5)]
    assert stale == [None, None, ("2", 0), ("3", 0), ("4", 0)]
    assert len(meta) == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "neg", "tick"]), st.integers(0, 3),
                          st.floats(0, 40)), max_size=30))
def test_metadata_matches_a_model(ops: list[tuple[str, int, float]]) -> None:
    clock = FakeClock()
    meta: MetadataCache[int] = MetadataCache(ttl=30, negative_ttl=5, stale_max_age=100, timer=clock)
    good: dict[int, tuple[float, int]] = {}
    neg: dict[int, float] = {}
    fresh_ok: dict[int, bool] = {}
    for n, (op, k, dt) in enumerate(ops):
        if op == "put":
            meta.put(("r", str(k)), n)
            good[k], fresh_ok[k] = (clock.now, n), True
            neg.pop(k, None)
        elif op == "neg":
            meta.put_negative(("r", str(k)), 404, b"")
            neg[k], fresh_ok[k] = clock.now, False
        else:
            clock.now += dt
        for key in range(4):
            t, v = good.get(key, (None, None))
            # cachetools' expiry test, spelled the same way: alive while now < stored + ttl
            want_fresh = v if t is not None and fresh_ok[key] and clock.now < t + 30 else None
            assert meta.get_fresh(("r", str(key))) == want_fresh
            want_stale = (v, clock.now - t) if t is not None and clock.now < t + 100 else None
            assert meta.get_stale(("r", str(key))) == want_stale
            want_neg = key in neg and clock.now < neg[key] + 5
            assert (meta.get_negative(("r", str(key))) is not None) == want_neg


# -- coalescing -----------------------------------------------------------------------

async def test_coalescer_runs_one_fetch_for_concurrent_callers() -> None:
    co: Coalescer[str, object] = Coalescer()
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> object:
        nonlocal calls
        calls += 1
        await gate.wait()
        return object()

    async with asyncio.timeout(5):
        tasks = [asyncio.create_task(co.run("k", fetch)) for _ in range(100)]
        await asyncio.sleep(0.01)
        assert "k" in co and len(co) == 1
        gate.set()
        results = await asyncio.gather(*tasks)
    assert calls == 1 and len({id(r) for r in results}) == 1
    assert (co.started, co.joined) == (1, 99)
    assert "k" not in co and len(co) == 0           # finished keys are removed
    again = await asyncio.wait_for(co.run("k", fetch), 5)
    assert calls == 2 and again is not results[0]


async def test_coalescer_failure_reaches_every_caller() -> None:
    co: Coalescer[str, int] = Coalescer()
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        if calls == 1:
            raise ConnectionError("every upstream failed")
        return 42

    async with asyncio.timeout(5):
        tasks = [asyncio.create_task(co.run("k", fetch)) for _ in range(100)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert calls == 1 and all(isinstance(r, ConnectionError) for r in results)
        assert len({id(r) for r in results}) == 1
        assert "k" not in co
        assert await co.run("k", fetch) == 42      # the next request tries again
    assert calls == 2


async def test_coalescer_fetch_survives_caller_cancellation() -> None:
    co: Coalescer[str, str] = Coalescer()
    gate = asyncio.Event()
    finished: list[str] = []

    async def fetch() -> str:
        await gate.wait()
        finished.append("cached")         # e.g. the commit to the disk cache
        return "bytes"

    async with asyncio.timeout(5):
        first = asyncio.create_task(co.run("a", fetch))
        await asyncio.sleep(0)
        others = [asyncio.create_task(co.run("a", fetch)) for _ in range(3)]
        await asyncio.sleep(0.01)
        first.cancel()                     # the first client went away
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        assert await asyncio.gather(*others) == ["bytes"] * 3

        # Every caller gone: the fetch still completes, for the cache.
        gate.clear()
        lone = asyncio.create_task(co.run("b", fetch))
        await asyncio.sleep(0.01)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        assert "b" in co
        gate.set()
        while "b" in co:
            await asyncio.sleep(0.001)
    assert finished == ["cached", "cached"]


async def test_coalescer_keys_are_independent_and_close_cancels() -> None:
    co: Coalescer[tuple[str, str], str] = Coalescer()
    gate = asyncio.Event()
    calls: list[str] = []

    async def fetch(name: str) -> str:
        calls.append(name)
        await gate.wait()
        return name

    async with asyncio.timeout(5):
        a = asyncio.create_task(co.run(("public", "/x"), lambda: fetch("a")))
        b = asyncio.create_task(co.run(("private", "/x"), lambda: fetch("b")))
        await asyncio.sleep(0.01)
        assert sorted(calls) == ["a", "b"] and len(co) == 2
        gate.set()
        assert await asyncio.gather(a, b) == ["a", "b"]

        gate.clear()
        stuck = asyncio.create_task(co.run(("public", "/y"), lambda: fetch("c")))
        await asyncio.sleep(0.01)
        await co.close()
        with pytest.raises(asyncio.CancelledError):
            await stuck
    assert len(co) == 0


# -- misc -----------------------------------------------------------------------------

def test_zip_fixture_sanity() -> None:
    """The integrity check reads zips like the go command writes them."""
    m = Module("example.com/Upper/x", "v1.0.0")
    with zipfile.ZipFile(io.BytesIO(m.zip)) as zf:
        assert all(n.startswith("example.com/Upper/x@v1.0.0/") for n in zf.namelist())
