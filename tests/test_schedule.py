"""The attempt schedule alone, on fake time: retry order, backoff, hedge, deadline,
budget and the 429 sit-out, without a server or a wall clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from goproxy_router.config.schema import Hedge, Retry
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.schedule import AttemptSchedule, full_jitter
from goproxy_router.upstream.hedging import HedgeDelay
from goproxy_router.upstream.stats import StatsSettings, UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

START = 1000.0


class FakeTime:
    """A clock that moves only when the schedule sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Highest(random.Random):
    """Dice that always roll the top of the range: the backoff's bound itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _targets(*names: str) -> list[UpstreamTarget]:
    return [UpstreamTarget(name, f"http://127.0.0.1:9/{name}") for name in names]


def _budget(spends: int) -> RetryBudget:
    """A budget that allows exactly `spends` retries or hedges (its floor is 0)."""
    budget = RetryBudget(ratio=float(spends), floor=0.0)
    budget.record_request(now=START)
    return budget


def _schedule(clock: FakeTime, names: tuple[str, ...] = ("a", "b", "c"), *,
              retry: Retry | None = None, hedge: Hedge | None = None,
              budget: RetryBudget | None = None, kind: str = "info", deadline: float = 10.0,
              rng: random.Random | None = None, notes: list[str] | None = None,
              ) -> tuple[AttemptSchedule, dict[str, UpstreamStats]]:
    stats = {name: UpstreamStats(name, "http://127.0.0.1:9", StatsSettings()) for name in names}
    schedule = AttemptSchedule(_targets(*names), retry or Retry(), hedge or Hedge(),
                               budget or _budget(10), kind=kind, started=clock.now,
                               deadline=deadline, stats=lambda t: stats[t.name], notes=notes,
                               clock=clock, sleep=clock.sleep, rng=rng or random.Random(7))
    return schedule, stats


def _warm(stats: UpstreamStats, latency: float, samples: int = 20) -> None:
    for _ in range(samples):
        stats.record_latency(latency, now=START)


def _asked(schedule: AttemptSchedule) -> list[str]:
    """Ask next targets until the schedule says stop, each one failing (at most 20)."""
    by_name = {t.name: t for t in schedule.order}
    asked = []
    for _ in range(20):
        name = _next(schedule)
        if name is None:
            break
        asked.append(name)
        schedule.failed(schedule.launch(by_name[name]))
    return asked


def _next(schedule: AttemptSchedule) -> str | None:
    chosen = schedule.next_target()
    if chosen is None:
        return None
    target, wait = chosen
    assert wait == 0.0
    return target.name


def test_retries_cycle_the_ranking_up_to_max_attempts() -> None:
    schedule, _ = _schedule(FakeTime(), retry=Retry(max_attempts=5))
    assert _asked(schedule) == ["a", "b", "c", "a", "b"]
    assert schedule.failures == 5 and schedule.exhausted()


def test_not_here_is_asked_once_and_costs_no_try() -> None:
    schedule, _ = _schedule(FakeTime(), retry=Retry(max_attempts=3))
    by_name = {t.name: t for t in schedule.order}
    schedule.said_not_here(schedule.launch(by_name["a"]))
    assert _asked(schedule) == ["b", "c", "b"]          # a is never asked again; 3 tries besides its lookup
    schedule, _ = _schedule(FakeTime(), ("a", "b"))
    for target in schedule.order:
        schedule.said_not_here(schedule.launch(target))
    assert schedule.next_target() is None    # everyone said not here: nobody left to ask


def test_backoff_is_full_jitter_within_min_of_cap_and_doubling_base() -> None:
    retry = Retry(backoff_base=0.02, backoff_cap=1.0)
    rng = random.Random(3)
    for n in range(12):
        bound = min(retry.backoff_cap, retry.backoff_base * 2 ** n)
        pauses = [full_jitter(rng, retry, n + 1) for _ in range(200)]
        assert all(0 <= pause <= bound for pause in pauses), (n, max(pauses), bound)
        assert max(pauses) > bound / 2        # jitter spans the range, not a fixed delay
        assert full_jitter(Highest(), retry, n + 1) == bound


async def test_back_off_spends_then_sleeps_the_pause_on_the_injected_sleep() -> None:
    clock = FakeTime()
    budget = _budget(10)
    schedule, _ = _schedule(clock, rng=Highest(), budget=budget)
    schedule.failed(schedule.launch(schedule.order[0]))
    schedule.failed(schedule.launch(schedule.order[1]))
    assert schedule.back_off_for() == 0.04   # two failures: base x 2
    assert await schedule.back_off()
    assert clock.slept == [0.04] and clock.now == START + 0.04
    assert budget.spent == 1


async def test_429_sit_out_is_skipped_until_retry_after() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock, ("a", "b"))
    stats["a"].sit_out(START + 5.0)
    assert _next(schedule) == "b"              # a sits out: the next one is asked at once
    schedule.failed(schedule.launch(schedule.order[1]))
    schedule.failed(schedule.launch(schedule.order[1]))   # b tried twice, a never
    chosen = schedule.next_target()
    assert chosen is not None and chosen[0].name == "b"   # still skipped though least tried
    schedule.said_not_here(schedule.launch(schedule.order[1]))
    chosen = schedule.next_target()            # only a is left: waited for
    assert chosen is not None and (chosen[0].name, chosen[1]) == ("a", 5.0)
    target = await schedule.wait_for_target()
    assert target is not None and target.name == "a"
    assert clock.slept == [5.0]
    assert _next(schedule) == "a"              # the sit-out is over


async def test_429_sit_out_past_the_deadline_is_not_waited_for() -> None:
    clock = FakeTime()
    notes: list[str] = []
    schedule, stats = _schedule(clock, ("a",), deadline=3.0, notes=notes)
    stats["a"].sit_out(START + 5.0)
    assert await schedule.wait_for_target() is None
    assert clock.slept == []
    assert notes == ["a asked to wait until after the deadline (429 Retry-After)"]


async def test_no_retry_whose_backoff_reaches_the_deadline() -> None:
    clock = FakeTime()
    notes: list[str] = []
    schedule, _ = _schedule(clock, deadline=2.0, rng=Highest(), notes=notes,
                            retry=Retry(backoff_base=1.0, backoff_cap=5.0))
    schedule.failed(schedule.launch(schedule.order[0]))
    clock.now = START + 0.5
    assert schedule.deadline_left() == 1.5
    assert await schedule.back_off()          # 1 s of backoff ends before the deadline
    schedule.failed(schedule.launch(schedule.order[1]))
    assert not await schedule.back_off()      # 2 s would end after it: no new attempt
    assert clock.slept == [1.0]
    assert notes == ["deadline of 2s exceeded before a retry"]


def test_wait_ends_at_the_deadline_when_no_hedge_is_due() -> None:
    clock = FakeTime()
    schedule, _ = _schedule(clock, deadline=4.0, hedge=Hedge(enabled=False))
    schedule.launch(schedule.order[0])         # hedging off: no hedge
    clock.now = START + 1.5
    assert schedule.wait() == 2.5
    clock.now = START + 4.5
    assert schedule.wait() == 0.0 and schedule.deadline_left() < 0


def test_hedge_is_due_at_the_running_upstreams_p95() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock)
    for i in range(100):                       # p95 of 1..100 ms
        stats["a"].record_latency((i + 1) / 1000, now=START)
    run = schedule.launch(schedule.order[0])
    assert schedule.hedge_at() == run.started + 0.096
    clock.now = START + 0.05
    assert abs(schedule.wait() - 0.046) < 1e-9


def test_hedge_is_floored_at_min_delay() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock, hedge=Hedge(min_delay=0.05))
    _warm(stats["a"], 0.002)
    run = schedule.launch(schedule.order[0])
    assert schedule.hedge_at() == run.started + 0.05


def test_own_samples_set_the_delay_from_min_samples_on() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock, hedge=Hedge(min_samples=20, cold_delay=1.0))
    _warm(stats["a"], 0.1, samples=19)
    schedule.launch(schedule.order[0])
    assert schedule.hedge_delay() == HedgeDelay(1.0, "cold")     # 19: not yet its own
    assert schedule.hedge_at() == START + 1.0
    _warm(stats["a"], 0.1, samples=1)
    assert schedule.hedge_delay() == HedgeDelay(0.1, "own")
    assert schedule.hedge_at() == START + 0.1


def test_no_hedge_for_kinds_off_or_when_nobody_else_or_two_running() -> None:
    clock = FakeTime()
    cases: list[dict[str, Any]] = [
        {"kind": "zip", "hedge": Hedge(kinds=("info",))},  # not in the kinds
        {"hedge": Hedge(enabled=False)},
        {"names": ("a",)},                                 # nobody to hedge to
    ]
    for case in cases:
        schedule, stats = _schedule(clock, **case)
        _warm(stats["a"], 0.1)
        schedule.launch(schedule.order[0])
        assert schedule.hedge_at() is None, case
    schedule, stats = _schedule(clock)
    _warm(stats["a"], 0.1)
    schedule.launch(schedule.order[0])
    schedule.launch(schedule.order[1])
    assert schedule.hedge_at() is None                     # a hedge is already running


async def test_one_hedge_per_request_to_the_next_candidate() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock)
    for name in ("a", "b", "c"):
        _warm(stats[name], 0.1)
    first = schedule.launch(schedule.order[0])
    clock.now = START + 0.1
    hedge = schedule.hedge()
    assert hedge is not None and hedge.target.name == "b" and hedge.hedged.name == "a"
    assert hedge.delay == HedgeDelay(0.1, "own")
    second = schedule.launch(hedge.target)
    assert schedule.hedge_at() is None
    schedule.failed(first)                                 # b alone runs now, c is free
    assert schedule.hedge_at() is None                     # but the request hedged already
    schedule.failed(second)
    assert await schedule.back_off()
    retry = await schedule.wait_for_target()
    assert retry is not None and retry.name == "c"
    schedule.launch(retry)
    assert schedule.hedge_at() is None                     # not for the retry either


def test_a_wait_that_ends_early_or_with_no_hedge_due_sends_none_and_spends_nothing() -> None:
    """Timers may fire a millisecond early: ending the wait is not a reason to hedge."""
    clock = FakeTime()
    budget = _budget(10)
    schedule, stats = _schedule(clock, kind="zip", budget=budget,
                                hedge=Hedge(kinds=("info",)))          # zips do not hedge here
    _warm(stats["a"], 0.1)
    schedule.launch(schedule.order[0])
    clock.now = START + 9.999                      # just before the deadline
    assert schedule.hedge() is None and budget.spent == 0
    clock = FakeTime()
    schedule, stats = _schedule(clock, budget=budget)
    _warm(stats["a"], 0.1)
    schedule.launch(schedule.order[0])
    due = schedule.hedge_at()
    assert due is not None
    clock.now = due - 0.001                        # the timer fired a millisecond early
    assert schedule.hedge() is None and budget.spent == 0
    assert schedule.wait() == pytest.approx(0.001)   # the caller waits out the rest
    clock.now = due
    hedge = schedule.hedge()
    assert hedge is not None and hedge.target.name == "b" and budget.spent == 1


async def test_budget_exhaustion_stops_retries_and_hedges() -> None:
    clock = FakeTime()
    notes: list[str] = []
    budget = _budget(1)
    schedule, stats = _schedule(clock, budget=budget, notes=notes)
    assert schedule.may_spend("retry")                     # the one allowed
    schedule.failed(schedule.launch(schedule.order[0]))
    assert not await schedule.back_off()
    assert clock.slept == []                               # refused before any pause
    _warm(stats["b"], 0.1)
    schedule.launch(schedule.order[1])
    assert schedule.hedge_at() == START + 0.1
    clock.now = START + 0.1
    assert schedule.hedge() is None                        # due, but the budget refuses
    assert schedule.hedge_at() is None                     # and no second chance
    # The words are the shared budget's own terms (here 100 % of 1 request, no floor),
    # not the route's retry settings (the defaults: 20 % + 10/s).
    assert notes == [f"retry budget exhausted: no {what} (at most 100% of requests + 0/s "
                     "may be retried or hedged)" for what in ("retry", "hedge")]
    assert budget.refused == 2


# -- hedge priors: the delay of a cold edge, and of zips -------------------------------

def _probe(stats: UpstreamStats, *latencies: float) -> None:
    for latency in latencies:
        stats.record_success(latency, now=START, source="probe")


def _delay(schedule: AttemptSchedule) -> HedgeDelay | None:
    if not schedule.running:
        schedule.launch(schedule.order[0])
    return schedule.hedge_delay()


def test_cold_with_no_samples_the_delay_is_cold_delay_floored_at_min_delay() -> None:
    clock = FakeTime()
    schedule, _ = _schedule(clock)
    assert _delay(schedule) == HedgeDelay(1.0, "cold")          # the default cold_delay
    assert schedule.hedge_at() == START + 1.0
    schedule, _ = _schedule(clock, hedge=Hedge(cold_delay=0.4))
    assert _delay(schedule) == HedgeDelay(0.4, "cold")
    schedule, _ = _schedule(clock, hedge=Hedge(cold_delay=0.01, min_delay=0.05))
    assert _delay(schedule) == HedgeDelay(0.05, "cold")


def test_with_route_samples_only_the_others_pooled_set_the_delay() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock, hedge=Hedge(min_samples=20))
    _warm(stats["b"], 0.2, samples=10)
    _warm(stats["c"], 0.3, samples=9)
    assert _delay(schedule) == HedgeDelay(1.0, "cold")          # 19 pooled: not enough
    _warm(stats["c"], 0.3, samples=1)
    assert _delay(schedule) == HedgeDelay(0.3, "route")         # p95 of b's and c's 20
    _warm(stats["a"], 0.12, samples=20)
    assert _delay(schedule) == HedgeDelay(0.12, "own")          # its own, once it has enough
    schedule, stats = _schedule(clock, hedge=Hedge(min_samples=20))
    _warm(stats["b"], 0.001)
    assert _delay(schedule) == HedgeDelay(0.025, "route")       # floored at min_delay (25 ms)


def test_with_probe_samples_the_running_upstreams_probes_set_the_delay() -> None:
    clock = FakeTime()
    schedule, stats = _schedule(clock, hedge=Hedge(probe_samples=3, probe_factor=2))
    _probe(stats["a"], 0.08, 0.09)
    assert _delay(schedule) == HedgeDelay(1.0, "cold")          # two probes: not yet
    _probe(stats["a"], 0.25)
    assert _delay(schedule) == HedgeDelay(0.5, "probe")         # p95 of three, times 2
    assert len(stats["a"].recent) == 0                         # kept apart from traffic
    _probe(stats["b"], 5.0, 5.0, 5.0)                          # another's probes: not a's
    assert _delay(schedule) == HedgeDelay(0.5, "probe")
    _warm(stats["b"], 0.15)                                    # a faster neighbour's traffic
    assert _delay(schedule) == HedgeDelay(0.5, "probe")         # does not undercut a's probes
    _warm(stats["c"], 0.9)                                     # a slower route: its p95 wins
    assert _delay(schedule) == HedgeDelay(0.9, "route")
    _warm(stats["a"], 0.11)
    assert _delay(schedule) == HedgeDelay(0.11, "own")          # its own, once it has enough
    schedule, stats = _schedule(clock)
    _probe(stats["a"], 0.02)                                   # the start-up round's one probe
    assert _delay(schedule) == HedgeDelay(0.06, "probe")        # defaults: 1 probe, times 3


def test_zips_hedge_by_default_on_their_own_samples_with_their_own_floor_and_cold_delay() -> None:
    clock = FakeTime()
    hedge = Hedge(min_samples=20, zip_min_delay=0.5, zip_cold_delay=2.0, zip_factor=2)
    schedule, stats = _schedule(clock, kind="zip", hedge=hedge)
    assert Hedge().kinds == ("list", "info", "mod", "latest", "zip")   # on by default
    assert _delay(schedule) == HedgeDelay(2.0, "cold")          # nothing measured at all
    assert schedule.hedge_at() == START + 2.0
    _probe(stats["a"], 0.125)                                  # no zip measured: the small
    assert _delay(schedule) == HedgeDelay(0.75, "probe")        # kinds' delay x zip_factor
    _warm(stats["b"], 0.1)                                     # route 0.2 < probe 0.75: the larger
    assert _delay(schedule) == HedgeDelay(0.75, "probe")
    _warm(stats["a"], 0.4)
    assert _delay(schedule) == HedgeDelay(0.8, "own")
    for _ in range(20):
        stats["b"].record_latency(0.9, now=START, source="zip")
    assert _delay(schedule) == HedgeDelay(0.9, "route")
    for _ in range(20):
        stats["a"].record_latency(1.2, now=START, source="zip")
    assert _delay(schedule) == HedgeDelay(1.2, "own")
    assert stats["a"].percentile(0.95) == 0.4                  # small kinds' p95 untouched
    schedule, stats = _schedule(clock, kind="zip", hedge=hedge)
    for _ in range(20):
        stats["a"].record_latency(0.02, now=START, source="zip")
    assert _delay(schedule) == HedgeDelay(0.5, "own")           # floored at zip_min_delay
    clock.now = START + 0.5
    order = schedule.hedge()
    assert order is not None and order.target.name == "b" and order.delay.source == "own"


def test_the_in_flight_cap_blocks_a_hedge_to_a_busy_upstream() -> None:
    clock = FakeTime()
    notes: list[str] = []
    budget = _budget(10)
    schedule, stats = _schedule(clock, hedge=Hedge(max_in_flight=4), budget=budget, notes=notes)
    stats["b"].in_flight = 4                                   # at the cap: skipped
    schedule.launch(schedule.order[0])
    clock.now = START + 1.0
    order = schedule.hedge()
    assert order is not None and order.target.name == "c"
    schedule, stats = _schedule(clock, ("a", "b"), hedge=Hedge(max_in_flight=4), budget=budget,
                                notes=notes)
    stats["b"].in_flight = 5                                   # over it, and nobody else
    schedule.launch(schedule.order[0])
    clock.now = START + 2.0
    assert schedule.hedge() is None
    assert schedule.hedge_at() is None                         # decided: no second chance
    assert notes == ["no hedge: b at the in-flight cap of 4 (hedge.max_in_flight)"]
    assert budget.spent == 1                                   # the refused one cost nothing
