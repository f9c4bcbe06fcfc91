"""A real middlebox for the browser tests: a small HTTP/WebSocket proxy whose behaviour
can be switched at runtime, in front of one or more real gateway processes.

It runs an asyncio loop in a thread of its own (never the test process's reactor, and
not Playwright's loop: an asyncio loop is per thread), so the plain, synchronous
browser tests drive it with ordinary method calls.  Modes (:attr:`Middlebox.mode`,
read when a request arrives):

* ``"pass"``: a plain reverse proxy (WebSocket upgrades included);
* ``"refuse"``: WebSocket upgrades are answered with :attr:`Middlebox.refuse_status`
  (400 or 403, like a proxy that does not do WebSocket); other requests pass;
* ``"swallow"``: the upgrade goes through (the browser gets its 101 and an open
  socket) but no frame is delivered either way afterwards: the socket opens and
  never delivers;
* ``"buffer"``: a ``text/event-stream`` response is held back whole until it ends or
  :attr:`Middlebox.buffer_limit` bytes have come (like a buffering proxy that ignores
  ``X-Accel-Buffering``); other responses pass;
* ``"drop"``: every new connection is closed at once, and switching to it
  (:meth:`Middlebox.set_mode`) also cuts every open connection.

* ``"mute"``: nothing more comes from the upstream to the client on the connections
  open when switching to it and on those made while in it, until they close
  (switching back does not unmute them): requests and commands still reach the
  gateway and take effect, their answers are lost on the way back.

Modes combine with ``+``: ``"refuse+buffer"`` is a proxy that neither does WebSocket
nor streams (a client can only poll through it).

Each client connection carries one request: the proxy asks the upstream for
``Connection: close``, so a mode switch applies to the browser's next request rather
than to whatever a kept-alive connection carries next.

Upstreams are tried in list order for each new connection (a refused TCP connect
moves on to the next: a node that is down or has stopped listening while it drains is
passed over; so is one whose index is in :attr:`Middlebox.disabled`), so the proxy
also serves as the load balancer in front of a cluster.
Every connection made to an upstream is recorded in :attr:`Middlebox.arrivals` with
its wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Self

MODES = ("pass", "refuse", "swallow", "buffer", "drop", "mute")

_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection"}


@dataclass(frozen=True)
class Arrival:
    """A connection the proxy made to an upstream."""

    at: float  # time.time() when the connection to the upstream was made
    upstream: int  # index in Middlebox.upstreams
    websocket: bool
    path: str
    accepted: float = 0.0  # time.time() when the proxy accepted the client's connection


class Middlebox:
    """The proxy on 127.0.0.1:``port`` in front of ``upstreams`` (ports on 127.0.0.1)."""

    def __init__(self, upstreams: list[int], port: int = 0) -> None:
        self.upstreams = list(upstreams)
        self.disabled: set[int] = set()  # indexes of upstreams taken out of rotation
        self.mode = "pass"
        self.refuse_status = 400
        self.buffer_limit = 1 << 20
        self.arrivals: list[Arrival] = []
        self.requests: list[tuple[float, str, str, str]] = []  # (time, mode, method, path)
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._muted: dict[asyncio.StreamWriter, bool] = {}  # client side -> muted

    # -- control (from any thread) ---------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def set_mode(self, mode: str, status: int | None = None) -> None:
        """Switch the behaviour for new requests; ``"drop"`` also cuts every open connection."""
        if not set(mode.split("+")) <= set(MODES):
            raise ValueError(f"unknown mode {mode!r}")
        if status is not None:
            self.refuse_status = status
        self.mode = mode
        if "drop" in mode.split("+"):
            self.drop_connections()
        if "mute" in mode.split("+"):
            self._call(self._mute_all)

    def drop_connections(self) -> None:
        """Abort every connection open through the proxy (both sides)."""
        self._call(self._abort_all)

    def open_connections(self) -> int:
        """How many sockets (client and upstream sides) the proxy holds open."""
        return len(self._writers)

    def arrivals_at(self, upstream: int, websocket: bool | None = None, since: float = 0.0) -> list[Arrival]:
        return [
            a for a in list(self.arrivals)
            if a.upstream == upstream and a.at >= since and (websocket is None or a.websocket == websocket)
        ]

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port, limit=1 << 16, backlog=1024))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"middlebox-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            self._abort_all()
            # Aborted sockets end their handlers; cancelling a handler task instead would
            # make asyncio's stream callback log the cancellation as an error.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            for t in tasks:
                t.cancel()
            loop.stop()

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None and self._loop.is_running():
            done = threading.Event()

            def run() -> None:
                try:
                    fn()
                finally:
                    done.set()

            self._loop.call_soon_threadsafe(run)
            done.wait(10)

    # -- the proxy (in the loop's thread) ---------------------------------------------

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def _mute_all(self) -> None:
        for w in self._muted:
            self._muted[w] = True

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    def _forget(self, *writers: asyncio.StreamWriter | None) -> None:
        for w in writers:
            if w is not None:
                self._writers.discard(w)
                w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = time.time()
        self._track(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if "drop" in self.mode.split("+"):
                writer.transport.abort()
                return
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            mode = self.mode
            modes = set(mode.split("+"))
            method, path, headers = _parse_head(head)
            websocket = headers.get(b"upgrade", b"").lower() == b"websocket"
            self.requests.append((time.time(), mode, method, path))
            if "drop" in modes:
                writer.transport.abort()
                return
            self._muted[writer] = "mute" in modes
            if websocket and "refuse" in modes:
                await _answer(writer, self.refuse_status, b"the proxy does not do WebSocket")
                return
            opened = await self._connect(websocket, path, accepted)
            if opened is None:
                await _answer(writer, 502, b"no upstream")
                return
            up_reader, up_writer = opened
            self._track(up_writer)
            up_writer.write(head if websocket else _close_after(head))
            if websocket and "swallow" in modes:
                response = await up_reader.readuntil(b"\r\n\r\n")
                writer.write(response)
                await writer.drain()
                await _first_done(_discard(reader), _discard(up_reader))
            elif not websocket and "buffer" in modes:
                await _first_done(_pipe(reader, up_writer), self._buffering(up_reader, writer))
            else:
                await _first_done(_pipe(reader, up_writer), _pipe(up_reader, writer, lambda: self._muted.get(writer, False)))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self._muted.pop(writer, None)
            self._forget(writer, up_writer)

    async def _connect(self, websocket: bool, path: str, accepted: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for index, port in enumerate(list(self.upstreams)):
            if index in self.disabled:
                continue
            try:
                opened = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
            except OSError:
                continue
            self.arrivals.append(Arrival(time.time(), index, websocket, path, accepted))
            return opened
        return None

    async def _buffering(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass a response through, holding an event stream back until it ends or grows past the limit."""
        response = await up_reader.readuntil(b"\r\n\r\n")
        _, _, headers = _parse_head(response, response=True)
        if not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            writer.write(response)
            await _pipe(up_reader, writer)
            return
        held = bytearray(response)
        while len(held) < self.buffer_limit:
            chunk = await up_reader.read(65536)
            if not chunk:
                break
            held += chunk
        writer.write(bytes(held))
        await _pipe(up_reader, writer)


def _parse_head(head: bytes, response: bool = False) -> tuple[str, str, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    first = lines[0].split(b" ")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if response:
        return "", "", headers
    return first[0].decode("latin-1"), (first[1] if len(first) > 1 else b"").decode("latin-1"), headers


def _close_after(head: bytes) -> bytes:
    """The request head with the hop-by-hop connection headers replaced by ``Connection: close``."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in _HOP_BY_HOP]
    return b"\r\n".join(kept + [b"Connection: close"]) + b"\r\n\r\n"


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    reason = {400: b"Bad Request", 403: b"Forbidden", 502: b"Bad Gateway"}.get(status, b"Error")
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, reason, len(body), body)
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, muted: Any = None) -> None:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        if muted is not None and muted():
            continue
        writer.write(chunk)
        await writer.drain()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _first_done(a: Coroutine[Any, Any, None], b: Coroutine[Any, Any, None]) -> None:
    """Run two coroutines (the two directions of a connection) until the first ends; the other is cancelled."""
    ta = asyncio.ensure_future(a)
    tb = asyncio.ensure_future(b)
    try:
        await asyncio.wait({ta, tb}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (ta, tb):
            if not t.done():
                t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)


def middleboxes() -> Iterator[Any]:
    """The body of a ``middlebox_factory`` fixture: yields ``make(*upstream_ports)``, which
    starts a :class:`Middlebox`; every one started is stopped afterwards.  A test module
    declares the fixture with it::

        @pytest.fixture(name="middlebox_factory")
        def middlebox_factory_fixture():
            yield from middleboxes()
    """
    started: list[Middlebox] = []

    def make(*upstreams: int) -> Middlebox:
        box = Middlebox(list(upstreams)).start()
        started.append(box)
        return box

    yield make
    for box in started:
        box.stop()


def main() -> None:
    """Run the proxy in a process of its own (bench/drain_spread.py does, so it does not
    share a GIL with the browser driver): ``python -m tests.browser._middlebox PORT...``
    prints its port, then answers lines on stdin: ``mode M`` (prints ``ok``), ``arrivals``
    (prints one JSON list of ``[at, upstream, websocket, path, accepted]``), ``quit``."""
    import json
    import sys

    box = Middlebox([int(p) for p in sys.argv[1:]]).start()
    print(box.port, flush=True)
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "mode":
                box.set_mode(arg)
                print("ok", flush=True)
            elif command == "arrivals":
                print(json.dumps([[a.at, a.upstream, a.websocket, a.path, a.accepted] for a in list(box.arrivals)]), flush=True)
            elif command == "quit":
                break
    finally:
        box.stop()


if __name__ == "__main__":
    main()
