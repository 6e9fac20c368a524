"""Resuming a stalled zip body from the byte reached, with a Range request.

A zip body whose upstream falls silent for its stall interval (`stall_interval`:
from the throughput seen, within [resume.stall_floor, timeouts.read]) is asked
again of the same upstream with `Range: bytes=N-` and `If-Range`, when the first
answer allows it (Accept-Ranges: bytes, a Content-Length, a strong ETag or a
Last-Modified) and the 206 matches it (Content-Range `bytes N-(len-1)/len`, the
same validators). `ResumingBody` yields one unbroken stream, so the caller
(router/forwarding/stream.py) tees, checks and holds back bytes as for any body;
a resume that cannot be had or does not match raises AttemptError like a broken
body, and the caller aborts the client. At most `resume.max_resumes` per body,
each paid from the retry budget; the silence from one byte to the next, resume
included, never exceeds `timeouts.read`. Must not import goproxy_router.forwarding.forwarder.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from goproxy_router.base.logs import log_event
from goproxy_router.config.schema import Resume
from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.fetching import Fetched, ForwardPlan
from goproxy_router.upstream.client import (
    READ_BUFSIZE,
    AttemptError,
    AttemptTimeout,
    UpstreamClient,
    UpstreamResponse,
)
from goproxy_router.upstream.targets import UpstreamTarget

log = logging.getLogger("router.forward")

MIN_RATE_BYTES = 256 << 10     # a body's own throughput counts once this much of it arrived
# How a stall ended, the `outcome` of goproxy_resumes_total: resumed; budget (refused: the
# body waits on, up to timeouts.read); failed (the Range request got no answer); mismatch
# (an answer that is not this body's rest: a 200, another ETag or length).
RESUME_OUTCOMES = ("resumed", "budget", "failed", "mismatch")
Count = Callable[[str, str], None]          # (upstream, outcome): the metrics' hook
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)


def stall_interval(rate: float | None, settings: Resume, cap: float) -> float:
    """Seconds of silence that make a stall at `rate` bytes/s: `stall_factor` times what the
    next READ_BUFSIZE bytes should take, within [stall_floor, cap]; the cap (timeouts.read,
    as before resuming existed) while no rate is known."""
    if rate is None or rate <= 0:
        return cap
    return min(max(settings.stall_factor * READ_BUFSIZE / rate, settings.stall_floor), cap)


def observed_rate(received: int, seconds: float, recent: float | None) -> float | None:
    """The body's own throughput once it has shown one, else its upstream's recent zips'."""
    if received >= MIN_RATE_BYTES and seconds > 0:
        return received / seconds
    return recent


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies the first answer's body, so that a 206 can be checked to be its rest."""

    length: int
    etag: str | None
    last_modified: str | None

    @classmethod
    def of(cls, response: UpstreamResponse) -> Validators | None:
        """The answer's validators; None when it cannot be resumed: no `Accept-Ranges: bytes`,
        no Content-Length (or a body decoded here), or nothing to send as If-Range."""
        headers = response.headers
        units = {unit.strip().lower() for unit in headers.get("Accept-Ranges", "").split(",")}
        length = response.content_length
        if "bytes" not in units or length is None or length <= 0:
            return None
        found = cls(length, headers.get("ETag"), headers.get("Last-Modified"))
        return found if found.if_range is not None else None

    @property
    def if_range(self) -> str | None:
        """A weak ETag may not be sent in If-Range (RFC 9110 13.1.5): the date then."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def request_headers(self, offset: int) -> dict[str, str]:
        assert self.if_range is not None
        return {"Range": f"bytes={offset}-", "If-Range": self.if_range}

    def mismatch(self, response: UpstreamResponse, offset: int) -> str | None:
        """Why `response` is not the rest of this body from `offset`; None when it is."""
        if response.status != 206:
            return f"HTTP {response.status} instead of 206 Partial Content"
        headers = response.headers
        if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            return f"an encoded 206 ({headers['Content-Encoding']})"
        given = headers.get("Content-Range", "")
        found = _CONTENT_RANGE.match(given)
        if found is None or tuple(map(int, found.groups())) != (offset, self.length - 1, self.length):
            return f"Content-Range {given!r} instead of bytes {offset}-{self.length - 1}/{self.length}"
        for name, value in (("ETag", self.etag), ("Last-Modified", self.last_modified)):
            if value is not None and headers.get(name) != value:
                return f"{name} {headers.get(name)!r} instead of {value!r}"
        if response.content_length not in (None, self.length - offset):
            return f"Content-Length {response.content_length} instead of {self.length - offset}"
        return None


class Resumer:
    """What resuming needs of the forwarder: its client, its retry budget (a resume is an
    extra upstream request like a retry), the settings, and a counter for the metrics."""

    def __init__(self, client: UpstreamClient, budget: RetryBudget, settings: Resume,
                 count: Count) -> None:
        self.client = client
        self.budget = budget
        self.settings = settings
        self.count = count

    def body(self, plan: ForwardPlan, fetched: Fetched) -> ResumingBody | None:
        """A reader that resumes this body when stalled; None when it cannot be (read it plainly)."""
        if (not self.settings.enabled or not self.settings.max_resumes or plan.kind != "zip"
                or plan.method != "GET"):
            return None
        validators = Validators.of(fetched.response)
        return None if validators is None else ResumingBody(plan, fetched, validators, self)

    async def open(self, plan: ForwardPlan, target: UpstreamTarget, headers: Mapping[str, str],
                   within: float) -> UpstreamResponse:
        """The Range request, its headers awaited at most `within` s (what is left of
        timeouts.read)."""
        wait = max(min(plan.timeouts.headers, within), 0.001)
        return await self.client.open(target, plan.path, "GET",
                                      plan.timeouts.model_copy(update={"headers": wait}),
                                      headers=headers)

    def report(self, plan: ForwardPlan, fetched: Fetched, size: int, offset: int, silence: float,
               outcome: str, detail: str) -> None:
        """Count a stall's outcome and log it where the attempts are logged."""
        self.count(fetched.target.name, outcome)
        log_event(log, logging.INFO if outcome == "resumed" else logging.WARNING,
                  "upstream body stalled", request_id=plan.request_id, route=plan.route,
                  module=plan.module, kind=plan.kind, upstream=fetched.target.name,
                  path=plan.path, offset=offset, size=size, stalled=round(silence, 4),
                  resume=outcome, detail=detail)


class ResumingBody:
    """The chunks of a zip body read through stalls: of the first answer, then of each resume.

    `response` is the answer being read now: the caller closes or releases that one.
    """

    __slots__ = ("plan", "fetched", "validators", "response", "received", "resumes",
                 "_resumer", "_clock", "_started", "_last", "_quiet_since", "_patient")

    def __init__(self, plan: ForwardPlan, fetched: Fetched, validators: Validators,
                 resumer: Resumer, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.fetched = fetched
        self.validators = validators
        self.response = fetched.response
        self.received = 0
        self.resumes = 0
        self._resumer = resumer
        self._clock = clock
        self._started = self._last = self._quiet_since = clock()
        self._patient = False     # a stall the budget refused: wait on, up to timeouts.read

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body; AttemptTimeout after timeouts.read of silence, AttemptError on a
        break or a resume that fails."""
        cap = self.plan.timeouts.read
        while True:
            try:
                chunk = await self.response.read_chunk(self._wait(cap))
            except AttemptTimeout:
                silence = self._clock() - self._last
                if silence >= cap:
                    raise AttemptTimeout("reading the body", cap) from None
                if self._may_resume():
                    await self._resume(silence, cap)
                continue              # (a timer that fired a hair early: wait out the rest)
            if not chunk:
                return
            self.received += len(chunk)
            self._last = self._quiet_since = self._clock()
            yield chunk

    def _may_resume(self) -> bool:
        return not self._patient and self.resumes < self._resumer.settings.max_resumes

    def _wait(self, cap: float) -> float:
        """Seconds to wait for the next chunk: up to the stall interval (counted from the
        last byte, or from a resume's answer) while a resume may follow, and never past
        timeouts.read of silence."""
        now = self._clock()
        left = cap - (now - self._last)
        if self._may_resume():
            rate = observed_rate(self.received, now - self._started, self.fetched.stats.throughput)
            left = min(left, stall_interval(rate, self._resumer.settings, cap)
                       - (now - self._quiet_since))
        return max(left, 0.001)

    async def _resume(self, silence: float, cap: float) -> None:
        """Ask the same upstream for the rest, from the byte reached; AttemptError when it
        cannot be had. A stall is a failure sample of the upstream's stats: it held a
        connection silent, which the breaker and the ranking must see even when the
        resume saves the body (whose success is recorded at its end, as for any body)."""
        resumer, fetched, offset, size = self._resumer, self.fetched, self.received, self.validators.length
        if not resumer.budget.try_spend():
            self._patient = True
            resumer.report(self.plan, fetched, size, offset, silence, "budget",
                           "retry budget exhausted: no resume; waiting up to timeouts.read")
            return
        self.resumes += 1
        stalled = f"stalled: no bytes for {silence:.2f}s after {offset} of {size}"
        fetched.stats.record_failure(silence, stalled)
        self.response.close()
        try:
            response = await resumer.open(self.plan, fetched.target,
                                          self.validators.request_headers(offset), cap - silence)
        except (AttemptError, AttemptTimeout) as exc:
            resumer.report(self.plan, fetched, size, offset, silence, "failed", str(exc))
            raise AttemptError(f"body {stalled} bytes; resuming failed: {exc}") from None
        problem = self.validators.mismatch(response, offset)
        if problem is not None:
            response.close()
            resumer.report(self.plan, fetched, size, offset, silence, "mismatch", problem)
            raise AttemptError(f"body {stalled} bytes; the resume was refused: {problem}")
        self.response = response
        self._quiet_since = self._clock()
        resumer.report(self.plan, fetched, size, offset, silence, "resumed",
                       f"resumed from byte {offset} (resume {self.resumes})")
