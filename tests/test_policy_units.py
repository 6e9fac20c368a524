"""Small policy pieces alone: the retry budget, body integrity checks, Retry-After."""

from __future__ import annotations

import io
import time
import zipfile
from email.utils import formatdate

import pytest

from goproxy_router.forwarding.budget import RetryBudget
from goproxy_router.forwarding.forwarder import _retry_after
from goproxy_router.protocol.integrity import ZipTail, small_body_problem, zip_tail_problem


def test_budget_allows_ratio_of_requests_plus_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, floor=2, window=10)
    budget._refilled = 0.0
    for i in range(100):
        budget.record_request(now=1.0 + i * 0.001)
    spent = sum(budget.try_spend(now=1.5) for _ in range(50))
    assert spent == 20 + 2                      # 20 % of 100, plus the floor's burst
    assert budget.refused == 28
    assert not budget.try_spend(now=1.5)
    assert budget.try_spend(now=2.0)            # the floor refills at 2/s
    assert budget.try_spend(now=12.0)           # the window moved on: tokens back


def test_budget_bound_over_a_period() -> None:
    """Over T seconds, spent <= ratio x requests + floor x (T + 1)."""
    budget = RetryBudget(ratio=0.2, floor=5, window=10)
    start = time.monotonic()
    now = start
    requests = 0
    for step in range(300):
        now = start + step * 0.01
        budget.record_request(now=now)
        requests += 1
        budget.try_spend(now=now)
        budget.try_spend(now=now)
    elapsed = now - start
    assert budget.spent <= 0.2 * requests + 5 * (elapsed + 1)
    assert budget.refused > 0


def test_budget_memory_stays_bounded_by_the_window_when_nothing_is_spent() -> None:
    """Healthy upstreams: 100,000 requests, no retry ever asked for. Only the requests of
    the last `window` seconds are kept (10 s at 100 per second: 1,001), not all of them."""
    budget = RetryBudget(ratio=0.2, floor=5, window=10)
    budget._refilled = 0.0
    for i in range(100_000):
        budget.record_request(now=i * 0.01)
    assert len(budget._requests) <= 1001
    # The ratio share still counts exactly the window's requests.
    assert sum(budget.try_spend(now=999.99) for _ in range(300)) == 200 + 5


@pytest.mark.parametrize("kind, body, expected, problem", [
    ("info", b'{"Version":"v1.0.0","Time":"2020-01-01T00:00:00Z"}', "v1.0.0", None),
    ("info", b'{"Version":"v1.0.0"}', None, None),
    ("info", b"not json", None, "not JSON"),
    ("info", b"[1,2]", None, "no Version in the JSON"),
    ("info", b'{"Version":""}', None, "no Version in the JSON"),
    ("info", b'{"Version":"v1.0.1"}', "v1.0.0", "Version 'v1.0.1' is not the requested 'v1.0.0'"),
    ("latest", b'{"Version":"v2.0.0"}', None, None),
    ("latest", b"", None, "not JSON"),
    ("mod", b"module example.com/m\n", None, None),
    ("mod", b"  \n", None, "empty go.mod"),
    ("list", b"", None, None),                  # no tagged versions: a valid, empty list
    ("list", b"v1.0.0\nv1.1.0\n", None, None),
    ("list", b"\xff\xfe", None, "version list is not UTF-8 text"),
])
def test_small_body_problems(kind: str, body: bytes, expected: str | None,
                             problem: str | None) -> None:
    assert small_body_problem(kind, body, expected) == problem


def make_zip(comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m@v1.0.0/go.mod", "module m\n")
        archive.comment = comment
    return buffer.getvalue()


@pytest.mark.parametrize("comment", [b"", b"a comment"])
def test_zip_tail_accepts_whole_zips_in_any_chunking(comment: bytes) -> None:
    data = make_zip(comment)
    for size in (1, 7, 64, len(data)):
        tail = ZipTail()
        for i in range(0, len(data), size):
            tail.feed(data[i:i + size])
        assert tail.problem() is None and tail.total == len(data)


def test_zip_tail_rejects_cut_zips() -> None:
    data = make_zip()
    assert "no end-of-central-directory" in (zip_tail_problem(data[:-30], len(data) - 30) or "")
    assert "does not end the body" in (zip_tail_problem(data[:-3], len(data) - 3) or "")
    assert "too short" in (zip_tail_problem(b"PK", 2) or "")


def test_retry_after_forms() -> None:
    assert _retry_after("5") == 5.0
    assert _retry_after("100000") == 300.0
    assert 8 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10.5
    assert _retry_after(None) == 1.0
    assert _retry_after("soon") == 1.0
