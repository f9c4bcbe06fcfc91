"""A channel's stream: its epoch, its seq counter and its bounded history.

Pure state: time comes in as ``now`` (seconds since the Unix epoch) on every call.
The in-memory broker keeps one :class:`Stream` per channel; the Redis broker keeps
the same data in Redis and uses :func:`recover` to answer recovery questions the
same way.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

from gateway.core.model import HistoryResult, Position, Publication

__all__ = ["Stream", "recover"]


def recover(top: Position, history: Sequence[Publication], since: Position | None) -> HistoryResult:
    """Decide whether a client at ``since`` can continue from ``history``.

    Args:
        top: the channel's epoch and latest seq.
        history: the publications the channel still keeps, oldest first; they
            are the newest ones, ending at ``top.seq``.
        since: the client's position, or None for "from now".

    Returns:
        A :class:`HistoryResult` whose ``publications`` are those after
        ``since`` (empty for "now"), or None when the client must be reset:
        another epoch, a position ahead of the top, or a gap older than
        history.
    """
    if since is None:
        return HistoryResult(top, ())
    if since.epoch != top.epoch or since.seq > top.seq or since.seq < 0:
        return HistoryResult(top, None)
    if since.seq == top.seq:
        return HistoryResult(top, ())
    if not history or history[0].seq > since.seq + 1:
        return HistoryResult(top, None)
    start = since.seq + 1 - history[0].seq
    return HistoryResult(top, tuple(itertools.islice(history, start, None)))


class Stream:
    """Epoch, seq and history of one channel, bounded by count and age.

    Args:
        channel: the channel name.
        epoch: this stream's epoch (a new stream always gets a new one).
        size: the most publications kept.
        ttl: the oldest a kept publication may be, in seconds.
    """

    def __init__(self, channel: str, epoch: str, size: int, ttl: float) -> None:
        self.channel = channel
        self.epoch = epoch
        self.size = size
        self.ttl = ttl
        self.seq = 0
        self.last_publish = 0.0
        self._history: deque[Publication] = deque()

    @property
    def top(self) -> Position:
        return Position(self.epoch, self.seq)

    def append(self, data: Any, now: float, sender: str | None = None) -> Publication:
        """Assign the next seq to ``data`` and keep it in history."""
        self.seq += 1
        self.last_publish = now
        pub = Publication(self.channel, self.seq, self.epoch, data, int(now * 1000), sender)
        self._history.append(pub)
        self.trim(now)
        return pub

    def trim(self, now: float) -> None:
        """Drop what is over the count or older than the ttl."""
        while len(self._history) > self.size:
            self._history.popleft()
        oldest_ms = (now - self.ttl) * 1000
        while self._history and self._history[0].ts < oldest_ms:
            self._history.popleft()

    def history(self, now: float) -> list[Publication]:
        """The publications still kept, oldest first."""
        self.trim(now)
        return list(self._history)

    def recover(self, since: Position | None, now: float) -> HistoryResult:
        """See :func:`recover`."""
        self.trim(now)
        return recover(self.top, self._history, since)
