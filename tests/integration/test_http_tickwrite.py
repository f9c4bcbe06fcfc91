"""Responses of the gateway's Site go out through its TickWriter (GatewayHTTPChannel.write):
the same bytes twisted.web would write, in order, one send() per connection per reactor
turn, without registering the socket for writing; closing answers still close."""

from __future__ import annotations

import asyncio

from gateway.testing import DEFAULT_TIMEOUT, aio

from .conftest import wait_until
from .rawhttp import RawResponse, open_raw, read_response

PUBLISH = b'{"channel":"t","data":1}'


async def _pipelined(port: int) -> list[RawResponse]:
    reader, writer = await open_raw(port)
    try:
        # Three requests in one segment: a poll answered at once, a 404 and a publish.
        writer.write(
            b"GET /poll?channel=t&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(PUBLISH), PUBLISH)
        )
        await writer.drain()
        return [await read_response(reader) for _ in range(3)]
    finally:
        writer.close()


async def test_pipelined_answers_in_order_with_the_head_twisted_would_write(gw):
    writer = gw.service.site.tick_writer
    assert writer is not None and writer is gw.gateway._tick_writer
    flushes, handed_over = writer.flushes, writer.handed_over
    first, second, third = await aio(_pipelined(gw.port))
    assert (first.status, second.status, third.status) == (200, 404, 200)
    assert first.json()["messages"] == [] and first.header("content-type") == "application/json"
    assert second.json()["error"]["code"] == "not_found"
    assert third.json()["seq"] == 1
    for response in (first, second, third):
        assert response.header("server") == "gateway"
        assert response.header("content-length") == str(len(response.body))
        assert response.header("date") is not None
    assert writer.flushes > flushes
    assert writer.handed_over == handed_over  # every answer went out in one send()


async def _answer_then_eof(port: int, request: bytes) -> tuple[RawResponse, bytes]:
    reader, writer = await open_raw(port)
    try:
        writer.write(request)
        await writer.drain()
        response = await read_response(reader)
        return response, await asyncio.wait_for(reader.read(), DEFAULT_TIMEOUT)
    finally:
        writer.close()


async def test_a_closing_answer_is_written_whole_then_the_connection_closes(gw):
    for request in (
        b"GET /poll?channel=t&timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /poll?channel=t&timeout=0 HTTP/1.0\r\n\r\n",
    ):
        response, rest = await aio(_answer_then_eof(gw.port, request))
        assert response.status == 200 and response.json()["messages"] == []
        assert rest == b""  # EOF: the channel closed the connection after the answer


async def test_a_held_poll_answer_goes_through_the_writer(gw):
    writer_ = gw.service.site.tick_writer
    reader, writer = await aio(open_raw(gw.port))
    try:
        writer.write(b"GET /poll?channel=held&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: gw.bus.subscriber_count("held") == 1, what="the poll held")
        flushes = writer_.flushes
        await gw.gateway.publish("held", {"n": 1})
        response = await aio(read_response(reader))
        assert response.status == 200
        assert [m["data"] for m in response.json()["messages"]] == [{"n": 1}]
        assert writer_.flushes == flushes + 1
        # The connection is kept alive and takes the next poll.
        writer.write(b"GET /poll?channel=held&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await aio(read_response(reader))).status == 200
    finally:
        writer.close()
