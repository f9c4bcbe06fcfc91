"""Presence (docs/protocol.md section 11) on one node over real sockets: the WebSocket
``presence`` command and ``GET /presence``, join/leave on WebSocket, SSE and long-poll,
long-poll presence expiring after --presence-ttl, and the error paths.

Clients are third-party libraries (``websockets`` through WSClient, ``httpx``)."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from gateway.testing import WSClient, aio, http

from .conftest import wait_until

SECRET = "presence-test-secret-0123456789abcdef"
API_KEY = "presence-api-key-0123456789"


def token(sub, subscribe=("*",), publish=("*",)):
    claims = {"sub": sub, "exp": int(time.time()) + 300, "subscribe": list(subscribe), "publish": list(publish)}
    return pyjwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def auth_gw(gw_factory):
    return gw_factory(jwt_secret=SECRET, api_key=(API_KEY,), presence_ttl=1.0)


async def ws(gw, sub=None, **kw):
    url = gw.ws_url + (f"?token={token(sub, **kw)}" if sub else "")
    return await WSClient.connect(url)


async def subscribe(client, channel, join_leave=False, rid=1):
    reply = await client.request({"type": "subscribe", "id": rid, "channel": channel, "join_leave": join_leave})
    assert "subscribed" == reply["type"], reply
    return reply


async def presence_http(gw, channel=None, headers=None, **params):
    query = ([("channel", channel)] if channel is not None else []) + [(k, str(v)) for k, v in params.items()]
    return await http("GET", gw.base + "/presence", params=query, headers=headers or {})


async def members_of(gw, channel, headers=None):
    r = await presence_http(gw, channel, headers=headers or {"Authorization": f"Bearer {API_KEY}"})
    assert 200 == r.status_code, r.text
    return r.json()


async def wait_presence(gw, channel, want, headers=None, what="presence"):
    seen = {}

    async def check():
        seen["body"] = await members_of(gw, channel, headers)
        return want(seen["body"])

    deadline = time.monotonic() + 10
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {seen['body']}")
        from gateway.testing import sleep

        await sleep(0.05)
    return seen["body"]


async def test_websocket_and_http_answer_who_is_here(auth_gw):
    """Two connections of alice, one of bob and two API-key (anonymous) connections:
    both query forms give members sorted by sub with connections, and anonymous."""
    clients = [await ws(auth_gw, "bob"), await ws(auth_gw, "alice"), await ws(auth_gw, "alice")]
    anon = [await WSClient.connect(auth_gw.ws_url + f"?token={API_KEY}") for _ in range(2)]
    try:
        for c in clients + anon:
            await subscribe(c, "room")
        expected = {"channel": "room", "members": [{"sub": "alice", "connections": 2}, {"sub": "bob", "connections": 1}], "anonymous": 2, "count": 2}

        body = await wait_presence(auth_gw, "room", lambda b: b["anonymous"] == 2 and len(b["members"]) == 2)
        reply = await clients[0].request({"type": "presence", "id": "p1", "channel": "room"})

        assert expected == body
        assert {"type": "presence", "id": "p1", **expected} == reply
    finally:
        for c in clients + anon:
            await c.close()
    await wait_presence(auth_gw, "room", lambda b: b["members"] == [] and b["anonymous"] == 0, what="everyone gone")


async def test_join_and_leave_identical_on_websocket_sse_and_poll(auth_gw, sse):
    """A subscriber on each transport with join_leave sees alice's join when her first
    connection subscribes and her leave when the last goes, as the same JSON; a second
    connection of alice causes nothing."""
    watcher = await ws(auth_gw, "watcher")
    await subscribe(watcher, "room", join_leave=True)
    # A subscriber with join_leave sees its own join (its subscription is live first).
    assert {"type": "join", "channel": "room", "sub": "watcher"} == await watcher.recv()
    stream = await sse(auth_gw.base + f"/sse?channel=room&join_leave=1&token={token('sse-watcher')}")
    assert 200 == stream.status
    first = await aio(stream.event())
    assert ("join", {"type": "join", "channel": "room", "sub": "sse-watcher"}) == (first["event"], first["data"])
    assert {"type": "join", "channel": "room", "sub": "sse-watcher"} == await watcher.recv()

    poll = http("GET", auth_gw.base + "/poll", params={"channel": "room", "join_leave": "1", "timeout": "10", "token": token("poller")})
    # The poller's own join answers its held poll (so soon that waiting to see it
    # held could miss it: it is awaited directly).
    r = await poll
    assert [{"type": "join", "channel": "room", "sub": "poller"}] == r.json()["messages"]
    cursor = r.json()["cursor"]
    assert {"type": "join", "channel": "room", "sub": "poller"} == await watcher.recv()
    event = await aio(stream.event())
    assert ("join", {"type": "join", "channel": "room", "sub": "poller"}) == (event["event"], event["data"])

    poll = http("GET", auth_gw.base + "/poll", params={"channel": "room", "join_leave": "1", "timeout": "10", "cursor": cursor, "token": token("poller")})
    await wait_until(lambda: auth_gw.gateway.connection_count("poll") == 1, what="held poll")
    alice1 = await ws(auth_gw, "alice")
    alice2 = await ws(auth_gw, "alice")
    await subscribe(alice1, "room")
    join = {"type": "join", "channel": "room", "sub": "alice"}
    assert join == await watcher.recv()
    event = await aio(stream.event())
    assert "id" not in event
    assert ("join", join) == (event["event"], event["data"])
    r = await poll
    assert [join] == r.json()["messages"]
    assert cursor == r.json()["cursor"]

    await subscribe(alice2, "room")
    await alice1.close()
    await alice2.close()
    leave = {"type": "leave", "channel": "room", "sub": "alice"}
    assert leave == await watcher.recv()
    event = await aio(stream.event())
    assert ("leave", leave) == (event["event"], event["data"])
    await watcher.close()


async def test_without_join_leave_no_presence_events(auth_gw):
    quiet = await ws(auth_gw, "quiet")
    await subscribe(quiet, "room")
    other = await ws(auth_gw, "other")
    await subscribe(other, "room")
    await wait_presence(auth_gw, "room", lambda b: len(b["members"]) == 2)
    await other.close()
    await wait_presence(auth_gw, "room", lambda b: len(b["members"]) == 1)
    await quiet.send({"type": "publish", "id": 9, "channel": "room", "data": 1})
    # What quiet sees is its ack and the message: no join/leave before or between them.
    got = [await quiet.recv(), await quiet.recv()]
    assert ["ack", "message"] == sorted(e["type"] for e in got)
    await quiet.close()


async def test_poll_client_present_while_polling_then_leaves_after_ttl(auth_gw):
    """A long-poll client (anonymous with client=, and by sub) is present while its polls
    come and leaves --presence-ttl (1 s here) after its last poll ended."""
    watcher = await ws(auth_gw, "watcher")
    await subscribe(watcher, "room", join_leave=True)
    assert {"type": "join", "channel": "room", "sub": "watcher"} == await watcher.recv()

    r = await http("GET", auth_gw.base + "/poll", params={"channel": "room", "timeout": "0", "client": "tab-1", "token": API_KEY})
    assert 200 == r.status_code
    r = await http("GET", auth_gw.base + "/poll", params={"channel": "room", "timeout": "0", "token": token("bob")})
    assert 200 == r.status_code
    ended = time.monotonic()
    body = await wait_presence(auth_gw, "room", lambda b: b["anonymous"] == 1 and len(b["members"]) == 2)
    assert ["bob", "watcher"] == [m["sub"] for m in body["members"]]
    assert {"type": "join", "channel": "room", "sub": "bob"} == await watcher.recv()

    assert {"type": "leave", "channel": "room", "sub": "bob"} == await watcher.recv(timeout=10)
    # Not before the ttl (1 s) after the poll ended; within a refresh interval after it.
    assert time.monotonic() - ended >= 0.9
    body = await wait_presence(auth_gw, "room", lambda b: b["anonymous"] == 0)
    assert ["watcher"] == [m["sub"] for m in body["members"]]
    await watcher.close()


async def test_paging_members(auth_gw):
    clients = [await ws(auth_gw, f"user{i}") for i in range(5)]
    for c in clients:
        await subscribe(c, "room")
    await wait_presence(auth_gw, "room", lambda b: b["count"] == 5)

    page1 = (await presence_http(auth_gw, "room", headers={"Authorization": f"Bearer {API_KEY}"}, limit=2)).json()
    page2 = (await presence_http(auth_gw, "room", headers={"Authorization": f"Bearer {API_KEY}"}, limit=2, after=page1["next"])).json()
    page3 = await clients[0].request({"type": "presence", "channel": "room", "limit": 2, "after": page2["next"]})

    assert ["user0", "user1"] == [m["sub"] for m in page1["members"]]
    assert ["user2", "user3"] == [m["sub"] for m in page2["members"]]
    assert (["user4"], 5) == ([m["sub"] for m in page3["members"]], page3["count"])
    assert "next" not in page3
    for c in clients:
        await c.close()


async def test_open_node_needs_no_credentials(gw):
    client = await WSClient.connect(gw.ws_url)
    await subscribe(client, "room")
    r = await presence_http(gw, "room")
    assert 200 == r.status_code
    assert r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    await client.close()


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "channel"),
        ({"channel": "bad channel"}, "channel"),
        ({"channel": "c", "limit": "0"}, "limit"),
        ({"channel": "c", "limit": "x"}, "limit"),
        ({"channel": "c", "limit": "1001"}, "limit"),
        ({"channel": "c", "after": "x" * 300}, "after"),
    ],
)
async def test_bad_queries_are_400(gw, params, message):
    r = await http("GET", gw.base + "/presence", params=params)
    assert 400 == r.status_code
    error = r.json()["error"]
    assert "bad_request" == error["code"] and message in error["message"]


async def test_permission_is_the_subscribe_permission(auth_gw):
    """No credentials 401; a token not allowed to subscribe to the channel 403, on HTTP and WebSocket."""
    r = await presence_http(auth_gw, "secret")
    assert (401, "unauthorized") == (r.status_code, r.json()["error"]["code"])
    limited = token("eve", subscribe=["public:*"])
    r = await presence_http(auth_gw, "secret", headers={"Authorization": f"Bearer {limited}"})
    assert (403, "forbidden") == (r.status_code, r.json()["error"]["code"])
    r = await presence_http(auth_gw, "public:x", headers={"Authorization": f"Bearer {limited}"})
    assert 200 == r.status_code

    client = await ws(auth_gw, "eve", subscribe=["public:*"])
    reply = await client.request({"type": "presence", "id": 3, "channel": "secret"})
    assert {"type": "error", "id": 3, "code": "forbidden"} == {k: reply[k] for k in ("type", "id", "code")}
    reply = await client.request({"type": "presence", "id": 4, "channel": "bad channel"})
    assert ("error", "bad_request") == (reply["type"], reply["code"])
    reply = await client.request({"type": "subscribe", "id": 5, "channel": "public:x", "join_leave": "yes"})
    assert ("error", "bad_request") == (reply["type"], reply["code"])
    await client.close()


@pytest.mark.parametrize("path", ["/sse", "/poll"])
async def test_bad_join_leave_and_client_params(gw, path):
    r = await http("GET", gw.base + path, params={"channel": "c", "join_leave": "maybe", "timeout": "0"})
    assert 400 == r.status_code and "join_leave" in r.json()["error"]["message"]
    if path == "/poll":
        r = await http("GET", gw.base + path, params={"channel": "c", "client": "has space", "timeout": "0"})
        assert 400 == r.status_code and "client" in r.json()["error"]["message"]


async def test_presence_unavailable_when_the_bus_is_down(gw_factory):
    """A broker that is down: the query is unavailable (HTTP 503, WebSocket error), nothing crashes."""
    from gateway.testing import ManualBroker, start_gateway

    broker = ManualBroker()
    running = start_gateway(broker=broker, drain_timeout=2.0)
    try:
        client = await WSClient.connect(running.ws_url)
        await subscribe(client, "room")
        broker.ready = False
        r = await presence_http(running, "room")
        assert (503, "unavailable") == (r.status_code, r.json()["error"]["code"])
        reply = await client.request({"type": "presence", "id": 1, "channel": "room"})
        assert ("error", "unavailable") == (reply["type"], reply["code"])
        broker.ready = True
        running.gateway.presence.refresh()
        r = await presence_http(running, "room")
        assert (200, 1) == (r.status_code, r.json()["anonymous"])
        await client.close()
    finally:
        await running.stop()
