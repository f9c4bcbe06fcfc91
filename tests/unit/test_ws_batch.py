"""GatewayWebSocketProtocol.send_publications (publications arriving together): frames
joined into writes of at most JOIN_BYTES, in order, and once the socket is full the rest
held back exactly as send_publication would, then written in order on resume."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.app import Gateway
from gateway.config import Config
from gateway.core.events import PreparedPublication
from gateway.core.model import Publication
from gateway.transports.websocket import JOIN_BYTES, GatewayWebSocketFactory

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Writer:
    """Stands in for the tick writer; pauses the connection's producer after `room` writes."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.writes: list[bytes] = []
        self.proto = None

    def write(self, transport, data: bytes) -> None:
        self.writes.append(data)
        self.room -= 1
        if self.room == 0:
            self.proto._out.pauseProducing()


def connection(room: int):
    gateway = Gateway(Config(), Clock())
    factory = GatewayWebSocketFactory(gateway)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(StringTransport())
    proto.dataReceived(HANDSHAKE)
    writer = Writer(room)
    writer.proto = proto
    factory.writer = writer
    return gateway, proto, writer


def prepared(n: int, size: int = 100) -> list[PreparedPublication]:
    return [PreparedPublication(Publication("c", i, "e", "x" * size, 0, None)) for i in range(1, n + 1)]


def seqs(writes: list[bytes]) -> list[int]:
    out = []
    for data in writes:
        while data:
            n = data[1] & 0x7F
            start = 4 if n == 126 else 2
            if n == 126:
                n = int.from_bytes(data[2:4], "big")
            out.append(json.loads(data[start : start + n])["seq"])
            data = data[start + n :]
    return out


def test_frames_are_joined_into_bounded_writes_in_order():
    gateway, proto, writer = connection(room=-1)
    pubs = prepared(100)
    proto.send_publications(pubs)
    assert seqs(writer.writes) == list(range(1, 101))
    assert 1 < len(writer.writes) < 100
    assert all(len(w) <= JOIN_BYTES for w in writer.writes)
    assert gateway.stats.deliveries["websocket"] == 100


def test_once_the_socket_is_full_the_rest_is_held_and_follows_in_order():
    gateway, proto, writer = connection(room=1)
    proto.send_publications(prepared(100))
    first = seqs(writer.writes)
    assert first == list(range(1, len(first) + 1)) and len(first) < 100
    assert proto._out.held_bytes > 0
    writer.room = -1
    proto._out.resumeProducing()
    assert seqs(writer.writes) == list(range(1, 101))
    assert gateway.stats.deliveries["websocket"] == 100
