"""Test helpers shipped with the package, for the gateway's own tests and for embedders.

* :func:`aio` awaits an asyncio coroutine from Twisted code (asyncio reactor).
* :class:`WSClient` is a small JSON wrapper over the independent ``websockets`` client.
* :func:`start_gateway` runs a real node on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer

from gateway.config import Config
from gateway.interfaces import IBroker

__all__ = ["aio", "sleep", "WSClient", "RunningGateway", "start_gateway"]

# Tests scale every timeout by this factor (GATEWAY_TESTS_TIMEOUT_FACTOR) on slow machines.
DEFAULT_TIMEOUT = 5.0


def aio(coro: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> defer.Deferred[Any]:
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
        rcvd = self.conn.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

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
    from gateway.service import GatewayService

    import attrs

    config = attrs.evolve(config or Config(), listen=("tcp:0:interface=127.0.0.1",), **overrides)
    service = GatewayService(config, broker=broker)
    service.startService()
    return RunningGateway(service)
