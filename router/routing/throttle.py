"""The failed-authentication throttle: wrong tokens cost a client address time.

Without it a client could try about 1,900 tokens a second on one connection
against a route's `allow` tokens or the admin token. Each client address
gets a token bucket of failures: `burst` wrong credentials at once, then
`rate` a second. While its bucket is empty, every request of that address
that presents credentials is answered 429 with Retry-After, before the
credentials are looked at: otherwise a right guess would still be told from
a wrong one at full speed. Right credentials cost nothing, and neither does
a request without any, or from an address a network already lets in.

The table is bounded (an attacker with many addresses evicts the oldest
entries rather than growing memory) and forgets a client once its bucket
would be full again. IPv6 clients are counted per /64, the block one
subscriber usually holds, so a new address in it is not a fresh budget.
Per process: with several workers, each counts alone.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable

from cachetools import TTLCache

from goproxy_router.routing.geo import IPAddress

SURFACES = ("route", "admin")   # where credentials are checked: metrics label values
_Key = IPAddress | ipaddress.IPv6Network | None


class AuthThrottle:
    """Per-client token buckets of failed authentications, with an injectable clock."""

    def __init__(self, burst: int = 10, rate: float = 1.0, max_clients: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        # key -> [tokens left, when counted]; gone once a full refill has passed
        self._buckets: TTLCache[_Key, list[float]] = TTLCache(
            max_clients, ttl=burst / rate, timer=clock)
        self.failures: Counter[str] = Counter()    # by surface, for metrics
        self.throttled: Counter[str] = Counter()

    def wait(self, client: IPAddress | None, surface: str) -> float:
        """Seconds before `client` may present credentials again; 0 when it may now.

        A positive answer is a refusal, counted under `surface`.
        """
        bucket = self._buckets.get(_key(client))
        if bucket is None:
            return 0.0
        tokens = self._refilled(bucket)
        if tokens >= 1.0:
            return 0.0
        self.throttled[surface] += 1
        return (1.0 - tokens) / self.rate

    def failed(self, client: IPAddress | None, surface: str) -> None:
        """`client` presented credentials that were not accepted."""
        self.failures[surface] += 1
        key = _key(client)
        bucket = self._buckets.get(key)
        tokens = float(self.burst) if bucket is None else self._refilled(bucket)
        self._buckets[key] = [max(tokens - 1.0, 0.0), self._clock()]   # re-set: ttl restarts

    def _refilled(self, bucket: list[float]) -> float:
        tokens, since = bucket
        return min(float(self.burst), tokens + (self._clock() - since) * self.rate)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(math.ceil(seconds), 1))


def _key(client: IPAddress | None) -> _Key:
    if isinstance(client, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((int(client) >> 64 << 64, 64))
    return client
