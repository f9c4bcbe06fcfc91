"""SSE streams and held polls leave nothing behind, and nothing cuts a healthy one."""

from __future__ import annotations

import asyncio
import json

from twisted.internet import reactor
from twisted.web import server

from gateway.resource import GatewayResource
from gateway.testing import aio, http, sleep
from gateway.transports._http import LineLimitHTTPChannel
from gateway.transports.sse import ChannelSetRequest

from .conftest import SSEClient, wait_until

# Connections are opened in waves no larger than the listen backlog (50), so no
# SYN is dropped and retried a second later.
WAVE = 50


def stream_timers(gw):
    """Timers set and still to fire: the SSE streams' heartbeats and held polls'
    timeouts (gateway.deadlines), and any reactor call of a stream or poll itself."""
    own = [
        call
        for call in reactor.getDelayedCalls()
        if call.active() and isinstance(getattr(call.func, "__self__", None), ChannelSetRequest)
    ]
    return gw.gateway.deadlines.pending + len(own)


async def open_raw(port, count, path):
    """Open ``count`` raw HTTP/1.1 requests for ``path``; return their writers (asyncio coroutine)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        return reader, writer

    conns = []
    for start in range(0, count, WAVE):
        conns.extend(await asyncio.gather(*(one() for _ in range(start, min(count, start + WAVE)))))
    return conns


async def read_heads(conns):
    """Wait for every response's status line and headers (asyncio coroutine)."""
    heads = await asyncio.wait_for(asyncio.gather(*(r.readuntil(b"\r\n\r\n") for r, _ in conns)), 20)
    return [h.split(b"\r\n", 1)[0] for h in heads]


async def close_all(conns):
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


async def test_thousand_dropped_sse_streams_leave_no_subscriber_or_timer(gw):
    """1,000 clients open a stream on two channels and drop it: no subscriber, channel or timer remains."""
    conns = await aio(open_raw(gw.port, 1000, "/sse?channel=load&channel=load2"))
    try:
        heads = await aio(read_heads(conns))
        assert set(heads) == {b"HTTP/1.1 200 OK"}
        assert gw.bus.subscriber_count() == 2000
        assert gw.gateway.connection_count("sse") == 1000
        assert stream_timers(gw) == 1000  # one heartbeat each
    finally:
        await aio(close_all(conns))
    await wait_until(lambda: gw.bus.subscriber_count() == 0, timeout=10, what="every stream released")
    assert gw.bus.channels == []
    assert gw.gateway.connection_count("sse") == 0
    assert stream_timers(gw) == 0


async def test_thousand_dropped_held_polls_leave_no_subscriber_or_timer(gw):
    """1,000 held polls whose clients go away release their subscriptions and timeouts at once."""
    conns = await aio(open_raw(gw.port, 1000, "/poll?channel=load&timeout=60"))
    try:
        await wait_until(lambda: gw.gateway.connection_count("poll") == 1000, timeout=10, what="1,000 held polls")
        assert gw.bus.subscriber_count() == 1000
        assert stream_timers(gw) == 1000
    finally:
        await aio(close_all(conns))
    await wait_until(lambda: gw.bus.subscriber_count() == 0, timeout=10, what="every poll released")
    assert gw.bus.channels == []
    assert gw.gateway.connection_count("poll") == 0
    assert stream_timers(gw) == 0


async def test_site_timeout_does_not_cut_streams_or_held_polls(gw):
    """A Site whose idle timeout is short still keeps a quiet SSE stream and a held poll open past it."""
    site = server.Site(GatewayResource(gw.gateway), timeout=0.3)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    stream = None
    try:
        stream = await aio(SSEClient.open(base + "/sse?channel=quiet"))
        held = http("GET", base + "/poll?channel=quiet&timeout=1.2")
        await sleep(1.0)  # over three Site timeouts with no byte sent either way
        assert gw.bus.subscriber_count("quiet") == 2
        pub = await gw.gateway.publish("quiet", "still here")
        event = await aio(stream.event())
        assert event["data"]["seq"] == pub.seq
        answer = await held
        assert answer.json()["messages"][0]["data"] == "still here"
    finally:
        if stream is not None:
            await aio(stream.close())
        await port.stopListening()


async def test_line_limit_channel_answers_overlong_request_lines_with_400_json(gw):
    """With LineLimitHTTPChannel, a request line over twisted.web's 16 KiB limit gets a 400 JSON answer, not a silent close."""
    site = server.Site(GatewayResource(gw.gateway))
    site.protocol = LineLimitHTTPChannel
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    async def raw():
        reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
        writer.write(b"GET /sse?channel=a&pad=" + b"x" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    try:
        answer = await aio(raw())
    finally:
        await port.stopListening()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert gw.bus.subscriber_count() == 0
