"""Token buckets for ``--publish-rate`` (docs/protocol.md section 8), sans-I/O.

Theory of operation
-------------------
A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens a
second; a publication takes one.  Time is a plain ``now`` argument (seconds, from
any clock that only goes forward; a step back is treated as no time passing), so
the arithmetic is tested with plain numbers.

:class:`BucketSet` keeps one bucket per key (``ws:<connection>``, ``sub:<sub>``,
``key:<api key digest>``, ``addr:<client address>``; see :func:`http_rate_key`)
in bounded memory:

* a bucket untouched for ``burst / rate`` seconds is full again, and a full bucket
  is exactly what a new key gets, so such buckets are forgotten (checked from the
  least recently used end on every take: amortised O(1));
* at most ``max_keys`` buckets are kept; beyond that the least recently used one
  is evicted, so a flood of distinct client addresses cannot grow memory without
  bound.  An evicted key starts again with a full bucket: eviction can only be
  lenient, never refuse a publication that the limit allows.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

from gateway.core.auth import Identity

__all__ = ["DEFAULT_MAX_KEYS", "BucketSet", "TokenBucket", "http_rate_key", "retry_after_header"]

DEFAULT_MAX_KEYS = 100_000


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full.

    Args:
        rate: tokens gained per second (> 0).
        burst: the most tokens held (>= 1 for a take of one ever to succeed).
        now: the time the bucket is created (full) at.
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        # A clock that stepped back refills nothing, and the bucket goes on from there.
        self.last = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens at ``now``.

        Returns:
            0.0 when taken; otherwise the seconds until ``cost`` tokens will be there
            (nothing is taken then).  A ``cost`` above ``burst`` never fits:
            ``math.inf``.
        """
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if cost > self.burst:
            return math.inf
        return (cost - self.tokens) / self.rate

    def full_at(self) -> float:
        """The time at which the bucket is full again if nothing is taken."""
        return self.last + (self.burst - self.tokens) / self.rate


class BucketSet:
    """One :class:`TokenBucket` per key, in bounded memory (see the module docstring).

    Args:
        rate: tokens per second of every bucket.
        burst: the burst of every bucket (default: ``rate``, at least 1).
        max_keys: the most buckets kept at once.
    """

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        burst = max(rate, 1.0) if burst is None else burst
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._idle = burst / rate
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket; as :meth:`TokenBucket.take`."""
        self._forget_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (e.g. its connection closed)."""
        self._buckets.pop(key, None)

    def _forget_idle(self, now: float) -> None:
        # Oldest first: a bucket untouched for burst/rate seconds is full whatever
        # it held, and so are all that were touched before it.
        buckets = self._buckets
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if now - bucket.last < self._idle:
                return
            del buckets[key]


def http_rate_key(identity: Identity | None, address: str, api_key: str | None = None) -> str:
    """The bucket key of an HTTP publish (docs/protocol.md section 8): one per
    identity (``sub:<sub>``), per API key (``key:<digest>``, never the key itself),
    else per client address (``addr:<host>``).

    Args:
        identity: who the request authenticated as (None or open: anonymous).
        address: the client's address (host).
        api_key: the API key the request presented, for ``kind == "api-key"``.
    """
    if identity is not None and identity.kind == "token" and identity.sub is not None:
        return "sub:" + identity.sub
    if identity is not None and identity.kind == "api-key" and api_key is not None:
        return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]
    return "addr:" + address


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` in whole seconds: rounded up, at least 1."""
    if math.isinf(seconds) or math.isnan(seconds):
        return 1
    return max(1, math.ceil(seconds))
