"""The attempt policy: failover, retries with backoff, hedging, a budget and a deadline.

Only 200 is success in the GOPROXY protocol. 404/410 mean "not here": the
next upstream is asked, at no cost to the budget, and that upstream is not
asked again. Anything else is a failure: the next-ranked upstream is asked
after a backoff with full jitter, cycling back to failed ones while
`retry.max_attempts` and the retry budget allow. When the running attempt is
slower than its hedge delay (its upstream's p95, or a prior when cold:
router/upstream/hedging.py), one hedge goes to the next upstream and the
first good answer wins; a zip's is its headers, so the loser is cancelled
before its body flows. All of this happens within the
request's deadline and before a byte reaches the client: small answers
(list, .info, .mod, @latest) are read whole and validated first, so even a
broken body fails over. A zip streams; if its body breaks after the status
line went out, the client connection is aborted, so the go command sees an
error and never a complete-looking truncated 200, unless it only stalled and
can be resumed from the same upstream (router/forwarding/resume.py).

Who is asked next, when to hedge and how long to back off is decided by
`AttemptSchedule` (router/forwarding/schedule.py); `Forwarder.fetch` runs its attempts.
Streaming the winner to the client and into the cache is router/forwarding/stream.py;
the plan and answer types, and the `Fetcher` protocol this class fulfils for
the cache, are router/forwarding/fetching.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from aiohttp import web

from goproxy_router.base.logs import log_event
from goproxy_router.config.schema import Resume
from goproxy_router.config.secrets import redact
from goproxy_router.forwarding import stream
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.fetching import (  # noqa: F401  (re-exported: their old import path)
    Attempt,
    Fetched,
    ForwardPlan,
    Outcome,
    failure_response,
    text_response,
)
from goproxy_router.forwarding.resume import Resumer
from goproxy_router.forwarding.schedule import AttemptSchedule, HedgeOrder, Run
from goproxy_router.forwarding.stream import ClientSink, abort_client  # noqa: F401  (abort_client: re-exported)
from goproxy_router.protocol.integrity import MAX_ZIP_FILE, SMALL_BODY_LIMIT, BodyVerdict, judge_small_body
from goproxy_router.storage.entry import CacheEntry
from goproxy_router.storage.writer import CacheWriter
from goproxy_router.upstream.client import AttemptError, AttemptTimeout, UpstreamClient, UpstreamResponse
from goproxy_router.upstream.pool import PoolTiming
from goproxy_router.upstream.stats import StatsRegistry, UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget

log = logging.getLogger("router.forward")

# Headers copied from an upstream answer. An allow-list: hop-by-hop headers,
# cookies and server identity of the upstream never reach the client.
PASSED_HEADERS = ("Content-Type", "ETag", "Last-Modified")   # bodies arrive decoded
IDENTITY_HEADERS = ("Content-Type", "Last-Modified")
ERROR_EXCERPT = 300            # characters of an upstream's error body shown, after redaction
ERROR_READ = 4096              # bytes of it read, so a secret across the cut is seen whole
CHECK_INLINE = 256 << 10       # small bodies above this are checked in a thread, off the loop
MAX_RETRY_AFTER = 300.0        # seconds an upstream's 429 can make it sit out, at most


@dataclass(slots=True)
class Doubtful:
    """A valid small answer that another upstream may better (a go.mod declaring another
    module path: a fork's, or an upstream answering for the wrong module). Taken only when
    every other upstream was asked and none failed or did better."""

    fetched: Fetched


RunningTasks = dict[asyncio.Task[Fetched | Doubtful | Attempt], Run]   # attempts in flight


class AttemptObserver:
    """Hooks the metrics use to see the policy at work; these defaults do nothing."""

    def resume(self, upstream: str, outcome: str) -> None:
        """A zip body from `upstream` stalled; `outcome` is one of resume.RESUME_OUTCOMES."""

    def attempt(self, upstream: str, outcome: str, latency: float | None) -> None:
        """An attempt ended; `latency` is its time to headers when it got an answer."""

    def retry(self) -> None:
        """An attempt is being made after a failed one."""

    def hedge(self, upstream: str, source: str) -> None:
        """A hedge request was sent to `upstream`; `source` set its delay (hedging.py)."""

    def hedge_won(self, upstream: str) -> None:
        """The hedge sent to `upstream` answered first."""


class Forwarder:
    """Runs the attempt policy and writes the winner to the client.

    Every attempt's outcome is reported to the upstream's live stats: time to
    headers as a latency sample, failures as penalty samples for the breaker.
    """

    def __init__(self, client: UpstreamClient, registry: StatsRegistry,
                 budget: RetryBudget | None = None, rng: random.Random | None = None,
                 observer: AttemptObserver | None = None, resume: Resume | None = None) -> None:
        self._client = client
        self._registry = registry
        self.budget = budget or RetryBudget()
        self._rng = rng or random.Random()
        self.observer = observer or AttemptObserver()
        self._resumer = Resumer(client, self.budget, resume or Resume(),
                                lambda upstream, outcome: self.observer.resume(upstream, outcome))

    async def forward(self, request: web.Request, plan: ForwardPlan) -> web.StreamResponse:
        fetched = await self.fetch(plan)
        if fetched is None:
            return failure_response(plan)
        return await self.respond(request, plan, fetched)

    # -- the policy ------------------------------------------------------------

    async def fetch(self, plan: ForwardPlan) -> Fetched | None:
        """Attempts, retries and a hedge until a good answer starts, or none can.

        The schedule decides who is asked and when; this loop runs the attempts."""
        self.budget.record_request()
        schedule = self.schedule(plan)
        running: RunningTasks = {}
        fallback: Fetched | None = None   # the first doubtful answer
        winner: str | None = None
        hedge_run: Run | None = None
        try:
            while True:
                if not running:
                    target = await schedule.wait_for_target()
                    if target is None:
                        break
                    if schedule.failures:
                        if not await schedule.back_off():
                            break
                        self.observer.retry()
                    self._launch(running, schedule, target, plan)
                done, _ = await asyncio.wait(running, timeout=schedule.wait(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if schedule.deadline_left() <= 0:
                        break
                    order = schedule.hedge()
                    if order is not None:
                        hedge_run = self._hedge(running, schedule, order, plan)
                    continue
                for task in done:
                    run = running.pop(task)
                    result = task.result()
                    if isinstance(result, Fetched):
                        schedule.answered(run)
                        winner = run.target.name
                        if run is hedge_run:
                            self.observer.hedge_won(winner)
                        return result
                    if isinstance(result, Doubtful):
                        schedule.said_not_here(run)
                        fallback = fallback or result.fetched
                    elif result.outcome is Outcome.NOT_FOUND:
                        schedule.said_not_here(run)
                    else:
                        schedule.failed(run)
            if fallback is not None and schedule.failures == 0 and not running:
                winner = fallback.target.name
                plan.notes.append(f"{winner}'s doubtful answer taken: no upstream had better")
                return fallback
            return None
        finally:
            await self._cancel(plan, running, winner)

    def schedule(self, plan: ForwardPlan) -> AttemptSchedule:
        """The attempt schedule of one request: on time.monotonic, the clock of
        `plan.started` and of the upstreams' 429 sit-outs, and this forwarder's dice."""
        return AttemptSchedule(plan.targets, plan.retry, plan.hedge, self.budget,
                               kind=plan.kind, started=plan.started,
                               deadline=plan.timeouts.deadline, stats=self._stats,
                               notes=plan.notes, rng=self._rng)

    def _launch(self, running: RunningTasks, schedule: AttemptSchedule,
                target: UpstreamTarget, plan: ForwardPlan) -> Run:
        run = schedule.launch(target)
        task = asyncio.ensure_future(self._attempt(target, plan, schedule.deadline_at))
        running[task] = run
        return run

    def _hedge(self, running: RunningTasks, schedule: AttemptSchedule, order: HedgeOrder,
               plan: ForwardPlan) -> Run:
        """Send the hedge, counted and logged with what set its delay."""
        self.observer.hedge(order.target.name, order.delay.source)
        log_event(log, logging.INFO, "hedge sent", request_id=plan.request_id, route=plan.route,
                  module=plan.module, kind=plan.kind, upstream=order.hedged.name,
                  hedge_to=order.target.name, delay=round(order.delay.seconds, 4),
                  delay_source=order.delay.source)
        return self._launch(running, schedule, order.target, plan)

    async def _cancel(self, plan: ForwardPlan, running: RunningTasks, winner: str | None) -> None:
        """Stop attempts still running: a hedge that lost, or the deadline."""
        for task, run in running.items():
            if task.done() and not task.cancelled() and isinstance(task.result(), Fetched):
                loser = task.result()                 # finished in the same instant: let go
                assert isinstance(loser, Fetched)
                loser.response.close()
                if loser.body is None:
                    loser.stats.end()
            task.cancel()
            elapsed = time.monotonic() - run.started
            if winner is not None:
                attempt = Attempt(run.target.name, Outcome.CANCELLED, elapsed, None,
                                  f"cancelled: {winner} answered first")
            else:
                attempt = Attempt(run.target.name, Outcome.TIMEOUT, elapsed, None,
                                  f"timeout: no answer within the {plan.timeouts.deadline:g}s deadline")
            plan.attempts.append(attempt)
            self.observer.attempt(attempt.upstream, attempt.outcome.value, None)
            self._log(plan, attempt, logging.INFO if winner else logging.WARNING)
        for task in list(running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if winner is None and running:
            plan.notes.append(f"deadline of {plan.timeouts.deadline:g}s exceeded")

    def _stats(self, target: UpstreamTarget) -> UpstreamStats:
        return self._registry.get(target.name, target.base_url)

    # -- one attempt -------------------------------------------------------------

    async def _attempt(self, target: UpstreamTarget, plan: ForwardPlan,
                       deadline: float) -> Fetched | Doubtful | Attempt:
        """One upstream, up to a good answer (whole and valid for small kinds) or a failure."""
        stats = self._stats(target)
        stats.begin()
        started = time.monotonic()
        streaming = False
        response: UpstreamResponse | None = None
        pool = PoolTiming()
        try:
            timeouts = plan.timeouts.model_copy(
                update={"headers": max(min(plan.timeouts.headers, deadline - started), 0.001)})
            try:
                try:
                    response = await self._client.open(target, plan.path, plan.method, timeouts,
                                                       pool)
                finally:
                    # A wait for the edge's own pooled connection is not the upstream's time.
                    started += pool.waited()
            except AttemptTimeout as exc:
                return self._failed(plan, target, stats, Outcome.TIMEOUT, started, None, str(exc))
            except AttemptError as exc:
                outcome = Outcome.CONNECT_ERROR if str(exc).startswith("connect") else Outcome.BROKEN
                return self._failed(plan, target, stats, outcome, started, None, str(exc))
            if response.status != 200:
                return await self._refused(plan, target, stats, response, started)
            headers_at = time.monotonic() - started
            if not plan.reads_whole_body:
                if (plan.kind == "zip" and response.content_length is not None
                        and response.content_length > MAX_ZIP_FILE):
                    return self._failed(plan, target, stats, Outcome.INVALID, started, 200,
                                        f"invalid .zip: {response.content_length} bytes is over "
                                        f"the go command's limit of {MAX_ZIP_FILE}")
                stats.record_latency(headers_at, source="zip" if plan.kind == "zip" else "traffic")
                streaming = True            # its outcome is counted once the body is through
                return Fetched(target, stats, response, None, headers_at)
            try:
                body = await response.read_all(SMALL_BODY_LIMIT)
            except (AttemptError, AttemptTimeout) as exc:
                return self._failed(plan, target, stats, Outcome.BROKEN, started, 200, str(exc))
            verdict = await _judge(plan, body)
            if verdict.problem is not None:
                return self._failed(plan, target, stats, Outcome.INVALID, started, 200,
                                    f"invalid {_kind_label(plan.kind)}: {verdict.problem}")
            stats.record_success(headers_at)
            fetched = Fetched(target, stats, response, body, headers_at)
            if verdict.doubt is not None:
                attempt = Attempt(target.name, Outcome.DOUBTFUL, time.monotonic() - started, 200,
                                  f"doubtful {_kind_label(plan.kind)}: {verdict.doubt}; "
                                  "asking the other upstreams")
                plan.attempts.append(attempt)
                self.observer.attempt(target.name, attempt.outcome.value, headers_at)
                self._log(plan, attempt, logging.WARNING)
                return Doubtful(fetched)
            self.observer.attempt(target.name, Outcome.OK.value, headers_at)
            return fetched
        except asyncio.CancelledError:
            stats.record_slow(time.monotonic() - started)   # at least this slow: never faster
            raise
        finally:
            if not streaming:
                if response is not None:
                    response.close()
                stats.end()

    async def _refused(self, plan: ForwardPlan, target: UpstreamTarget, stats: UpstreamStats,
                       response: UpstreamResponse, started: float) -> Attempt:
        """A status other than 200: "not here" for 404/410, a failure otherwise."""
        # Redact, then cut: a secret straddling the cut would leave its start behind.
        excerpt = "" if plan.method == "HEAD" else redact(
            await response.read_text(ERROR_READ), target.secrets, limit=ERROR_EXCERPT)
        status_line = f"{response.status} {response.reason}".strip()
        suffix = f": {excerpt}" if excerpt else ""
        if response.status in (404, 410):
            elapsed = time.monotonic() - started
            stats.record_success(elapsed)              # it answered; "not here" is healthy
            attempt = Attempt(target.name, Outcome.NOT_FOUND, elapsed, response.status,
                              f"not found ({status_line}){suffix}")
            plan.attempts.append(attempt)
            self.observer.attempt(target.name, attempt.outcome.value, elapsed)
            self._log(plan, attempt, logging.INFO)
            return attempt
        if response.status == 429:
            pause = _retry_after(response.headers.get("Retry-After"))
            stats.sit_out(time.monotonic() + pause)
            suffix = f" (retry after {pause:g}s){suffix}"
        return self._failed(plan, target, stats, Outcome.HTTP_ERROR, started, response.status,
                            f"HTTP {status_line}{suffix}")

    def _failed(self, plan: ForwardPlan, target: UpstreamTarget, stats: UpstreamStats,
                outcome: Outcome, started: float, status: int | None, detail: str) -> Attempt:
        attempt = Attempt(target.name, outcome, time.monotonic() - started, status, detail)
        plan.attempts.append(attempt)
        stats.record_failure(attempt.elapsed, detail)
        self.observer.attempt(target.name, outcome.value, None)
        self._log(plan, attempt, logging.WARNING)
        return attempt

    def _log(self, plan: ForwardPlan, attempt: Attempt, level: int) -> None:
        log_event(log, level, "upstream attempt failed", request_id=plan.request_id,
                  route=plan.route, module=plan.module, kind=plan.kind, upstream=attempt.upstream,
                  path=plan.path, attempt=len(plan.attempts), outcome=attempt.outcome.value,
                  status=attempt.status,
                  timeout=plan.timeouts.headers if attempt.outcome is Outcome.TIMEOUT else None,
                  elapsed=round(attempt.elapsed, 4), error=attempt.detail)

    # -- the answer --------------------------------------------------------------

    def answer_headers(self, plan: ForwardPlan, fetched: Fetched) -> dict[str, str]:
        """The headers a client gets with an upstream's 200 (a small body is held decoded)."""
        passed = PASSED_HEADERS if fetched.body is None else IDENTITY_HEADERS
        headers = {name: fetched.response.headers[name] for name in passed
                   if name in fetched.response.headers}
        headers["X-Goproxy-Upstream"] = fetched.target.name
        headers.update(plan.response_headers)
        return headers

    async def respond(self, request: web.Request, plan: ForwardPlan,
                      fetched: Fetched) -> web.StreamResponse:
        """Send a fetched answer: a validated small body at once, or stream the rest."""
        headers = self.answer_headers(plan, fetched)
        if fetched.body is not None:             # already read whole, checked and decoded
            self.note_ok(plan, fetched)
            return web.Response(status=200, body=fetched.body, headers=headers)
        client = ClientSink(request, plan.timeouts.send)
        await self.pump(plan, fetched, client, None, headers)
        return client.response or web.Response(status=200)

    @staticmethod
    def note_ok(plan: ForwardPlan, fetched: Fetched) -> None:
        """Record that a small answer was taken (streamed ones are recorded by pump)."""
        plan.attempts.append(Attempt(fetched.target.name, Outcome.OK,
                                     time.monotonic() - plan.started, 200, "ok"))

    async def pump(self, plan: ForwardPlan, fetched: Fetched, client: ClientSink | None,
                   cache: CacheWriter | None, headers: dict[str, str]) -> CacheEntry | None:
        """Stream a 200's body to the client and/or the cache (router/forwarding/stream.py)."""
        return await stream.pump(plan, fetched, client, cache, headers,
                                 failed=self._failed, delivered=self._delivered,
                                 resumer=self._resumer)

    def _delivered(self, plan: ForwardPlan, fetched: Fetched, elapsed: float, detail: str) -> None:
        """Record a streamed answer that went through."""
        plan.attempts.append(Attempt(fetched.target.name, Outcome.OK, elapsed, 200, detail))
        self.observer.attempt(fetched.target.name, Outcome.OK.value, fetched.headers_at)


async def _judge(plan: ForwardPlan, body: bytes) -> BodyVerdict:
    """Check a small body; a large one (up to 16 MiB of go.mod to lex) in a thread."""
    if plan.check is not None:
        return plan.check(body)
    args = (plan.kind, body, plan.expected_version, plan.module, plan.version)
    if len(body) <= CHECK_INLINE:
        return judge_small_body(*args)
    return await asyncio.to_thread(judge_small_body, *args)


def _kind_label(kind: str) -> str:
    return {"latest": "@latest", "list": "version list",
            "sumdb": "checksum database answer"}.get(kind, f".{kind}")


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta or HTTP date); 1 s when absent or odd."""
    if value:
        value = value.strip()
        if value.isdigit():
            return min(float(value), MAX_RETRY_AFTER)
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = parsedate_to_datetime(value).timestamp()
            return min(max(when - time.time(), 0.0), MAX_RETRY_AFTER)
    return 1.0
