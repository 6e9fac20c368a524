"""Answers that change over time, kept briefly in memory: list, @latest, non-canonical .info.

``MetadataCache`` keys them by (route, upstream path), so one route's answer
is never served to another; fresh answers live for a short TTL, negative
answers (404/410, ``NegativeAnswer``) for a shorter one, and the last good
answer beyond its TTL (stale-if-error). No I/O; event-loop thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

from cachetools import TTLCache

__all__ = ["MetadataCache", "NegativeAnswer"]

V = TypeVar("V")


class NegativeAnswer(NamedTuple):
    """A cached "not here" answer (404 or 410) with its body."""

    status: int
    body: bytes


class MetadataCache(Generic[V]):
    """list / @latest / non-canonical .info answers, negative answers, and stale copies.

    Keys are ``(route name, upstream path)``: the route is part of the key, so
    a private route's answer can never be served on a public one. Three
    stores (cachetools TTLCaches on one injectable ``timer``):

    - fresh: the value for ``ttl`` seconds (``get_fresh``);
    - stale: the last good value for up to ``stale_max_age`` seconds, at most
      ``stale_maxsize`` keys (default ``maxsize``), returned with its age by
      ``get_stale`` for stale-if-error when every upstream fails;
    - negative: 404/410 answers for ``negative_ttl`` seconds.

    ``put`` clears a negative answer for the key; ``put_negative`` ends the
    fresh value but keeps the stale copy (a transient 404 from one upstream
    should not destroy the fallback).
    """

    def __init__(self, ttl: float = 60.0, negative_ttl: float = 10.0,
                 stale_max_age: float = 86400.0, maxsize: int = 10000, *,
                 stale_maxsize: int | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_max_age = stale_max_age
        self._timer = timer
        self._fresh: TTLCache[Hashable, V] = TTLCache(maxsize, ttl, timer=timer)
        self._stale: TTLCache[Hashable, tuple[float, V]] = TTLCache(
            stale_maxsize if stale_maxsize is not None else maxsize, stale_max_age, timer=timer)
        self._negative: TTLCache[Hashable, NegativeAnswer] = TTLCache(
            maxsize, negative_ttl, timer=timer)

    def get_fresh(self, key: Hashable) -> V | None:
        """The value if stored less than ``ttl`` seconds ago, else None."""
        return self._fresh.get(key)

    def get_stale(self, key: Hashable) -> tuple[V, float] | None:
        """``(last good value, age in seconds)`` within ``stale_max_age``, else None."""
        hit = self._stale.get(key)
        if hit is None:
            return None
        stored_at, value = hit
        return value, max(0.0, self._timer() - stored_at)

    def put(self, key: Hashable, value: V) -> None:
        """Store a good answer: fresh for ``ttl``, stale fallback for ``stale_max_age``."""
        self._fresh[key] = value
        self._stale[key] = (self._timer(), value)
        self._negative.pop(key, None)

    def put_negative(self, key: Hashable, status: int, body: bytes) -> None:
        """Store a 404/410 answer for ``negative_ttl`` seconds."""
        if status not in (404, 410):
            raise ValueError(f"only 404 and 410 are cached as negative answers, not {status}")
        self._negative[key] = NegativeAnswer(status, body)
        self._fresh.pop(key, None)

    def get_negative(self, key: Hashable) -> NegativeAnswer | None:
        """The cached 404/410 answer, if younger than ``negative_ttl``."""
        return self._negative.get(key)

    def invalidate(self, key: Hashable) -> None:
        """Forget everything about ``key``."""
        self._fresh.pop(key, None)
        self._stale.pop(key, None)
        self._negative.pop(key, None)

    def __len__(self) -> int:
        """Keys with a fresh value."""
        self._fresh.expire()
        return len(self._fresh)

