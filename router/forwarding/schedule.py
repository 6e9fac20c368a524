"""The attempt schedule: who is asked next, when a hedge is due, how long to back off.

One `AttemptSchedule` per request holds the policy's state (the ranked
order, tries per upstream, those that said "not here", the attempts running,
the failures so far, whether it hedged) and answers the questions of the
fetch loop in router/forwarding/forwarder.py. It sends nothing and reads no clock of its
own: time, sleep and randomness are injected (time.monotonic, asyncio.sleep
and random by default), so the policy is tested on fake time
(tests/test_schedule.py). Sending, reading and judging an answer is the
attempt's job (`Forwarder._attempt`), not this module's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from goproxy_router.config.schema import Hedge, Retry
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.upstream.hedging import HedgeDelay, hedge_delay
from goproxy_router.upstream.stats import UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, eq=False)
class Run:
    """One attempt in flight: its upstream and when it was sent (on the schedule's clock)."""

    target: UpstreamTarget
    started: float


@dataclass(frozen=True, slots=True)
class HedgeOrder:
    """The hedge to send: to `target`, because `hedged` (running) went unanswered for `delay`."""

    target: UpstreamTarget
    hedged: UpstreamTarget
    delay: HedgeDelay


def full_jitter(rng: random.Random, retry: Retry, failures: int) -> float:
    """Seconds to wait before the retry after `failures` failures (>= 1):
    uniform in [0, min(cap, base x 2^(failures-1))]."""
    return rng.uniform(0, min(retry.backoff_cap, retry.backoff_base * 2 ** (failures - 1)))


class AttemptSchedule:
    """The attempt policy of one request, as state and answers; the caller sends.

    - next target: least tried first, then in ranked order (so failures cycle
      the ranking), up to `retry.max_attempts` tries; "not here" answers are
      lookups, not tries, and that upstream is never asked again; one sitting
      out a 429 is waited for only when no other is left and its Retry-After
      ends within the deadline;
    - back off: a retry spends from the shared budget, then waits a full-jitter
      pause, unless that pause would reach the deadline;
    - hedge at: with exactly one attempt running and another upstream to ask,
      a hedge delay after it was sent: the running upstream's percentile
      (`hedge.percentile`) of its own samples, else of the route's others',
      else of its probes, else `hedge.cold_delay` (router/upstream/hedging.py;
      zips by their own samples and floors); at most one hedge per request,
      paid from the budget, never to an upstream with `hedge.max_in_flight`
      requests in flight. A zip hedges only until its headers arrive: the
      attempt returns at the headers, so the first headers win.

    Decisions that end the request early are written to `notes` (the plan's),
    in the words the client sees.
    """

    __slots__ = ("order", "retry", "hedge_policy", "hedging", "budget", "deadline_seconds",
                 "deadline_at", "notes", "tries", "not_here", "running", "failures", "hedged",
                 "for_zip", "_stats", "_clock", "_sleep", "_rng")

    def __init__(self, targets: Sequence[UpstreamTarget], retry: Retry, hedge: Hedge,
                 budget: RetryBudget, *, kind: str, started: float, deadline: float,
                 stats: Callable[[UpstreamTarget], UpstreamStats],
                 notes: list[str] | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, rng: random.Random | None = None) -> None:
        self.order = list(targets)
        self.retry = retry
        self.hedge_policy = hedge
        self.hedging = hedge.enabled and kind in hedge.kinds
        self.budget = budget
        self.deadline_seconds = deadline
        self.deadline_at = started + deadline
        self.notes = notes if notes is not None else []
        self.tries = {t.name: 0 for t in self.order}
        self.not_here: set[str] = set()   # said 404/410, or sent a doubtful answer: never asked again
        self.running: list[Run] = []
        self.failures = 0
        self.hedged = False
        self.for_zip = kind == "zip"
        self._stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    # -- state ----------------------------------------------------------------

    def launch(self, target: UpstreamTarget) -> Run:
        """`target` is being asked now (a first try, a retry or the hedge)."""
        self.tries[target.name] += 1
        run = Run(target, self._clock())
        self.running.append(run)
        return run

    def answered(self, run: Run) -> None:
        """`run` brought a good answer."""
        self.running.remove(run)

    def said_not_here(self, run: Run) -> None:
        """404/410, or a doubtful answer: ask the others, never this one again, at no cost."""
        self.running.remove(run)
        self.not_here.add(run.target.name)

    def failed(self, run: Run) -> None:
        """Anything else: the next attempt is a retry."""
        self.running.remove(run)
        self.failures += 1

    # -- answers ---------------------------------------------------------------

    def deadline_left(self) -> float:
        """Seconds until the request's deadline (<= 0: it passed)."""
        return self.deadline_at - self._clock()

    def exhausted(self) -> bool:
        """`retry.max_attempts` tries were made ("not here" answers are not tries)."""
        return sum(self.tries.values()) - len(self.not_here) >= self.retry.max_attempts

    def candidates(self) -> list[UpstreamTarget]:
        """Upstreams that may be asked next: least tried first, then in ranked order."""
        busy = {run.target.name for run in self.running}
        eligible = [t for t in self.order if t.name not in self.not_here and t.name not in busy]
        return sorted(eligible, key=lambda t: self.tries[t.name])   # stable: keeps the ranking

    def next_target(self) -> tuple[UpstreamTarget, float] | None:
        """The next upstream to ask and the seconds to wait before asking it: 0, or
        until its 429 sit-out ends if every candidate is sitting one out.
        None when the tries are used up, nobody is left, or the only ones left
        sit out past the deadline."""
        if self.exhausted():
            return None
        candidates = self.candidates()
        if not candidates:
            return None
        now = self._clock()
        for target in candidates:
            if self._stats(target).not_before <= now:
                return target, 0.0
        target = min(candidates, key=lambda t: self._stats(t).not_before)
        resume = self._stats(target).not_before
        if resume >= self.deadline_at:
            self.notes.append(f"{target.name} asked to wait until after the deadline "
                              "(429 Retry-After)")
            return None
        return target, resume - now

    async def wait_for_target(self) -> UpstreamTarget | None:
        """`next_target`, after sleeping out its 429 sit-out if it must."""
        chosen = self.next_target()
        if chosen is None:
            return None
        target, wait = chosen
        if wait > 0:
            await self._sleep(wait)
        return target

    def back_off_for(self) -> float:
        """The full-jitter pause before the retry that follows `failures` failures."""
        return full_jitter(self._rng, self.retry, self.failures)

    def may_spend(self, what: str) -> bool:
        """Take one retry or hedge from the shared budget; noted when refused."""
        if self.budget.try_spend(self._clock()):
            return True
        # The shared budget's own terms: the top-level retry settings, as last loaded.
        self.notes.append(f"retry budget exhausted: no {what} (at most "
                          f"{self.budget.ratio:.0%} of requests + "
                          f"{self.budget.floor:g}/s may be retried or hedged)")
        return False

    async def back_off(self) -> bool:
        """Before a retry: spend from the budget, then sleep a full-jitter pause. False
        (nothing slept) when the budget refuses or the pause would reach the deadline."""
        if not self.may_spend("retry"):
            return False
        pause = self.back_off_for()
        if self._clock() + pause >= self.deadline_at:
            self.notes.append(f"deadline of {self.deadline_seconds:g}s exceeded before a retry")
            return False
        if pause > 0:
            await self._sleep(pause)
        return True

    def hedge_delay(self) -> HedgeDelay | None:
        """The hedge delay of the one attempt running, and what set it; None when this
        request must not hedge (now or yet): hedged already, off for this kind, not
        exactly one attempt running, or nobody else to ask."""
        if (self.hedged or not self.hedging or len(self.running) != 1
                or not self.candidates()):
            return None
        running = self.running[0].target
        others = (self._stats(t) for t in self.order if t.name != running.name)
        return hedge_delay(self.hedge_policy, self._stats(running), others, for_zip=self.for_zip)

    def hedge_at(self) -> float | None:
        """When (on the clock) a hedge is due, or None when this request must not hedge."""
        delay = self.hedge_delay()
        if delay is None:
            return None
        return self.running[0].started + delay.seconds

    def wait(self) -> float:
        """Seconds to wait for the running attempts: up to the deadline, or a due hedge."""
        wait = self.deadline_at - self._clock()
        hedge_at = self.hedge_at()
        if hedge_at is not None:
            wait = min(wait, hedge_at - self._clock())
        return max(wait, 0.0)

    def hedge(self) -> HedgeOrder | None:
        """The wait ended with nothing done before the deadline: the one hedge of this
        request goes to the next candidate below the in-flight cap, if one is due, there
        is such a candidate and the budget pays. A wait that ended before the hedge was
        due (event-loop timers may fire a millisecond early), or with no hedge to make at
        all (hedging off), sends nothing: the caller waits again."""
        delay = self.hedge_delay()
        if delay is None or self._clock() < self.running[0].started + delay.seconds:
            return None
        self.hedged = True
        hedged = self.running[0].target
        cap = self.hedge_policy.max_in_flight
        candidates = self.candidates()
        free = [t for t in candidates if self._stats(t).in_flight < cap]
        if not free:
            self.notes.append(f"no hedge: {', '.join(t.name for t in candidates)} at the "
                              f"in-flight cap of {cap} (hedge.max_in_flight)")
            return None
        if self.may_spend("hedge"):
            return HedgeOrder(free[0], hedged, delay)
        return None
