"""Revocation on the wire across two real nodes on a real redis-server (docs/protocol.md
section 8): ``POST /disconnect`` on node A closes alice's WebSocket (4003), SSE stream
(``event: error`` ``forbidden``) and held poll (403) on node B within a second; node B
then refuses her earlier token on every transport, and accepts a later one."""

from __future__ import annotations

import time
from typing import Any

import jwt

from gateway.testing import WSClient, aio, http
from tests.e2e.support import TIMEOUT_FACTOR, wait_for
from tests.integration.conftest import SSEClient

SECRET = "a-test-secret-of-at-least-32-bytes!!"
KEY = "backend-key"


def make_token(sub: str = "alice", iat: float | None = None) -> str:
    payload: dict[str, Any] = {"sub": sub, "subscribe": ["room:*"], "publish": ["room:*"]}
    if iat is not None:
        payload["iat"] = int(iat)
    return jwt.encode(payload, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_disconnect_on_node_a_closes_every_transport_of_the_identity_on_node_b(nodes, redis_server):
    a, b = await nodes(2, api_key=(KEY,), jwt_secret=SECRET)
    control = a.bus.broker.control_channel
    await wait_for(lambda: int(redis_server.cli("PUBSUB", "NUMSUB", control).split()[1]) == 2, what="control channel")
    old = bearer(make_token(iat=time.time() - 60))
    within = 1.0 * TIMEOUT_FACTOR

    ws = await WSClient.connect(b.ws_url, additional_headers=old)
    assert "subscribed" == (await ws.request({"type": "subscribe", "channel": "room:1", "id": 1}))["type"]
    bob = await WSClient.connect(b.ws_url, additional_headers=bearer(make_token("bob")))
    assert "subscribed" == (await bob.request({"type": "subscribe", "channel": "room:1", "id": 1}))["type"]
    sse = await aio(SSEClient.open(b.base + "/sse?channel=room:1", old))
    try:
        poll = http("GET", b.base + "/poll?channel=room:1&timeout=30", headers=old)
        await wait_for(lambda: b.gateway.connection_count("poll") == 1, what="the poll held")
        sent = time.monotonic()
        r = await http("POST", a.base + "/disconnect", json={"sub": "alice"}, headers=bearer(KEY))
        closed = await ws.closed(timeout=within)
        event = await aio(sse.event(timeout=within))
        polled = await poll
        elapsed = time.monotonic() - sent
    finally:
        await aio(sse.close())
    bob_reply = await bob.request({"type": "publish", "channel": "room:1", "data": 1, "id": 2})
    await bob.close()

    assert (200, {"disconnected": 0}) == (r.status_code, r.json())
    assert 4003 == closed[0]
    assert ("error", "forbidden") == (event["event"], event["data"]["code"])
    assert (403, "forbidden") == (polled.status_code, polled.json()["error"]["code"])
    assert elapsed < within
    assert "error" != bob_reply["type"]  # bob is untouched

    # Afterwards node B refuses the old token on every transport, with forbidden.
    refused_ws = await WSClient.connect(b.ws_url, additional_headers=old)
    refused_sse = await http("GET", b.base + "/sse?channel=room:1", headers=old)
    refused_poll = await http("GET", b.base + "/poll?channel=room:1&timeout=0", headers=old)
    assert (4003, 403, 403) == ((await refused_ws.closed())[0], refused_sse.status_code, refused_poll.status_code)

    # A token issued in a later second works.
    called = int(time.time())
    await wait_for(lambda: int(time.time()) > called, what="the next second")
    fresh = await WSClient.connect(b.ws_url, additional_headers=bearer(make_token(iat=time.time())))
    reply = await fresh.request({"type": "subscribe", "channel": "room:1", "id": 1})
    await fresh.close()
    assert "subscribed" == reply["type"]
