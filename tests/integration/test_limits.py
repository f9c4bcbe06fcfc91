"""--publish-rate and --max-connections (docs/protocol.md section 8) over real sockets."""

from __future__ import annotations

import json

import pytest
import websockets

from gateway.testing import WSClient, aio, http, sleep

from .conftest import wait_until


def post(gw, body):
    return http("POST", gw.base + "/publish", json=body)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in /metrics")


async def test_websocket_publishes_beyond_the_rate_are_refused_and_not_published(gw_factory):
    """--publish-rate 3: six publishes sent at once get three acks then three rate_limited
    errors; a subscriber sees three messages, and the next publish after a wait is seq 4."""
    gw = gw_factory(publish_rate=3)
    sub = await WSClient.connect(gw.ws_url)
    await sub.request({"type": "subscribe", "channel": "r", "id": "s"})
    pub = await WSClient.connect(gw.ws_url)
    for i in range(6):
        await pub.send({"type": "publish", "channel": "r", "data": i, "id": i})
    replies = [await pub.recv() for _ in range(6)]
    assert [(r["type"], r["id"]) for r in replies[:3]] == [("ack", 0), ("ack", 1), ("ack", 2)]
    assert [r["seq"] for r in replies[:3]] == [1, 2, 3]
    for i, r in enumerate(replies[3:], start=3):
        assert (r["type"], r["id"], r["code"]) == ("error", i, "rate_limited")
    got = [await sub.recv() for _ in range(3)]
    assert [(m["seq"], m["data"]) for m in got] == [(1, 0), (2, 1), (3, 2)]
    # One token comes back every 1/3 s.
    await sleep(0.4)
    ack = await pub.request({"type": "publish", "channel": "r", "data": "later", "id": "l"})
    assert (ack["type"], ack["seq"]) == ("ack", 4)
    assert (await sub.recv())["seq"] == 4
    await pub.close()
    await sub.close()


async def test_each_websocket_has_its_own_bucket(gw_factory):
    """One connection spending its burst does not limit another, nor HTTP publishers."""
    gw = gw_factory(publish_rate=1)
    a = await WSClient.connect(gw.ws_url)
    b = await WSClient.connect(gw.ws_url)
    assert (await a.request({"type": "publish", "channel": "c", "data": 1, "id": 1}))["type"] == "ack"
    assert (await a.request({"type": "publish", "channel": "c", "data": 2, "id": 2}))["code"] == "rate_limited"
    assert (await b.request({"type": "publish", "channel": "c", "data": 3, "id": 3}))["type"] == "ack"
    r = await post(gw, {"channel": "c", "data": 4})
    assert (r.status_code, r.json()["seq"]) == (200, 3)
    await a.close()
    await b.close()


async def test_websocket_bucket_is_forgotten_when_it_closes(gw_factory):
    """Closing a connection drops its bucket: the node keeps none for closed sockets."""
    gw = gw_factory(publish_rate=1)
    ws = await WSClient.connect(gw.ws_url)
    await ws.request({"type": "publish", "channel": "c", "data": 1, "id": 1})
    assert len(gw.gateway._ws_buckets) == 1
    await ws.close()
    await wait_until(lambda: gw.gateway.connection_count() == 0, what="the close")
    assert len(gw.gateway._ws_buckets) == 0


async def test_http_publish_beyond_the_rate_is_429_with_retry_after(gw_factory):
    """POST /publish over the rate: 429 rate_limited with Retry-After in whole seconds,
    nothing published; after Retry-After seconds a publish goes through as the next seq."""
    gw = gw_factory(publish_rate=2)
    assert [(await post(gw, {"channel": "h", "data": i})).status_code for i in range(2)] == [200, 200]
    refused = await post(gw, {"channel": "h", "data": "over"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["content-type"] == "application/json"
    retry_after = int(refused.headers["retry-after"])
    assert retry_after == 1  # 0.5 s until a token, rounded up
    batch = await post(gw, {"messages": [{"channel": "h", "data": "b"}]})
    assert (batch.status_code, batch.headers["retry-after"]) == (429, "1")
    await sleep(retry_after)
    ok = await post(gw, {"channel": "h", "data": "after"})
    assert (ok.status_code, ok.json()["seq"]) == (200, 3)
    assert "retry-after" not in ok.headers


async def test_invalid_publish_takes_no_token(gw_factory):
    """A publish refused as bad_request does not spend the client's rate."""
    gw = gw_factory(publish_rate=1)
    bad = await post(gw, {"channel": "bad name", "data": 1})
    assert bad.status_code == 400
    ok = await post(gw, {"channel": "c", "data": 1})
    assert ok.status_code == 200


async def test_max_connections_refuses_websocket_sse_and_poll_beyond_it(gw_factory, sse):
    """--max-connections 2 with a WebSocket and an SSE stream open: a third WebSocket, SSE
    stream or poll gets 503 unavailable as JSON; after one closes, a WebSocket is accepted."""
    gw = gw_factory(max_connections=2)
    ws = await WSClient.connect(gw.ws_url)
    stream = await sse(gw.base + "/sse?channel=c")
    assert stream.status == 200
    await wait_until(lambda: gw.gateway.connection_count() == 2, what="two connections")

    with pytest.raises(websockets.InvalidStatus) as info:
        await WSClient.connect(gw.ws_url)
    response = info.value.response
    assert response.status_code == 503
    assert json.loads(response.body) == {"error": {"code": "unavailable", "message": "too many connections"}}

    for path in ("/sse?channel=c", "/poll?channel=c&timeout=5"):
        r = await http("GET", gw.base + path)
        assert r.status_code == 503, path
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"error": {"code": "unavailable", "message": "too many connections"}}, path
    assert gw.gateway.connection_count() == 2

    await ws.close()
    await wait_until(lambda: gw.gateway.connection_count() == 1, what="the close")
    again = await WSClient.connect(gw.ws_url)
    assert (await again.request({"type": "subscribe", "channel": "c", "id": 1}))["type"] == "subscribed"
    await again.close()
    await aio(stream.close())


async def test_held_poll_counts_and_publishes_do_not(gw_factory):
    """--max-connections 1 with a poll held: a WebSocket is refused, POST /publish is not;
    once the publish answers the poll, a WebSocket is accepted."""
    gw = gw_factory(max_connections=1)
    poll = http("GET", gw.base + "/poll?channel=p&timeout=10")
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the held poll")
    with pytest.raises(websockets.InvalidStatus) as info:
        await WSClient.connect(gw.ws_url)
    assert info.value.response.status_code == 503
    published = await post(gw, {"channel": "p", "data": "wake"})
    assert published.status_code == 200
    answered = await poll
    assert (answered.status_code, [m["data"] for m in answered.json()["messages"]]) == (200, ["wake"])
    await wait_until(lambda: gw.gateway.connection_count() == 0, what="the poll to end")
    ws = await WSClient.connect(gw.ws_url)
    await ws.close()


async def test_jsonp_poll_refused_by_the_limit_is_jsonp(gw_factory):
    """A JSONP poll beyond --max-connections gets its 503 wrapped like every JSONP answer."""
    gw = gw_factory(max_connections=1)
    ws = await WSClient.connect(gw.ws_url)
    await wait_until(lambda: gw.gateway.connection_count() == 1, what="the WebSocket")
    r = await http("GET", gw.base + "/poll?channel=c&callback=cb")
    assert r.status_code == 200
    assert r.text == 'cb({"error":{"code":"unavailable","message":"too many connections"}});'
    await ws.close()


async def test_metrics_show_limits_and_refusals(gw_factory):
    """/metrics: refused publications by transport, refused connections, and both limits."""
    gw = gw_factory(publish_rate=1, max_connections=1)
    ws = await WSClient.connect(gw.ws_url)
    await ws.request({"type": "publish", "channel": "c", "data": 1, "id": 1})
    assert (await ws.request({"type": "publish", "channel": "c", "data": 2, "id": 2}))["code"] == "rate_limited"
    assert (await post(gw, {"channel": "c", "data": 3})).status_code == 200
    assert (await post(gw, {"channel": "c", "data": 4})).status_code == 429
    assert (await post(gw, {"channel": "c", "data": 5})).status_code == 429
    assert (await http("GET", gw.base + "/sse?channel=c")).status_code == 503
    text = (await http("GET", gw.base + "/metrics")).text
    assert metric(text, 'gateway_publish_rate_limited_total{transport="websocket"}') == 1
    assert metric(text, 'gateway_publish_rate_limited_total{transport="publish"}') == 2
    assert metric(text, 'gateway_connections_refused_total{reason="max_connections"}') == 1
    assert metric(text, "gateway_max_connections") == 1
    assert metric(text, "gateway_publish_rate") == 1
    await ws.close()
