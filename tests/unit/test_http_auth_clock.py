"""Expiry and revocation of SSE streams and held polls on a Clock, and the small pieces
of gateway/transports/_auth.py (credentials, Retry-After) without sockets.

The real-socket versions are in tests/integration/test_http_auth.py.
"""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from gateway.app import Gateway
from gateway.config import Config
from gateway.errors import RateLimited
from gateway.transports._auth import credentials_from_request, retry_after
from gateway.transports.poll import HeldPoll
from gateway.transports.sse import SSEStream

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"


@pytest.fixture
def clock():
    c = Clock()
    # pyjwt checks exp against the real clock: start the fake one at real time.
    c.advance(time.time())
    return c


@pytest.fixture
def gateway(clock):
    gw = Gateway(Config(jwt_secret=SECRET, jwt_leeway=0.0), reactor=clock)
    gw.auth.now = clock.seconds
    gw.start()
    yield gw
    gw.stop()


def token(clock: Clock, sub: str = "alice", lifetime: int = 10) -> str:
    now = int(clock.seconds())
    return pyjwt.encode({"sub": sub, "exp": now + lifetime, "subscribe": ["room:*"]}, SECRET, algorithm="HS256")


class Request(DummyRequest):
    """DummyRequest with a push producer slot (its own loops over pull producers)."""

    producer = None
    channel = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def request(query: dict[bytes, list[bytes]], headers: dict[bytes, bytes] | None = None, cookies: dict[bytes, bytes] | None = None) -> DummyRequest:
    req = Request([b""])
    req.args = query
    req.uri = b"/x?" + b"&".join(k + b"=" + v for k, vs in query.items() for v in vs)
    for name, value in (headers or {}).items():
        req.requestHeaders.setRawHeaders(name, [value])
    req.received_cookies = cookies or {}
    return req


def session_timers(clock: Clock) -> list:
    """Delayed calls other than the node's own: the in-memory broker's history sweep,
    the presence batch and a released channel's linger (node-level, not the session's)."""
    node_level = ("sweep", "Presence", "_linger_due")
    return [c for c in clock.getDelayedCalls() if c.active() and not any(n in repr(c.func) for n in node_level)]


def written(req: DummyRequest) -> bytes:
    return b"".join(req.written)


def test_sse_stream_ends_with_unauthorized_exactly_at_exp(gateway, clock):
    """The stream gets event: error unauthorized (no id line) at exp, not before, and is released."""
    tok = token(clock)
    exp = pyjwt.decode(tok, options={"verify_signature": False})["exp"]
    req = request({b"channel": [b"room:1"]}, {b"authorization": b"Bearer " + tok.encode()})
    stream = SSEStream(gateway, req, ["room:1"], {})
    stream.start()
    assert stream.opened
    assert req.responseCode == 200
    clock.advance(exp - clock.seconds() - 0.01)
    assert b"event: error" not in written(req)
    assert not req.finished
    clock.advance(0.02)
    tail = written(req).rsplit(b"\n\n", 2)[-2]
    assert tail.startswith(b"event: error\ndata: ")
    assert json.loads(tail.split(b"data: ", 1)[1])["code"] == "unauthorized"
    assert req.finished
    assert gateway.connection_count() == 0
    assert gateway.bus.subscriber_count() == 0
    assert session_timers(clock) == []


def test_sse_stream_revoked(gateway, clock):
    """revoke_local(sub): event: error forbidden, stream ended, deadline cancelled."""
    req = request({b"channel": [b"room:1"], b"token": [token(clock, "bob").encode()]})
    stream = SSEStream(gateway, req, ["room:1"], {})
    stream.start()
    assert gateway.revoke_local("bob") == 1
    assert b'"code":"forbidden"' in written(req)
    assert req.finished
    assert gateway.revoke_local("bob") == 0
    assert session_timers(clock) == []


def test_held_poll_answered_at_exp(gateway, clock):
    """A poll held for 30 s with a token expiring in 10 s is answered at 10 s with its cursor."""
    req = request({b"channel": [b"room:1"]}, {b"authorization": b"Bearer " + token(clock).encode()})
    poll = HeldPoll(gateway, req, ["room:1"], {}, timeout=30.0, callback=None)
    poll.start()
    assert poll.opened and not req.finished
    clock.advance(9.0)
    assert not req.finished
    clock.advance(1.5)
    assert req.finished
    assert req.responseCode == 200
    body = json.loads(written(req))
    assert body["messages"] == [] and body["cursor"]
    assert session_timers(clock) == []


def test_held_poll_revoked_is_403(gateway, clock):
    req = request({b"channel": [b"room:1"], b"token": [token(clock, "carol").encode()]})
    poll = HeldPoll(gateway, req, ["room:1"], {}, timeout=30.0, callback=None)
    poll.start()
    assert gateway.revoke_local("carol") == 1
    assert req.responseCode == 403
    assert json.loads(written(req))["error"]["code"] == "forbidden"
    assert session_timers(clock) == []


def test_credentials_from_request_jsonp_takes_only_the_token():
    req = request(
        {b"channel": [b"a"], b"token": [b"t1"]},
        {b"authorization": b"Bearer h1", b"origin": b"https://app.example"},
        {b"gateway_token": b"c1", b"session": b"s"},
    )
    full = credentials_from_request(req, "poll")
    assert (full.token, full.bearer, dict(full.cookies), full.origin) == (
        "t1",
        "h1",
        {"gateway_token": "c1", "session": "s"},
        "https://app.example",
    )
    jsonp = credentials_from_request(req, "poll", jsonp=True)
    assert (jsonp.token, jsonp.authorization, dict(jsonp.cookies)) == ("t1", None, {})
    assert jsonp.presented() == ["t1"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 1), (0.2, 1), (1, 1), (2.01, 3), (30, 30), (float("nan"), 1), (float("inf"), 1), (-5, 1), (True, 1)],
)
def test_retry_after_whole_seconds(value, expected):
    error = RateLimited("slow down")
    if value is not None:
        error.retry_after = value  # type: ignore[attr-defined]
    assert retry_after(error) == expected
