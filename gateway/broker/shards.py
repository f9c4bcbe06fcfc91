"""What ``/metrics`` and ``/readyz`` say about each Redis shard: plain values, no I/O.

A *shard* is one place a channel's keys can live: the one Redis of ``redis://``, the
master named in ``redis+sentinel://`` (whichever server holds that role), and, in a
cluster, one master with its slots.  The Redis broker keeps one :class:`ShardStats` per
shard and bumps it from its connection events and command completions.
"""

from __future__ import annotations

import bisect

__all__ = ["LATENCY_BUCKETS", "ShardStats"]

# Upper bounds (seconds) of the command latency histogram; +Inf is implied.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ShardStats:
    """Up/down, command latency and pub/sub reconnects of one shard.

    Args:
        name: the shard's label (``host:port``, or the Sentinel master name).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = False
        self.pubsub_reconnects = 0
        # counts[i]: observations <= LATENCY_BUCKETS[i] and above the previous bound;
        # the last slot is above every bound.
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one command that took ``seconds`` (answered or failed)."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out
