"""Single-flight: concurrent requests for one key share one fetch.

``Coalescer.run(key, fetch)`` runs ``fetch`` once for all concurrent callers
with the key; the fetch is its own task, shielded from any single caller's
cancellation, and the key is free again the moment it ends. Event-loop
thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from goproxy_router.storage.tasks import retrieve

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Coalescer(Generic[K, T]):
    """Single-flight: one ``fetch`` per key at a time, its outcome shared.

    The first ``run(key, fetch)`` starts ``fetch()`` as its own task; calls
    with the same key while it runs await that same task and get the same
    value or exception. The task is shielded: a caller that is cancelled (its
    client went away) leaves, and the fetch goes on for the others and for
    the cache. The key is removed the moment the fetch finishes, so the next
    call (e.g. after a failure) fetches anew. Counters: ``started``, ``joined``.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[T]] = {}
        self.started = 0
        self.joined = 0

    async def run(self, key: K, fetch: Callable[[], Awaitable[T]]) -> T:
        """``await fetch()`` once for all concurrent callers with this key."""
        task = self._inflight.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self._fetch(key, fetch))
            task.add_done_callback(retrieve)
            self._inflight[key] = task
            self.started += 1
        else:
            self.joined += 1
        return await asyncio.shield(task)

    async def _fetch(self, key: K, fetch: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fetch()
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]

    def __contains__(self, key: object) -> bool:
        return key in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    async def close(self) -> None:
        """Cancel every fetch in flight (shutdown) and wait for them to end."""
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

