"""GET /sse (docs/protocol.md section 5) over real sockets with the httpx client."""

from __future__ import annotations

import asyncio
import json
import socket

from gateway.testing import ManualBroker, aio, http, sleep

from .conftest import SSEClient, b64, cursor_of, decode, wait_until


def url(gw, *channels, **params):
    query = "&".join([f"channel={c}" for c in channels] + [f"{k}={v}" for k, v in params.items()])
    return f"{gw.base}/sse?{query}"


async def publish(gw, channel, data):
    return await gw.gateway.publish(channel, data)


async def test_stream_headers_and_event_framing(gw, sse):
    """200 with the SSE headers; each event carries id (the cursor after it), event and data."""
    stream = await sse(url(gw, "a", "b"))
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    pub = await publish(gw, "a", {"text": "hi"})
    event = await aio(stream.event())
    assert event["event"] == "message"
    assert event["data"] == {
        "type": "message",
        "channel": "a",
        "seq": 1,
        "epoch": pub.epoch,
        "data": {"text": "hi"},
        "ts": pub.ts,
    }
    cursor = decode(event["id"])
    assert cursor["a"] == [pub.epoch, 1]
    assert cursor["b"][1] == 0  # listed, nothing published: its "now"


async def test_id_advances_per_event_across_channels(gw, sse):
    """The id after each event holds every channel's latest position on this stream."""
    stream = await sse(url(gw, "a", "b"))
    pa1 = await publish(gw, "a", 1)
    pb1 = await publish(gw, "b", 2)
    pa2 = await publish(gw, "a", 3)
    ids = [decode((await aio(stream.event()))["id"]) for _ in range(3)]
    assert [i["a"][1] for i in ids] == [1, 1, 2]
    assert [i["b"][1] for i in ids] == [0, 1, 1]
    assert ids[-1] == {"a": [pa2.epoch, 2], "b": [pb1.epoch, 1]}
    assert pa1.epoch == pa2.epoch


async def test_resume_with_last_event_id_gets_exactly_the_missed_events(gw, sse):
    """A dropped stream resumed with Last-Event-ID gets the events published while away, once each, in order."""
    stream = await sse(url(gw, "a", "b"))
    await publish(gw, "a", "seen")
    last = await aio(stream.event())
    await aio(stream.close())
    await wait_until(lambda: gw.bus.subscriber_count() == 0, what="the stream to be released")
    for i in range(3):
        await publish(gw, "a", f"missed-a{i}")
        await publish(gw, "b", f"missed-b{i}")
    resumed = await sse(url(gw, "a", "b"), {"Last-Event-ID": last["id"]})
    got = [(await aio(resumed.event()))["data"] for _ in range(6)]
    by_channel = {c: [(e["seq"], e["data"]) for e in got if e["channel"] == c] for c in ("a", "b")}
    assert by_channel == {
        "a": [(2, "missed-a0"), (3, "missed-a1"), (4, "missed-a2")],
        "b": [(1, "missed-b0"), (2, "missed-b1"), (3, "missed-b2")],
    }
    await publish(gw, "a", "live")
    live = await aio(resumed.event())
    assert (live["data"]["seq"], live["data"]["data"]) == (5, "live")


async def test_since_query_parameter_resumes(gw, sse):
    """`since=<cursor>` resumes like Last-Event-ID."""
    first = await publish(gw, "a", 1)
    await publish(gw, "a", 2)
    stream = await sse(url(gw, "a", since=cursor_of({"a": (first.epoch, 1)})))
    event = await aio(stream.event())
    assert (event["data"]["seq"], event["data"]["data"]) == (2, 2)


async def test_last_event_id_wins_over_since(gw, sse):
    """A browser reconnect sends Last-Event-ID and the original URL: the header is the newer position."""
    pubs = [await publish(gw, "a", i) for i in range(4)]
    epoch = pubs[0].epoch
    stream = await sse(
        url(gw, "a", since=cursor_of({"a": (epoch, 1)})),
        {"Last-Event-ID": cursor_of({"a": (epoch, 3)})},
    )
    event = await aio(stream.event())
    assert event["data"]["seq"] == 4


async def test_cursor_older_than_history_gets_a_reset(gw_factory, sse):
    """A cursor whose next publication left history starts with one reset (with an id), then live events."""
    gw = gw_factory(history_size=5)
    pubs = [await publish(gw, "a", i) for i in range(10)]
    epoch = pubs[0].epoch
    stream = await sse(url(gw, "a", since=cursor_of({"a": (epoch, 2)})))
    reset = await aio(stream.event())
    assert reset["event"] == "reset"
    assert reset["data"] == {"type": "reset", "channel": "a", "epoch": epoch, "seq": 10}
    assert decode(reset["id"]) == {"a": [epoch, 10]}
    await publish(gw, "a", "next")
    event = await aio(stream.event())
    assert (event["event"], event["data"]["seq"]) == ("message", 11)


async def test_cursor_from_another_epoch_gets_a_reset(gw, sse):
    """A position in an epoch the channel no longer has is reset to the start of the current
    epoch, and the publications history holds of it follow from seq 1."""
    pub = await publish(gw, "a", 1)
    stream = await sse(url(gw, "a", since=cursor_of({"a": ("gone", 7)})))
    reset = await aio(stream.event())
    assert reset["data"] == {"type": "reset", "channel": "a", "epoch": pub.epoch, "seq": 0}
    message = await aio(stream.event())
    assert (message["data"]["type"], message["data"]["seq"], message["data"]["data"]) == ("message", 1, 1)


async def test_channel_absent_from_cursor_starts_now_and_unlisted_positions_are_ignored(gw, sse):
    """Listed-but-absent channels start at "now" (no history, no reset); cursor entries for unlisted channels are dropped."""
    a = await publish(gw, "a", "old-a")
    await publish(gw, "b", "old-b")
    await publish(gw, "other", "x")
    since = cursor_of({"a": (a.epoch, 1), "other": ("whatever", 99)})
    stream = await sse(url(gw, "a", "b", since=since))
    await publish(gw, "b", "new-b")
    event = await aio(stream.event())
    assert (event["data"]["channel"], event["data"]["data"]) == ("b", "new-b")
    assert set(decode(event["id"])) == {"a", "b"}


async def test_invalid_since_is_a_400(gw, sse):
    """A `since` that is not a cursor is a 400 JSON error before any stream opens."""
    stream = await sse(url(gw, "a", since="not*base64"))
    assert stream.status == 400
    assert stream.headers["content-type"] == "application/json"
    body = await aio(stream.body())
    assert body["error"]["code"] == "bad_request"


async def test_invalid_last_event_id_opens_stream_with_reset_per_channel(gw, sse):
    """An unreadable Last-Event-ID must not be a 400 (browsers would give up): every listed channel is reset."""
    pa = await publish(gw, "a", 1)
    stream = await sse(url(gw, "a", "b"), {"Last-Event-ID": "garbage!"})
    assert stream.status == 200
    resets = [await aio(stream.event()) for _ in range(2)]
    assert {r["event"] for r in resets} == {"reset"}
    assert {(r["data"]["channel"], r["data"]["seq"]) for r in resets} == {("a", 1), ("b", 0)}
    assert decode(resets[-1]["id"])["a"] == [pa.epoch, 1]


async def test_heartbeat_ping_comment(gw_factory, sse):
    """A `: ping` comment goes out every --heartbeat seconds."""
    gw = gw_factory(heartbeat=0.1)
    stream = await sse(url(gw, "a"))
    assert await aio(stream.comment(timeout=2)) == ": ping"
    assert await aio(stream.comment(timeout=2)) == ": ping"


async def test_bad_requests_are_400_json(gw):
    """Missing, invalid and too many channels, repeated `since`, non-UTF-8: 400 JSON, never a stream."""
    too_many = "&".join(f"channel=c{i}" for i in range(65))
    cases = [
        "/sse",
        "/sse?channel=",
        "/sse?channel=bad*name",
        "/sse?" + too_many,
        "/sse?channel=a&since=" + b64(b"[1,2]") + "&since=" + b64(b"{}"),
        "/sse?channel=%ff",
    ]
    for path in cases:
        r = await http("GET", gw.base + path)
        assert (path, r.status_code) == (path, 400)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "bad_request"


async def test_64_channels_is_allowed(gw, sse):
    """64 channels is the limit, not over it."""
    stream = await sse(gw.base + "/sse?" + "&".join(f"channel=c{i}" for i in range(64)))
    assert stream.status == 200
    assert gw.bus.subscriber_count() == 64


async def test_channel_names_too_long_for_a_cursor_are_400(gw):
    """Channels whose cursor could not be handed back (over 4,096 characters) are refused up front."""
    names = [f"{i:02d}" + "x" * 98 for i in range(40)]
    r = await http("GET", gw.base + "/sse?" + "&".join(f"channel={n}" for n in names))
    assert r.status_code == 400
    assert "cursor" in r.json()["error"]["message"]
    assert gw.bus.subscriber_count() == 0


async def test_draining_node_refuses_with_503(gw):
    """While draining, a new stream is a 503 JSON error."""
    gw.gateway.draining = True
    try:
        r = await http("GET", gw.base + "/sse?channel=a")
    finally:
        gw.gateway.draining = False
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"


async def test_drain_ends_streams(gw, sse):
    """Drain ends every SSE stream and waits for it to be unregistered."""
    streams = [await sse(url(gw, "a")) for _ in range(3)]
    await wait_until(lambda: gw.gateway.connection_count("sse") == 3, what="3 registered streams")
    await gw.gateway.drain(timeout=2)
    for stream in streams:
        assert await aio(stream.ended()) == []
    assert gw.gateway.connection_count("sse") == 0
    assert gw.bus.subscriber_count() == 0
    gw.gateway.draining = False


async def test_client_disconnect_releases_subscription_and_metrics(gw, sse):
    """A stream shows in gateway_connections and deliveries; dropping it releases everything at once."""
    stream = await sse(url(gw, "a", "b"))
    await publish(gw, "a", 1)
    await aio(stream.event())
    metrics = (await http("GET", gw.base + "/metrics")).text
    assert 'gateway_connections{transport="sse"} 1.0' in metrics
    assert 'gateway_deliveries_total{transport="sse"} 1.0' in metrics
    await aio(stream.close())
    await wait_until(lambda: gw.bus.subscriber_count() == 0, what="release")
    assert gw.bus.channels == []
    metrics = (await http("GET", gw.base + "/metrics")).text
    assert 'gateway_connections{transport="sse"} 0.0' in metrics


async def test_every_stream_gets_the_same_event_bytes(gw, sse):
    """Two streams on the same channel get the same event block; only their ids are their own."""
    s1 = await sse(url(gw, "a"))
    s2 = await sse(url(gw, "a", "b"))
    await publish(gw, "a", {"n": 1})
    e1, e2 = await aio(s1.event()), await aio(s2.event())
    assert json.dumps(e1["data"]) == json.dumps(e2["data"])
    assert set(decode(e1["id"])) == {"a"}
    assert set(decode(e2["id"])) == {"a", "b"}


async def test_publications_while_subscribing_are_held_until_the_stream_opens(gw_factory):
    """Nothing is written before every channel is live; what was published meanwhile follows the backlog, once, in order."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    for i in range(3):
        broker.deliver(await publish(gw, "a", f"old{i}"))
    epoch = broker.stream("a").epoch
    broker.hold_history = True
    opening = asyncio.ensure_future(SSEClient.open(url(gw, "a", "b", since=cursor_of({"a": (epoch, 1)}))))
    await wait_until(lambda: len(broker.held) == 2, what="both history reads")
    # Channel a goes live first; b is still subscribing, so nothing may be written yet.
    held_a = next(h for h in broker.held if h[0] == "a")
    broker.held.remove(held_a)
    held_a[2].callback(held_a[1])
    broker.deliver(await publish(gw, "a", "while-b-subscribes"))
    broker.deliver(await publish(gw, "b", "b-while-subscribing"))
    await sleep(0.05)
    assert not opening.done()
    broker.release_history()
    stream = await aio(opening)
    try:
        got = [(await aio(stream.event()))["data"] for _ in range(4)]
        assert [(e["channel"], e["seq"], e["data"]) for e in got if e["channel"] == "a"] == [
            ("a", 2, "old1"),
            ("a", 3, "old2"),
            ("a", 4, "while-b-subscribes"),
        ]
        assert [(e["channel"], e["seq"]) for e in got if e["channel"] == "b"] == [("b", 1)]
    finally:
        await aio(stream.close())


async def test_oversize_query_string_is_400_json(gw):
    """A query string over 8 KiB is a 400 JSON error."""
    r = await http("GET", gw.base + "/sse?channel=a&pad=" + "x" * 9000)
    assert r.status_code == 400
    assert "query string" in r.json()["error"]["message"]


async def test_request_line_over_twisted_limit_is_never_5xx_or_hung(gw):
    """A request line beyond twisted.web's own 16 KiB limit is answered with a 400 JSON error, never 5xx, never hung."""

    async def raw():
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /sse?channel=a&pad=" + b"x" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    answer = await aio(raw())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"bad_request"' in answer
    assert gw.bus.subscriber_count() == 0


async def test_options_and_other_methods(gw):
    """OPTIONS is a CORS preflight; POST is a 405 JSON error."""
    r = await http("POST", gw.base + "/sse?channel=a")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "bad_request"
    r = await http("OPTIONS", gw.base + "/sse")
    assert r.status_code == 204


async def test_slow_consumer_is_disconnected(gw_factory):
    """A client that stops reading is dropped once more than max_send_buffer bytes wait for it."""
    gw = gw_factory(max_send_buffer=256 * 1024)

    async def connect_and_stall():
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        # A small receive window, so the server's buffers fill quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        await loop.sock_sendall(sock, b"GET /sse?channel=big HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock

    sock = await aio(connect_and_stall())
    try:
        await wait_until(lambda: gw.bus.subscriber_count("big") == 1, what="the stream to open")
        chunk = "x" * 100_000
        for _ in range(200):
            await publish(gw, "big", chunk)
            if gw.bus.subscriber_count("big") == 0:
                break
        await wait_until(lambda: gw.bus.subscriber_count() == 0, what="the slow consumer to be dropped")
        assert gw.gateway.connection_count("sse") == 0
    finally:
        sock.close()


async def test_bus_not_ready_is_503(gw_factory):
    """While the bus cannot serve, a stream is refused with 503 JSON."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.ready = False
    r = await http("GET", gw.base + "/sse?channel=a")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"


async def test_subscribe_failure_is_503_before_the_stream_opens(gw_factory):
    """When a channel cannot be subscribed (history read fails), the answer is a 503 JSON error and nothing stays subscribed."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.hold_history = True
    pending = http("GET", gw.base + "/sse?channel=a&channel=b")
    await wait_until(lambda: len(broker.held) == 2, what="history reads")
    broker.release_history(error=RuntimeError("redis went away"))
    r = await pending
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
    assert gw.bus.subscriber_count() == 0
    assert gw.gateway.connection_count("sse") == 0


async def test_drain_while_subscribing_is_503(gw_factory):
    """A stream still subscribing when the drain starts is answered 503 (it has not opened yet)."""
    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    broker.hold_history = True
    pending = http("GET", gw.base + "/sse?channel=a")
    await wait_until(lambda: gw.gateway.connection_count("sse") == 1, what="the stream to register")
    await gw.gateway.drain(timeout=2)
    gw.gateway.draining = False
    r = await pending
    assert r.status_code == 503
    assert gw.bus.subscriber_count() == 0
