"""Load-generator worker: many subscribers of one channel in one process.

Started by ``fanout.py`` (one process per share of the subscribers, so that the
load generator spreads over the cores); not meant to be run by hand.  Plain
asyncio protocols on raw sockets, no third-party client: per delivery the cost
is one ``data_received`` callback, a frame/chunk parse and, for a publication
not seen before by this process, one ``json.loads``.

Talks to the orchestrator with JSON lines: stdout carries ``ready``,
``complete`` and ``report``; stdin carries ``finish <last_i> <seconds>`` (wait
until every subscriber has publication ``last_i``, or that long) and ``report``
(write the latency samples and exit).  EOF on stdin (the orchestrator died) or
``--max-time`` ends the process at once.

Published data is ``{"i": <index>, "t": <send time, us since the epoch>, ...}``;
a delivery's latency is its receive time (wall clock, one reading per socket
read) minus ``t``.  Publications with ``i < --warmup-count`` are counted but not
sampled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from array import array
from typing import Any
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsframe import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    check_handshake,
    encode_frame,
    handshake_request,
)

_now_us = time.time_ns


def now_us() -> int:
    return _now_us() // 1000


# When the event loop last came back from select(): the moment this process
# learnt that data had arrived, before it spent time on earlier callbacks of the
# same wake-up.  Latency measured against it excludes the load generator's own
# queueing (the callback-time latency, recorded too, includes it).
WAKE_US = [0]


def install_wake_clock(loop: asyncio.AbstractEventLoop) -> None:
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def timed_select(timeout: float | None = None) -> Any:
        events = select(timeout)
        WAKE_US[0] = _now_us() // 1000
        return events

    selector.select = timed_select


class Worker:
    """Shared state of one worker process: samples and a one-entry parse cache."""

    def __init__(self, warmup_count: int) -> None:
        self.warmup_count = warmup_count
        self.latencies = array("q")  # receive = event-loop wake-up
        self.latencies_cb = array("q")  # receive = our data_received callback
        self.received = 0  # bench publications delivered, warmup included
        self.last_recv_us = 0
        # Every subscriber gets the same bytes for a publication, usually one
        # right after the other: parse them once.
        self._last_payload: bytes | None = None
        self._last_event: tuple[int, Any, Any] | None = None
        self.parses = 0

    def parse_message(
        self, payload: bytes
    ) -> tuple[tuple[int, Any, Any] | None, dict[str, Any] | None]:
        """``((seq, i, t), None)`` for a ``message`` event, ``(None, obj)`` otherwise."""
        if payload == self._last_payload:
            return self._last_event, None
        obj = json.loads(payload)
        self.parses += 1
        if obj.get("type") != "message":
            return None, obj
        data = obj.get("data")
        if isinstance(data, dict):
            event = (obj["seq"], data.get("i"), data.get("t"))
        else:
            event = (obj["seq"], None, None)
        self._last_payload, self._last_event = payload, event
        return event, None


class Subscriber:
    """Per-subscriber bookkeeping shared by the three transports."""

    def __init__(self, worker: Worker, ident: int) -> None:
        self.worker = worker
        self.ident = ident
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.last_seq: int | None = None
        self.max_i = -1
        self.count = 0
        self.gaps = 0
        self.dups = 0
        self.resets = 0
        self.errors: list[str] = []
        self.closed = False
        self.close_code: int | None = None

    def publication(self, event: tuple[int, Any, Any], now: int) -> None:
        seq, i, t = event
        last = self.last_seq
        if last is not None:
            if seq <= last:
                self.dups += 1
                return
            if seq != last + 1:
                self.gaps += seq - last - 1
        self.last_seq = seq
        if i is None or t is None:
            return
        w = self.worker
        w.received += 1
        self.max_i = max(self.max_i, i)
        if i >= w.warmup_count:
            wake = WAKE_US[0]
            w.latencies.append((wake if 0 < wake <= now else now) - t)
            w.latencies_cb.append(now - t)
            self.count += 1
            w.last_recv_us = now

    def control(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "reset":
            self.resets += 1
            self.last_seq = obj.get("seq")
        elif kind == "subscribed":
            self.last_seq = obj.get("seq")
            self._set_ready()
        elif kind == "error":
            self.fail(f"error: {obj.get('code')}: {obj.get('message')}")

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, reason: str) -> None:
        if len(self.errors) < 3:
            self.errors.append(reason)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))

    def lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


# -- WebSocket ----------------------------------------------------------------


class WSConnection(asyncio.Protocol):
    """A WebSocket client connection; subclasses handle text messages."""

    def __init__(self, host: str, port: int, path: str = "/ws") -> None:
        self.request, self.accept = handshake_request(host, port, path)
        self.transport: Any = None
        self.is_open = False
        self._head = bytearray()
        self._parser = FrameParser()
        self.close_code: int | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = now_us()
        if not self.is_open:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            try:
                check_handshake(bytes(self._head[:end]), self.accept)
            except Exception as e:
                self.on_failed(str(e))
                self.transport.close()
                return
            data = bytes(self._head[end + 4 :])
            self._head = bytearray()
            self.is_open = True
            self.on_open()
            if not data:
                return
        for opcode, payload in self._parser.feed(data):
            if opcode == OP_TEXT:
                self.on_text(payload, now)
            elif opcode == OP_PING:
                self.transport.write(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = (
                    int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                )
                if not self.transport.is_closing():
                    self.transport.write(encode_frame(OP_CLOSE, payload[:2]))
                    self.transport.close()

    def send_text(self, text: bytes) -> None:
        self.transport.write(encode_frame(OP_TEXT, text))

    def on_open(self) -> None:
        pass

    def on_text(self, payload: bytes, now: int) -> None:
        pass

    def on_failed(self, reason: str) -> None:
        pass


class WSSubscriber(WSConnection):
    def __init__(self, sub: Subscriber, host: str, port: int, channel: str, token: str | None = None) -> None:
        super().__init__(host, port, "/ws" if token is None else f"/ws?token={token}")
        self.sub = sub
        self.channel = channel

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.sub.transport = transport

    def on_open(self) -> None:
        self.send_text(
            json.dumps({"type": "subscribe", "id": 1, "channel": self.channel}).encode()
        )

    def on_text(self, payload: bytes, now: int) -> None:
        event, obj = self.sub.worker.parse_message(payload)
        if event is not None:
            self.sub.publication(event, now)
        elif obj is not None:
            self.sub.control(obj)

    def on_failed(self, reason: str) -> None:
        self.sub.fail(reason)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.sub.close_code = self.close_code
        self.sub.lost(exc)


# -- HTTP helpers ---------------------------------------------------------------


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class Dechunker:
    """Incremental decoder of ``Transfer-Encoding: chunked``."""

    __slots__ = ("_buf", "_need", "finished")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = (
            -1
        )  # -1: reading a size line; else bytes of chunk data + CRLF to go
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while True:
            if self._need < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    self.finished = True
                    break
                self._need = size
            if len(buf) - pos < self._need + 2:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need + 2
            self._need = -1
        if pos:
            del buf[:pos]
        return b"".join(out)


# -- Server-Sent Events -----------------------------------------------------------


class SSESubscriber(asyncio.Protocol):
    def __init__(self, sub: Subscriber, host: str, port: int, channel: str) -> None:
        self.sub = sub
        self.request = (
            f"GET /sse?channel={quote(channel, safe='')} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode("ascii")
        self._head: bytearray | None = bytearray()
        self._chunked: Dechunker | None = None
        self._buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.sub.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = now_us()
        if self._head is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status, headers = parse_head(bytes(self._head[:end]))
            data = bytes(self._head[end + 4 :])
            self._head = None
            if status != 200 or not headers.get(b"content-type", b"").startswith(
                b"text/event-stream"
            ):
                self.sub.fail(f"SSE answered {status} {data[:200]!r}")
                self.sub.transport.close()
                return
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                self._chunked = Dechunker()
            # The stream opens only once every subscription is live (docs/protocol.md section 5).
            self.sub._set_ready()
        if self._chunked is not None:
            data = self._chunked.feed(data)
        if not data:
            return
        buf = self._buf
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._event(bytes(buf[start:end]), now)
            start = end + 2
        if start:
            del buf[:start]

    def _event(self, block: bytes, now: int) -> None:
        kind = b"message"
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                kind = line[6:].strip()
        if not data:
            return  # a comment (": ping") or an id-only block
        payload = b"\n".join(data)
        event, obj = self.sub.worker.parse_message(payload)
        if event is not None:
            self.sub.publication(event, now)
        elif obj is not None:
            self.sub.control(obj)
        elif kind == b"reset":
            self.sub.resets += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.sub.lost(exc)


# -- long-polling -------------------------------------------------------------------


# One cache per worker process, shared by every PollSubscriber in it:
# (the last poll body, its parsed JSON).
_LAST_POLL_BODY: list[Any] = [None, None]


class PollSubscriber(asyncio.Protocol):
    """Polls one after the other on one keep-alive connection.

    The first poll has ``timeout=0``: it answers at once with the cursor at "now"
    (docs/protocol.md section 6), after which the subscriber counts as ready and polls with
    that cursor, so nothing published afterwards is missed.
    """

    def __init__(
        self,
        sub: Subscriber,
        host: str,
        port: int,
        channel: str,
        timeout: float,
        loop: Any,
    ) -> None:
        self.sub = sub
        self.host, self.port = host, port
        self.path = f"/poll?channel={quote(channel, safe='')}"
        self.timeout = timeout
        self.loop = loop
        self.cursor: str | None = None
        self.stopping = False
        self._buf = bytearray()
        self._head: tuple[int, dict[bytes, bytes]] | None = None
        self._body_len = 0
        self.polls = 0

    def connection_made(self, transport: Any) -> None:
        self.sub.transport = transport
        self._send(0)

    def _send(self, timeout: float) -> None:
        path = self.path + f"&timeout={timeout:g}"
        if self.cursor is not None:
            path += "&cursor=" + self.cursor
        self.sub.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode(
                "ascii"
            )
        )
        self.polls += 1

    def data_received(self, data: bytes) -> None:
        now = now_us()
        buf = self._buf
        buf += data
        while True:
            if self._head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head = parse_head(bytes(buf[:end]))
                del buf[: end + 4]
                length = self._head[1].get(b"content-length")
                if length is None:
                    self.sub.fail("poll answer without Content-Length")
                    self.sub.transport.close()
                    return
                self._body_len = int(length)
            if len(buf) < self._body_len:
                return
            body = bytes(buf[: self._body_len])
            del buf[: self._body_len]
            status, headers = self._head
            self._head = None
            self._answer(status, headers, body, now)

    def _answer(
        self, status: int, headers: dict[bytes, bytes], body: bytes, now: int
    ) -> None:
        if status != 200:
            self.sub.fail(f"poll answered {status} {body[:200]!r}")
            self.sub.transport.close()
            return
        worker = self.sub.worker
        # Pollers at the same position get the same body: parse it once.
        if body == _LAST_POLL_BODY[0]:
            parsed = _LAST_POLL_BODY[1]
        else:
            parsed = json.loads(body)
            worker.parses += 1
            _LAST_POLL_BODY[0], _LAST_POLL_BODY[1] = body, parsed
        self.cursor = parsed["cursor"]
        for obj in parsed["messages"]:
            if obj.get("type") == "message":
                data = obj.get("data")
                if isinstance(data, dict):
                    self.sub.publication(
                        (obj["seq"], data.get("i"), data.get("t")), now
                    )
                else:
                    self.sub.publication((obj["seq"], None, None), now)
            else:
                self.sub.control(obj)
        self.sub._set_ready()
        if self.stopping:
            return
        if headers.get(b"connection", b"").lower() == b"close":
            self.sub.fail("server closed the keep-alive connection")
            self.sub.transport.close()
            return
        self._send(self.timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.sub.lost(exc)


# -- the worker process ---------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class LoopLag:
    """How late a 20 ms timer fires: a busy event loop shows up here."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.samples = array("d")
        self.running = False

    def start(self) -> None:
        self.running = True
        self._expected = self.loop.time() + 0.02
        self.loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        if not self.running:
            return
        now = self.loop.time()
        self.samples.append(now - self._expected)
        self._expected = now + 0.02
        self.loop.call_at(self._expected, self._tick)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"p99_ms": 0.0, "max_ms": 0.0}
        s = sorted(self.samples)
        return {
            "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 2),
            "max_ms": round(s[-1] * 1000, 2),
        }


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    install_wake_clock(loop)
    loop.call_later(args.max_time, lambda: os._exit(3))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )

    worker = Worker(args.warmup_count)
    subs = [Subscriber(worker, n) for n in range(args.count)]
    sem = asyncio.Semaphore(args.connect_concurrency)

    def factory(sub: Subscriber) -> Any:
        if args.transport == "ws":
            return lambda: WSSubscriber(sub, args.host, args.port, args.channel, args.token)
        if args.transport == "sse":
            return lambda: SSESubscriber(sub, args.host, args.port, args.channel)
        return lambda: PollSubscriber(
            sub, args.host, args.port, args.channel, args.poll_timeout, loop
        )

    protocols: list[Any] = []

    async def open_one(sub: Subscriber) -> None:
        async with sem:
            _, proto = await loop.create_connection(factory(sub), args.host, args.port)
            protocols.append(proto)
            await asyncio.wait_for(asyncio.shield(sub.ready), args.connect_timeout)

    results = await asyncio.gather(*(open_one(s) for s in subs), return_exceptions=True)
    errors = sorted(
        {f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)}
    )
    ok = sum(
        1
        for s in subs
        if s.ready.done() and not s.ready.cancelled() and s.ready.exception() is None
    )
    for s in subs:
        if s.ready.done() and not s.ready.cancelled():
            s.ready.exception()  # retrieved: no "never retrieved" warnings
    lag = LoopLag(loop)
    lag.start()
    emit(
        {
            "event": "ready",
            "ok": ok,
            "failed": args.count - ok,
            "errors": errors[:5],
            "pid": os.getpid(),
        }
    )
    cpu_ready = os.times()

    line = await reader.readline()
    if not line:
        os._exit(2)
    cmd, last_i, seconds = line.split()
    assert cmd == b"finish", line
    last_i_n = int(last_i)
    deadline = loop.time() + float(seconds)
    live = [
        s
        for s in subs
        if s.ready.done() and not s.ready.cancelled() and s.ready.exception() is None
    ]
    while loop.time() < deadline:
        if all(s.max_i >= last_i_n or s.closed for s in live):
            break
        await asyncio.sleep(0.02)
    complete = all(s.max_i >= last_i_n for s in live)
    cpu_done = os.times()
    lag.running = False
    emit({"event": "complete", "complete": complete})

    line = await reader.readline()
    if not line:
        os._exit(2)
    for proto in protocols:
        if isinstance(proto, PollSubscriber):
            proto.stopping = True
    for s in subs:
        s.close()
    with open(args.samples, "wb") as f:
        worker.latencies.tofile(f)
    with open(args.samples + ".cb", "wb") as f:
        worker.latencies_cb.tofile(f)
    sub_errors = sorted({e for s in subs for e in s.errors})
    close_codes: dict[str, int] = {}
    for s in live:
        if s.closed:
            close_codes[str(s.close_code)] = close_codes.get(str(s.close_code), 0) + 1
    counts = [s.count for s in live]
    emit(
        {
            "event": "report",
            "subscribers": len(live),
            "samples": len(worker.latencies),
            "received_total": worker.received,
            "last_recv_us": worker.last_recv_us,
            "min_count": min(counts) if counts else 0,
            "max_count": max(counts) if counts else 0,
            "incomplete": sum(1 for s in live if s.max_i < last_i_n),
            "gaps": sum(s.gaps for s in live),
            "dups": sum(s.dups for s in live),
            "resets": sum(s.resets for s in live),
            "closed_during_run": sum(1 for s in live if s.closed),
            "close_codes": close_codes,
            "errors": sub_errors[:5],
            "json_parses": worker.parses,
            "polls": sum(p.polls for p in protocols if isinstance(p, PollSubscriber)),
            "self_cpu_s": round(
                (cpu_done.user + cpu_done.system) - (cpu_ready.user + cpu_ready.system),
                3,
            ),
            "loop_lag": lag.summary(),
        }
    )
    await asyncio.sleep(0.05)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", choices=["ws", "sse", "poll"], default="ws")
    p.add_argument("--channel", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--warmup-count", type=int, default=0)
    p.add_argument("--samples", required=True)
    p.add_argument("--connect-concurrency", type=int, default=16)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--poll-timeout", type=float, default=25.0)
    p.add_argument("--max-time", type=float, required=True)
    p.add_argument("--token", default=None, help="a token for the WebSocket upgrade (token=)")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loadclient: only loopback targets are allowed")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
