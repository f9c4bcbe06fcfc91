"""Value objects shared by the core, the brokers and the transports."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Publication", "Position", "HistoryResult"]


@attrs.frozen
class Position:
    """The last publication of one channel that a client has seen."""

    epoch: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq}


@attrs.frozen
class Publication:
    """One accepted publication, as ordered by the broker.

    Attributes:
        channel: the channel it was published to.
        seq: its sequence number in ``epoch`` (the first is 1).
        epoch: the channel's epoch when it was accepted.
        data: the JSON value published.
        ts: acceptance time, milliseconds since the Unix epoch.
        sender: the authenticated publisher (the ``from`` field), or None.
        duplicate: True for the answer to a repeated ``idempotency_key``
            (docs/protocol.md section 7): nothing was published; ``seq``,
            ``epoch`` and ``ts`` are the first publication's, ``data`` and
            ``sender`` the repeat's (the first one's are not kept for this).
            Never delivered to subscribers.
    """

    channel: str
    seq: int
    epoch: str
    data: Any
    ts: int
    sender: str | None = None
    duplicate: bool = False

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)

    def to_event(self) -> dict[str, Any]:
        """The ``message`` server event of docs/protocol.md section 3."""
        event: dict[str, Any] = {
            "type": "message",
            "channel": self.channel,
            "seq": self.seq,
            "epoch": self.epoch,
            "data": self.data,
            "ts": self.ts,
        }
        if self.sender is not None:
            event["from"] = self.sender
        return event


@attrs.frozen
class HistoryResult:
    """What a broker knows of a channel's stream relative to a position.

    Attributes:
        top: the channel's current epoch and latest seq (seq 0 when empty).
        publications: the publications after the requested position, in seq
            order, when history holds every one of them; None when it cannot
            continue from that position (another epoch, a position ahead of
            the top, or a gap older than history): the caller must reset.
    """

    top: Position
    publications: tuple[Publication, ...] | None
