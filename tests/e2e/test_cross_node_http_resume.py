"""Stateless resume across nodes: an SSE id or a poll cursor issued by node A is
continued by node B (no sticky sessions), through Redis."""

from __future__ import annotations

from gateway.testing import aio, http
from tests.integration.conftest import SSEClient


async def test_poll_cursor_from_one_node_continues_on_another(nodes):
    """A poll answered by A returns a cursor that B continues from, with nothing missed or repeated."""
    a, b = await nodes(2)
    first = await http("GET", a.base + "/poll?channel=x&timeout=0")
    cursor = first.json()["cursor"]
    for i in range(3):
        assert (await http("POST", a.base + "/publish", json={"channel": "x", "data": i})).status_code == 200
    second = await http("GET", b.base + f"/poll?channel=x&cursor={cursor}&timeout=5")
    assert [(m["seq"], m["data"]) for m in second.json()["messages"]] == [(1, 0), (2, 1), (3, 2)]
    await http("POST", b.base + "/publish", json={"channel": "x", "data": 3})
    third = await http("GET", a.base + f"/poll?channel=x&cursor={second.json()['cursor']}&timeout=5")
    assert [m["seq"] for m in third.json()["messages"]] == [4]


async def test_sse_stream_dropped_on_one_node_resumes_on_another(nodes):
    """An SSE stream on A, dropped, resumes on B with Last-Event-ID and gets exactly the missed events."""
    a, b = await nodes(2)
    stream = await aio(SSEClient.open(a.base + "/sse?channel=s"))
    await http("POST", b.base + "/publish", json={"channel": "s", "data": "seen"})
    seen = await aio(stream.event())
    assert seen["data"]["data"] == "seen"
    await aio(stream.close())
    for i in range(2):
        await http("POST", a.base + "/publish", json={"channel": "s", "data": f"missed{i}"})
    resumed = await aio(SSEClient.open(b.base + "/sse?channel=s", {"Last-Event-ID": seen["id"]}))
    events = [await aio(resumed.event()) for _ in range(2)]
    await aio(resumed.close())
    assert [(e["event"], e["data"]["seq"], e["data"]["data"]) for e in events] == [
        ("message", 2, "missed0"),
        ("message", 3, "missed1"),
    ]
