"""Requests per minute per key: a token bucket each, refilled continuously.

A bucket holds up to ``per_minute`` requests (a client may burst that many after a quiet minute) and
refills at ``per_minute / 60`` per second. A request that finds it empty is told, in seconds, when the
next one will be allowed: the ``Retry-After`` of its 429.
"""

from __future__ import annotations

import time


class RateLimiter:
    """Used from the event loop thread only, so no lock is needed."""

    def __init__(self, default_per_minute: int | None = None, clock=time.monotonic):
        self.default_per_minute = default_per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def check(self, name: str, per_minute: int | None = None) -> float:
        """Take one request from ``name``'s bucket: 0.0 when allowed, else seconds until it would be."""
        rate = per_minute or self.default_per_minute
        if not rate:
            return 0.0
        now = self.clock()
        if name not in self._buckets:
            self.forget_idle()
        tokens, at = self._buckets.get(name, (float(rate), now))
        tokens = min(float(rate), tokens + (now - at) * rate / 60)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1 - tokens) * 60 / rate

    def forget_idle(self, max_buckets: int = 10_000) -> None:
        """Bound memory when callers are many (anonymous clients by address): drop the oldest buckets."""
        if len(self._buckets) > max_buckets:
            for name, _ in sorted(self._buckets.items(), key=lambda item: item[1][1])[: len(self._buckets) // 2]:
                del self._buckets[name]
