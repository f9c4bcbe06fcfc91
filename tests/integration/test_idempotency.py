"""``idempotency_key`` on WebSocket ``publish`` and ``POST /publish`` (docs/protocol.md
sections 4 and 7) over real sockets on one node, with independent clients
(`websockets`, `httpx`)."""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from gateway.errors import BadRequest
from gateway.testing import WSClient, http


def post(gw, body):
    if isinstance(body, (bytes, str)):
        return http("POST", gw.base + "/publish", content=body, headers={"content-type": "application/json"})
    return http("POST", gw.base + "/publish", json=body)


async def subscribed(gw, channel="c"):
    ws = await WSClient.connect(gw.ws_url)
    reply = await ws.request({"type": "subscribe", "channel": channel, "id": "s"})
    return ws, reply["epoch"]


async def messages_until_marker(ws, gw, channel="c"):
    """Every message on ``ws`` until a marker published now (after everything under test)."""
    await post(gw, {"channel": channel, "data": "marker"})
    out = []
    while True:
        event = await ws.recv()
        if event["type"] == "message":
            if event["data"] == "marker":
                return out
            out.append(event)


BAD_KEYS = [None, "", "x" * 65, 7, True, ["k"], {"k": "v"}]
BAD_KEY_IDS = ["null", "empty", "65-chars", "number", "bool", "list", "object"]


# -- WebSocket ------------------------------------------------------------------------


async def test_websocket_repeat_is_acked_with_the_first_publication_and_delivered_once(gw):
    ws, epoch = await subscribed(gw)
    pub = await WSClient.connect(gw.ws_url)

    first = await pub.request({"type": "publish", "channel": "c", "data": "one", "idempotency_key": "k", "id": 1})
    again = await pub.request({"type": "publish", "channel": "c", "data": "other", "idempotency_key": "k", "id": 2})
    other = await pub.request({"type": "publish", "channel": "c", "data": "two", "idempotency_key": "k2", "id": 3})

    assert {"type": "ack", "id": 1, "channel": "c", "seq": 1, "epoch": epoch} == first
    assert {**first, "id": 2} == again
    assert 2 == other["seq"]
    assert [("one", 1), ("two", 2)] == [(m["data"], m["seq"]) for m in await messages_until_marker(ws, gw)]
    await ws.close()
    await pub.close()


async def test_websocket_pipelined_repeats_publish_once(gw):
    """Sent without waiting for acks: every ack is the first seq, one message."""
    ws, _ = await subscribed(gw)
    pub = await WSClient.connect(gw.ws_url)
    for i in range(10):
        await pub.send({"type": "publish", "channel": "c", "data": i, "idempotency_key": "same", "id": i})
    acks = [await pub.recv() for _ in range(10)]

    assert [("ack", i, 1) for i in range(10)] == [(a["type"], a["id"], a["seq"]) for a in acks]
    assert [0] == [m["data"] for m in await messages_until_marker(ws, gw)]
    await ws.close()
    await pub.close()


@pytest.mark.parametrize("key", BAD_KEYS, ids=BAD_KEY_IDS)
async def test_websocket_bad_key_is_bad_request_and_publishes_nothing(gw, key):
    pub = await WSClient.connect(gw.ws_url)
    error = await pub.request({"type": "publish", "channel": "c", "data": 1, "idempotency_key": key, "id": "p"})
    ok = await pub.request({"type": "publish", "channel": "c", "data": 1, "id": "q"})

    assert ("error", "bad_request") == (error["type"], error["code"])
    assert "idempotency_key" in error["message"]
    assert 1 == ok["seq"]
    await pub.close()


async def test_websocket_lone_surrogate_key_is_bad_request(gw):
    pub = await WSClient.connect(gw.ws_url)
    await pub.send('{"type":"publish","channel":"c","data":1,"idempotency_key":"\\ud800","id":"p"}')
    error = await pub.recv()
    ok = await pub.request({"type": "publish", "channel": "c", "data": 1, "idempotency_key": "\\ud800", "id": "q"})

    assert ("error", "bad_request", "p") == (error["type"], error["code"], error["id"])
    assert (1, "ack") == (ok["seq"], ok["type"])  # the 6-character text "\ud800" is a fine key
    await pub.close()


# -- POST /publish ------------------------------------------------------------------------


async def test_http_repeat_answers_the_first_publication(gw):
    ws, epoch = await subscribed(gw)

    first = await post(gw, {"channel": "c", "data": {"n": 1}, "idempotency_key": "order-42"})
    again = await post(gw, {"channel": "c", "data": {"n": 2}, "idempotency_key": "order-42"})

    assert (200, {"channel": "c", "seq": 1, "epoch": epoch}) == (first.status_code, first.json())
    assert (200, first.json()) == (again.status_code, again.json())
    assert [{"n": 1}] == [m["data"] for m in await messages_until_marker(ws, gw)]
    await ws.close()


async def test_http_batch_items_carry_their_own_keys(gw):
    ws, epoch = await subscribed(gw)
    batch = {
        "messages": [
            {"channel": "c", "data": "a", "idempotency_key": "A"},
            {"channel": "c", "data": "b"},
            {"channel": "c", "data": "a again", "idempotency_key": "A"},
            {"channel": "d", "data": "other channel", "idempotency_key": "A"},
            {"channel": "c", "data": "c", "idempotency_key": "C"},
        ]
    }

    first = await post(gw, batch)
    again = await post(gw, batch)

    def result(channel, seq):
        return {"channel": channel, "seq": seq, "epoch": epoch if channel == "c" else first.json()["results"][3]["epoch"]}

    assert 200 == first.status_code
    assert [result("c", 1), result("c", 2), result("c", 1), result("d", 1), result("c", 3)] == first.json()["results"]
    # The whole batch again: keyed items are repeats, the item without a key is new.
    assert [result("c", 1), result("c", 4), result("c", 1), result("d", 1), result("c", 3)] == again.json()["results"]
    assert ["a", "b", "c", "b"] == [m["data"] for m in await messages_until_marker(ws, gw)]
    await ws.close()


@pytest.mark.parametrize("key", BAD_KEYS, ids=BAD_KEY_IDS)
async def test_http_bad_key_is_400_naming_the_batch_item_and_publishes_nothing(gw, key):
    single = await post(gw, {"channel": "c", "data": 1, "idempotency_key": key})
    batch = await post(
        gw,
        {"messages": [{"channel": "c", "data": 1, "idempotency_key": "fine"}, {"channel": "c", "data": 2, "idempotency_key": key}]},
    )
    plain = await post(gw, {"channel": "c", "data": 3})
    keyed = await post(gw, {"channel": "c", "data": 4, "idempotency_key": "fine"})

    assert (400, "bad_request") == (single.status_code, single.json()["error"]["code"])
    assert "idempotency_key" in single.json()["error"]["message"]
    assert (400, "bad_request") == (batch.status_code, batch.json()["error"]["code"])
    assert batch.json()["error"]["message"].startswith("messages[1]: idempotency_key")
    # Nothing of the batch was published, and its first item's key was not used up.
    assert (200, 1) == (plain.status_code, plain.json()["seq"])
    assert (200, 2) == (keyed.status_code, keyed.json()["seq"])


async def test_http_lone_surrogates_in_a_batch_are_400_naming_the_item(gw):
    key = await post(gw, b'{"messages":[{"channel":"c","data":1},{"channel":"c","data":2,"idempotency_key":"\\udfff"}]}')
    data = await post(gw, b'{"messages":[{"channel":"c","data":1},{"channel":"c","data":2},{"channel":"c","data":"\\ud800"}]}')
    single = await post(gw, b'{"channel":"c","data":1,"idempotency_key":"a\\ud800"}')
    stray = await post(gw, b'{"channel":"c","data":1,"note":"\\ud800"}')
    ok = await post(gw, b'{"channel":"c","data":"\\ud83d\\ude00","idempotency_key":"\\ud83d\\ude00"}')

    assert (400, "messages[1]: idempotency_key") == (key.status_code, key.json()["error"]["message"][:28])
    assert (400, "messages[2]: data") == (data.status_code, data.json()["error"]["message"][:17])
    assert (400, "bad_request") == (single.status_code, single.json()["error"]["code"])
    assert (400, "bad_request") == (stray.status_code, stray.json()["error"]["code"])
    assert (200, 1) == (ok.status_code, ok.json()["seq"])  # an escaped pair is one character


async def test_a_key_is_shared_by_websocket_and_http(gw):
    pub = await WSClient.connect(gw.ws_url)
    ack = await pub.request({"type": "publish", "channel": "c", "data": 1, "idempotency_key": "k", "id": 1})
    http_again = await post(gw, {"channel": "c", "data": 1, "idempotency_key": "k"})
    http_first = await post(gw, {"channel": "c", "data": 2, "idempotency_key": "h"})
    ws_again = await pub.request({"type": "publish", "channel": "c", "data": 2, "idempotency_key": "h", "id": 2})

    assert {"channel": "c", "seq": 1, "epoch": ack["epoch"]} == http_again.json()
    assert (2, 2) == (http_first.json()["seq"], ws_again["seq"])
    await pub.close()


# -- what a repeat counts for ---------------------------------------------------------------


async def test_a_repeat_counts_against_the_publish_rate(gw_factory):
    """One publish per 100 s: the repeat of an accepted key is still an attempt, and is refused."""
    gw = gw_factory(publish_rate=0.01)
    pub = await WSClient.connect(gw.ws_url)
    first = await pub.request({"type": "publish", "channel": "c", "data": 1, "idempotency_key": "k", "id": 1})
    again = await pub.request({"type": "publish", "channel": "c", "data": 1, "idempotency_key": "k", "id": 2})
    over_http = [await post(gw, {"channel": "c", "data": 1, "idempotency_key": "k"}) for _ in range(2)]

    assert ("ack", 1) == (first["type"], first["seq"])
    assert ("error", "rate_limited") == (again["type"], again["code"])
    assert [200, 429] == [r.status_code for r in over_http]
    assert 1 == over_http[0].json()["seq"]
    await pub.close()


async def test_hooks_see_a_repeat_before_but_not_after_and_metrics_count_it(gw_factory):
    """The `log` hook logs in after_publish: a publication with a repeated key is logged once."""
    gw = gw_factory(hook=("log",))
    logged = []

    def observe(event):
        if event.get("log_format", "").startswith("published {channel}"):
            logged.append((event["channel"], event["seq"]))

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(3):
            r = await post(gw, {"channel": "c", "data": 1, "idempotency_key": "k"})
            assert (200, 1) == (r.status_code, r.json()["seq"])
    finally:
        globalLogPublisher.removeObserver(observe)
    metrics = (await http("GET", gw.base + "/metrics")).text

    assert [("c", 1)] == logged
    assert "gateway_publications_total 1.0" in metrics
    assert "gateway_publications_deduplicated_total 2.0" in metrics


async def test_embedding_api_takes_a_key(gw):
    first = await gw.gateway.publish("c", {"x": 1}, idempotency_key="py")
    again = await gw.bus.publish("c", {"x": 2}, idempotency_key="py")
    with pytest.raises(BadRequest):
        await gw.gateway.publish("c", 1, idempotency_key="")
    assert (1, False) == (first.seq, first.duplicate)
    assert (first.seq, first.epoch, True) == (again.seq, again.epoch, again.duplicate)
