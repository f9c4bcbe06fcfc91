"""Closing a Site's HTTP connections at the end of a drain, after their answers are out.

Answering a held poll or ending an SSE stream only puts bytes in the socket's
buffer; if the process exits then, the reactor drops every connection without
writing them (the client sees "server disconnected without sending a response").
So the gateway's own Site keeps the set of its open HTTP connections, and a drain:

1. turns keep-alive off on all of them (:meth:`OpenConnections.stop_keepalive`), so
   each one closes itself once its current answer is written;
2. answers every client (``Gateway.drain``);
3. closes the connections that are idle and waits until every one is gone
   (:meth:`OpenConnections.close_and_wait`): ``loseConnection`` writes what is
   buffered first, so the wait ends when the last answer is on the wire, or at the
   deadline.

Connections upgraded to WebSocket are not HTTP connections any more (Autobahn takes
their transport; ``channel.transport`` is then None): the gateway tracks those
itself, and their close handshake ends them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

__all__ = ["OpenConnections"]


class OpenConnections:
    """The open HTTP connections (``HTTPChannel``\\s) of one Site."""

    def __init__(self) -> None:
        self._open: set[Any] = set()
        self._waiters: list[defer.Deferred[None]] = []
        self.draining = False

    def __len__(self) -> int:
        self._forget_upgraded()
        return len(self._open)

    def opened(self, channel: Any) -> None:
        self._open.add(channel)
        if self.draining:
            channel.persistent = False

    def upgraded(self, channel: Any) -> None:
        """``channel`` handed its socket to a WebSocket: no longer an HTTP connection."""
        self._open.discard(channel)
        self._check()

    def closed(self, channel: Any) -> None:
        self._open.discard(channel)
        self._check()

    def _forget_upgraded(self) -> None:
        for channel in [c for c in self._open if c.transport is None]:
            self._open.discard(channel)

    def _check(self) -> None:
        if self._waiters and not len(self):
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def stop_keepalive(self) -> None:
        """From now on every connection closes after its current response."""
        self.draining = True
        for channel in self._open:
            channel.persistent = False

    def close_and_wait(self, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
        """Close idle connections (after writing what they buffered) and fire once
        every connection is gone, or after ``timeout`` seconds."""
        self.stop_keepalive()
        self._forget_upgraded()
        for channel in list(self._open):
            if not channel.requests:
                channel.transport.loseConnection()
        if not len(self):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        timer = clock.callLater(timeout, self._timed_out, d)

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(cancel_timer)

    def _timed_out(self, d: defer.Deferred[None]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
            d.callback(None)
