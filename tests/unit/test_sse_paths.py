"""An SSE stream of one channel off the live path (a connection that is not plain TCP,
here twisted.web's DummyRequest): the same shared event bytes go through
``request.write``, in order, counted as deliveries (the live path itself, over real
sockets, is tests/integration/test_sse_live.py)."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from gateway.app import Gateway
from gateway.config import Config
from gateway.transports.sse import SSEStream


@pytest.fixture
def gateway():
    gw = Gateway(Config(), reactor=Clock())
    gw.start()
    yield gw
    gw.stop()


class Request(DummyRequest):
    """DummyRequest with a push producer slot (its own loops over pull producers), no
    connection, and ``startedWriting`` as twisted.web's Request keeps it."""

    producer = None
    channel = None
    startedWriting = False

    def write(self, data):
        self.startedWriting = True
        super().write(data)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def cursor(channel: str, epoch: str, seq: int) -> bytes:
    raw = json.dumps({channel: [epoch, seq]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def test_one_channel_stream_on_another_transport_writes_through_request_write(gateway):
    req = Request([b""])
    stream = SSEStream(gateway, req, ["a"], {})
    stream.start()
    assert stream.opened and stream._wire is None
    pubs = [gateway.publish("a", n) for n in (1, 2)]
    pubs = [d.result for d in pubs]
    opening, *events = req.written
    assert opening == b"id: " + cursor("a", pubs[0].epoch, 0) + b"\n: ping\n\n"
    for pub, written in zip(pubs, events, strict=True):
        message = {"type": "message", "channel": "a", "seq": pub.seq, "epoch": pub.epoch, "data": pub.data, "ts": pub.ts}
        assert written == b"id: " + cursor("a", pub.epoch, pub.seq) + b"\nevent: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"
    assert stream.cursor() == cursor("a", pubs[1].epoch, 2).decode()
    assert gateway.stats.deliveries["sse"] == 2
    stream.release()
    assert gateway.bus.subscriber_count() == 0


def test_an_open_stream_is_slimmed_once_held_a_moment_and_a_gone_one_never(gateway):
    """What twisted.web keeps of the arrived request is dropped (memory) when the
    stream is still open after the slimming delay; one that ended before is left alone."""
    held, gone = Request([b""]), Request([b""])
    for req in (held, gone):
        req.requestHeaders.setRawHeaders(b"accept", [b"*/*"])
        req.requestHeaders.setRawHeaders(b"user-agent", [b"agent/1"])
    streams = [SSEStream(gateway, req, ["a"], {}) for req in (held, gone)]
    for stream in streams:
        stream.start()
    assert gateway.slimming.waiting == 2
    streams[1].release()
    assert gateway.slimming.waiting == 1
    gateway.reactor.advance(gateway.slimming.delay)
    assert gateway.slimming.waiting == 0
    assert held.getHeader(b"accept") is None and held.getHeader(b"user-agent") == b"agent/1"
    assert gone.getHeader(b"accept") == b"*/*"
    gateway.publish("a", 1)
    assert held.written[-1].startswith(b"id: ")  # still streaming
    streams[0].release()


def test_heartbeats_come_every_heartbeat_seconds_and_stop_with_the_stream(gateway):
    """The ping timing of a stream (its timers share one reactor call: Deadlines)."""
    clock, period = gateway.reactor, gateway.config.heartbeat
    req = Request([b""])
    stream = SSEStream(gateway, req, ["a"], {})
    stream.start()
    opened = len(req.written)
    clock.advance(period - 0.001)
    assert len(req.written) == opened
    clock.advance(0.001)
    assert req.written[opened:] == [b": ping\n\n"]
    clock.advance(period)
    assert req.written[opened:] == [b": ping\n\n"] * 2
    stream.release()
    assert gateway.deadlines.pending == 0
    clock.advance(period * 3)
    assert req.written[opened:] == [b": ping\n\n"] * 2


def test_a_held_poll_is_answered_when_its_timeout_passes(gateway):
    from gateway.transports.poll import HeldPoll

    clock = gateway.reactor
    req = Request([b""])
    poll = HeldPoll(gateway, req, ["a"], {}, timeout=7.5, callback=None)
    poll.start()
    assert gateway.deadlines.pending == 1 and req.written == []
    clock.advance(7.499)
    assert req.written == [] and not req.finished
    clock.advance(0.001)
    (body,) = req.written
    assert json.loads(body)["messages"] == [] and req.finished
    assert gateway.deadlines.pending == 0 and poll.released


def test_requests_naming_a_channel_share_one_string_for_it():
    from gateway.transports.sse import parse_channels

    n = 1
    first, second = f"room-{n}", f"room-{n}"  # two strings, as two requests' query strings make
    assert first is not second
    a = parse_channels({"channel": [first, "b"]})
    b = parse_channels({"channel": [second]})
    assert a == ["room-1", "b"] and a[0] is b[0]
