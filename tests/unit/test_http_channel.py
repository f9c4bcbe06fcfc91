"""GatewayHTTPChannel and GatewayRequest on a fake clock and transport: the request
deadline (issue 7 item 8), bodies refused before they are read and held in memory
(item 7), the Server header (item 12).  The same behaviours are checked over real
sockets in tests/integration/test_http_hardening.py."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from gateway.transports._http import LINGER_TIMEOUT, gateway_site


class Held(resource.Resource):
    """Holds every request (like an SSE stream or a held poll)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class Ok(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request):
        self.bodies.append(request.content.read())
        return b"ok"


class HalfClosable(StringTransport):
    """A StringTransport that records half-closes, like a TCP transport."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def connect(root, clock, request_timeout=30.0, max_body_size=1024, timeout=None, transport=None):
    site = gateway_site(root, max_body_size=max_body_size, request_timeout=request_timeout, reactor=clock, timeout=timeout)
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = transport or StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def body_of(data: bytes) -> dict:
    return json.loads(data.partition(b"\r\n\r\n")[2])


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


# -- deadline -----------------------------------------------------------------------------


def test_deadline_counts_from_the_first_byte_and_more_bytes_do_not_extend_it():
    """One byte every 10 s: the idle timeout never fires, the deadline does at 30 s with a 408 JSON."""
    clock = MemoryReactorClock()
    proto, transport = connect(Ok(), clock, timeout=60)
    for i in range(3):
        proto.dataReceived(REQUEST[i : i + 1])
        clock.advance(9.99)
    assert transport.value() == b""
    clock.advance(0.05)
    out = transport.value()
    assert status_of(out) == 408
    assert body_of(out)["error"]["code"] == "bad_request"
    assert b"\r\nServer: gateway\r\n" in out and b"\r\nConnection: close\r\n" in out
    assert transport.disconnecting


def test_no_deadline_before_the_first_byte():
    """A connection that sends nothing is left to the idle timeout (no 408)."""
    clock = MemoryReactorClock()
    _, transport = connect(Ok(), clock, timeout=60)
    clock.advance(59)
    assert (transport.value(), transport.disconnecting) == (b"", False)
    clock.advance(1)
    assert transport.value() == b""
    assert transport.disconnecting  # "Timing out client"


def test_deadline_ends_when_the_request_is_in_even_if_the_answer_is_held():
    """A held request (stream, poll) is never cut by the deadline."""
    clock = MemoryReactorClock()
    root = Held()
    proto, transport = connect(root, clock)
    proto.dataReceived(REQUEST)
    clock.advance(1000)
    assert (transport.value(), transport.disconnecting) == (b"", False)
    request = root.requests[0]
    request.write(b"late")
    request.finish()
    assert status_of(transport.value()) == 200
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_each_request_gets_its_own_deadline():
    """After a keep-alive answer nothing runs until the next request's first byte starts its deadline."""
    clock = MemoryReactorClock()
    proto, transport = connect(Ok(), clock)
    proto.dataReceived(REQUEST)
    assert status_of(transport.value()) == 200
    transport.clear()
    clock.advance(100)
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    proto.dataReceived(b"GE")
    clock.advance(29.9)
    assert transport.value() == b""
    clock.advance(0.2)
    assert status_of(transport.value()) == 408


def test_a_request_arriving_whole_arms_no_deadline_timer():
    """The deadline is armed only when a read leaves a request incomplete: one that
    arrives whole (most do) costs no timer."""
    clock = MemoryReactorClock()
    root = Held()
    proto, _ = connect(root, clock)
    armed: list = []
    real = proto.callLater
    proto.callLater = lambda delay, f, *a, **k: armed.append(f) or real(delay, f, *a, **k)
    proto.dataReceived(REQUEST)
    assert len(root.requests) == 1
    assert proto._request_timed_out not in armed
    root.requests[0].finish()
    proto.dataReceived(REQUEST[:10])
    assert armed.count(proto._request_timed_out) == 1
    proto.dataReceived(REQUEST[10:])
    assert len(root.requests) == 2 and armed.count(proto._request_timed_out) == 1
    assert not [c for c in clock.getDelayedCalls() if c.active() and c.func == proto._request_timed_out]


def test_partial_request_pipelined_behind_a_held_one_gets_a_deadline_when_its_turn_comes():
    """Bytes buffered behind a held request start their deadline only once that request is done."""
    clock = MemoryReactorClock()
    root = Held()
    proto, transport = connect(root, clock)
    proto.dataReceived(REQUEST + b"GET / HT")
    clock.advance(100)
    assert transport.value() == b""
    root.requests[0].finish()
    transport.clear()
    clock.advance(29.9)
    assert transport.value() == b""
    clock.advance(0.2)
    assert status_of(transport.value()) == 408


def test_deadline_can_be_turned_off():
    """request_timeout=None: no deadline (only the idle timeout, here none either)."""
    clock = MemoryReactorClock()
    proto, _ = connect(Ok(), clock, request_timeout=None)
    proto.dataReceived(b"G")
    assert not clock.getDelayedCalls()


def test_refusal_half_closes_discards_input_and_aborts_after_the_linger():
    """After a refusal the write side closes, further input is dropped, and the socket is aborted after LINGER_TIMEOUT."""
    clock = MemoryReactorClock()
    root = Ok()
    proto, transport = connect(root, clock, transport=HalfClosable())
    proto.dataReceived(b"G")
    clock.advance(30)
    assert transport.write_closed and not transport.disconnecting
    answer = transport.value()
    proto.dataReceived(b"ET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert transport.value() == answer
    assert root.bodies == []
    clock.advance(LINGER_TIMEOUT)
    assert transport.disconnected  # StringTransport.abortConnection


def test_connection_lost_cancels_the_deadline():
    clock = MemoryReactorClock()
    proto, _ = connect(Ok(), clock)
    proto.dataReceived(b"G")
    proto.connectionLost(None)
    assert not [c for c in clock.getDelayedCalls() if c.active()]


# -- bodies -------------------------------------------------------------------------------


def test_body_above_100_kb_is_held_in_memory():
    """twisted.web spools a body over 100 KB to a temp file; GatewayRequest keeps a BytesIO."""
    clock = MemoryReactorClock()
    proto, transport = connect(Ok(), clock, max_body_size=1_000_000)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"x" * 1000)
    assert type(proto.requests[-1].content) is BytesIO
    proto.dataReceived(b"x" * 299_000)
    assert status_of(transport.value()) == 200


class Args(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def render(self, request):
        self.seen.append((dict(request.args), request.content.read()))
        return b"ok"


@pytest.mark.parametrize(
    "ctype", [b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=xyz", b"application/json"]
)
def test_post_bodies_are_never_parsed_as_forms(ctype):
    """args hold the query string only, whatever the POST's Content-Type, and the
    body is left whole for the resource (twisted.web's form parsing is off)."""
    clock = MemoryReactorClock()
    root = Args()
    proto, transport = connect(root, clock)
    body = b"channel=evil&data=1" if b"x-www" in ctype else b'--xyz\r\nContent-Disposition: form-data; name="channel"\r\n\r\nevil\r\n--xyz--\r\n'
    proto.dataReceived(
        b"POST /publish?channel=good HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert status_of(transport.value()) == 200
    assert root.seen == [({b"channel": [b"good"]}, body)]


@pytest.mark.parametrize("expect", [False, True])
def test_content_length_over_the_limit_is_refused_after_the_head(expect):
    """413 JSON right after the head, no 100 Continue, and the resource never runs."""
    clock = MemoryReactorClock()
    root = Ok()
    proto, transport = connect(root, clock, max_body_size=1024)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
    if expect:
        head += b"Expect: 100-continue\r\n"
    proto.dataReceived(head + b"\r\n")
    out = transport.value()
    assert status_of(out) == 413
    assert body_of(out)["error"]["code"] == "too_large"
    assert b"100 Continue" not in out
    proto.dataReceived(b"x" * 5000)
    assert root.bodies == []


def test_chunked_body_is_cut_at_the_limit_and_never_rendered():
    """The chunk that passes the limit triggers the 413; the rest, terminator included, is dropped."""
    clock = MemoryReactorClock()
    root = Ok()
    proto, transport = connect(root, clock, max_body_size=1024)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(10):
        proto.dataReceived(b"100\r\n" + b"x" * 256 + b"\r\n")
    request = proto.requests[-1]
    assert request.content.getbuffer().nbytes <= 1024
    assert status_of(transport.value()) == 413
    proto.dataReceived(b"0\r\n\r\n")
    assert root.bodies == []


def test_body_of_exactly_the_limit_is_accepted():
    clock = MemoryReactorClock()
    root = Ok()
    proto, transport = connect(root, clock, max_body_size=1024)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n")
    assert root.bodies == [b"y" * 1024]
    assert status_of(transport.value()) == 200


# -- Server header ------------------------------------------------------------------------


def test_twisted_web_answers_say_server_gateway():
    clock = MemoryReactorClock()
    proto, transport = connect(Ok(), clock)
    proto.dataReceived(REQUEST)
    out = transport.value()
    assert b"\r\nServer: gateway\r\n" in out
    assert b"Twisted" not in out


class Broken(resource.Resource):
    isLeaf = True

    def render(self, request):
        raise RuntimeError("a bug")


def test_resource_that_raises_gets_a_json_500_not_an_html_page():
    """A resource raising past its own handling: JSON `internal`, not twisted.web's HTML page."""
    clock = MemoryReactorClock()
    proto, transport = connect(Broken(), clock)
    proto.dataReceived(REQUEST)
    out = transport.value()
    assert status_of(out) == 500
    assert body_of(out)["error"]["code"] == "internal"
    assert b"<html" not in out
