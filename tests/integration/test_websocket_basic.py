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
