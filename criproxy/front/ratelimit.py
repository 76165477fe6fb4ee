"""A token bucket: at most `burst` at once, refilled at `rate` a second.

eventstream.py keeps one per runtime in each merged event stream, so that a
runtime flooding the stream (-eventRate, -eventBurst) is found by its own count
alone, whatever the others send.
"""
from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """One token if there is one; False: over the rate."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def time_to_full(self) -> float:
        """Seconds until the bucket holds `burst` tokens again."""
        self._refill()
        return (self.burst - self._tokens) / self.rate

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
