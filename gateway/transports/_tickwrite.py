"""One ``send()`` per connection per reactor turn, with no write-readiness churn.

Why
---
``transport.write()`` on a Twisted TCP connection appends to the connection's
buffer and registers the socket for write readiness (``startWriting``: an
``epoll_ctl``); on the next reactor turn the reactor calls ``doWrite``, which
sends and unregisters the socket again (``stopWriting``: another
``epoll_ctl``).  A fan-out of one frame to 1,000 connections therefore costs
1,000 ``send()``, 2,000 ``epoll_ctl`` and 1,000 reactor dispatches.

Sending each frame at once instead is no better: the sends are then spread over
the whole fan-out loop and every client is woken once per frame; measured on
bench/fanout.py it cost more CPU, not less.

What
----
:meth:`TickWriter.write` appends the bytes to the *same* buffer Twisted's own
``write()`` uses, but without registering the socket, and remembers the
connection.  Once the reactor has handled everything that was ready (a
``callLater(0)``, which runs right after the current poll's events), the
writer sends each remembered connection's buffer with one ``send()``
(``doWrite``); only a connection whose socket did not take everything is
registered with the reactor, which then finishes it as usual.

Order
-----
There is one buffer per connection, Twisted's, and every write appends to it:
ours, Autobahn's (replies, pings, close frames through ``transport.write``) and
twisted.web's.  Whoever sends it (our flush or the reactor's ``doWrite``) sends
it from the front.  So bytes reach the wire in the order they were written,
whichever path wrote them; nothing is held in a queue of our own.

Flow control is Twisted's: the append calls ``_maybePauseProducer`` like
``write()`` does, so a registered streaming producer (the WebSocket's
:class:`~gateway.transports._backpressure.HeldMessages`, SSE's
:class:`~gateway.transports._backpressure.SendBuffer`) is paused past
``bufferSize`` and resumed by ``doWrite`` once the buffer drains.

This module is the one place that touches Twisted's private write state
(``_tempDataBuffer``, ``_tempDataLen``, ``dataBuffer``/``offset``,
``_maybePauseProducer``, ``_writeDisconnected``, ``_writeDisconnecting``) and twisted.web's request
internals for :func:`write_body`; tests/integration/test_tickwrite.py pins what it relies
on.  Any transport that is not a plain TCP connection (TLS, a test's
StringTransport, a ProtocolWrapper) gets a plain ``write()``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import toChunk

__all__ = ["TickWriter", "body_transport", "tick_writer", "write_body"]


# The connection classes of plain TCP sockets (tested by identity on the hot path).
_TCP_TYPES = frozenset({tcp.Server, tcp.Client})


def _plain_tcp(transport: Any) -> bool:
    return isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)


class TickWriter:
    """Batches writes per connection until the end of the reactor turn (see module doc).

    Args:
        clock: the reactor (its ``callLater``).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # The connections to flush, in the order they were first written to (a
        # dict keyed by the transport itself: Twisted's connections hash by identity).
        self._pending: dict[Any, None] = {}
        self._call: Any = None
        # Connections flushed, and sends that left data for the reactor (for tests).
        self.flushes = 0
        self.handed_over = 0

    @property
    def pending(self) -> int:
        """Connections with bytes waiting for the end of this reactor turn."""
        return len(self._pending)

    def write(self, transport: Any, data: bytes) -> None:
        """Write ``data`` to ``transport``: sent at the end of this reactor turn."""
        if (
            type(transport) not in _TCP_TYPES
            or transport.TLS
            or transport.disconnecting
            or transport._writeDisconnecting
            or not transport.connected
            or transport._writeDisconnected
            or not data
        ):
            self._write_otherwise(transport, data)
            return
        transport._tempDataBuffer.append(data)
        size = transport._tempDataLen = transport._tempDataLen + len(data)
        if size + len(transport.dataBuffer) > transport.bufferSize:
            # Only then can _maybePauseProducer() do anything (_isSendBufferFull).
            transport._maybePauseProducer()
        self._pending[transport] = None
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    @staticmethod
    def _write_otherwise(transport: Any, data: bytes) -> None:
        if not _plain_tcp(transport) or transport.disconnecting or transport._writeDisconnecting:
            # Not TCP, or closing (Twisted is already writing it out): its own path.
            transport.write(data)
        # else lost, or nothing to write: dropped, as FileDescriptor.write() does.

    def flush(self) -> None:
        """Send what every pending connection has buffered (one ``send()`` each)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, {}
        for transport in pending:
            self._flush_one(transport)

    def _flush_one(self, transport: Any) -> None:
        if not transport.connected or transport.disconnecting or transport._writeDisconnecting:
            return  # gone, or Twisted's own write pass owns it now
        size = transport._tempDataLen
        if transport.offset >= len(transport.dataBuffer):
            if not size:
                return  # the reactor sent it meanwhile
            if size <= transport.SEND_LIMIT and not transport.producerPaused:
                # The common case: nothing older waits in Twisted's buffer and only
                # our appends are there.  Send them with one send() and, when it
                # takes everything, leave the buffer empty as doWrite() would (the
                # socket was never registered, so there is nothing to unregister,
                # and no paused producer to resume).  Anything else, a partial
                # send or an error included, is handed to doWrite() and the reactor.
                chunks = transport._tempDataBuffer
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                try:
                    sent = transport.socket.send(data)
                except OSError:
                    sent = -1  # EAGAIN, or broken: doWrite() below tells which
                if sent == size:
                    self.flushes += 1
                    transport._tempDataBuffer = []
                    transport._tempDataLen = 0
                    if transport.offset:
                        # (Else dataBuffer is b"" already.)  Not assigned when
                        # unchanged: a slimmed idle connection reads both from
                        # its class (_compact.shrink), and putting them back in
                        # its dict would grow the dict again.
                        transport.dataBuffer = b""
                        transport.offset = 0
                    return
                if sent > 0:
                    # The socket is full: the unsent rest goes where doWrite()
                    # expects it, and the reactor's write pass takes over.
                    self.flushes += 1
                    self.handed_over += 1
                    transport._tempDataBuffer = []
                    transport._tempDataLen = 0
                    transport.dataBuffer = data
                    transport.offset = sent
                    transport.startWriting()
                    return
        self.flushes += 1
        # doWrite sends, and once the buffer is empty unregisters the socket
        # (nothing to do if it was not registered) and resumes a paused producer.
        # Not disconnecting, so the only non-None result is a failed send.
        failed = transport.doWrite()
        if failed is not None or transport._tempDataLen or transport.offset < len(transport.dataBuffer):
            # The socket is full (or broken): the reactor's write pass takes over,
            # and on a broken socket it closes the connection as usual.
            self.handed_over += 1
            transport.startWriting()


def tick_writer(gateway: Any) -> TickWriter:
    """The gateway's :class:`TickWriter` (one per gateway, on its reactor)."""
    writer = getattr(gateway, "_tick_writer", None)
    if writer is None:
        writer = gateway._tick_writer = TickWriter(gateway.reactor)
    return writer


def body_transport(request: Any) -> Any:
    """The plain TCP connection a response's body bytes may be written to directly
    (:func:`write_body`), or None when they must go through ``request.write``:
    headers not yet written, a finished or disconnected request, a HEAD request,
    no channel, or a connection that is not plain TCP (TLS, HTTP/2, a test's)."""
    channel = getattr(request, "channel", None)
    transport: Any = getattr(channel, "transport", None)
    if (
        (type(transport) not in _TCP_TYPES and not _plain_tcp(transport))
        or transport.TLS
        or not request.startedWriting
        or request.finished
        or request._disconnected
        or request.method == b"HEAD"
    ):
        return None
    return transport


def write_body(writer: TickWriter, request: Any, data: bytes, chunk: bytes | None = None) -> None:
    """``request.write(data)`` for a response whose headers are out, through ``writer``.

    Frames ``data`` as ``Request.write`` does (a chunk when the response is
    chunked; ``chunk``, when given, is that chunk already built) and counts it in
    ``sentLength``; anything unusual (see :func:`body_transport`) is left to
    ``request.write``.
    """
    transport = body_transport(request)
    if transport is None or not data:
        request.write(data)
        return
    request.sentLength += len(data)
    if request.chunked:
        writer.write(transport, chunk if chunk is not None else b"".join(toChunk(data)))
    else:
        writer.write(transport, data)
