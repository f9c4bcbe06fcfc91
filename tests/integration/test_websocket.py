"""WebSocket protocol (docs/protocol.md section 4) over real sockets: commands, recovery,
errors, close codes, limits, heartbeats, slow consumers."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from gateway.testing import WSClient, aio, sleep

from .rawws import RawWS


async def subscribe(ws, channel, id=1, **extra):
    return await ws.request({"type": "subscribe", "channel": channel, "id": id, **extra})


async def test_subscribe_since_recovers_missed_messages_in_order(gw):
    """`since` inside history: subscribed with recovered true, then every missed message in order."""
    ws = await WSClient.connect(gw.ws_url)
    first = await subscribe(ws, "r")
    for i in range(5):
        await ws.request({"type": "publish", "channel": "r", "data": i, "id": f"p{i}"})
    await ws.close()
    ws = await WSClient.connect(gw.ws_url)
    reply = await subscribe(ws, "r", since={"epoch": first["epoch"], "seq": 2})
    assert reply == {"type": "subscribed", "id": 1, "channel": "r", "epoch": first["epoch"], "seq": 5, "recovered": True}
    got = [await ws.recv() for _ in range(3)]
    assert [(m["type"], m["seq"], m["data"]) for m in got] == [("message", 3, 2), ("message", 4, 3), ("message", 5, 4)]
    await ws.close()


async def test_subscribe_since_unrecoverable_sends_one_reset(gw):
    """A `since` from another epoch: subscribed with recovered false, then one reset to the start
    of the current epoch and the publications history holds of it, from seq 1."""
    ws = await WSClient.connect(gw.ws_url)
    await ws.request({"type": "publish", "channel": "r", "data": "kept", "id": 0})
    reply = await subscribe(ws, "r", since={"epoch": "gone", "seq": 7})
    assert (reply["recovered"], reply["seq"]) == (False, 0)
    reset = await ws.recv()
    assert reset == {"type": "reset", "channel": "r", "epoch": reply["epoch"], "seq": 0}
    message = await ws.recv()
    assert (message["type"], message["seq"], message["data"]) == ("message", 1, "kept")
    await ws.close()


async def test_history_size_limits_recovery(gw_factory):
    """A client away longer than history reaches gets a reset, not partial history."""
    gw = gw_factory(history_size=3)
    ws = await WSClient.connect(gw.ws_url)
    first = await subscribe(ws, "r")
    for i in range(6):
        await ws.request({"type": "publish", "channel": "r", "data": i, "id": i + 10})
    ws2 = await WSClient.connect(gw.ws_url)
    reply = await subscribe(ws2, "r", since={"epoch": first["epoch"], "seq": 1})
    assert (reply["recovered"], reply["seq"]) == (False, 6)
    assert (await ws2.recv())["type"] == "reset"
    await ws.close()
    await ws2.close()


async def test_unsubscribe_stops_delivery(gw):
    """After `unsubscribed`, no more messages of that channel arrive."""
    ws = await WSClient.connect(gw.ws_url)
    await subscribe(ws, "a")
    await subscribe(ws, "b", id=2)
    assert await ws.request({"type": "unsubscribe", "channel": "a", "id": 3}) == {
        "type": "unsubscribed",
        "id": 3,
        "channel": "a",
    }
    pub = await WSClient.connect(gw.ws_url)
    await pub.request({"type": "publish", "channel": "a", "data": 1, "id": 4})
    await pub.request({"type": "publish", "channel": "b", "data": 2, "id": 5})
    assert (await ws.recv())["channel"] == "b"
    assert gw.bus.subscriber_count("a") == 0
    await ws.close()
    await pub.close()


async def test_auth_without_authenticator_is_anonymous(gw):
    """With no auth configured any token is accepted and `sub` is null."""
    ws = await WSClient.connect(gw.ws_url)
    assert await ws.request({"type": "auth", "token": "anything", "id": "a"}) == {
        "type": "authenticated",
        "id": "a",
        "sub": None,
    }
    await ws.close()


async def test_id_is_echoed_as_given(gw):
    """String and number ids come back unchanged; a command without id gets a reply without id."""
    ws = await WSClient.connect(gw.ws_url)
    assert (await subscribe(ws, "x", id=1.5))["id"] == 1.5
    await ws.send({"type": "unsubscribe", "channel": "x"})
    assert await ws.recv() == {"type": "unsubscribed", "channel": "x"}
    await ws.close()


BAD_COMMANDS = [
    ("not json", "{oops", None),
    ("json array", "[1,2]", None),
    ("nan", '{"type":"publish","channel":"c","data":NaN,"id":1}', 1),
    ("unknown type", '{"type":"dance","id":7}', 7),
    ("missing type", '{"id":8}', 8),
    ("type not string", '{"type":5,"id":9}', 9),
    ("missing channel", '{"type":"subscribe","id":10}', 10),
    ("channel not string", '{"type":"subscribe","channel":5,"id":11}', 11),
    ("bad channel name", '{"type":"subscribe","channel":"a b","id":12}', 12),
    ("channel too long", json.dumps({"type": "subscribe", "channel": "x" * 201, "id": 13}), 13),
    ("glob in channel", '{"type":"publish","channel":"room:*","data":1,"id":14}', 14),
    ("missing data", '{"type":"publish","channel":"c","id":15}', 15),
    ("since wrong shape", '{"type":"subscribe","channel":"c","since":[1],"id":16}', 16),
    ("since negative seq", '{"type":"subscribe","channel":"c","since":{"epoch":"e","seq":-1},"id":17}', 17),
    ("token not string", '{"type":"auth","token":5,"id":18}', 18),
    ("enormous id", json.dumps({"type": "subscribe", "channel": "c", "id": "i" * 100000}), None),
    ("object id", '{"type":"subscribe","channel":"c","id":{"a":1}}', None),
    # Refused as a whole, yet the top-level id is still read and echoed.
    ("deep nesting", '{"type":"publish","channel":"c","id":1,"data":' + "[" * 100000 + "]" * 100000 + "}", 1),
    ("deep nesting, id last", '{"type":"publish","channel":"c","data":' + '[{"a":"]}"},' * 70 + "0" + "]" * 70 + ',"id":"late"}', "late"),
    ("number too large", '{"type":"publish","channel":"c","data":' + "9" * 5000 + ',"id":19}', 19),
    ("lone surrogate in data", '{"type":"publish","channel":"c","data":{"t":"\\ud800"},"id":20}', 20),
    ("lone surrogate in id", '{"type":"publish","channel":"c","data":1,"id":"\\udc00"}', None),
    ("lone surrogate in a key", '{"type":"subscribe","channel":"c","\\ud800":1,"id":21}', 21),
]


@pytest.mark.parametrize("payload,expected_id", [(p, i) for _, p, i in BAD_COMMANDS], ids=[n for n, _, _ in BAD_COMMANDS])
async def test_bad_command_gets_bad_request_and_connection_stays_open(gw_factory, payload, expected_id):
    """Each malformed command gets a `bad_request` error (id echoed when readable); the connection stays usable."""
    gw = gw_factory(max_message_size=1024 * 1024)
    ws = await WSClient.connect(gw.ws_url)
    await ws.send(payload)
    error = await ws.recv()
    assert error["type"] == "error"
    assert error["code"] == "bad_request"
    assert error.get("id") == expected_id
    assert isinstance(error["message"], str) and error["message"]
    assert (await subscribe(ws, "still-ok", id="ok"))["type"] == "subscribed"
    await ws.close()


async def test_lone_surrogate_publish_takes_no_seq_and_leaves_the_channel_usable(gw):
    """`"\\ud800"` is valid JSON text but not UTF-8: the publish is a bad_request with its id,
    live subscribers see nothing (no spurious reset), the next publication is seq 1, and a
    resume from before it answers at once with exactly that publication."""
    sub = await WSClient.connect(gw.ws_url)
    first = await subscribe(sub, "poison")
    pub = await WSClient.connect(gw.ws_url)
    await pub.send('{"type":"publish","channel":"poison","data":"\\ud800","id":"bad"}')
    error = await pub.recv()
    assert (error["type"], error["code"], error["id"]) == ("error", "bad_request", "bad")
    ack = await pub.request({"type": "publish", "channel": "poison", "data": "ok", "id": "good"})
    assert (ack["type"], ack["seq"], ack["epoch"]) == ("ack", 1, first["epoch"])
    got = await sub.recv()
    assert (got["type"], got["seq"], got["data"]) == ("message", 1, "ok")
    late = await WSClient.connect(gw.ws_url)
    reply = await subscribe(late, "poison", id="r", since={"epoch": first["epoch"], "seq": 0})
    assert (reply["recovered"], reply["seq"]) == (True, 1)
    assert (await late.recv())["data"] == "ok"
    for ws in (sub, pub, late):
        await ws.close()


async def test_duplicate_subscribe_is_bad_request(gw):
    """Subscribing twice to one channel on one connection is a `bad_request`."""
    ws = await WSClient.connect(gw.ws_url)
    await subscribe(ws, "c")
    error = await subscribe(ws, "c", id=2)
    assert (error["type"], error["code"]) == ("error", "bad_request")
    await ws.close()


async def test_at_most_1000_subscriptions_per_connection(gw):
    """The 1,001st subscription on one connection is refused with `bad_request`."""
    ws = await WSClient.connect(gw.ws_url)
    for i in range(1000):
        await ws.send({"type": "subscribe", "channel": f"c{i}", "id": i})
    replies = [await ws.recv() for _ in range(1000)]
    assert all(r["type"] == "subscribed" for r in replies)
    error = await subscribe(ws, "one-too-many", id="x")
    assert (error["type"], error["code"]) == ("error", "bad_request")
    await ws.close()
    await sleep(0.1)
    assert gw.bus.subscriber_count() == 0


async def test_binary_frame_closes_with_1003(gw):
    """A binary frame is answered with close code 1003."""
    ws = await WSClient.connect(gw.ws_url)
    await ws.send(b"\x00\x01")
    code, _ = await ws.closed()
    assert code == 1003


async def test_invalid_utf8_closes_with_1007(gw):
    """A text frame that is not UTF-8 is answered with close code 1007."""
    raw = await aio(RawWS.connect(gw.port))
    assert raw.status == 101
    raw.send_frame(0x1, b'{"type":"\xff\xfe"}')
    code, _ = await aio(raw.read_until_close())
    raw.close()
    assert code == 1007


async def test_oversize_message_closes_with_1009(gw_factory):
    """A message over --max-message-size gets a 1009 close frame (not a dropped connection)."""
    gw = gw_factory(max_message_size=1024)
    ws = await WSClient.connect(gw.ws_url, max_size=None)
    await ws.send({"type": "publish", "channel": "c", "data": "x" * 2000})
    code, _ = await ws.closed()
    assert code == 1009


async def test_bad_clients_do_not_disturb_others(gw_factory):
    """While other clients send garbage, binary and oversize frames, a subscriber keeps receiving."""
    gw = gw_factory(max_message_size=4096)
    good = await WSClient.connect(gw.ws_url)
    await subscribe(good, "c")
    for bad in ["{nope", b"\x00", json.dumps({"type": "publish", "channel": "c", "data": "x" * 5000})]:
        ws = await WSClient.connect(gw.ws_url, max_size=None)
        await ws.send(bad)
        if isinstance(bad, bytes) or len(bad) > 4096:
            await ws.closed()
        else:
            assert (await ws.recv())["code"] == "bad_request"
            await ws.close()
    pub = await WSClient.connect(gw.ws_url)
    await pub.request({"type": "publish", "channel": "c", "data": "fine", "id": 1})
    assert (await good.recv())["data"] == "fine"
    await good.close()
    await pub.close()


async def test_heartbeat_keeps_answering_clients_connected(gw_factory):
    """A client that answers pings stays connected across several heartbeat periods."""
    gw = gw_factory(heartbeat=0.3)
    ws = await WSClient.connect(gw.ws_url, ping_interval=None)
    await sleep(1.2)
    assert (await subscribe(ws, "c"))["type"] == "subscribed"
    await ws.close()


async def test_client_not_answering_pings_is_disconnected(gw_factory):
    """The server pings every heartbeat and drops a client whose pong does not come back in time."""
    gw = gw_factory(heartbeat=0.3)
    raw = await aio(RawWS.connect(gw.port))
    code, opcodes = await aio(asyncio.wait_for(raw.read_until_close(), 5))
    raw.close()
    assert 9 in opcodes  # it was pinged
    assert gw.gateway.connection_count("websocket") == 0


async def test_slow_consumer_is_closed_with_1008(gw_factory):
    """A client that stops reading is disconnected (1008) once its send buffer passes the cap."""
    gw = gw_factory(max_send_buffer=256 * 1024)
    raw = await aio(RawWS.connect(gw.port, rcvbuf=4096))
    raw.send_frame(0x1, json.dumps({"type": "subscribe", "channel": "flood", "id": 1}).encode())
    await aio(raw.writer.drain())
    await sleep(0.1)
    assert gw.bus.subscriber_count("flood") == 1
    chunk = "x" * 16000
    for _ in range(400):
        await gw.bus.publish("flood", chunk)
        if gw.gateway.connection_count("websocket") == 0 or gw.bus.subscriber_count("flood") == 0:
            break
        await sleep(0)
    # Now read everything the server managed to queue: it must end with a 1008 close.
    code, _ = await aio(asyncio.wait_for(raw.read_until_close(), 10))
    raw.close()
    assert code == 1008


async def test_slow_consumer_close_frame_is_sent_ahead_of_queued_publications(gw_factory):
    """A client that stops reading altogether: once its backlog passes the cap, what was not
    yet written is dropped and the 1008 close frame goes out next, so when the client reads
    again it finds the close code and reason after little data (not behind the whole cap)."""
    import struct

    cap = 2 * 1024 * 1024
    gw = gw_factory(max_send_buffer=cap)
    raw = await aio(RawWS.connect(gw.port, rcvbuf=4096))
    raw.send_frame(0x1, json.dumps({"type": "subscribe", "channel": "stall", "id": 1}).encode())
    await aio(raw.writer.drain())
    opcode, reply = await aio(asyncio.wait_for(raw.read_frame(), 5))
    assert json.loads(reply)["type"] == "subscribed"
    raw.writer.transport.pause_reading()  # the client stops reading
    (proto,) = gw.gateway._connections["websocket"]
    # Pin the server socket's kernel send buffer (Linux autotunes it up to 4 MiB, which
    # the gateway cannot take back): what comes before the close frame is then the gateway's.
    import socket

    proto.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    chunk = "x" * 16000
    published = 0
    while proto.state == proto.STATE_OPEN and published < 1000:
        await gw.bus.publish("stall", chunk)
        published += 1
        await sleep(0)
    assert proto.state == proto.STATE_CLOSING, "the server never closed the stalled client"

    async def read_again():
        raw.writer.transport.resume_reading()
        data_bytes = 0
        while True:
            opcode, payload = await raw.read_frame()
            if opcode == 8:
                return data_bytes, struct.unpack("!H", payload[:2])[0], payload[2:].decode()
            data_bytes += len(payload)

    before_close, code, reason = await aio(asyncio.wait_for(read_again(), 5))
    raw.close()
    assert (code, reason) == (1008, "slow consumer: send buffer full")
    assert published * len(chunk) > cap
    # About one Twisted buffer (64 KiB) and the kernels' (~128 KiB here), not the 2 MiB cap.
    assert before_close < 512 * 1024, f"{before_close} bytes came before the close frame"


async def test_origin_not_allowed_is_refused_with_403(gw_factory):
    """With --allowed-origin set, an upgrade from another Origin is refused with HTTP 403; no Origin is fine."""
    gw = gw_factory(allowed_origin=("https://app.example",))
    with pytest.raises(websockets.InvalidStatus) as info:
        await WSClient.connect(gw.ws_url, origin="https://evil.example")
    assert info.value.response.status_code == 403
    ok = await WSClient.connect(gw.ws_url, origin="https://app.example")
    await ok.close()
    raw = await aio(RawWS.connect(gw.port))
    assert raw.status == 101
    raw.close()


async def test_drain_closes_websockets_with_1001(gw_factory):
    """Stopping the service closes WebSockets with 1001 and /readyz reports draining meanwhile."""
    gw = gw_factory()
    ws = await WSClient.connect(gw.ws_url)
    await subscribe(ws, "c")
    stopping = gw.service.stopService()
    assert gw.gateway.draining
    code, _ = await ws.closed()
    await stopping
    assert code == 1001


async def test_publish_to_invalid_channel_returns_error_with_id(gw):
    """A publish to an invalid channel is a `bad_request` echoing the id; nothing is published."""
    ws = await WSClient.connect(gw.ws_url)
    error = await ws.request({"type": "publish", "channel": "", "data": 1, "id": 42})
    assert (error["code"], error["id"]) == ("bad_request", 42)
    await ws.close()


async def test_one_prepared_frame_per_publication_for_all_subscribers(gw):
    """A publication is framed once (Autobahn prepared message) however many subscribers get it."""
    factory = gw.service.resource.children[b"ws"]._factory
    prepared = []
    original = factory.prepareMessage

    def counting(payload, *args, **kwargs):
        prepared.append(payload)
        return original(payload, *args, **kwargs)

    factory.prepareMessage = counting
    clients = [await WSClient.connect(gw.ws_url) for _ in range(5)]
    for ws in clients:
        await subscribe(ws, "shared")
    await gw.bus.publish("shared", {"n": 1})
    received = [await ws.recv() for ws in clients]
    assert all(m["data"] == {"n": 1} for m in received)
    assert len(prepared) == 1
    for ws in clients:
        await ws.close()


async def test_publish_while_bus_unavailable_is_unavailable_error(gw_factory):
    """When the broker cannot take a publish, the client gets `unavailable` and the connection stays open."""
    from gateway.testing import ManualBroker

    broker = ManualBroker()
    gw = gw_factory(broker=broker)
    ws = await WSClient.connect(gw.ws_url)
    broker.ready = False
    error = await ws.request({"type": "publish", "channel": "c", "data": 1, "id": 9})
    assert (error["type"], error["code"], error["id"]) == ("error", "unavailable", 9)
    broker.ready = True
    assert (await ws.request({"type": "publish", "channel": "c", "data": 1, "id": 10}))["type"] == "ack"
    await ws.close()


async def test_subscribe_while_bus_unavailable_is_unavailable_error(gw_factory):
    """When the broker cannot read history, subscribe fails with `unavailable` and holds nothing."""
    from gateway.testing import ManualBroker

    broker = ManualBroker()
    broker.hold_history = True
    gw = gw_factory(broker=broker)
    ws = await WSClient.connect(gw.ws_url)
    await ws.send({"type": "subscribe", "channel": "c", "id": 3})
    while not broker.held:
        await sleep(0.01)
    broker.release_history(RuntimeError("connection lost"))
    error = await ws.recv()
    assert (error["type"], error["code"], error["id"]) == ("error", "unavailable", 3)
    assert gw.bus.subscriber_count() == 0
    broker.hold_history = False
    assert (await subscribe(ws, "c", id=4))["type"] == "subscribed"
    await ws.close()


async def test_frames_keep_command_order_when_written_in_one_reactor_turn(gw):
    """Publications are sent once per connection at the end of a reactor turn (_tickwrite);
    replies, errors and pongs written by other paths in the same turn stay in order with
    them.  All commands arrive in one TCP segment, so one turn handles them all; the memory
    broker delivers a publication before its publish is acknowledged."""
    raw = await aio(RawWS.connect(gw.port))
    raw.send_frame(0x1, json.dumps({"type": "subscribe", "channel": "o", "id": "s"}).encode())
    await aio(raw.writer.drain())
    opcode, reply = await aio(asyncio.wait_for(raw.read_frame(), 5))
    assert json.loads(reply)["type"] == "subscribed"

    batch: list[bytes] = []
    real, raw.writer = raw.writer, type("Collect", (), {"write": staticmethod(batch.append)})()
    for i in (1, 2, 3):
        raw.send_frame(0x1, json.dumps({"type": "publish", "channel": "o", "data": i, "id": f"p{i}"}).encode())
        if i == 1:
            raw.send_frame(0x1, json.dumps({"type": "no-such-command", "id": "e"}).encode())
        if i == 2:
            raw.send_frame(0x9, b"ping-1")
    raw.send_frame(0x1, json.dumps({"type": "unsubscribe", "channel": "o", "id": "u"}).encode())
    raw.send_frame(0x1, json.dumps({"type": "publish", "channel": "o", "data": 4, "id": "p4"}).encode())
    raw.writer = real
    real.write(b"".join(batch))
    await aio(real.drain())

    seen = []
    for _ in range(10):
        opcode, payload = await aio(asyncio.wait_for(raw.read_frame(), 5))
        if opcode == 0xA:
            seen.append(("pong", payload.decode()))
            continue
        event = json.loads(payload)
        seen.append((event["type"], event.get("data", event.get("id"))))
    assert seen == [
        ("message", 1), ("ack", "p1"), ("error", "e"),
        ("message", 2), ("ack", "p2"), ("pong", "ping-1"),
        ("message", 3), ("ack", "p3"), ("unsubscribed", "u"), ("ack", "p4"),
    ]  # fmt: skip
    # A publication with nothing else written in its turn goes out through the batched path.
    raw.send_frame(0x1, json.dumps({"type": "subscribe", "channel": "o", "id": "s2"}).encode())
    await aio(raw.writer.drain())
    opcode, reply = await aio(asyncio.wait_for(raw.read_frame(), 5))
    assert json.loads(reply)["type"] == "subscribed"
    flushes = gw.gateway._tick_writer.flushes
    await gw.bus.publish("o", 5)
    opcode, payload = await aio(asyncio.wait_for(raw.read_frame(), 5))
    raw.close()
    assert json.loads(payload)["data"] == 5
    assert gw.gateway._tick_writer.flushes == flushes + 1
