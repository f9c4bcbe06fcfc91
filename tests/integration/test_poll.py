"""GET /poll (docs/protocol.md section 6) over real sockets with the httpx client."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from gateway.testing import ManualBroker, aio, http

from .conftest import b64, cursor_of, decode, wait_until


def poll(gw, *channels, **params):
    """One poll; fires with the httpx response."""
    query = [("channel", c) for c in channels] + [(k, str(v)) for k, v in params.items()]
    return http("GET", gw.base + "/poll", params=query)


async def publish(gw, channel, data):
    return await gw.gateway.publish(channel, data)


async def test_returns_at_once_when_events_exist_after_the_cursor(gw):
    """Events after the cursor are returned immediately, with the cursor after them."""
    pubs = [await publish(gw, "a", i) for i in range(3)]
    epoch = pubs[0].epoch
    started = time.monotonic()
    r = await poll(gw, "a", cursor=cursor_of({"a": (epoch, 1)}), timeout=10)
    assert time.monotonic() - started < 2
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert [(m["type"], m["seq"], m["data"]) for m in body["messages"]] == [("message", 2, 1), ("message", 3, 2)]
    assert decode(body["cursor"]) == {"a": [epoch, 3]}


async def test_held_until_an_event_arrives(gw):
    """With nothing after the cursor, the poll is held and answered with the first publication."""
    pending = poll(gw, "a", timeout=10)
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the poll to be held")
    pub = await publish(gw, "a", {"x": 1})
    r = await pending
    body = r.json()
    assert body["messages"] == [
        {"type": "message", "channel": "a", "seq": 1, "epoch": pub.epoch, "data": {"x": 1}, "ts": pub.ts}
    ]
    assert decode(body["cursor"]) == {"a": [pub.epoch, 1]}
    assert gw.gateway.connection_count("poll") == 0
    assert gw.bus.subscriber_count() == 0


async def test_timeout_returns_now_cursor_that_misses_nothing(gw):
    """No event within the timeout: empty messages and a cursor at "now"; the next poll gets what came after."""
    before = await publish(gw, "a", "before")
    r = await poll(gw, "a", "b", timeout=0.2)
    body = r.json()
    assert body["messages"] == []
    cursor = decode(body["cursor"])
    assert cursor["a"] == [before.epoch, 1]
    assert cursor["b"][1] == 0
    after = await publish(gw, "b", "after")
    r = await poll(gw, "a", "b", cursor=body["cursor"], timeout=10)
    assert [(m["channel"], m["data"]) for m in r.json()["messages"]] == [("b", "after")]
    assert decode(r.json()["cursor"]) == {"a": [before.epoch, 1], "b": [after.epoch, 1]}


async def test_timeout_zero_answers_at_once(gw):
    """timeout=0 never holds the request."""
    started = time.monotonic()
    r = await poll(gw, "a", timeout=0)
    assert r.json()["messages"] == []
    assert time.monotonic() - started < 1


async def test_default_and_capped_timeouts(gw):
    """No timeout means 25 s; over 60 is taken as 60 (seen on the held poll, then drained)."""
    first = poll(gw, "a")
    second = poll(gw, "b", timeout=3600)
    await wait_until(lambda: gw.gateway.connection_count("poll") == 2, what="two held polls")
    held = {p.channels[0]: p.timeout for p in gw.gateway._connections["poll"]}
    assert held == {"a": 25.0, "b": 60.0}
    await gw.gateway.drain(timeout=2)
    gw.gateway.draining = False
    assert (await first).json()["messages"] == []
    assert (await second).json()["messages"] == []


async def test_bad_timeouts_are_400(gw):
    """Negative, empty or non-numeric timeouts are 400 JSON errors."""
    for value in ["-1", "-0.5", "abc", "", "nan", "inf", "1e3", "0x10", "1_0", "5s"]:
        r = await poll(gw, "a", timeout=value)
        assert (value, r.status_code) == (value, 400)
        assert r.json()["error"]["code"] == "bad_request"
    assert gw.bus.subscriber_count() == 0


async def test_garbage_cursors_are_400(gw):
    """Every cursor that does not decode to {"channel": ["epoch", seq]} is a 400 JSON error."""
    cases = {
        "not base64url": "!!!",
        "padded": b64(b'{"a":["e",1]}') + "==",
        "impossible length": "abcde",
        "not JSON": b64(b"\xff\xfe not json"),
        "JSON array": b64(b'[["e",1]]'),
        "JSON string": b64(b'"x"'),
        "position not a pair": b64(b'{"a":["e",1,2]}'),
        "seq not an int": b64(b'{"a":["e",1.5]}'),
        "seq a bool": b64(b'{"a":["e",true]}'),
        "negative seq": b64(b'{"a":["e",-1]}'),
        "empty epoch": b64(b'{"a":["",1]}'),
        "epoch not a string": b64(b'{"a":[1,1]}'),
        "invalid channel": b64(b'{"a*":["e",1]}'),
        "oversize": b64(json.dumps({f"c{i}": ["e" * 60, i] for i in range(60)}).encode()),
    }
    for what, cursor in cases.items():
        r = await poll(gw, "a", cursor=cursor, timeout=0)
        assert (what, r.status_code) == (what, 400)
        assert r.json()["error"]["code"] == "bad_request"
        if what == "oversize":
            assert "longer than 4096" in r.json()["error"]["message"]
    assert gw.bus.subscriber_count() == 0


async def test_too_many_channels_and_bad_channels_are_400(gw):
    """65 channels, no channel, or an invalid name: 400 JSON."""
    for channels in ([f"c{i}" for i in range(65)], [], ["bad name"]):
        r = await poll(gw, *channels, timeout=0)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "bad_request"
    r = await poll(gw, *[f"c{i}" for i in range(64)], timeout=0)
    assert r.status_code == 200
    assert len(decode(r.json()["cursor"])) == 64


async def test_oversize_query_is_400(gw):
    """A query string over 8 KiB is a 400 JSON error, not a hang."""
    r = await poll(gw, "a", timeout=0, pad="x" * 9000)
    assert r.status_code == 400
    assert "query string" in r.json()["error"]["message"]


async def test_jsonp_wraps_answers_and_errors_with_status_200(gw):
    """A valid callback wraps the body as NAME(<json>); errors too, always with status 200."""
    pub = await publish(gw, "a", "x")
    r = await poll(gw, "a", cursor=cursor_of({"a": (pub.epoch, 0)}), callback="jQuery_123.cb$")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/javascript"
    match = re.fullmatch(r"jQuery_123\.cb\$\((.*)\);", r.text, re.DOTALL)
    assert match is not None
    assert json.loads(match.group(1))["messages"][0]["data"] == "x"
    r = await poll(gw, "a", timeout="-1", callback="cb")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/javascript"
    assert r.text.startswith("cb(") and r.text.endswith(");")
    assert json.loads(r.text[3:-2])["error"]["code"] == "bad_request"


async def test_malicious_callbacks_are_plain_400(gw):
    """A callback outside ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$ is a plain 400 JSON error, never reflected as script."""
    for callback in ["alert(1)//", "<script>", "a b", "1abc", "", "a" * 65, "cb;evil", "cb\u2028", "a-b"]:
        r = await poll(gw, "a", timeout=0, callback=callback)
        assert (callback, r.status_code) == (callback, 400)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "bad_request"


async def test_client_going_away_releases_held_poll_at_once(gw):
    """A held poll whose client disconnects releases its subscription and timer at once."""

    async def start_and_drop():
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /poll?channel=a&channel=b&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return writer

    writer = await aio(start_and_drop())
    await wait_until(lambda: gw.bus.subscriber_count() == 2, what="the poll to subscribe")
    writer.close()
    await wait_until(lambda: gw.bus.subscriber_count() == 0, timeout=2, what="release")
    assert gw.bus.channels == []
    assert gw.gateway.connection_count("poll") == 0


async def test_drain_answers_held_polls_with_their_cursor(gw):
    """During a drain a held poll is answered at once with its current cursor."""
    pub = await publish(gw, "a", 1)
    pending = poll(gw, "a", timeout=30)
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the held poll")
    started = time.monotonic()
    await gw.gateway.drain(timeout=2)
    gw.gateway.draining = False
    r = await pending
    assert time.monotonic() - started < 1
    assert r.json() == {"messages": [], "cursor": cursor_of({"a": (pub.epoch, 1)})}


async def test_draining_node_refuses_new_polls_with_503(gw):
    """A poll arriving while the node drains is a 503 JSON error."""
    gw.gateway.draining = True
    try:
        r = await poll(gw, "a", timeout=0)
    finally:
        gw.gateway.draining = False
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"


async def test_reset_when_cursor_is_older_than_history(gw_factory):
    """A cursor older than history gets one reset (no partial history), and the cursor moves to the top."""
    gw = gw_factory(history_size=5)
    pubs = [await publish(gw, "a", i) for i in range(8)]
    epoch = pubs[0].epoch
    r = await poll(gw, "a", cursor=cursor_of({"a": (epoch, 1)}), timeout=5)
    body = r.json()
    assert body["messages"] == [{"type": "reset", "channel": "a", "epoch": epoch, "seq": 8}]
    assert decode(body["cursor"]) == {"a": [epoch, 8]}


async def test_cursor_channel_matching_and_no_server_state(gw):
    """Unlisted cursor entries are dropped, listed-but-absent channels start at "now"; nothing stays behind."""
    a = await publish(gw, "a", "old")
    r = await poll(gw, "a", "b", cursor=cursor_of({"a": (a.epoch, 1), "zzz": ("e", 5)}), timeout=0)
    body = r.json()
    assert body["messages"] == []
    assert set(decode(body["cursor"])) == {"a", "b"}
    assert gw.gateway.connection_count("poll") == 0
    assert gw.bus.subscriber_count() == 0


async def test_poll_loop_sees_every_publication_once_in_order(gw):
    """A poll loop running while 1,000 publications go out (in HTTP batches) sees every seq once, in order."""
    total = 1000

    async def publisher(client):
        for start in range(0, total, 20):
            batch = [{"channel": "feed", "data": i} for i in range(start, start + 20)]
            r = await client.post(gw.base + "/publish", json={"messages": batch})
            assert r.status_code == 200

    async def poller(client, first_cursor):
        seen, cursor = [], first_cursor
        while len(seen) < total:
            r = await client.get(gw.base + "/poll", params={"channel": "feed", "cursor": cursor, "timeout": 5})
            body = r.json()
            seen.extend((m["seq"], m["data"]) for m in body["messages"])
            cursor = body["cursor"]
        return seen

    async def run():
        async with httpx.AsyncClient(timeout=10) as client:
            # The first poll fixes "now" before anything is published.
            start = (await client.get(gw.base + "/poll", params={"channel": "feed", "timeout": 0})).json()["cursor"]
            seen, _ = await asyncio.gather(poller(client, start), publisher(client))
            return seen

    seen = await aio(run())
    assert seen == [(i + 1, i) for i in range(total)]


async def test_deliveries_and_connections_metrics(gw):
    """A held poll counts in gateway_connections{transport="poll"}; its messages in deliveries."""
    pending = poll(gw, "a", timeout=10)
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the held poll")
    metrics = (await http("GET", gw.base + "/metrics")).text
    assert 'gateway_connections{transport="poll"} 1.0' in metrics
    await publish(gw, "a", 1)
    await pending
    metrics = (await http("GET", gw.base + "/metrics")).text
    assert 'gateway_connections{transport="poll"} 0.0' in metrics
    assert 'gateway_deliveries_total{transport="poll"} 1.0' in metrics


async def test_repeated_single_parameters_are_400(gw):
    """cursor, timeout and callback may be given once."""
    for params in ([("timeout", "1"), ("timeout", "2")], [("cursor", b64(b"{}")), ("cursor", b64(b"{}"))]):
        r = await http("GET", gw.base + "/poll", params=[("channel", "a"), *params])
        assert r.status_code == 400


async def test_bus_not_ready_is_503_and_jsonp_wraps_it(gw_factory):
    """While the bus cannot serve, a poll is a 503 JSON error; with a callback, a wrapped error with status 200."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.ready = False
    r = await poll(gw, "a", timeout=0)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
    r = await poll(gw, "a", timeout=0, callback="cb")
    assert r.status_code == 200
    assert json.loads(r.text[3:-2])["error"]["code"] == "unavailable"


async def test_subscribe_failure_is_503(gw_factory):
    """A history read that fails while the poll subscribes is a 503 JSON error; nothing stays subscribed."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.hold_history = True
    pending = poll(gw, "a", "b", timeout=10)
    await wait_until(lambda: len(broker.held) == 2, what="history reads")
    broker.release_history(error=RuntimeError("redis went away"))
    r = await pending
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
    assert gw.bus.subscriber_count() == 0
    assert gw.gateway.connection_count("poll") == 0


async def test_drain_while_subscribing_is_503(gw_factory):
    """A poll still subscribing when the drain starts is answered 503 at once."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.hold_history = True
    pending = poll(gw, "a", timeout=10)
    await wait_until(lambda: gw.gateway.connection_count("poll") == 1, what="the poll to register")
    await gw.gateway.drain(timeout=2)
    gw.gateway.draining = False
    r = await pending
    assert r.status_code == 503
    assert gw.bus.subscriber_count() == 0


@pytest.mark.parametrize("path", ["/poll", "/sse"])
async def test_token_given_twice_is_400_without_authentication_too(gw, path):
    """With no authentication configured the token is not read, but a query that gives
    it twice is still refused: which one would count is a guess."""
    r = await http("GET", gw.base + path + "?channel=a&timeout=0&token=x&token=y")
    assert r.status_code == 400
    assert r.json()["error"] == {"code": "bad_request", "message": "token given more than once"}
    assert gw.bus.subscriber_count("a") == 0
