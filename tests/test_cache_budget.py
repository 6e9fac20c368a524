"""goproxy_router.storage.budget.WriteBudget: the bound on bytes all cache writers hold in memory.

The budget on its own (waits when exhausted, first come first served, an
oversize chunk proceeds alone, cancellation leaves nothing held), then with
real CacheWriters on a DiskCache (released on commit, abort, cancellation
and disk errors; an idle writer's buffered bytes are flushed when someone
waits; many writers on a tiny budget never deadlock). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from goproxy_router.storage import fileops
from goproxy_router.storage.budget import WriteBudget
from goproxy_router.storage.disk import DiskCache
from goproxy_router.storage.errors import CacheError

KiB = 1 << 10
MiB = 1 << 20
BOUND = 10.0          # seconds any single wait in these tests may take




async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


# -- the budget alone ---------------------------------------------------------------------

async def test_acquire_waits_when_exhausted_and_proceeds_on_release() -> None:
    budget = WriteBudget(100)
    assert budget.try_acquire(60) and budget.try_acquire(40)
    assert not budget.try_acquire(1)
    waiter = asyncio.create_task(budget.acquire(30))
    await settle()
    assert not waiter.done() and budget.pressed and budget.waits == 1
    budget.release(20)                       # 80 held: 30 more do not fit yet
    await settle()
    assert not waiter.done()
    budget.release(40)                       # 40 held: fits
    await asyncio.wait_for(waiter, BOUND)
    assert budget.used == 70 and not budget.pressed and budget.peak == 100


async def test_waiters_are_served_in_order_and_newcomers_queue_behind_them() -> None:
    budget = WriteBudget(100)
    assert budget.try_acquire(100)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        order.append(name)

    big = asyncio.create_task(take("big", 90))
    await settle()
    small = asyncio.create_task(take("small", 5))
    await settle()
    assert not budget.try_acquire(1)          # would jump the queue
    budget.release(50)                         # 50 held: the small one would fit, the big one not
    await settle()
    assert order == []                         # the small one does not overtake the big one
    budget.release(50)
    await asyncio.wait_for(asyncio.gather(big, small), BOUND)
    assert order == ["big", "small"] and budget.used == 95


async def test_a_chunk_larger_than_the_budget_proceeds_alone() -> None:
    budget = WriteBudget(100)
    await asyncio.wait_for(budget.acquire(1000), BOUND)     # nothing held: it goes
    assert budget.used == 1000
    budget.release(1000)
    assert budget.try_acquire(10)
    waiter = asyncio.create_task(budget.acquire(1000))
    await settle()
    assert not waiter.done()                                  # not while anything else is held
    budget.release(10)
    await asyncio.wait_for(waiter, BOUND)
    assert budget.used == 1000


async def test_a_cancelled_waiter_holds_nothing_and_unblocks_those_behind() -> None:
    budget = WriteBudget(100)
    assert budget.try_acquire(50)
    big = asyncio.create_task(budget.acquire(80))
    await settle()
    small = asyncio.create_task(budget.acquire(40))
    await settle()
    assert not small.done()                    # queued behind the big one
    big.cancel()
    await asyncio.wait_for(small, BOUND)       # the big one left: the small one fits now
    with pytest.raises(asyncio.CancelledError):
        await big
    assert budget.used == 90 and not budget.pressed


async def test_granted_while_being_cancelled_gives_the_bytes_back() -> None:
    budget = WriteBudget(100)
    assert budget.try_acquire(100)
    waiter = asyncio.create_task(budget.acquire(30))
    await settle()
    budget.release(100)                        # grants the waiter...
    waiter.cancel()                            # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, BOUND)
    assert budget.used == 0


async def test_pressure_asks_holders_to_flush() -> None:
    budget = WriteBudget(100)
    assert budget.try_acquire(100)
    flushed: list[str] = []
    budget.hold("a", lambda: flushed.append("a"))
    budget.hold("b", lambda: flushed.append("b"))
    budget.drop("b")
    waiter = asyncio.create_task(budget.acquire(1))
    await settle()
    assert flushed == ["a"]
    budget.release(100)
    await asyncio.wait_for(waiter, BOUND)


def test_unbounded_and_invalid_budgets() -> None:
    budget = WriteBudget(None)
    assert budget.try_acquire(1 << 40) and budget.try_acquire(1 << 40)
    with pytest.raises(ValueError):
        WriteBudget(0)


# -- with cache writers ----------------------------------------------------------------------

class GatedWrites:
    """Makes the cache's thread writes wait for ``open()``; counts them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.calls = 0
        real = fileops.write_all

        def gated(fd: int, chunks: Any) -> None:
            self.calls += 1
            if not self.gate.wait(BOUND):
                raise OSError(5, "test gate never opened")
            real(fd, chunks)

        monkeypatch.setattr(fileops, "write_all", gated)

    def open(self) -> None:
        self.gate.set()


async def test_a_writer_waits_while_the_budget_is_on_its_way_to_disk(
        make_cache: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=1 * MiB, write_buffer_bytes=1 * MiB)
    gate = GatedWrites(monkeypatch)
    a = cache.writer("example.com/a", "v1.0.0", "mod")
    b = cache.writer("example.com/b", "v1.0.0", "mod")
    for _ in range(4):                          # 1 MiB, handed to a (gated) thread write
        await asyncio.wait_for(a.write(b"a" * (256 * KiB)), BOUND)
    assert cache.write_budget.used == 1 * MiB
    blocked = asyncio.create_task(b.write(b"b" * KiB))
    await asyncio.sleep(0.05)
    assert not blocked.done()                   # back-pressure: the write does not return
    gate.open()
    await asyncio.wait_for(blocked, BOUND)
    entry_a = await asyncio.wait_for(a.commit(1 * MiB), BOUND)
    entry_b = await asyncio.wait_for(b.commit(KiB), BOUND)
    assert entry_a.path.read_bytes() == b"a" * MiB and entry_b.path.read_bytes() == b"b" * KiB
    assert cache.write_budget.used == 0 and cache.write_budget.waits >= 1


async def test_an_idle_writers_buffer_is_flushed_when_another_waits(
        make_cache: Callable[..., DiskCache]) -> None:
    # A (say, with a stalled client) holds 600 KB below its batch size and does
    # nothing more; B must still get through: pressure sends A's bytes to disk.
    cache = make_cache(fsync=False, write_budget_bytes=1 * MiB, write_buffer_bytes=4 * MiB)
    a = cache.writer("example.com/a", "v1.0.0", "mod")
    b = cache.writer("example.com/b", "v1.0.0", "mod")
    await asyncio.wait_for(a.write(b"a" * 600_000), BOUND)
    assert cache.write_budget.used == 600_000
    await asyncio.wait_for(b.write(b"b" * 600_000), BOUND)
    await asyncio.wait_for(b.write(b"b" * 600_000), BOUND)
    await asyncio.wait_for(b.commit(1_200_000), BOUND)
    entry = await asyncio.wait_for(a.commit(600_000), BOUND)
    assert entry.path.read_bytes() == b"a" * 600_000
    assert cache.write_budget.used == 0


async def test_commit_and_abort_give_the_budget_back(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=8 * MiB)
    budget = cache.write_budget
    w = cache.writer("example.com/a", "v1.0.0", "mod")
    for _ in range(10):
        await w.write(b"x" * 300_000)
    assert budget.used > 0
    await asyncio.wait_for(w.commit(3_000_000), BOUND)
    assert budget.used == 0
    w = cache.writer("example.com/b", "v1.0.0", "mod")
    for _ in range(10):
        await w.write(b"x" * 300_000)
    w.abort()
    await asyncio.wait_for(cache.drain(), BOUND)
    async with asyncio.timeout(BOUND):
        while budget.used:                       # the last batch's thread write may still run
            await asyncio.sleep(0.005)
    assert temp_files(cache.root) == []


async def test_a_writer_cancelled_while_waiting_gives_everything_back(
        make_cache: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=512 * KiB, write_buffer_bytes=128 * KiB)
    gate = GatedWrites(monkeypatch)
    a = cache.writer("example.com/a", "v1.0.0", "mod")
    b = cache.writer("example.com/b", "v1.0.0", "mod")
    await a.write(b"a" * (512 * KiB))            # in flight, gated: the budget is spent
    waiting = asyncio.create_task(b.write(b"b" * (64 * KiB)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, BOUND)
    assert b.state == "aborted"                  # a gap would corrupt it
    a.abort()
    gate.open()
    await asyncio.wait_for(cache.drain(), BOUND)
    async with asyncio.timeout(BOUND):
        while cache.write_budget.used:
            await asyncio.sleep(0.005)
    assert not cache.write_budget.pressed and temp_files(cache.root) == []


async def test_a_disk_error_gives_the_budget_back(
        make_cache: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=4 * MiB, write_buffer_bytes=256 * KiB)

    def full(fd: int, chunks: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileops, "write_all", full)
    with pytest.raises(CacheError, match="No space left"):
        async with cache.writer("example.com/a", "v1.0.0", "mod") as w:
            for _ in range(20):
                await asyncio.wait_for(w.write(b"e" * (128 * KiB)), BOUND)
            await asyncio.wait_for(w.commit(), BOUND)
    await asyncio.wait_for(cache.drain(), BOUND)
    async with asyncio.timeout(BOUND):
        while cache.write_budget.used:
            await asyncio.sleep(0.005)
    assert temp_files(cache.root) == []


async def test_an_oversize_chunk_is_written_alone(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=64 * KiB)
    body = os.urandom(3 * MiB)
    w = cache.writer("example.com/a", "v1.0.0", "mod")
    await asyncio.wait_for(w.write(body), BOUND)
    entry = await asyncio.wait_for(w.commit(len(body)), BOUND)
    assert entry.path.read_bytes() == body and cache.write_budget.used == 0


async def test_many_writers_on_a_tiny_budget_all_finish(make_cache: Callable[..., DiskCache]) -> None:
    cache = make_cache(fsync=False, write_budget_bytes=256 * KiB, write_buffer_bytes=128 * KiB, io_threads=2)
    rng = random.Random(5)
    bodies = {f"example.com/m{i}": rng.randbytes(rng.randrange(1, 2 * MiB)) for i in range(40)}

    async def fill(module: str, body: bytes) -> None:
        chunk_rng = random.Random(module)
        async with cache.writer(module, "v1.0.0", "mod") as w:
            pos = 0
            while pos < len(body):
                n = chunk_rng.randrange(1, 300 * KiB)      # some chunks exceed the whole budget
                await w.write(body[pos:pos + n])
                pos += n
                if chunk_rng.random() < 0.2:
                    await asyncio.sleep(0.001)             # an upstream pausing now and then
            await w.commit(len(body))

    await asyncio.wait_for(asyncio.gather(*(fill(m, b) for m, b in bodies.items())), 60)
    for module, body in bodies.items():
        entry = cache.get(module, "v1.0.0", "mod")
        assert entry is not None and entry.path.read_bytes() == body
    budget = cache.write_budget
    assert budget.used == 0 and not budget.pressed and budget.waits > 0
    assert budget.peak <= 300 * KiB               # the limit, or one oversize chunk alone


def test_write_all_handles_partial_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def stingy(fd: int, buffers: Any) -> int:
        first = next(bytes(b) for b in buffers)
        return real_writev(fd, [first[:3]])

    monkeypatch.setattr(os, "writev", stingy)
    chunks = [b"hello ", b"", b"wonderful ", memoryview(b"world")]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        fileops.write_all(fd, chunks)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hello wonderful world"
