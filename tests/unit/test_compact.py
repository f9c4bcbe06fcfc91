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
    vars(t)  # (a dictionary of its own: see the next test)
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


def test_shrink_leaves_attributes_that_have_no_dictionary_yet_alone():
    """CPython 3.11 keeps a fresh instance's attributes in a values array until
    something asks for __dict__: dropping some would not make that smaller, and
    asking would make a dictionary (more memory, slower attribute reads)."""
    from gateway.transports._compact import existing_dict

    class Fresh:
        a = 0

        def __init__(self) -> None:
            self.a, self.own = 0, "kept"

    t = Fresh()
    assert existing_dict(t) is None
    shrink(t)
    assert existing_dict(t) is None and t.a == 0 and t.own == "kept"
    d = vars(t)
    assert existing_dict(t) is d
    shrink(t)
    assert vars(t) == {"own": "kept"} and t.a == 0
    assert existing_dict(t) is vars(t)


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


def _held_request(head: bool = True, target: bytes = b"/x"):
    leaf = Held(head)
    site = gateway_site(leaf)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
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


def test_on_finish_keeps_a_method_as_its_object_and_function():
    from gateway.transports._compact import on_finish

    class Owner:
        def __init__(self) -> None:
            self.seen: list = []

        def finished(self, result) -> None:
            self.seen.append(result)

    channel, request = _held_request()
    owner = Owner()
    on_finish(request, owner.finished)
    (notice,) = request.notifications
    assert notice.obj is owner and notice.fn is Owner.finished
    request.finish()
    assert owner.seen == [None]
    channel.connectionLost(None)


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

    channel, request = _held_request(False, b"/x?channel=a&token=t%C3%A9")
    first = query_params(request)
    assert first == {"channel": ["a"], "token": ["t\u00e9"]}
    assert query_params(request) is first
    with pytest.raises(BadRequest):
        query_params(request, max_length=5)  # another limit: checked, not taken from the cache
    slim_request(request)
    assert "gateway_params" not in vars(request)
    request.finish()
    channel.connectionLost(None)


# -- what a held request keeps (issue 11: SSE / poll <= 6 KB each) ----------------

_FULL_HEAD = (
    b"GET /x?channel=a HTTP/1.1\r\nHost: h\r\nReferer: http://r/p?token=secret&x=1\r\n"
    b"User-Agent: agent/1\r\nX-Forwarded-For: 10.0.0.9\r\nAccept: */*\r\n"
    b"Cookie: c=1\r\nAuthorization: Bearer t\r\n\r\n"
)


def _request_on(head: bytes, leaf_head: bool = False):
    leaf = Held(leaf_head)
    site = gateway_site(leaf)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567))
    channel.makeConnection(transport)
    channel.dataReceived(head)
    return leaf, channel, transport


def test_the_access_log_line_of_a_slimmed_request_is_unchanged():
    """Every formatter twisted.web has (and ours) writes the same line for a held
    request that was slimmed as for one that was not."""
    from twisted.web.http import combinedLogFormatter, proxiedLogFormatter

    from gateway.auth.redact import access_log_formatter

    lines = []
    for slim in (False, True):
        leaf, channel, _ = _request_on(_FULL_HEAD, leaf_head=True)
        (request,) = leaf.requests
        if slim:
            slim_request(request)
            assert request.getHeader(b"accept") is None  # cut down...
        request.write(b"body")
        request.finish()
        lines.append([f(("[ts]"), request) for f in (access_log_formatter, combinedLogFormatter, proxiedLogFormatter)])
        channel.connectionLost(None)
    assert lines[0] == lines[1]
    ours, combined, proxied = lines[1]
    assert '"10.1.2.3"' in ours and '"agent/1"' in ours and "secret" not in ours
    assert '"10.0.0.9"' in proxied and '"http://r/p?token=secret&x=1"' in combined


def test_a_slimmed_request_keeps_only_the_headers_read_after_it_started():
    from gateway.transports._compact import KEPT_REQUEST_HEADERS

    leaf, channel, _ = _request_on(_FULL_HEAD)
    (request,) = leaf.requests
    slim_request(request)
    assert dict(request.requestHeaders.getAllRawHeaders()) == {
        b"Referer": [b"http://r/p?token=secret&x=1"],
        b"User-Agent": [b"agent/1"],
        b"X-Forwarded-For": [b"10.0.0.9"],
    }
    assert set(KEPT_REQUEST_HEADERS) == {b"referer", b"user-agent", b"x-forwarded-for", b"connection"}
    request.finish()
    channel.connectionLost(None)


def test_empty_containers_are_dropped_and_made_again_when_read():
    """What twisted.web made empty and left empty is not held; a later read gets a
    fresh empty one, and it works as before (cookies set after slimming are sent)."""
    leaf, channel, transport = _request_on(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    (request,) = leaf.requests
    slim_request(request)
    held = vars(request)
    for name in ("cookies", "received_cookies", "_adapterCache", "requestHeaders"):
        assert name not in held, name
    assert "_dataBuffer" not in vars(channel)
    assert request.getCookie(b"c") is None and request.received_cookies == {}
    assert request.getHeader(b"host") is None
    request.addCookie(b"k", b"v")
    assert request.cookies == [b"k=v"] and vars(request)["cookies"] is request.cookies
    request.write(b"x")
    request.finish()
    assert b"Set-Cookie: k=v" in transport.value()
    channel.connectionLost(None)


def test_the_lazy_attributes_are_assigned_by_twisted_web_and_never_class_attributes():
    """LazyEmpty stands in only for what twisted.web's __init__ assigns on every
    instance and holds no class attribute for: nothing reads a different value."""
    from twisted.web import http

    from gateway.transports._compact import lazy_attributes
    from gateway.transports._http import GatewayHTTPChannel, GatewayRequest

    assert dict(lazy_attributes(GatewayRequest)) == {
        "_adapterCache": dict,
        "received_cookies": dict,
        "cookies": list,
        "requestHeaders": Headers,
        "responseHeaders": Headers,
    }
    assert dict(lazy_attributes(GatewayHTTPChannel)) == {"_dataBuffer": list}
    _, channel, _ = _request_on(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    fresh_request = server.Request(channel, parsePOSTFormSubmission=False)
    for name, factory in lazy_attributes(GatewayRequest):
        assert not hasattr(server.Request, name), name
        assert type(vars(fresh_request)[name]) is factory
    fresh_channel = http.HTTPChannel()
    for name, factory in lazy_attributes(GatewayHTTPChannel):
        assert not hasattr(http.HTTPChannel, name), name
        assert type(vars(fresh_channel)[name]) is factory


def test_a_request_arriving_while_one_is_held_and_slimmed_is_answered_next():
    """Pipelined bytes go to the channel's buffer (made again once slimmed) and are
    handled once the held request finishes."""
    leaf, channel, transport = _request_on(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", leaf_head=True)
    (request,) = leaf.requests
    slim_request(request)
    channel.dataReceived(b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(leaf.requests) == 1
    request.finish()
    assert len(leaf.requests) == 2
    leaf.requests[1].finish()
    assert transport.value().count(b"HTTP/1.1 200") == 2
    channel.connectionLost(None)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, Close\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    ],
)
def test_a_slimmed_poll_answer_keeps_the_connection_as_before(head):
    """twisted.web reads Connection when the answer starts: a held poll keeps it,
    so the connection stays open (or closes) as it would have."""
    outcomes = []
    for slim in (False, True):
        leaf, channel, transport = _request_on(head)
        (request,) = leaf.requests
        if slim:
            slim_request(request)
        request.setHeader(b"content-length", b"2")
        request.write(b"{}")
        request.finish()
        outcomes.append((transport.disconnecting, b"Connection: close" in transport.value()))
        channel.connectionLost(None)
    assert outcomes[0] == outcomes[1]
    # Only the first one stays open (twisted.web keeps no HTTP/1.0 connection alive).
    assert (not outcomes[0][0]) is (head == b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")


def test_requests_on_one_listening_address_share_its_address_object():
    requests = []
    for _ in range(2):
        leaf, channel, _ = _request_on(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        (request,) = leaf.requests
        slim_request(request)
        requests.append((channel, request))
    (c1, r1), (_, r2) = requests
    assert r1.getHost() == c1.getHost() and r1.getHost() is r2.getHost()
    for channel, request in requests:
        request.finish()
        channel.connectionLost(None)


def test_slimming_makes_no_instance_dictionary():
    """An object whose attributes are still in CPython's values array keeps them
    there (a dictionary made for it would cost memory and, on 3.11, every
    attribute read on it the specialized path); one that has a dictionary gets a
    rebuilt, ordinary one."""
    from gateway.transports._compact import existing_dict

    leaf, channel, transport = _request_on(_FULL_HEAD, leaf_head=True)
    (request,) = leaf.requests
    objects = (request, channel, transport)
    before = [existing_dict(obj) is not None for obj in objects]
    slim_request(request)
    assert [existing_dict(obj) is not None for obj in objects] == before
    request.finish()
    channel.connectionLost(None)
