"""The http authenticator's cache, coalescing and deadline on a fake clock and a fake
agent (the same behaviour over real sockets: tests/integration/test_auth_http.py)."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from gateway.auth.http import MAX_ANSWER, HTTPAuthenticator, credential_key
from gateway.core.auth import Credentials
from gateway.errors import Forbidden, Unauthorized, Unavailable


class FakeTransport:
    stopped = False

    def stopProducing(self):
        self.stopped = True


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body
        self.length = len(body)
        self.transport = FakeTransport()

    def deliverBody(self, protocol):
        protocol.makeConnection(self.transport)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, defer.Deferred]] = []

    def request(self, method, uri, headers, body):
        assert method == b"POST"
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        d: defer.Deferred = defer.Deferred()
        self.calls.append((json.loads(body.data), d))
        return d

    def answer(self, index: int, code: int, body: object) -> FakeResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = FakeResponse(code, raw)
        self.calls[index][1].callback(response)
        return response


def make(**kwargs):
    clock = Clock()
    agent = FakeAgent()
    auth = HTTPAuthenticator("http://backend.invalid/auth", clock, agent=agent, **kwargs)
    return auth, agent, clock


def results(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def tok(value: str) -> Credentials:
    return Credentials("websocket", token=value)


def test_an_answer_is_reused_until_the_cache_time_has_passed():
    """cache=30: asked at 0, reused at 29.9, asked again at 30."""
    auth, agent, clock = make(cache=30)
    first = results(auth.authenticate(tok("a")))
    agent.answer(0, 200, {"sub": "alice"})
    assert first[0].sub == "alice"
    clock.advance(29.9)
    assert results(auth.authenticate(tok("a")))[0].sub == "alice"
    assert len(agent.calls) == 1
    clock.advance(0.1)
    pending = results(auth.authenticate(tok("a")))
    assert len(agent.calls) == 2 and pending == []


def test_refusals_are_cached_too_and_raised_afresh():
    """A 401 and a 403 are remembered; each request gets its own exception."""
    auth, agent, _clock = make(cache=30)
    results(auth.authenticate(tok("x")))
    agent.answer(0, 401, b"")
    results(auth.authenticate(tok("y")))
    agent.answer(1, 403, b"")
    again = results(auth.authenticate(tok("x")))
    also = results(auth.authenticate(tok("y")))
    assert len(agent.calls) == 2
    assert again[0].check(Unauthorized) and also[0].check(Forbidden)
    assert again[0].value is not results(auth.authenticate(tok("x")))[0].value


def test_an_identity_past_its_exp_is_not_served_from_the_cache():
    """A cached identity whose exp has passed (wall clock) is asked for again."""
    wall = [1000.0]
    auth, agent, _clock = make(cache=300, now=lambda: wall[0])
    results(auth.authenticate(tok("a")))
    agent.answer(0, 200, {"sub": "alice", "exp": 1010})
    wall[0] = 1009.0
    assert results(auth.authenticate(tok("a")))[0].sub == "alice"
    wall[0] = 1010.0
    results(auth.authenticate(tok("a")))
    assert len(agent.calls) == 2


def test_cache_zero_asks_every_time():
    auth, agent, _clock = make(cache=0)
    for i in range(3):
        results(auth.authenticate(tok("a")))
        agent.answer(i, 200, {"sub": "alice"})
    assert len(agent.calls) == 3


def test_concurrent_requests_for_one_credential_share_a_call():
    """Two waiters for one credential, one for another: two backend calls; a waiter
    that gave up (cancelled) does not disturb the others."""
    auth, agent, _clock = make(cache=0)
    a1 = auth.authenticate(tok("a"))
    a2 = results(auth.authenticate(tok("a")))
    b = results(auth.authenticate(tok("b")))
    assert len(agent.calls) == 2
    a1.addErrback(lambda f: f.trap(defer.CancelledError))
    a1.cancel()
    agent.answer(0, 200, {"sub": "alice"})
    agent.answer(1, 200, {"sub": "bob"})
    assert a2[0].sub == "alice" and b[0].sub == "bob"


def test_the_cache_is_bounded_least_recently_used_first():
    """max_cached=2: a third credential pushes out the least recently used one."""
    auth, agent, _clock = make(cache=60, max_cached=2)
    for i, value in enumerate(("a", "b")):
        results(auth.authenticate(tok(value)))
        agent.answer(i, 200, {"sub": value})
    results(auth.authenticate(tok("a")))  # a is now the most recently used
    results(auth.authenticate(tok("c")))
    agent.answer(2, 200, {"sub": "c"})
    results(auth.authenticate(tok("a")))
    assert len(agent.calls) == 3
    results(auth.authenticate(tok("b")))
    assert len(agent.calls) == 4


def test_no_answer_within_the_timeout_is_unavailable_for_every_waiter():
    """timeout=5: at 5 s the call is cancelled and both waiters get unavailable."""
    auth, agent, clock = make(timeout=5)
    first = results(auth.authenticate(tok("a")))
    second = results(auth.authenticate(tok("a")))
    clock.advance(4.9)
    assert first == []
    clock.advance(0.1)
    assert first[0].check(Unavailable) and second[0].check(Unavailable)
    assert agent.calls[0][1].called  # the request itself was cancelled
    assert clock.getDelayedCalls() == []


def test_an_oversized_answer_is_cut_off_and_unavailable():
    auth, agent, _clock = make()
    out = results(auth.authenticate(tok("a")))
    response = agent.answer(0, 200, b"{" + b" " * MAX_ANSWER + b"}")
    assert out[0].check(Unavailable)
    assert response.transport.stopped


def test_stop_cancels_calls_in_flight():
    """On stop, a call still waiting for the backend ends unavailable, no timer left."""
    auth, _agent, clock = make()
    out = results(auth.authenticate(tok("a")))
    auth.stop()
    assert out[0].check(Unavailable)
    assert clock.getDelayedCalls() == []


def test_the_cache_key_is_a_digest_of_the_credential_only():
    """Cookies, Authorization and token make the key (not the transport or origin),
    and the key does not hold the secret."""
    one = Credentials("sse", authorization="Bearer s3cret", cookies={"a": "1", "b": "2"}, origin="https://x")
    two = Credentials("websocket", authorization="Bearer s3cret", cookies={"b": "2", "a": "1"})
    assert credential_key(one) == credential_key(two)
    assert credential_key(one) != credential_key(Credentials("sse", authorization="Bearer other"))
    assert "s3cret" not in credential_key(one)


@pytest.mark.parametrize("url", ["ftp://x/", "backend/auth", "http:///nohost"])
def test_only_http_urls(url):
    with pytest.raises(ValueError, match="not an http"):
        HTTPAuthenticator(url, Clock(), agent=FakeAgent())


@pytest.mark.parametrize("error", ["never-received", "not-sent"])
def test_a_connection_the_backend_closed_meanwhile_is_retried_once(error):
    """A kept-alive connection that died under the request (ResponseNeverReceived,
    RequestNotSent) is asked again once on a new one; a second failure is unavailable."""
    from twisted.web.client import RequestNotSent, ResponseNeverReceived

    def failure():
        return ResponseNeverReceived([Failure(ConnectionError("closed"))]) if error == "never-received" else RequestNotSent()

    auth, agent, _clock = make()
    out = results(auth.authenticate(tok("a")))
    agent.calls[0][1].errback(failure())
    assert len(agent.calls) == 2 and out == []
    agent.answer(1, 200, {"sub": "alice"})
    assert out[0].sub == "alice"
    again = results(auth.authenticate(tok("b")))
    agent.calls[2][1].errback(failure())
    agent.calls[3][1].errback(failure())
    assert len(agent.calls) == 4
    assert again[0].check(Unavailable)


def test_a_cancelled_call_is_not_retried():
    """When the deadline cancels the request (Agent then fails it with
    ResponseNeverReceived(CancelledError)), it is not asked again."""
    from twisted.web.client import ResponseNeverReceived

    auth, agent, clock = make(timeout=5)
    out = results(auth.authenticate(tok("a")))
    agent.calls[0][1].errback(ResponseNeverReceived([Failure(defer.CancelledError())]))
    assert len(agent.calls) == 1
    assert out[0].check(Unavailable)
    assert clock.getDelayedCalls() == []
