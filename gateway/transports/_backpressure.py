"""Slow-consumer detection shared by the streaming transports (WebSocket, SSE)."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["SendBuffer"]


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
