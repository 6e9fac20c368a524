"""The retry budget: extra upstream requests are a share of real ones, plus a floor.

Retries and hedges make one failing upstream invisible; during a global
outage they would multiply the load on every upstream instead. The budget
(as in Finagle) allows, over a sliding window, at most
`ratio x requests + floor x window seconds` extra requests; past that a
request gets its error instead of another try.
"""

from __future__ import annotations

import time
from collections import deque


class RetryBudget:
    """Retries allowed: `ratio` of the requests seen in the last `window` seconds,
    plus a floor of `floor` per second (a token bucket holding one second's worth),
    so a quiet edge can still retry and over any period T the extra requests
    stay within ratio x requests + floor x (T + 1 s).
    """

    __slots__ = ("ratio", "floor", "window", "_requests", "_spent", "_tokens", "_refilled",
                 "spent", "refused")

    def __init__(self, ratio: float = 0.2, floor: float = 10.0, window: float = 10.0) -> None:
        self.ratio = ratio
        self.floor = floor
        self.window = window
        self._requests: deque[float] = deque()
        self._spent: deque[float] = deque()     # retries paid for by the ratio share
        self._tokens = floor
        self._refilled = time.monotonic()
        self.spent = 0          # totals, for metrics
        self.refused = 0

    def configure(self, ratio: float, floor: float, window: float) -> None:
        """New terms from a reloaded routes.yaml; what was recorded and spent stays."""
        self.ratio, self.floor, self.window = ratio, floor, window
        self._tokens = min(self._tokens, floor)

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        for stamps in (self._requests, self._spent):
            while stamps and stamps[0] < horizon:
                stamps.popleft()

    def record_request(self, now: float | None = None) -> None:
        """A client request that may need upstream attempts.

        Trimmed here too, not only when a retry is asked for: with healthy
        upstreams nothing is ever spent, and the window must still slide.
        """
        now = time.monotonic() if now is None else now
        self._requests.append(now)
        horizon = now - self.window
        requests = self._requests
        while requests[0] < horizon:
            requests.popleft()

    def try_spend(self, now: float | None = None) -> bool:
        """Take one retry or hedge from the budget; False (and counted) if none is left."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._spent) + 1 <= self.ratio * len(self._requests):
            self._spent.append(now)
            self.spent += 1
            return True
        self._tokens = min(self.floor, self._tokens + (now - self._refilled) * self.floor)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False
