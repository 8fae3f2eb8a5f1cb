"""A token bucket per API token, kept in this process's memory.

Each process that serves the API keeps buckets of its own, so the limit holds
per process: with several workers or hosts, one API token may make that many
requests in each of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets are dropped once they would be full again, past this many.
MAX_TRACKED_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """Allow `per_minute` requests a minute per key, and up to `burst` at once."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def acquire(self, key: int) -> float:
        """Take one request for the key: 0 if allowed, else seconds until one is."""
        now = self._clock()
        bucket = self._refilled(key, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def tracked_keys(self) -> set[int]:
        """Return the keys that have a bucket now."""
        return set(self._buckets)

    def _refilled(self, key: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_BUCKETS:
                self._forget_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, updated=now)
            return bucket

        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now
        return bucket

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket at all.
        refill_seconds = self.burst / self.rate
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if now - bucket.updated < refill_seconds
        }


def retry_after_header(seconds: float) -> str:
    """Return a Retry-After value: whole seconds, rounded up, at least one."""
    return str(max(1, math.ceil(seconds)))
