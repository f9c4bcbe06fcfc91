"""What gateway/transports/_wscompact.py relies on in Autobahn, and WebSocket sessions
over compacted connections (issue 11 goal 4: memory per idle connection).

A connection runs over a StringTransport on a MemoryReactorClock, as in
test_ws_auth_timers."""

from __future__ import annotations

import inspect
import json
import struct
import sys
import time

import autobahn.websocket.protocol as ab_protocol
import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.app import Gateway
from gateway.config import Config
from gateway.transports import _wscompact
from gateway.transports.websocket import (
    GatewayWebSocketFactory,
    GatewayWebSocketProtocol,
)

from ._wsframes import ServerFrames, parse_frames

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A masked client frame (mask key 0, so the payload is unchanged)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    head = bytes([first, 0x80 | n]) if n < 126 else bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


parse = parse_frames


class Conn(ServerFrames):
    def __init__(self, clock: MemoryReactorClock, factory_class: type = GatewayWebSocketFactory, **config: object) -> None:
        self.gateway = Gateway(Config(**config), clock)  # type: ignore[arg-type]
        self.factory = factory_class(self.gateway) if factory_class is GatewayWebSocketFactory else factory_class()
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport()
        # As on a TCP transport, a producer (the HTTP channel's) is registered,
        # so onOpen can put the connection's own in its place.
        self.transport.registerProducer(object(), True)
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(HANDSHAKE)
        assert self.transport.value().startswith(b"HTTP/1.1 101")
        self.head_len = self.transport.value().index(b"\r\n\r\n") + 4

    def send(self, obj: object) -> None:
        self.proto.dataReceived(frame(json.dumps(obj).encode()))

    def frames(self) -> list[tuple[int, bytes]]:
        return parse(self.transport.value()[self.head_len :])



@pytest.fixture
def clock():
    c = MemoryReactorClock()
    c.advance(time.time())
    return c


def test_autobahn_sets_every_attribute_compact_knows():
    """Each name in the tables is one Autobahn assigns (a rename shows up here)."""
    source = inspect.getsource(ab_protocol) + inspect.getsource(sys.modules["autobahn.util"])
    names = [*_wscompact.HANDSHAKE_ONLY, *_wscompact.PER_MESSAGE, *_wscompact.IDLE_DEFAULTS, "trafficStats", "send_queue"]
    missing = [n for n in names if not any(f"self.{n}{end}" in source for end in (" =", ": ", ","))]
    assert missing == []


def test_autobahn_copies_an_option_only_when_the_connection_lacks_it():
    source = inspect.getsource(ab_protocol.WebSocketProtocol._connectionMade)
    assert "if not hasattr(self, configAttr):" in source


def test_idle_values_of_a_plain_autobahn_connection_are_the_defaults(clock):
    """Without the gateway's compaction, an open Autobahn connection between messages
    holds exactly IDLE_DEFAULTS (else compact() would keep them: memory, not behaviour)."""

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE)
    proto.dataReceived(frame(b"hello"))
    proto.dataReceived(frame(b"ping", opcode=9))
    assert b"hello" in transport.value()
    values = vars(proto)
    differing = {k: values.get(k, "<unset>") for k, v in _wscompact.IDLE_DEFAULTS.items() if values.get(k, "<unset>") != v}
    assert differing == {}
    assert isinstance(values["send_queue"], ab_protocol.deque) and not values["send_queue"]
    for name in _wscompact.PER_MESSAGE:
        if name != "control_frame_data":
            assert name in values


def test_open_connection_keeps_a_small_dict_and_the_factory_options(clock):
    conn = Conn(clock)
    conn.send({"type": "subscribe", "channel": "a", "id": 1})
    assert conn.events()[0]["type"] == "subscribed"
    proto = conn.proto
    names = set(vars(proto))
    assert not names & set(proto.CONFIG_ATTRS)
    assert not names & set(_wscompact.HANDSHAKE_ONLY)
    assert not names & set(_wscompact.PER_MESSAGE)
    assert len(names) <= 21 and sys.getsizeof(vars(proto)) <= 464, sorted(names)
    for name in proto.CONFIG_ATTRS:
        assert getattr(proto, name) == getattr(conn.factory, name)
    offers: list = []
    assert proto.perMessageCompressionAccept(offers) is None
    assert proto.maxMessagePayloadSize == conn.gateway.config.max_message_size
    assert isinstance(proto, GatewayWebSocketProtocol)
    assert proto.trafficStats.outgoingOctetsWireLevel == 0
    assert proto.send_queue == ()


def test_set_protocol_options_later_reaches_the_connections(clock):
    conn = Conn(clock)
    conn.factory.setProtocolOptions(autoFragmentSize=1234)
    assert conn.proto.autoFragmentSize == 1234
    other = GatewayWebSocketFactory(conn.gateway)
    assert other.protocol is not conn.factory.protocol
    assert other.protocol.autoFragmentSize == 0


def test_fragmented_message_and_control_frames_between_compactions(clock):
    conn = Conn(clock)
    payload = json.dumps({"type": "subscribe", "channel": "frag", "id": 7}).encode()
    conn.proto.dataReceived(frame(payload[:10], fin=False))
    conn.proto.dataReceived(frame(b"x", opcode=9))  # a ping between the fragments
    conn.proto.dataReceived(frame(payload[10:20], opcode=0, fin=False))
    conn.proto.dataReceived(frame(payload[20:], opcode=0))
    assert [e["type"] for e in conn.events()] == ["subscribed"]
    assert (10, b"x") in conn.frames()
    conn.send({"type": "ping", "id": 8})
    assert [e["type"] for e in conn.events()] == ["subscribed", "pong"]


def test_invalid_utf8_split_over_fragments_still_closes_1007(clock):
    conn = Conn(clock)
    conn.send({"type": "ping", "id": 1})
    conn.proto.dataReceived(frame(b'{"a":"\xe2\x82', fin=False))
    conn.proto.dataReceived(frame(b'"}', opcode=0))
    assert conn.close_code() == 1007


def test_heartbeat_pong_and_close_after_compaction(clock):
    conn = Conn(clock, heartbeat=5.0)
    clock.advance(5.0)
    pings = [p for op, p in conn.frames() if op == 9]
    assert len(pings) == 1
    conn.proto.dataReceived(frame(pings[0], opcode=10))
    clock.advance(5.0)
    assert len([p for op, p in conn.frames() if op == 9]) == 2
    assert conn.proto.transport.disconnecting is False
    conn.proto.dataReceived(frame(struct.pack("!H", 1000), opcode=8))
    assert conn.close_code() == 1000
    conn.proto.connectionLost(Failure(ConnectionDone()))
    assert conn.gateway.connection_count() == 0
    assert clock.getDelayedCalls() == []


def test_sync_send_and_event_listeners_still_work(clock):
    conn = Conn(clock)
    conn.proto.sendMessage(b'{"x":1}', sync=True)
    assert conn.events() == [{"x": 1}]
    from twisted.internet import reactor

    for call in reactor.getDelayedCalls():
        if "GatewayWebSocketProtocol" in repr(call.func):
            call.func()
            call.cancel()
    assert not conn.proto.send_queue
    got = []
    conn.proto.on("message", lambda payload, is_binary: got.append(payload))
    conn.send({"type": "ping", "id": 2})
    assert got == [b'{"type": "ping", "id": 2}']
