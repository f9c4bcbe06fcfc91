"""Client-side protocol state, sans-I/O: what :mod:`gateway.client` decides, as plain values.

* :class:`Positions`: the last delivered position of each channel, the dedup rule
  (anything at or below it is dropped) and the cursor built from it (PROTOCOL section 1).
* :class:`Backoff`: reconnect delays, exponential with full jitter, capped, reset after a
  stable connection, and the short random delay after a 1001 (node draining).
* :func:`refresh_delay` and :func:`jwt_exp`: when to ask for a fresh token.
* :class:`Liveness`: when to send a ``ping`` and when a quiet connection is dead.
* :class:`SSEParser`: a ``text/event-stream`` body, fed in arbitrary chunks.

Time comes in as ``now`` arguments and randomness as a ``random`` callable; nothing here
schedules anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from gateway.core.cursor import encode_cursor
from gateway.core.model import Position

__all__ = [
    "Backoff",
    "Liveness",
    "Positions",
    "SSEEvent",
    "SSEParser",
    "jwt_exp",
    "refresh_delay",
]


class Positions:
    """Per-channel positions of what was delivered to the application.

    :meth:`accept` says whether a server event is new (and moves the position) or a
    repeat to drop; :meth:`since` and :meth:`cursor` are what a reconnect resumes from.
    """

    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}

    def get(self, channel: str) -> Position | None:
        return self._positions.get(channel)

    def set(self, channel: str, position: Position) -> None:
        self._positions[channel] = position

    def set_if_absent(self, channel: str, position: Position) -> None:
        """Where a channel has no position yet, start it at ``position`` (a stream's "now")."""
        self._positions.setdefault(channel, position)

    def forget(self, channel: str) -> None:
        self._positions.pop(channel, None)

    def accept(self, event: Mapping[str, Any]) -> bool:
        """True when ``event`` (a ``message`` or ``reset``) should be delivered.

        A ``message`` at or below the channel's position in the same epoch is a repeat.
        A ``reset`` in the same epoch that does not move the position forward carries no
        news (within an epoch the server never resets backwards). Anything delivered
        becomes the channel's position.
        """
        kind = event.get("type")
        channel, epoch, seq = event.get("channel"), event.get("epoch"), event.get("seq")
        if kind not in ("message", "reset") or not isinstance(channel, str):
            return False
        if not isinstance(epoch, str) or type(seq) is not int:
            return False
        current = self._positions.get(channel)
        if current is not None and current.epoch == epoch and seq <= current.seq:
            return False
        self._positions[channel] = Position(epoch, seq)
        return True

    def subscribed(self, channel: str, epoch: str, seq: int) -> None:
        """A ``subscribed`` reply: a channel without a position starts at (epoch, seq).

        With a position, the reply is followed by the missed messages or a ``reset``,
        which move it.
        """
        self.set_if_absent(channel, Position(epoch, seq))

    def since(self, channel: str) -> dict[str, Any] | None:
        """The ``since`` of a WebSocket ``subscribe`` for ``channel`` (None: from now)."""
        position = self._positions.get(channel)
        return None if position is None else position.to_json()

    def cursor(self, channels: Iterable[str]) -> str | None:
        """A cursor with the known positions of ``channels`` (None when there are none)."""
        known = {c: self._positions[c] for c in channels if c in self._positions}
        return encode_cursor(known) if known else None


class Backoff:
    """Reconnect delays: ``random() * min(cap, base * 2**attempt)`` (full jitter).

    The attempt count goes back to 0 once a connection has stayed up for ``stable``
    seconds; after a 1001 (the node is going away) the delay is ``random() * after_1001``.
    """

    def __init__(
        self,
        random: Callable[[], float],
        base: float = 0.5,
        cap: float = 30.0,
        stable: float = 30.0,
        after_1001: float = 2.0,
    ) -> None:
        self.random = random
        self.base = base
        self.cap = cap
        self.stable = stable
        self.after_1001 = after_1001
        self.attempt = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        if self._connected_at is not None and now - self._connected_at >= self.stable:
            self.attempt = 0
        self._connected_at = None

    def next_delay(self, going_away: bool = False) -> float:
        """The delay before the next attempt (and count it)."""
        if going_away:
            return self.random() * self.after_1001
        delay = self.random() * min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 64)
        return delay


def refresh_delay(exp: float, now: float, ahead: float = 30.0, short: float = 60.0) -> float:
    """Seconds from ``now`` until a token expiring at ``exp`` should be replaced:
    ``ahead`` seconds before ``exp``, or halfway for a token with under ``short`` seconds
    left (never negative)."""
    remaining = exp - now
    if remaining < short:
        return max(0.0, remaining / 2)
    return remaining - ahead


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only to schedule a refresh), or None
    when ``token`` is not a JWT or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


class Liveness:
    """Dead-connection detection from the last time anything arrived.

    ``check(now)`` answers ``"ok"``, ``"ping"`` (quiet for ``ping_after`` seconds and no
    ping sent since: send one) or ``"dead"`` (nothing for ``dead_after`` seconds);
    ``next_check(now)`` is when to ask again.
    """

    def __init__(self, ping_after: float | None, dead_after: float, now: float) -> None:
        self.ping_after = ping_after
        self.dead_after = dead_after
        self.last_seen = now
        self._pinged = False

    def seen(self, now: float) -> None:
        self.last_seen = now
        self._pinged = False

    def check(self, now: float) -> str:
        quiet = now - self.last_seen
        if quiet >= self.dead_after:
            return "dead"
        if self.ping_after is not None and quiet >= self.ping_after and not self._pinged:
            self._pinged = True
            return "ping"
        return "ok"

    def next_check(self, now: float) -> float:
        """Seconds from ``now`` to the next moment :meth:`check` may answer differently."""
        moments = [self.last_seen + self.dead_after]
        if self.ping_after is not None and not self._pinged:
            moments.append(self.last_seen + self.ping_after)
        return max(0.0, min(moments) - now)


@attrs.frozen
class SSEEvent:
    """One dispatched Server-Sent Event (``event`` defaults to ``message``)."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Incremental ``text/event-stream`` parser (the WHATWG rules the gateway needs).

    :meth:`feed` takes bytes in any chunking and returns the events completed by them;
    comment lines (``: ping``) are counted in :attr:`comments`. ``retry`` is ignored.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_fields = False
        self.comments = 0
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, after = cut
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[after:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._has_fields:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            if self._id is not None:
                self.last_id = self._id
            self._event, self._data, self._id, self._has_fields = "", [], None, False
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        else:
            return None
        self._has_fields = True
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next) for CRLF, LF or CR endings; None when
    no line is complete (a CR at the very end may still be followed by LF)."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, lf + 1
    if cr + 1 < len(buffer):
        return cr, cr + (2 if buffer[cr + 1 : cr + 2] == b"\n" else 1)
    return None
