"""Idempotency keys on publications (docs/protocol.md sections 4 and 7).

A publication may carry an ``idempotency_key``: a string of 1-64 characters chosen
by the client.  A repeat of the same key on the same channel within
:data:`IDEMPOTENCY_TTL` seconds publishes nothing and is answered with the first
publication's channel, seq and epoch, so a client that lost an ack can retry
without publishing twice.

This module holds what the brokers share and can be tested with plain values: the
key's validation and :class:`IdempotencyCache`, the in-process memory of keys with
their expiry (the Redis broker keeps its keys in Redis instead, inside the atomic
publish script).

Theory of operation of the cache: every key lives exactly ``ttl`` seconds from the
publication that first used it, so the order in which keys were remembered is the
order in which they expire.  They are kept in one insertion-ordered map for the
whole broker; :meth:`IdempotencyCache.expire` pops from its old end until it meets
a live key, which costs O(1) per key over its life.  Memory therefore holds at most
the keys used in the last ``ttl`` seconds (plus those of the time since the last
expiry run), however many distinct keys a channel sees over time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs

from gateway.errors import BadRequest

__all__ = [
    "IDEMPOTENCY_TTL",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "FirstPublication",
    "IdempotencyCache",
    "validate_idempotency_key",
]

# Seconds a key is remembered after the publication that first used it.
IDEMPOTENCY_TTL = 300.0
MAX_IDEMPOTENCY_KEY_LENGTH = 64


def validate_idempotency_key(value: Any) -> str:
    """Return ``value`` if it is a valid idempotency key.

    A key is a string of 1 to 64 characters (Unicode code points) that UTF-8 can
    encode.

    Raises:
        BadRequest: for any other value (another type, ``null``, ``""``, 65
            characters, a string holding an unpaired surrogate).
    """
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise BadRequest(f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("idempotency_key is not encodable as UTF-8 (an unpaired surrogate)") from None
    return value


@attrs.frozen
class FirstPublication:
    """What a repeat is answered with: the first publication's seq, epoch and acceptance time."""

    seq: int
    epoch: str
    ts: int


class IdempotencyCache:
    """Keys remembered per channel for ``ttl`` seconds (see the module docstring).

    Time comes in as ``now`` arguments (seconds on any monotonic-enough clock; the
    memory broker uses the reactor's).

    Args:
        ttl: seconds a key is remembered after it was first used.
    """

    def __init__(self, ttl: float = IDEMPOTENCY_TTL) -> None:
        self.ttl = ttl
        # (channel, key) -> (deadline, first publication); oldest first.
        self._entries: OrderedDict[tuple[str, str], tuple[float, FirstPublication]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, channel: str, key: str, now: float) -> FirstPublication | None:
        """The first publication that used ``key`` on ``channel`` within the ttl, or None."""
        entry = self._entries.get((channel, key))
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def remember(self, channel: str, key: str, first: FirstPublication, now: float) -> None:
        """Remember ``key`` on ``channel`` for ``ttl`` seconds from ``now``, replacing
        any earlier entry (one whose first publication's epoch is gone)."""
        self.expire(now)
        entry_key = (channel, key)
        self._entries.pop(entry_key, None)
        self._entries[entry_key] = (now + self.ttl, first)

    def expire(self, now: float) -> int:
        """Forget every key whose ttl has passed; return how many."""
        entries = self._entries
        dropped = 0
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[0] > now:
                break
            entries.popitem(last=False)
            dropped += 1
        return dropped
