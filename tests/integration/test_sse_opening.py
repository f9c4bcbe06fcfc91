"""An SSE stream opens with its starting cursor: an `id:` line without data, and a
`: ping` (docs/protocol.md section 5). It is no event (EventSource dispatches nothing
for it) but it is the stream's Last-Event-ID from then on, so a stream that drops
before its first event resumes where it started; and its arrival tells a client that
no proxy holds the stream back."""

from __future__ import annotations

import httpx

from gateway.testing import aio, http
from tests.integration.conftest import decode


async def first_bytes(url: str, headers: dict[str, str] | None = None) -> bytes:
    async def go() -> bytes:
        async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                return chunk
        raise AssertionError("stream ended before its first block")

    return await aio(go())


async def test_stream_opens_with_its_starting_cursor_and_a_ping(gw):
    """Before any event: `id: <cursor of the current positions>` then `: ping`, one block; the cursor holds every channel at its latest seq."""
    first = await http("POST", gw.base + "/publish", json={"channel": "a", "data": 1})
    epoch = first.json()["epoch"]
    block = await first_bytes(gw.base + "/sse?channel=a&channel=b")
    lines = block.decode().split("\n")
    assert lines[0].startswith("id: ") and lines[1:] == [": ping", "", ""], block
    positions = decode(lines[0][4:])
    assert positions["a"] == [epoch, 1]
    assert set(positions) == {"a", "b"} and positions["b"][1] == 0


async def test_resuming_from_the_opening_id_misses_nothing(gw, sse):
    """A stream that dropped before its first event: Last-Event-ID = its opening id gives everything published since."""
    block = await first_bytes(gw.base + "/sse?channel=room")
    opening = block.decode().split("\n")[0][4:]
    for n in range(3):
        await http("POST", gw.base + "/publish", json={"channel": "room", "data": n})
    resumed = await sse(gw.base + "/sse?channel=room", {"Last-Event-ID": opening})
    events = [await aio(resumed.event()) for _ in range(3)]
    assert [(e["event"], e["data"]["seq"], e["data"]["data"]) for e in events] == [("message", n + 1, n) for n in range(3)]


async def test_opening_cursor_keeps_the_clients_position_until_its_reset(gw, sse):
    """Resuming from a position history cannot cover: the opening id keeps the client's own position; the reset event that follows moves it."""
    from tests.integration.conftest import cursor_of

    await http("POST", gw.base + "/publish", json={"channel": "room", "data": 0})
    stale = cursor_of({"room": ("old-epoch", 7)})
    block = await first_bytes(gw.base + f"/sse?channel=room&since={stale}")
    assert decode(block.decode().split("\n")[0][4:]) == {"room": ["old-epoch", 7]}
    stream = await sse(gw.base + f"/sse?channel=room&since={stale}")
    reset = await aio(stream.event())
    assert reset["event"] == "reset" and decode(reset["id"])["room"][0] != "old-epoch"
