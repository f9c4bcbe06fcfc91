"""An open WebSocket keeps nothing of the HTTP request it was upgraded from (issue 11
goal 4): the HTTP channel and its Request are freed once the upgrade is done, and the
drain's set of open HTTP connections does not hold them."""

from __future__ import annotations

import gc

from gateway.testing import WSClient
from gateway.transports._http import GatewayHTTPChannel, GatewayRequest


def _alive(cls: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is cls)


async def test_the_upgraded_http_channel_and_request_are_released(gw):
    channels, requests = _alive(GatewayHTTPChannel), _alive(GatewayRequest)
    clients = [await WSClient.connect(gw.ws_url) for _ in range(3)]
    for i, ws in enumerate(clients):
        reply = await ws.request({"type": "subscribe", "channel": "room:1", "id": i})
        assert reply["type"] == "subscribed"
    assert _alive(GatewayHTTPChannel) <= channels
    assert _alive(GatewayRequest) <= requests
    # Still fully working: a publication reaches all three.
    publisher = clients[0]
    ack = await publisher.request({"type": "publish", "channel": "room:1", "data": {"n": 1}, "id": "p"})
    assert ack["type"] == "ack"
    for ws in clients[1:]:
        message = await ws.recv()
        assert message["type"] == "message" and message["data"] == {"n": 1}
    for ws in clients:
        await ws.close()
