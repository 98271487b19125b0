"""Token buckets for inbound rate limits: one bucket per caller identity (and per method, when configured), so
one noisy caller is slowed down without starving the others (Linkerd's per-identity fairness).

A bucket holds up to `burst` tokens and refills at `rate_per_s`; a call takes one token or is refused with
the time until the next one, which the rate-limit stage sends back as ``grpc-retry-pushback-ms``. Pure: the
time comes from an injected clock, and nothing here sleeps.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

from meshlet.call import method_matches

Clock = Callable[[], float]

DEFAULT_MAX_KEYS = 10_000


def default_burst(rate_per_s: float) -> int:
    """One second's worth of calls, and at least one, when the configuration leaves the burst out."""
    return max(1, math.ceil(rate_per_s))


class TokenBucket:
    """`burst` tokens, refilled continuously at `rate_per_s`. A new bucket starts full."""

    __slots__ = ("_clock", "_tokens", "_updated_at", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be above 0, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens: float = burst
        self._updated_at = clock()

    def try_take(self) -> bool:
        """Take one token; False, and nothing taken, when less than one is left."""
        return self.take() is None

    def take(self) -> float | None:
        """Take one token: None when taken, else (nothing taken) the seconds until one is there. One call on
        the hot path instead of `try_take()` then `retry_after_s()`."""
        tokens = self._refill()
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return None
        return (1.0 - tokens) / self.rate_per_s

    def retry_after_s(self) -> float:
        """Seconds until `try_take()` would succeed; 0.0 when it would now."""
        tokens = self._refill()
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    @property
    def is_full(self) -> bool:
        """Refilled to its burst: forgetting this bucket changes no later decision."""
        return self._refill() >= self.burst

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._updated_at
        tokens = self._tokens
        if elapsed > 0.0:
            tokens += elapsed * self.rate_per_s
            if tokens > self.burst:
                tokens = self.burst
            self._tokens = tokens
            self._updated_at = now
        return tokens

    def __repr__(self) -> str:
        return f"<TokenBucket {self._refill():.1f}/{self.burst} tokens, {self.rate_per_s:g}/s>"


class RateLimiter:
    """One TokenBucket per key (a caller's identity, or a (caller, method) pair), created on first use.

    At most `max_keys` buckets are kept, least recently used first out, so a flood of identities cannot grow
    memory without limit. A bucket idle long enough to be full again is worth nothing (a new one would start
    full too), so such buckets are dropped first, whenever a new key arrives.

    Trap: evicting a bucket that is *not* full hands its caller a fresh burst. That happens only while more
    than `max_keys` callers are active at once; size `max_keys` above the number of identities you expect.
    """

    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        TokenBucket(rate_per_s, burst, clock)  # validates the parameters once, here, not on a caller's first call
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def check(self, key: Hashable) -> float | None:
        """Take a token from `key`'s bucket: None when the call may go ahead, else the seconds until it could."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = self._new_bucket()
        else:
            buckets.move_to_end(key)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)

    def _new_bucket(self) -> TokenBucket:
        buckets = self._buckets
        while buckets:  # the least recently used first: drop those that have refilled
            oldest = next(iter(buckets.values()))
            if not oldest.is_full and len(buckets) < self.max_keys:
                break
            buckets.popitem(last=False)
        return TokenBucket(self.rate_per_s, self.burst, self._clock)

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate_per_s:g}/s burst {self.burst}: {len(self._buckets)}/{self.max_keys} keys>"


class MethodRateLimits:
    """Rate limiters keyed by method pattern (``"/pkg.Service/Method"``, ``"/pkg.Service/*"``, ``"*"``): for a
    method, the most specific pattern that matches applies, exact before service before ``*``. A pattern mapped
    to None exempts its methods from the less specific ones. Which limiter a method gets is remembered, for up
    to `max_methods` distinct methods (a sidecar forwards any method name a caller sends)."""

    __slots__ = ("_ordered", "_resolved", "max_methods")

    def __init__(self, limiters: Mapping[str, RateLimiter | None], max_methods: int = 1024) -> None:
        self._ordered = sorted(limiters.items(), key=lambda item: _specificity(item[0]))
        self._resolved: dict[str, RateLimiter | None] = {}
        self.max_methods = max_methods

    def for_method(self, method: str) -> RateLimiter | None:
        resolved = self._resolved
        if method in resolved:
            return resolved[method]
        limiter = next((limiter for pattern, limiter in self._ordered if method_matches(method, pattern)), None)
        if len(resolved) < self.max_methods:
            resolved[method] = limiter
        return limiter

    def __len__(self) -> int:
        """Methods whose limiter is remembered."""
        return len(self._resolved)

    def __repr__(self) -> str:
        return f"<MethodRateLimits {', '.join(pattern for pattern, _ in self._ordered)}>"


def _specificity(pattern: str) -> int:
    return 2 if pattern == "*" else 1 if pattern.endswith("/*") else 0
