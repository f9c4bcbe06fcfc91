"""WebSocket, SSE and long-poll clients on the same bus see the same publications."""

from __future__ import annotations

from gateway.testing import WSClient, aio, http

from .conftest import cursor_of, decode, wait_until


async def test_one_publication_reaches_all_three_transports_identically(gw, sse):
    """One HTTP publish reaches a WebSocket, an SSE and a long-poll client with the same seq, epoch and data."""
    ws = await WSClient.connect(gw.ws_url)
    try:
        await ws.request({"type": "subscribe", "channel": "room:1", "id": 1})
        stream = await sse(gw.base + "/sse?channel=room:1")
        pending = http("GET", gw.base + "/poll?channel=room:1&timeout=10")
        await wait_until(lambda: gw.bus.subscriber_count("room:1") == 3, what="three subscribers")
        ack = await http("POST", gw.base + "/publish", json={"channel": "room:1", "data": {"text": "hi", "n": [1, 2]}})
        assert ack.status_code == 200
        ack = ack.json()
        from_ws = await ws.recv()
        from_sse = (await aio(stream.event()))["data"]
        from_poll = (await pending).json()["messages"][0]
        assert from_ws == from_sse == from_poll
        assert (from_ws["seq"], from_ws["epoch"], from_ws["data"]) == (ack["seq"], ack["epoch"], {"text": "hi", "n": [1, 2]})
    finally:
        await ws.close()


async def test_websocket_publish_reaches_sse_and_poll(gw, sse):
    """A publish made over a WebSocket is acked with the seq the HTTP transports then see."""
    ws = await WSClient.connect(gw.ws_url)
    try:
        stream = await sse(gw.base + "/sse?channel=c")
        first = (await http("GET", gw.base + "/poll?channel=c&timeout=0")).json()["cursor"]
        ack = await ws.request({"type": "publish", "channel": "c", "data": 42, "id": "p"})
        event = await aio(stream.event())
        polled = (await http("GET", gw.base + "/poll", params={"channel": "c", "cursor": first, "timeout": 5})).json()
        assert (event["data"]["seq"], event["data"]["epoch"]) == (ack["seq"], ack["epoch"])
        assert [(m["seq"], m["epoch"], m["data"]) for m in polled["messages"]] == [(ack["seq"], ack["epoch"], 42)]
        assert decode(event["id"]) == decode(polled["cursor"])
    finally:
        await ws.close()


async def test_positions_from_websocket_resume_on_sse_and_poll(gw, sse):
    """A cursor built from positions tracked on a WebSocket resumes SSE and poll where the WebSocket stopped."""
    ws = await WSClient.connect(gw.ws_url)
    try:
        sub = await ws.request({"type": "subscribe", "channel": "r", "id": 1})
        for i in range(3):
            await gw.gateway.publish("r", i)
        seen = [await ws.recv() for _ in range(3)]
        # The WebSocket client saw up to seq 2 (its last message is left unread on purpose).
        cursor = cursor_of({"r": (sub["epoch"], seen[1]["seq"])})
    finally:
        await ws.close()
    stream = await sse(gw.base + "/sse?channel=r&since=" + cursor)
    event = await aio(stream.event())
    assert (event["data"]["seq"], event["data"]["data"]) == (3, 2)
    polled = (await http("GET", gw.base + "/poll", params={"channel": "r", "cursor": cursor})).json()
    assert [(m["seq"], m["data"]) for m in polled["messages"]] == [(3, 2)]
