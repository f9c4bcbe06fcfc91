"""The WebSocket authentication timers on a fake clock (issue 8): the auth timeout,
the expiry at ``exp`` and its move on refresh, exactly when they are due.

A GatewayWebSocketProtocol runs over a StringTransport; its reactor (and the auth
chain's wall clock) is a MemoryReactorClock set to the current time, since pyjwt
checks ``exp`` against the real clock."""

from __future__ import annotations

import json
import struct
import time

import jwt
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.app import Gateway
from gateway.config import Config
from gateway.transports.websocket import GatewayWebSocketFactory, upgrade_credentials

from ._wsframes import ServerFrames, parse_frames

SECRET = "a-test-secret-of-more-than-32-bytes-0123456789"
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def client_frame(obj: object) -> bytes:
    """A masked text frame (mask key 0, so the payload is unchanged)."""
    payload = json.dumps(obj).encode()
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


class Conn(ServerFrames):
    """One protocol over a StringTransport, with the server's frames parsed."""

    def __init__(self, clock: MemoryReactorClock, headers: bytes = b"", **config: object) -> None:
        self.gateway = Gateway(Config(jwt_secret=SECRET, jwt_leeway=0.0, **config), clock)  # type: ignore[arg-type]
        self.gateway.auth.now = clock.seconds
        factory = GatewayWebSocketFactory(self.gateway)
        self.proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(HANDSHAKE + headers + b"\r\n")
        assert self.transport.value().startswith(b"HTTP/1.1 101")

    def send(self, obj: object) -> None:
        self.proto.dataReceived(client_frame(obj))

    def frames(self) -> list[tuple[int, bytes]]:
        return parse_frames(self.transport.value().split(b"\r\n\r\n", 1)[1])


    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock():
    c = MemoryReactorClock()
    c.advance(time.time())
    return c


def token(clock: MemoryReactorClock, ttl: float | None, sub: str = "alice") -> str:
    claims: dict = {"sub": sub, "subscribe": ["*"]}
    if ttl is not None:
        claims["exp"] = clock.seconds() + ttl
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_auth_timeout_closes_4001_when_due_not_before(clock):
    conn = Conn(clock, auth_timeout=3.0)
    clock.advance(2.99)
    assert conn.close_code() is None
    clock.advance(0.02)
    assert conn.close_code() == 4001
    conn.lose()
    assert conn.gateway.connection_count() == 0


def test_auth_in_time_cancels_the_timeout(clock):
    conn = Conn(clock, auth_timeout=3.0)
    clock.advance(1.0)
    conn.send({"type": "auth", "token": token(clock, None), "id": 1})
    assert conn.events() == [{"type": "authenticated", "id": 1, "sub": "alice"}]
    clock.advance(60.0)
    assert conn.close_code() is None
    conn.lose()
    assert clock.getDelayedCalls() == []


def test_expiry_closes_4001_at_exp_and_a_refresh_moves_it(clock):
    conn = Conn(clock, headers=b"Authorization: Bearer " + token(clock, 10.0).encode() + b"\r\n")
    clock.advance(8.0)
    conn.send({"type": "auth", "token": token(clock, 10.0), "id": "r"})
    [answer] = conn.events()
    assert answer["type"] == "authenticated" and answer["exp"] == pytest.approx(clock.seconds() + 10.0)
    clock.advance(9.99)  # the old exp passed 7.99 s ago
    assert conn.close_code() is None
    clock.advance(0.02)
    assert conn.close_code() == 4001
    conn.lose()


def test_refused_refresh_keeps_the_old_deadline(clock):
    conn = Conn(clock, headers=b"Authorization: Bearer " + token(clock, 5.0).encode() + b"\r\n")
    conn.send({"type": "auth", "token": token(clock, 60.0, sub="bob"), "id": "r"})
    assert conn.events()[0]["code"] == "forbidden"
    clock.advance(4.99)
    assert conn.close_code() is None
    clock.advance(0.02)
    assert conn.close_code() == 4001
    conn.lose()


def test_connection_end_cancels_every_timer(clock):
    conn = Conn(clock, headers=b"Authorization: Bearer " + token(clock, 30.0).encode() + b"\r\n")
    assert conn.gateway._by_sub == {"alice": {conn.proto.client}}
    conn.lose()
    assert clock.getDelayedCalls() == []
    assert conn.gateway._by_sub == {}


def test_upgrade_credentials_read_every_source():
    class Request:
        def __init__(self) -> None:
            self.headers = {
                "authorization": "Bearer h",
                "cookie": 'a=1; gateway_token="c"; broken; =x',
                "origin": "https://app.example",
            }
            self.params = {"token": ["q", "q2"]}

    credentials = upgrade_credentials(Request())
    assert credentials.presented() == ["q", "h", "c"]
    assert dict(credentials.cookies) == {"a": "1", "gateway_token": "c"}
    assert credentials.origin == "https://app.example"
