"""Slow-consumer detection for the streaming transports: :class:`SendBuffer` (SSE)
counts what piles up in Twisted's buffer; :class:`HeldMessages` (WebSocket) keeps
whole messages out of it while the client is not reading."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["HeldMessages", "SendBuffer"]


@implementer(IPushProducer)
class SendBuffer:
    """Counts what a connection writes while its client is not reading.

    Registered as the producer of the connection's socket, it is paused by Twisted
    once the socket's send buffer is full and resumed once it drains; what is
    written in between piles up in memory, and past a limit the client is a slow
    consumer to disconnect rather than a reason to slow everyone down.
    """

    def __init__(self) -> None:
        self.paused = False
        self.queued = 0

    def overflows(self, size: int, limit: int) -> bool:
        """Account for writing ``size`` bytes; True when the backlog passes ``limit``."""
        if not self.paused:
            return False
        self.queued += size
        return self.queued > limit

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued = 0

    def stopProducing(self) -> None:
        self.paused = False


@implementer(IPushProducer)
class HeldMessages:
    """Whole messages held back while the socket's send buffer is full.

    Registered as the producer of a WebSocket's socket: while Twisted has it paused,
    :meth:`offer` keeps each message (not yet framed onto the wire) in order instead
    of writing it; :meth:`resumeProducing` writes them out again until the socket is
    full once more.  What sits in Twisted's own buffer is therefore at most about one
    socket buffer (64 KiB), so a close frame sent after :meth:`drop` reaches a client
    that starts reading again right behind it, instead of behind megabytes of
    publications the client can recover by seq anyway.

    Args:
        write: writes one message to the connection (called in order).

    Attributes:
        idle: True when :meth:`offer` would write a message at once (not paused,
            nothing held).  A plain attribute, kept up to date by every change,
            because the fan-out reads it once per subscriber per publication.
    """

    __slots__ = ("_write", "paused", "_held", "held_bytes", "idle")

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write
        self.paused = False
        # Created when first needed: an empty deque is about 600 bytes, on every
        # connection, and most never hold anything.
        self._held: deque[tuple[Any, int]] | None = None
        self.held_bytes = 0
        self.idle = True

    def offer(self, message: Any, size: int, limit: int) -> bool:
        """Write ``message`` now or hold it; False when the held backlog passes ``limit``."""
        if self.idle:
            self._write(message)
            return True
        if self._held is None:
            self._held = deque()
        self._held.append((message, size))
        self.held_bytes += size
        self.idle = False
        return self.held_bytes <= limit

    def drop(self) -> int:
        """Forget every held message; returns how many there were."""
        count = len(self._held) if self._held else 0
        self._held = None
        self.held_bytes = 0
        self.idle = not self.paused
        return count

    def pauseProducing(self) -> None:
        self.paused = True
        self.idle = False

    def resumeProducing(self) -> None:
        self.paused = False
        # Writing may fill the socket again: Twisted then pauses us from inside
        # write(), and the rest waits for the next resume.  Still not idle while
        # held messages go out, so that nothing offered meanwhile overtakes them.
        while self._held and not self.paused:
            message, size = self._held.popleft()
            self.held_bytes -= size
            self._write(message)
        if not self._held:
            self._held = None
        self.idle = not self.paused and self._held is None

    def stopProducing(self) -> None:
        self.paused = False
        self.drop()
