"""Tests for the per-token rate limit, with a clock the tests move by hand."""

from __future__ import annotations

import pytest

from reading_history.core import ratelimit
from reading_history.core.ratelimit import TokenBucketLimiter, retry_after_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_burst_is_allowed_then_refused(clock: FakeClock) -> None:
    """Verify a token may make `burst` requests at once, and no more."""
    limiter = TokenBucketLimiter(per_minute=60, burst=3, clock=clock)

    waits = [limiter.acquire(1) for _ in range(4)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(1.0)


def test_requests_come_back_at_the_configured_rate(clock: FakeClock) -> None:
    """Verify 120 a minute means one more request every half second."""
    limiter = TokenBucketLimiter(per_minute=120, burst=1, clock=clock)
    limiter.acquire(1)

    clock.now += 0.25
    too_soon = limiter.acquire(1)
    clock.now += 0.25
    in_time = limiter.acquire(1)

    assert too_soon == pytest.approx(0.25)
    assert in_time == 0.0


def test_a_refused_request_does_not_count(clock: FakeClock) -> None:
    """Ensure retrying too early does not push the next allowed request back."""
    limiter = TokenBucketLimiter(per_minute=60, burst=1, clock=clock)
    limiter.acquire(1)
    for _ in range(10):
        limiter.acquire(1)

    clock.now += 1.0

    assert limiter.acquire(1) == 0.0


def test_each_token_has_its_own_bucket(clock: FakeClock) -> None:
    """Verify one busy token does not slow down another."""
    limiter = TokenBucketLimiter(per_minute=60, burst=1, clock=clock)
    limiter.acquire(1)

    assert limiter.acquire(1) > 0
    assert limiter.acquire(2) == 0.0


def test_a_bucket_never_holds_more_than_the_burst(clock: FakeClock) -> None:
    """Ensure a long quiet spell does not save up more than one burst."""
    limiter = TokenBucketLimiter(per_minute=60, burst=2, clock=clock)
    limiter.acquire(1)
    clock.now += 3600

    waits = [limiter.acquire(1) for _ in range(3)]

    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0


def test_full_buckets_are_forgotten_once_there_are_many(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure memory stays bounded: refilled buckets go, busy ones stay."""
    monkeypatch.setattr(ratelimit, "MAX_TRACKED_BUCKETS", 3)
    limiter = TokenBucketLimiter(per_minute=60, burst=1, clock=clock)
    for key in (1, 2, 3):
        limiter.acquire(key)
    clock.now += 10
    limiter.acquire(3)

    limiter.acquire(4)

    assert limiter.tracked_keys() == {3, 4}
    assert limiter.acquire(3) > 0


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    """Verify clients are never told to come back before they may."""
    assert retry_after_header(seconds) == header
