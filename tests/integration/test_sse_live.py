"""The live path of a one-channel SSE stream (SSEStream.on_publication in
gateway/transports/sse.py): each publication's shared event written straight to the
connection through the gateway's TickWriter.  On the wire it must be exactly what
twisted.web's ``Request.write`` would have sent (a chunk on HTTP/1.1, the bare event
on HTTP/1.0), stay whole and in order through partial sends, and a client that goes
away mid-write must be released without errors."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from gateway.testing import aio
from gateway.transports._tickwrite import tick_writer

from .conftest import cursor_of, wait_until
from .rawhttp import LoggedErrors


async def open_stream(port: int, channel: str, version: str = "HTTP/1.1", rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw ``GET /sse`` (asyncio streams); returns once the response head is in."""
    sock = socket.socket()
    if rcvbuf is not None:
        # Before connecting, so that the window the server sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET /sse?channel={channel} {version}\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


def the_stream(gw):
    (stream,) = gw.gateway._connections["sse"]
    return stream


def event_bytes(pub, data) -> bytes:
    """The one-channel event of ``pub``, built from the protocol (docs/protocol.md 3 and 5)."""
    message = {"type": "message", "channel": pub.channel, "seq": pub.seq, "epoch": pub.epoch, "data": data, "ts": pub.ts}
    cursor = cursor_of({pub.channel: (pub.epoch, pub.seq)})
    return b"id: " + cursor.encode() + b"\nevent: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_live_events_are_exactly_what_request_write_sends(gw, version):
    """The opening block then each event, byte for byte: chunked on 1.1, bare on 1.0;
    counted in the request's sentLength (the access log's size) without the framing."""
    reader, writer, head = await aio(open_stream(gw.port, "a", version))
    try:
        chunked = version == "HTTP/1.1"
        assert (b"transfer-encoding: chunked" in head.lower()) == chunked
        await wait_until(lambda: gw.bus.subscriber_count("a") == 1, what="the stream to open")
        stream = the_stream(gw)
        assert stream._wire is stream.request.channel.transport  # on the live path
        pubs = [await gw.gateway.publish("a", {"n": n}) for n in (1, 2)]
        epoch = pubs[0].epoch
        opening = b"id: " + cursor_of({"a": (epoch, 0)}).encode() + b"\n: ping\n\n"
        bodies = [opening, event_bytes(pubs[0], {"n": 1}), event_bytes(pubs[1], {"n": 2})]
        expected = b"".join(chunk(b) if chunked else b for b in bodies)
        assert await aio(asyncio.wait_for(reader.readexactly(len(expected)), 5)) == expected
        assert stream.request.sentLength == sum(len(b) for b in bodies)
        assert gw.gateway.stats.deliveries["sse"] == 2
    finally:
        writer.close()
    await wait_until(lambda: gw.gateway.connection_count("sse") == 0, what="the stream to be released")


async def full_socket_stream(gw, channel: str):
    """A one-channel stream whose client is not reading, with the server's send buffer
    shrunk: the TickWriter's sends of what follows are partial."""
    reader, writer, _ = await aio(open_stream(gw.port, channel, rcvbuf=4096))
    await wait_until(lambda: gw.bus.subscriber_count(channel) == 1, what="the stream to open")
    stream = the_stream(gw)
    stream._wire.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # asyncio reads until its buffer holds 2 x 64 KiB, then stops reading.
    await aio(asyncio.wait_for(reader.readuntil(b": ping\n\n\r\n"), 5))
    return reader, writer, stream


async def test_partial_sends_keep_events_whole_and_in_order(gw):
    """Events written while the socket is full go out after it drains, whole and in order,
    and the stream stays open (below max_send_buffer)."""
    reader, writer, stream = await full_socket_stream(gw, "big")
    try:
        writer_before = tick_writer(gw.gateway).handed_over
        pad = "x" * 20_000
        pubs = [await gw.gateway.publish("big", {"n": n, "pad": pad}) for n in range(30)]
        await wait_until(lambda: tick_writer(gw.gateway).handed_over > writer_before, what="a partial send")
        expected = b"".join(chunk(event_bytes(p, {"n": n, "pad": pad})) for n, p in enumerate(pubs))
        assert await aio(asyncio.wait_for(reader.readexactly(len(expected)), 10)) == expected
        assert gw.gateway.connection_count("sse") == 1 and stream._wire is not None
    finally:
        writer.close()
    await wait_until(lambda: gw.gateway.connection_count("sse") == 0, what="the stream to be released")


async def test_client_gone_mid_write_is_released_quietly(gw):
    """A client that resets the connection while the server still has events for it:
    later publications are not written, the stream is released, and nothing is logged."""
    _, writer, stream = await full_socket_stream(gw, "big")
    with LoggedErrors() as errors:
        pad = "x" * 20_000
        for n in range(20):
            await gw.gateway.publish("big", {"n": n, "pad": pad})
        await wait_until(lambda: stream._wire.dataBuffer or stream._wire._tempDataBuffer, what="unsent bytes on the server")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()
        # Published before and after the server notices.
        for n in range(20, 23):
            await gw.gateway.publish("big", {"n": n, "pad": pad})
        await wait_until(lambda: gw.gateway.connection_count("sse") == 0, what="the stream to be released")
        assert gw.bus.subscriber_count("big") == 0
        assert stream.released and stream._wire is None
        await gw.gateway.publish("big", {"n": 23})
    assert errors.texts() == []
