"""gateway/transports/_tickwrite.py over real TCP connections: what it relies on in
Twisted (the private write state of ``tcp.Connection``) and what it promises (bytes
in write order, one send per connection per reactor turn, no write registration
when the socket takes everything, Twisted's flow control kept)."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from gateway.testing import sleep
from gateway.transports._tickwrite import TickWriter, body_transport, write_body

from .conftest import wait_until


class Keep(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)


@pytest_twisted.async_yield_fixture
async def conn():
    """A server-side ``tcp.Server`` transport and a plain blocking client socket."""
    factory = protocol.Factory.forProtocol(Keep)
    factory.made = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    server = await factory.made
    yield server.transport, client
    client.close()
    server.transport.abortConnection()
    await port.stopListening()
    await sleep(0)


def received(client: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


async def read_until(client: socket.socket, size: int) -> bytes:
    data = b""

    def more() -> bool:
        nonlocal data
        data += received(client)
        return len(data) >= size

    await wait_until(more, what=f"{size} bytes")
    return data


async def test_private_write_state_is_what_the_writer_expects(conn):
    """The attributes the writer reads and calls exist on a connected tcp.Server."""
    transport, _ = conn
    assert isinstance(transport, tcp.Connection)
    assert transport.TLS is False
    assert transport._tempDataBuffer == [] and transport._tempDataLen == 0
    assert transport.dataBuffer == b"" and transport.offset == 0
    assert transport._writeDisconnected is False and transport._writeDisconnecting is False
    assert callable(transport._maybePauseProducer) and callable(transport.doWrite)


async def test_held_until_the_end_of_the_turn_then_sent_without_registering(conn):
    """Written bytes wait in Twisted's buffer, unregistered, and go out at the end of the turn."""
    transport, client = conn
    writer = TickWriter(reactor)
    writer.write(transport, b"one,")
    writer.write(transport, b"two,")
    assert transport._tempDataBuffer == [b"one,", b"two,"]
    assert transport not in reactor.getWriters()
    assert writer.pending == 1
    assert await read_until(client, 8) == b"one,two,"
    assert writer.pending == 0 and writer.flushes == 1 and writer.handed_over == 0
    assert transport not in reactor.getWriters()
    assert transport._tempDataBuffer == [] and transport.dataBuffer == b""


async def test_a_flush_leaves_what_equals_the_class_default_out_of_the_dict(conn):
    """A slimmed idle connection reads dataBuffer and offset from its class
    (_compact.shrink): a flush that takes everything does not put them back; one
    after an older buffer was fully sent at an offset starts afresh."""
    from gateway.transports._compact import shrink

    transport, client = conn
    shrink(transport)
    assert "dataBuffer" not in vars(transport) and "offset" not in vars(transport)
    writer = TickWriter(reactor)
    writer.write(transport, b"one,")
    assert await read_until(client, 4) == b"one,"
    assert "dataBuffer" not in vars(transport) and "offset" not in vars(transport)
    transport.dataBuffer, transport.offset = b"sent", 4  # all of it sent already
    writer.write(transport, b"two,")
    assert await read_until(client, 4) == b"two,"
    assert transport.dataBuffer == b"" and transport.offset == 0


async def test_order_kept_with_plain_writes_in_between(conn):
    """Interleaved transport.write() calls (Autobahn's replies, close frames) stay in order."""
    transport, client = conn
    writer = TickWriter(reactor)
    expected = b""
    for i in range(50):
        piece = b"t%d," % i
        if i % 3 == 0:
            transport.write(b"w" + piece)
            expected += b"w" + piece
        else:
            writer.write(transport, piece)
            expected += piece
    assert await read_until(client, len(expected)) == expected


async def test_a_full_socket_is_handed_to_the_reactor_and_completes(conn):
    """More than the socket takes: the rest is left to the reactor, and all of it arrives in order."""
    transport, client = conn
    writer = TickWriter(reactor)
    blob = bytes(range(256)) * 40_000  # 10 MB, far over any socket buffer
    writer.write(transport, blob)
    writer.write(transport, b"end")
    writer.flush()
    assert writer.handed_over == 1
    assert transport in reactor.getWriters()
    got = await read_until(client, len(blob) + 3)
    assert got == blob + b"end"
    await wait_until(lambda: transport not in reactor.getWriters(), what="write registration dropped")


async def test_a_partial_send_under_the_send_limit_leaves_the_rest_to_the_reactor(conn):
    """A send() that takes only part (a small socket buffer, a client not reading):
    the rest waits in Twisted's buffer at the right offset, the reactor finishes it,
    and everything arrives once, in order."""
    transport, client = conn
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer = TickWriter(reactor)
    blob = bytes(range(256)) * 400  # 100 KiB: under SEND_LIMIT, over both buffers
    assert len(blob) < transport.SEND_LIMIT
    writer.write(transport, blob[:50_000])
    writer.write(transport, blob[50_000:])
    writer.flush()
    assert writer.handed_over == 1 and writer.flushes == 1
    assert transport in reactor.getWriters()
    assert 0 < transport.offset < len(transport.dataBuffer) == len(blob)
    assert transport._tempDataBuffer == [] and transport._tempDataLen == 0
    transport.write(b"+after")
    got = await read_until(client, len(blob) + 6)
    assert got == blob + b"+after"
    await wait_until(lambda: transport not in reactor.getWriters(), what="write registration dropped")


async def test_a_broken_socket_is_closed_by_the_reactor_as_usual(conn):
    """send() failing (the client reset the connection) is left to doWrite(): the
    connection is lost the usual way and nothing stays pending."""
    transport, client = conn
    lost = defer.Deferred()
    transport.protocol.connectionLost = lambda reason: lost.callback(reason.type)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # an RST, there at once on loopback; the reactor has not read it yet
    writer = TickWriter(reactor)
    writer.write(transport, b"x" * 1000)
    writer.flush()
    # send() failed, doWrite() said so, and the reactor's write pass took it.
    assert writer.handed_over == 1
    assert transport in reactor.getWriters()
    assert await lost is not None
    assert writer.pending == 0
    assert not transport.connected


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


async def test_flow_control_pauses_and_resumes_the_producer(conn):
    """Past bufferSize the streaming producer is paused, as by write(); resumed once drained."""
    transport, client = conn
    producer = Producer()
    transport.registerProducer(producer, True)
    writer = TickWriter(reactor)
    writer.write(transport, b"x" * (transport.bufferSize + 1))
    assert producer.events == ["pause"]
    big = b"y" * 5_000_000
    writer.write(transport, big)
    total = transport.bufferSize + 1 + len(big)
    await read_until(client, total)
    await wait_until(lambda: producer.events[-1:] == ["resume"], what="resume")
    # As with write(): paused at each write over the limit, resumed once drained.
    assert producer.events == ["pause", "pause", "resume"]
    transport.unregisterProducer()


async def test_closed_and_closing_connections(conn):
    """Nothing is written to a lost connection; a closing one goes through write() (Twisted flushes it)."""
    transport, client = conn
    writer = TickWriter(reactor)
    writer.write(transport, b"before close,")
    transport.loseConnection()
    writer.write(transport, b"after loseConnection")
    assert writer.pending == 1
    data = await read_until(client, len(b"before close,after loseConnection"))
    assert data == b"before close,after loseConnection"
    await wait_until(lambda: not transport.connected, what="connection closed")
    writer.write(transport, b"lost")
    assert writer.pending == 0 and transport._tempDataBuffer == []


def test_other_transports_get_a_plain_write():
    """A transport that is not plain TCP (here StringTransport) is written at once."""
    transport = StringTransport()
    writer = TickWriter(reactor)
    writer.write(transport, b"abc")
    assert transport.value() == b"abc" and writer.pending == 0


class FakeRequest:
    def __init__(self, transport, chunked: bool, started: bool = True) -> None:
        self.channel = type("C", (), {"transport": transport})()
        self.startedWriting = started
        self.finished = False
        self._disconnected = False
        self.method = b"GET"
        self.chunked = chunked
        self.sentLength = 0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_write_body_frames_chunks_like_request_write(conn):
    """write_body sends a chunk (hex length CRLF data CRLF) when chunked, raw bytes otherwise,
    and leaves anything else to request.write."""
    transport, client = conn
    writer = TickWriter(reactor)
    write_body(writer, FakeRequest(transport, chunked=True), b"hello")
    write_body(writer, FakeRequest(transport, chunked=False), b"raw")
    assert await read_until(client, 13) == b"5\r\nhello\r\nraw"
    unstarted = FakeRequest(transport, chunked=True, started=False)
    write_body(writer, unstarted, b"x")
    assert unstarted.written == [b"x"]
    other = FakeRequest(StringTransport(), chunked=True)
    write_body(writer, other, b"y")
    assert other.written == [b"y"]


def test_body_transport_only_for_a_started_open_response_on_plain_tcp(conn):
    """The connection is given for a GET whose head is out on plain TCP; None for a
    HEAD, an unstarted, finished or disconnected request, or another transport."""
    transport, _ = conn
    assert body_transport(FakeRequest(transport, chunked=True)) is transport
    assert body_transport(FakeRequest(transport, chunked=True, started=False)) is None
    assert body_transport(FakeRequest(StringTransport(), chunked=True)) is None
    for name, value in (("method", b"HEAD"), ("finished", True), ("_disconnected", True)):
        request = FakeRequest(transport, chunked=True)
        setattr(request, name, value)
        assert body_transport(request) is None, name
