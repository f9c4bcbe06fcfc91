"""The broker contract suite runs every test against each :class:`~gateway.interfaces.IBroker`:
the in-memory broker and the Redis broker on a real ``redis-server`` of its own."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from gateway.broker.memory import InMemoryBroker
from gateway.broker.redis import RedisBroker
from tests.e2e.support import RedisServer, wait_for


class RecordingListener:
    """An :class:`~gateway.interfaces.IBrokerListener` that records what it is given."""

    def __init__(self) -> None:
        self.publications: list[Any] = []
        self.reconnects = 0
        self.controls: list[Any] = []
        self.presence: list[Any] = []

    def publication_received(self, publication: Any) -> None:
        self.publications.append(publication)

    def broker_reconnected(self) -> None:
        self.reconnects += 1

    def control_received(self, message: Any) -> None:
        self.controls.append(message)

    def presence_received(self, channel: str, events: Any) -> None:
        self.presence.extend(events)


@pytest.fixture(params=["memory", "redis"])
def kind(request: Any) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def make_broker(kind: str, tmp_path: Any) -> Any:
    """``await make_broker(history_size=.., history_ttl=.., **options)`` -> (started broker,
    listener); ``options`` (e.g. ``idempotency_ttl``) go to the broker's constructor.
    Redis brokers made by one test share one redis-server (they are nodes of a cluster)."""
    from twisted.internet import reactor

    started: list[Any] = []
    servers: list[RedisServer] = []

    async def make(history_size: int = 1000, history_ttl: float = 300.0, **options: Any) -> tuple[Any, RecordingListener]:
        if kind == "memory":
            broker: Any = InMemoryBroker(history_size, history_ttl, clock=reactor, **options)
        else:
            if not servers:
                server = RedisServer(str(tmp_path))
                server.start()
                servers.append(server)
            broker = RedisBroker(servers[0].url, history_size, history_ttl, reactor=reactor, **options)
        listener = RecordingListener()
        started.append(broker)
        await broker.start(listener)
        await wait_for(broker.is_ready, what="broker ready")
        return broker, listener

    yield make
    for broker in started:
        await broker.stop()
    for server in servers:
        server.kill()
