"""A finished long poll or SSE stream is freed as soon as it ends, by reference counting,
not left in reference cycles for the cyclic garbage collector (whose full collections
then cost a node with many pollers a large share of its CPU: bench/README.md)."""

from __future__ import annotations

import gc
import weakref

from gateway.testing import http

from .conftest import wait_until


def only(gw, transport):
    (conn,) = gw.gateway._connections[transport]
    return weakref.ref(conn), weakref.ref(conn.request)


async def test_an_answered_poll_is_freed_without_the_cyclic_collector(gw):
    pending = http("GET", gw.base + "/poll", params={"channel": "a", "timeout": "10"})
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the poll to be held")
    poll_ref, request_ref = only(gw, "poll")
    gc.collect()
    gc.disable()
    try:
        await gw.gateway.publish("a", 1)
        r = await pending
        assert r.status_code == 200 and r.json()["messages"][0]["data"] == 1
        await wait_until(lambda: poll_ref() is None and request_ref() is None, what="the poll and its request freed")
    finally:
        gc.enable()


async def test_an_ended_sse_stream_is_freed_without_the_cyclic_collector(gw, sse):
    stream = await sse(gw.base + "/sse?channel=a")
    await wait_until(lambda: gw.gateway.connection_count("sse") == 1, what="the stream to open")
    stream_ref, request_ref = only(gw, "sse")
    gc.collect()
    gc.disable()
    try:
        await gw.gateway.publish("a", 1)
        from gateway.testing import aio

        assert (await aio(stream.event()))["data"]["data"] == 1
        await aio(stream.close())
        await wait_until(lambda: gw.gateway.connection_count("sse") == 0, what="the stream to end")
        await wait_until(lambda: stream_ref() is None and request_ref() is None, what="the stream and its request freed")
    finally:
        gc.enable()
