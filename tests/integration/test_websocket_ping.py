"""The WebSocket ``ping`` command (docs/protocol.md section 4) over a real socket, with
the independent `websockets` client: ``pong`` echoes the id, and before ``auth`` a
ping is a command like any other (close 4001)."""

from __future__ import annotations

import time

import jwt

from gateway.testing import WSClient

SECRET = "a-test-secret-of-more-than-32-bytes-0123456789"


def token(sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + 60, "subscribe": ["room:*"], "publish": ["room:*"]}, SECRET, algorithm="HS256")


async def test_ping_is_answered_pong_with_the_id_echoed(gw):
    ws = await WSClient.connect(gw.ws_url)
    assert {"type": "pong", "id": "p1"} == await ws.request({"type": "ping", "id": "p1"})
    assert {"type": "pong", "id": 42} == await ws.request({"type": "ping", "id": 42})
    await ws.send({"type": "ping"})
    assert {"type": "pong"} == await ws.recv()
    await ws.close()


async def test_pongs_come_in_order_behind_earlier_replies(gw):
    """A pong is queued like any reply: it never overtakes what was sent before it."""
    ws = await WSClient.connect(gw.ws_url)
    await ws.send({"type": "subscribe", "channel": "room:1", "id": "s"})
    for i in range(20):
        await ws.send({"type": "ping", "id": i})
    events = [await ws.recv() for _ in range(21)]
    assert "subscribed" == events[0]["type"]
    assert [{"type": "pong", "id": i} for i in range(20)] == events[1:]
    await ws.close()


async def test_bad_ping_is_an_error_and_the_connection_stays(gw):
    ws = await WSClient.connect(gw.ws_url)
    await ws.send({"type": "ping", "id": True})
    error = await ws.recv()
    assert ("error", "bad_request") == (error["type"], error["code"])
    assert "id" not in error
    assert {"type": "pong", "id": 1} == await ws.request({"type": "ping", "id": 1})
    await ws.close()


async def test_ping_before_auth_closes_4001(gw_factory):
    """With authentication configured, a ping before ``auth`` is "any other command
    before auth": the connection is closed with 4001, no pong."""
    gw = gw_factory(jwt_secret=SECRET)
    ws = await WSClient.connect(gw.ws_url)
    await ws.send({"type": "ping", "id": 1})
    code, reason = await ws.closed()
    assert 4001 == code
    assert "authenticate first" in reason


async def test_ping_after_auth_or_with_an_authenticated_upgrade_is_answered(gw_factory):
    gw = gw_factory(jwt_secret=SECRET)
    ws = await WSClient.connect(gw.ws_url)
    assert "authenticated" == (await ws.request({"type": "auth", "token": token(), "id": "a"}))["type"]
    assert {"type": "pong", "id": 2} == await ws.request({"type": "ping", "id": 2})
    await ws.close()

    ws = await WSClient.connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {token()}"})
    assert {"type": "pong", "id": 3} == await ws.request({"type": "ping", "id": 3})
    await ws.close()


async def test_ping_sent_right_behind_auth_waits_for_it(gw_factory):
    """Commands sent behind an ``auth`` without waiting for its reply run once it is
    answered, a ping among them."""
    gw = gw_factory(jwt_secret=SECRET)
    ws = await WSClient.connect(gw.ws_url)
    await ws.send({"type": "auth", "token": token(), "id": "a"})
    await ws.send({"type": "ping", "id": "p"})
    first, second = await ws.recv(), await ws.recv()
    assert ("authenticated", "a") == (first["type"], first["id"])
    assert {"type": "pong", "id": "p"} == second
    await ws.close()
