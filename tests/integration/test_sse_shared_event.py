"""SSE streams of one channel share a publication's whole event (id line and chunk built
once per publication); the ids stay each stream's cursor, on HTTP/1.1 (chunked) and
HTTP/1.0 (raw) alike, and a stream of several channels keeps its own cursor."""

from __future__ import annotations

import asyncio

from gateway.testing import aio

from .conftest import decode, wait_until


async def http10_stream(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower(), head
    return reader, writer


async def test_one_channel_streams_share_the_event_and_ids_are_cursors(gw, sse):
    first = await sse(gw.base + "/sse?channel=a")
    second = await sse(gw.base + "/sse?channel=a")
    both = await sse(gw.base + "/sse?channel=a&channel=b")
    reader, writer = await aio(http10_stream(gw.port, "/sse?channel=a"))
    await wait_until(lambda: gw.gateway.connection_count("sse") == 4, what="4 streams")
    pubs = [await gw.gateway.publish("a", i) for i in range(3)]
    epoch = pubs[0].epoch
    for stream in (first, second):
        events = [await aio(stream.event()) for _ in range(3)]
        assert [decode(e["id"]) for e in events] == [{"a": [epoch, n]} for n in (1, 2, 3)]
        assert [e["data"]["data"] for e in events] == [0, 1, 2]
    events = [await aio(both.event()) for _ in range(3)]
    assert decode(events[-1]["id"])["a"] == [epoch, 3] and "b" in decode(events[-1]["id"])
    raw = b""
    while raw.count(b"event: message") < 3:
        raw += await aio(asyncio.wait_for(reader.read(65536), 5))
    writer.close()
    # The stream may open with its cursor and a comment (`id: ...` and `: ping`).
    blocks = [b for b in raw.split(b"\n\n") if b"event: message" in b][:3]
    assert all(b.startswith(b"id: ") and b"\nevent: message\ndata: " in b for b in blocks)
    assert b"\r\n" not in raw  # no chunk framing on HTTP/1.0
    assert [decode(b.split(b"\n")[0][4:].decode()) for b in blocks] == [{"a": [epoch, n]} for n in (1, 2, 3)]
