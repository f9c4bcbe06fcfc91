"""What gateway/transports/_compact.py relies on in twisted.web, and that it changes
nothing observable (issue 11 goal 4: memory per held connection)."""

from __future__ import annotations

import sys
from typing import ClassVar

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import resource, server
from twisted.web.http_headers import Headers

from gateway.transports._compact import shrink, slim_request
from gateway.transports._drain import OpenConnections
from gateway.transports._http import gateway_site


class Thing:
    a = 0
    b: object = None
    c = b""
    flag = False


def test_shrink_drops_only_attributes_equal_to_their_class_default():
    t = Thing()
    for i in range(30):
        setattr(t, f"x{i}", [i])
    for i in range(30):
        delattr(t, f"x{i}")
    t.a, t.b, t.c, t.flag, t.own = 0, None, b"x", 0, "kept"
    before = sys.getsizeof(vars(t))
    shrink(t)
    assert vars(t) == {"c": b"x", "flag": 0, "own": "kept"}  # flag=0 is an int, not False
    assert (t.a, t.b, t.c, t.flag, t.own) == (0, None, b"x", 0, "kept")
    assert sys.getsizeof(vars(t)) < before
    t.a = 5
    assert t.a == 5 and Thing.a == 0


class Held(resource.Resource):
    isLeaf = True

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.head = head
        self.requests: list = []

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        if self.head:
            request.write(b"first")
        self.requests.append(request)
        return server.NOT_DONE_YET


class Poisoned(Headers):
    def __getattribute__(self, name):
        raise AssertionError(f"responseHeaders.{name} read after the head was sent")


@pytest.mark.parametrize("head", [True, False])
def test_a_slimmed_request_still_writes_and_finishes(head):
    leaf = Held(head)
    site = gateway_site(leaf)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /x?channel=a&b=2 HTTP/1.1\r\nHost: h\r\n\r\n")
    (request,) = leaf.requests
    slim_request(request)
    assert request.content is None and request.args == {}
    if head:
        # twisted.web never looks at the sent head again (the empty Headers put in
        # its place is not read either: poisoned here).
        assert list(request.responseHeaders.getAllRawHeaders()) == []
        request.responseHeaders = Poisoned()
    request.write(b"second")
    request.finish()
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 200")
    assert b"first" in out if head else True
    assert out.endswith(b"6\r\nsecond\r\n0\r\n\r\n")
    assert b"Content-Type: text/plain" in out
    # The channel takes the next request as usual.
    channel.dataReceived(b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(leaf.requests) == 2
    leaf.requests[1].finish()
    channel.connectionLost(None)


def test_upgraded_channels_are_forgotten_at_once():
    connections = OpenConnections()

    class Channel:
        transport = object()
        requests: ClassVar[list] = []
        persistent = True

    a, b = Channel(), Channel()
    connections.opened(a)
    connections.opened(b)
    connections.upgraded(a)
    assert len(connections) == 1
    assert a not in connections._open


def _held_request():
    leaf = Held(True)
    site = gateway_site(leaf)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    return channel, leaf.requests[0]


def test_on_finish_is_told_once_when_the_response_finishes():
    from gateway.transports._compact import on_finish

    channel, request = _held_request()
    seen: list = []
    on_finish(request, seen.append)
    request.finish()
    assert seen == [None]
    channel.connectionLost(None)
    assert seen == [None]


def test_on_finish_is_told_once_when_the_client_goes_away():
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    from gateway.transports._compact import on_finish

    channel, request = _held_request()
    seen: list = []
    on_finish(request, seen.append)
    channel.connectionLost(Failure(ConnectionLost()))
    assert len(seen) == 1 and seen[0].check(ConnectionLost)


def test_later_slimming_slims_only_what_is_still_held_after_the_delay():
    from twisted.internet.task import Clock

    from gateway.transports._compact import LaterSlimming

    clock = Clock()
    slimming = LaterSlimming(clock, 0.25)
    (ch1, kept), (ch2, answered), (ch3, gone) = _held_request(), _held_request(), _held_request()
    for key, request in (("kept", kept), ("answered", answered), ("gone", gone)):
        request.args = {b"a": [b"1"]}
        slimming.hold(key, request)
    assert len(clock.getDelayedCalls()) == 1 and slimming.waiting == 3
    answered.finish()
    slimming.release("answered")
    ch3.connectionLost(None)
    clock.advance(0.2)
    assert kept.args == {b"a": [b"1"]}  # not yet
    clock.advance(0.05)
    assert kept.args == {} and kept.content is None
    assert gone.args == {b"a": [b"1"]}  # the client went away: left as it was
    assert slimming.waiting == 0 and clock.getDelayedCalls() == []
    kept.finish()
    for ch in (ch1, ch2):
        ch.connectionLost(None)


def test_later_slimming_holds_no_timer_once_every_request_is_released():
    from twisted.internet.task import Clock

    from gateway.transports._compact import LaterSlimming

    clock = Clock()
    slimming = LaterSlimming(clock, 1.0)
    channel, request = _held_request()
    slimming.hold("a", request)
    slimming.hold("b", request)
    slimming.release("a")
    assert len(clock.getDelayedCalls()) == 1
    slimming.release("b")
    slimming.release("b")  # idempotent
    assert clock.getDelayedCalls() == [] and slimming.waiting == 0
    slimming.hold("c", request)  # armed again
    assert len(clock.getDelayedCalls()) == 1
    slimming.release("c")
    request.finish()
    channel.connectionLost(None)


def test_query_parameters_are_parsed_once_per_request_and_dropped_when_slimmed():
    from gateway.errors import BadRequest
    from gateway.transports._http import query_params

    leaf = Held(False)
    site = gateway_site(leaf)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /x?channel=a&token=t%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n")
    (request,) = leaf.requests
    first = query_params(request)
    assert first == {"channel": ["a"], "token": ["t\u00e9"]}
    assert query_params(request) is first
    with pytest.raises(BadRequest):
        query_params(request, max_length=5)  # another limit: checked, not taken from the cache
    slim_request(request)
    assert "gateway_params" not in vars(request)
    request.finish()
    channel.connectionLost(None)
