"""POST /publish, /healthz, /readyz, /metrics over real sockets with httpx."""

from __future__ import annotations

import pytest

from gateway.testing import WSClient, http


def post(gw, body):
    if isinstance(body, (bytes, str)):
        return http("POST", gw.base + "/publish", content=body, headers={"content-type": "application/json"})
    return http("POST", gw.base + "/publish", json=body)


def get(gw, path):
    return http("GET", gw.base + path)


async def test_publish_single_reaches_websocket_subscriber(gw):
    """A single publish answers 200 with channel, seq and epoch, and the subscriber gets it."""
    ws = await WSClient.connect(gw.ws_url)
    sub = await ws.request({"type": "subscribe", "channel": "news", "id": 1})
    r = await post(gw, {"channel": "news", "data": {"headline": "x"}})
    assert r.status_code == 200
    assert r.json() == {"channel": "news", "seq": 1, "epoch": sub["epoch"]}
    assert (await ws.recv())["data"] == {"headline": "x"}
    await ws.close()


async def test_publish_null_data_is_valid(gw):
    """`"data": null` is a valid publication."""
    r = await post(gw, {"channel": "c", "data": None})
    assert (r.status_code, r.json()["seq"]) == (200, 1)


async def test_publish_batch_returns_results_in_order(gw):
    """A batch publishes every item in order and returns their results in order."""
    r = await post(gw, {"messages": [{"channel": "a", "data": 1}, {"channel": "b", "data": 2}, {"channel": "a", "data": 3}]})
    assert r.status_code == 200
    assert [(x["channel"], x["seq"]) for x in r.json()["results"]] == [("a", 1), ("b", 1), ("a", 2)]


async def test_batch_with_one_bad_item_publishes_nothing(gw):
    """One bad item makes the whole batch a 400 naming its index, and nothing is published."""
    r = await post(gw, {"messages": [{"channel": "a", "data": 1}, {"channel": "bad name", "data": 2}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"
    assert "messages[1]" in r.json()["error"]["message"]
    ok = await post(gw, {"channel": "a", "data": 1})
    assert ok.json()["seq"] == 1


async def test_lone_surrogate_is_400_and_a_batch_holding_one_publishes_nothing(gw):
    """`data` with an unpaired surrogate escape is a 400 bad_request; in a batch, nothing of
    the batch is published; the channel then carries on at seq 1 and history answers."""
    sub = await WSClient.connect(gw.ws_url)
    first = await sub.request({"type": "subscribe", "channel": "s", "id": 1})
    single = await post(gw, b'{"channel":"s","data":"\\ud800"}')
    batch = await post(gw, b'{"messages":[{"channel":"s","data":1},{"channel":"s","data":["\\udfff"]}]}')
    assert (single.status_code, single.json()["error"]["code"]) == (400, "bad_request")
    assert (batch.status_code, batch.json()["error"]["code"]) == (400, "bad_request")
    ok = await post(gw, b'{"channel":"s","data":"\\ud83d\\ude00"}')  # an escaped pair is fine
    assert (ok.status_code, ok.json()["seq"]) == (200, 1)
    got = await sub.recv()
    assert (got["type"], got["seq"], got["data"]) == ("message", 1, "\U0001f600")
    poll = await http("GET", gw.base + "/poll?channel=s&timeout=5&cursor=" + _cursor("s", first["epoch"], 0))
    assert [m["seq"] for m in poll.json()["messages"]] == [1]
    await sub.close()


def _cursor(channel, epoch, seq):
    from gateway.core.cursor import encode_cursor
    from gateway.core.model import Position

    return encode_cursor({channel: Position(epoch, seq)})


BAD_BODIES = [
    ("not json", b"{nope"),
    ("not utf8", b'{"channel":"\xff","data":1}'),
    ("array", b"[1]"),
    ("missing channel", b'{"data":1}'),
    ("missing data", b'{"channel":"c"}'),
    ("channel not string", b'{"channel":1,"data":1}'),
    ("bad channel", b'{"channel":"a b","data":1}'),
    ("empty batch", b'{"messages":[]}'),
    ("batch not list", b'{"messages":{}}'),
    ("batch item not object", b'{"messages":[1]}'),
    ("nan", b'{"channel":"c","data":NaN}'),
    ("number overflowing to infinity", b'{"channel":"c","data":1e400}'),
    ("deep nesting", b'{"channel":"c","data":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("empty body", b""),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_BODIES], ids=[n for n, _ in BAD_BODIES])
async def test_bad_publish_body_is_400_json(gw_factory, body):
    """Each malformed body is a 400 with a JSON error, never a 5xx."""
    gw = gw_factory(max_message_size=1024 * 1024)
    r = await post(gw, body)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "bad_request"


async def test_publish_body_over_limit_is_413(gw_factory):
    """A body over --max-message-size is a 413 `too_large`."""
    gw = gw_factory(max_message_size=1024)
    r = await post(gw, {"channel": "c", "data": "x" * 2000})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


async def test_batch_over_size_limit_as_a_whole_is_413(gw_factory):
    """The size limit applies to a batch as a whole."""
    gw = gw_factory(max_message_size=1024)
    r = await post(gw, {"messages": [{"channel": "c", "data": "x" * 300} for _ in range(5)]})
    assert r.status_code == 413


async def test_publish_wrong_method_is_405_json(gw):
    """GET /publish is a 405 with a JSON body and an Allow header."""
    r = await get(gw, "/publish")
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]
    assert r.json()["error"]["code"] == "bad_request"


async def test_unknown_path_is_404_json(gw):
    """An unknown endpoint is a JSON 404 `not_found`."""
    r = await get(gw, "/nope/deeper")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_health_and_readiness(gw):
    """/healthz and /readyz answer 200 with JSON while the node runs."""
    h = await get(gw, "/healthz")
    assert (h.status_code, h.json()["status"]) == (200, "ok")
    r = await get(gw, "/readyz")
    assert (r.status_code, r.json()["status"]) == (200, "ready")


async def test_readyz_is_503_while_draining(gw_factory):
    """While the node drains, /readyz answers 503 and publishes are refused with 503."""
    gw = gw_factory()
    gw.gateway.draining = True
    r = await get(gw, "/readyz")
    assert r.status_code == 503
    p = await post(gw, {"channel": "c", "data": 1})
    assert (p.status_code, p.json()["error"]["code"]) == (503, "unavailable")
    gw.gateway.draining = False


async def test_metrics_expose_the_documented_series(gw):
    """/metrics exposes connections, publications, deliveries and broker_up in Prometheus text format."""
    ws = await WSClient.connect(gw.ws_url)
    await ws.request({"type": "subscribe", "channel": "m", "id": 1})
    await post(gw, {"channel": "m", "data": 1})
    await ws.recv()
    r = await get(gw, "/metrics")
    text = r.text
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'gateway_connections{transport="websocket"} 1.0' in text
    assert "gateway_publications_total 1.0" in text
    assert 'gateway_deliveries_total{transport="websocket"} 1.0' in text
    assert "gateway_broker_up 1.0" in text
    await ws.close()
