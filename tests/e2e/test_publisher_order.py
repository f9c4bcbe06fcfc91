"""Publisher order with Redis (docs/protocol.md section 1): the publications one connection
sends to one channel get seqs in send order, even without waiting for acks, and the items
of one POST /publish batch likewise; on one node and across nodes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.testing import aio
from tests.e2e.support import ws_publish_many

pytestmark = pytest.mark.redis


async def test_one_websocket_unacked_publishes_get_seqs_in_send_order(nodes):
    """400 publishes to two channels, interleaved, sent back to back on one WebSocket: each
    channel's acks come back as 1..N in the order the publishes were sent."""
    (a,) = await nodes(1)

    async def scenario():
        return await asyncio.gather(
            ws_publish_many(a.ws_url, "ordered", list(range(200))),
            ws_publish_many(a.ws_url, "other", list(range(200))),
        )

    acks, other = await aio(scenario())

    assert [r["type"] for r in acks] == ["ack"] * 200
    assert [r["seq"] for r in acks] == list(range(1, 201))
    assert [r["seq"] for r in other] == list(range(1, 201))


async def test_publishers_on_two_nodes_each_keep_their_own_order(nodes):
    """Two connections on two nodes publish to one channel at once: the seqs interleave, but
    each connection's own acks increase in its send order."""
    a, b = await nodes(2)

    async def scenario():
        return await asyncio.gather(
            ws_publish_many(a.ws_url, "shared", [f"a{i}" for i in range(150)]),
            ws_publish_many(b.ws_url, "shared", [f"b{i}" for i in range(150)]),
        )

    from_a, from_b = await aio(scenario())

    for acks in (from_a, from_b):
        seqs = [r["seq"] for r in acks]
        assert seqs == sorted(seqs), seqs
    assert sorted(r["seq"] for r in from_a + from_b) == list(range(1, 301))


async def test_batch_items_get_seqs_in_order(nodes):
    """The items of one POST /publish batch get seqs in their order, per channel."""
    (a,) = await nodes(1)
    items = [{"channel": "b1" if i % 3 else "b2", "data": i} for i in range(120)]

    async def scenario():
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(a.base + "/publish", json={"messages": items})
            return r.status_code, r.json()

    status, body = await aio(scenario())

    assert status == 200
    results = body["results"]
    for channel in ("b1", "b2"):
        seqs = [r["seq"] for r, item in zip(results, items) if item["channel"] == channel]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_a_pool_of_connections_keeps_each_channels_order(redis_server):
    """With several command connections, publishes issued back to back on one channel get
    seqs in issue order (a channel's publishes share one connection), while the channels
    together use more than one connection."""
    from twisted.internet import defer, reactor

    from gateway.broker.redis import RedisBroker
    from tests.e2e.support import wait_for

    class Listener:
        def publication_received(self, pub):
            pass

        def broker_reconnected(self):
            pass

    broker = RedisBroker(redis_server.url, reactor=reactor, poolsize=3)
    await broker.start(Listener())
    try:
        await wait_for(lambda: broker.is_ready() and len(broker._commands) == 3, what="three connections")
        channels = [f"pool{i}" for i in range(13)]  # 13: not a multiple of the pool size
        pending = [(c, i, broker.publish(c, i)) for i in range(60) for c in channels]
        pubs = await defer.gatherResults([d for _, _, d in pending])
        used = {broker._connection_for(c) for c in channels}
    finally:
        await broker.stop()

    for channel in channels:
        seqs = [p.seq for (c, _, _), p in zip(pending, pubs) if c == channel]
        assert seqs == list(range(1, 61)), (channel, seqs)
    assert len(used) > 1
