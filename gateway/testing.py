"""Test helpers shipped with the package, for the gateway's own tests and for embedders.

* :func:`aio` awaits an asyncio coroutine from Twisted code (asyncio reactor).
* :class:`WSClient` is a small JSON wrapper over the independent ``websockets`` client.
* :func:`start_gateway` runs a real node on a free loopback port.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable
from typing import Any

from twisted.internet import defer

from gateway.config import Config
from gateway.interfaces import IBroker

__all__ = ["aio", "sleep", "http", "http_client", "WSClient", "RunningGateway", "start_gateway", "ManualBroker", "RecordingSubscriber"]

# Tests scale every timeout by this factor (GATEWAY_TESTS_TIMEOUT_FACTOR) on slow machines.
DEFAULT_TIMEOUT = 5.0


def aio(coro: Awaitable[Any]) -> defer.Deferred[Any]:
    """Run an asyncio awaitable and return a Deferred (needs the asyncio reactor)."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def sleep(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` on the running reactor."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


class WSClient:
    """JSON-over-WebSocket client built on the ``websockets`` package."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> WSClient:
        import websockets

        conn = await aio(websockets.connect(url, open_timeout=DEFAULT_TIMEOUT, **kwargs))
        return cls(conn)

    async def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        await aio(self.conn.send(data))

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        raw = await aio(asyncio.wait_for(self.conn.recv(), timeout))
        return json.loads(raw)

    async def request(self, obj: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send a command and return the first event that echoes its ``id``."""
        await self.send(obj)
        while True:
            event = await self.recv(timeout)
            if event.get("id") == obj.get("id"):
                return event

    async def closed(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str]:
        """Wait until the server closes; return (close code, reason)."""
        import websockets

        async def wait() -> None:
            try:
                while True:
                    await self.conn.recv()
            except websockets.ConnectionClosed:
                return

        await aio(asyncio.wait_for(wait(), timeout))
        return self.conn.close_code, self.conn.close_reason or ""

    async def close(self) -> None:
        await aio(self.conn.close())


class RunningGateway:
    """A :class:`~gateway.service.GatewayService` listening on a free loopback port."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.gateway = service.gateway
        self.bus = service.gateway.bus
        self.port = service.ports[0].getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.service.stopService())  # type: ignore[arg-type]


def start_gateway(config: Config | None = None, broker: IBroker | None = None, **overrides: Any) -> RunningGateway:
    """Start a node listening on 127.0.0.1 with an ephemeral port."""
    import attrs

    from gateway.service import GatewayService

    config = attrs.evolve(config or Config(), listen=("tcp:0:interface=127.0.0.1",), **overrides)
    service = GatewayService(config, broker=broker)
    service.startService()
    return RunningGateway(service)


class ManualBroker:
    """An :class:`~gateway.interfaces.IBroker` whose deliveries the test drives by hand.

    Publications are ordered and stored like :class:`~gateway.broker.memory.InMemoryBroker`
    does, but nothing reaches the listener until the test calls :meth:`deliver`, which
    makes lost, repeated and reordered pub/sub deliveries easy to stage.  With
    ``hold_history=True`` every :meth:`history` answer waits in :attr:`held` until
    the test fires it (:meth:`release_history`).  Channels in :attr:`down` fail as
    those of a Redis Cluster master that is down would (the others are served).
    """

    name = "manual"

    def __init__(self, history_size: int = 1000, history_ttl: float = 300.0, now: Any = None) -> None:
        import time

        from gateway.core.stream import Stream

        self._Stream = Stream
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.now = now or time.time
        self.streams: dict[str, Any] = {}
        self.subscribed: set[str] = set()
        self.listener: Any = None
        self.ready = True
        self.down: set[str] = set()  # channels whose (stand-in) shard is down
        self.hold_history = False
        self.held: list[tuple[str, Any, defer.Deferred[Any]]] = []
        self.history_calls: list[tuple[str, Any]] = []
        self.control_messages: list[Any] = []
        self._epochs = 0
        from gateway.core.idempotency import IdempotencyCache

        self.idempotency = IdempotencyCache()

    def stream(self, channel: str) -> Any:
        if channel not in self.streams:
            self._epochs += 1
            self.streams[channel] = self._Stream(channel, f"e{self._epochs}", self.history_size, self.history_ttl)
        return self.streams[channel]

    def restart_stream(self, channel: str) -> None:
        """Forget a channel's stream: its next use starts a new epoch (like FLUSHALL)."""
        self.streams.pop(channel, None)

    def start(self, listener: Any) -> defer.Deferred[None]:
        self.listener = listener
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def is_ready(self) -> bool:
        return self.ready and not self.down

    def channel_ready(self, channel: str) -> bool:
        return self.ready and channel not in self.down

    def publish(self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None) -> defer.Deferred[Any]:
        """Append to the channel's stream; a key seen within 5 minutes (on :attr:`now`)
        answers the first publication with ``duplicate=True``, as the real brokers do."""
        from gateway.core.idempotency import FirstPublication
        from gateway.core.model import Publication
        from gateway.errors import Unavailable

        if not self.channel_ready(channel):
            return defer.fail(Unavailable("broker down"))
        stream = self.stream(channel)
        if idempotency_key is not None:
            first = self.idempotency.lookup(channel, idempotency_key, self.now())
            if first is not None and first.epoch == stream.epoch:
                return defer.succeed(Publication(channel, first.seq, first.epoch, data, first.ts, sender, duplicate=True))
        pub = stream.append(data, self.now(), sender)
        if idempotency_key is not None:
            self.idempotency.remember(channel, idempotency_key, FirstPublication(pub.seq, pub.epoch, pub.ts), self.now())
        return defer.succeed(pub)

    def deliver(self, pub: Any) -> None:
        """Hand one publication to the listener, as pub/sub would."""
        if pub.channel in self.subscribed:
            self.listener.publication_received(pub)

    def history(self, channel: str, since: Any) -> defer.Deferred[Any]:
        self.history_calls.append((channel, since))
        if channel in self.down:
            from gateway.errors import Unavailable

            return defer.fail(Unavailable("history: the channel's shard is down"))
        if self.hold_history:
            # The answer is read now (like a Redis reply on its way) and handed over later.
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((channel, self.stream(channel).recover(since, self.now()), d))
            return d
        return defer.succeed(self.stream(channel).recover(since, self.now()))

    def release_history(self, error: Exception | None = None) -> None:
        """Hand over every held history answer (as read when asked), or fail them with ``error``."""
        held, self.held = self.held, []
        for _channel, answer, d in held:
            if error is not None:
                d.errback(error)
            else:
                d.callback(answer)

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        self.subscribed.add(channel)
        return defer.succeed(None)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        self.subscribed.discard(channel)
        return defer.succeed(None)

    def publish_control(self, message: Any) -> defer.Deferred[None]:
        """Record ``message`` in :attr:`control_messages` and hand it to the listener at once."""
        from gateway.errors import Unavailable

        if not self.ready:
            return defer.fail(Unavailable("broker down"))
        self.control_messages.append(message)
        self.listener.control_received(json.loads(json.dumps(message)))
        return defer.succeed(None)


    def presence_update(self, changes: Any) -> defer.Deferred[None]:
        """Apply presence changes to an in-memory table (events go to the listener)."""
        from gateway.errors import Unavailable

        if not self.ready or any(c.channel in self.down for c in changes):
            return defer.fail(Unavailable("broker down"))
        for channel, events in self._presence_table().update(changes, self.now()).items():
            if channel in self.subscribed:
                self.listener.presence_received(channel, events)
        return defer.succeed(None)

    def presence_query(self, channel: str, limit: int, after: Any) -> defer.Deferred[Any]:
        from gateway.errors import Unavailable

        if not self.channel_ready(channel):
            return defer.fail(Unavailable("broker down"))
        page, _ = self._presence_table().query(channel, limit, after, self.now())
        return defer.succeed(page)

    def _presence_table(self) -> Any:
        from gateway.core.presence import PresenceTable

        if not hasattr(self, "_presence"):
            self._presence = PresenceTable()
        return self._presence


class RecordingSubscriber:
    """A bus subscriber that records what it receives as plain tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, int]] = []

    def on_publication(self, prepared: Any) -> None:
        pub = prepared.publication
        self.events.append(("message", pub.channel, pub.epoch, pub.seq))

    def on_reset(self, channel: str, position: Any) -> None:
        self.events.append(("reset", channel, position.epoch, position.seq))

    @property
    def seqs(self) -> list[int]:
        return [e[3] for e in self.events if e[0] == "message"]


@functools.cache
def _ssl_context() -> Any:
    """httpx's default SSL context, built once: a client builds its own unless given one
    (some 40 ms of CPU, hundreds on a busy machine, even when every request is plain HTTP)."""
    import httpx

    return httpx.create_ssl_context()


def http_client(**kwargs: Any) -> Any:
    """An ``httpx.AsyncClient`` (``timeout`` defaults to ``DEFAULT_TIMEOUT``) with the
    shared SSL context; pass ``verify=`` for a TLS test of your own."""
    import httpx

    kwargs.setdefault("verify", _ssl_context())
    kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    return httpx.AsyncClient(**kwargs)


def http(method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
    """One request with the independent ``httpx`` client (a client and connection of its
    own each time); fires with the response."""

    async def go() -> Any:
        async with http_client() as client:
            return await client.request(method, url, **kwargs)

    return aio(go())
