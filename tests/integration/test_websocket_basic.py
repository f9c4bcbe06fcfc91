"""WebSocket transport over a real socket, driven by the independent `websockets` client."""

from __future__ import annotations

from gateway.testing import WSClient


async def test_subscribe_publish_ack_and_message(gw):
    """A subscriber gets the publication; the publisher gets an ack with the same seq and epoch."""
    sub = await WSClient.connect(gw.ws_url)
    pub = await WSClient.connect(gw.ws_url)
    subscribed = await sub.request({"type": "subscribe", "channel": "room:1", "id": 1})
    assert subscribed["type"] == "subscribed"
    assert subscribed["channel"] == "room:1"
    assert subscribed["seq"] == 0
    ack = await pub.request({"type": "publish", "channel": "room:1", "data": {"text": "hi"}, "id": "p1"})
    assert ack == {"type": "ack", "id": "p1", "channel": "room:1", "seq": 1, "epoch": subscribed["epoch"]}
    message = await sub.recv()
    assert message["type"] == "message"
    assert message["seq"] == 1
    assert message["epoch"] == subscribed["epoch"]
    assert message["data"] == {"text": "hi"}
    assert "from" not in message
    assert isinstance(message["ts"], int)
    await sub.close()
    await pub.close()


async def test_publications_arriving_together_reach_websockets_in_order(gw):
    """Publications handed to the bus together (as one read of Redis pub/sub brings them)
    reach every WebSocket subscriber once each, in seq order, then live delivery goes on."""
    subs = [await WSClient.connect(gw.ws_url) for _ in range(3)]
    for ws in subs:
        await ws.request({"type": "subscribe", "channel": "batch", "id": 1})
    broker = gw.gateway.bus.broker
    bus = broker._listener
    held = []

    class Holder:
        def publication_received(self, pub):
            held.append(pub)

    broker._listener = Holder()
    try:
        for i in range(5):
            await gw.gateway.publish("batch", {"i": i})
    finally:
        broker._listener = bus
    bus.publications_received(held)
    await gw.gateway.publish("batch", {"i": 5})
    for ws in subs:
        got = [await ws.recv() for _ in range(6)]
        assert [(m["seq"], m["data"]["i"]) for m in got] == [(i + 1, i) for i in range(6)]
        await ws.close()
