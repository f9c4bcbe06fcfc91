"""End-to-end fixtures: a real ``redis-server`` per test (see :mod:`tests.e2e.support`)
and gateway nodes that share it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from gateway.config import Config
from gateway.testing import RunningGateway, start_gateway
from tests.e2e.support import RedisServer, wait_for


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A running redis-server of this test's own; killed afterwards."""
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.kill()


@pytest_twisted.async_yield_fixture
async def nodes(redis_server: RedisServer) -> Any:
    """Start gateway nodes sharing ``redis_server``: ``await nodes(3)`` -> list of ready nodes."""
    started: list[RunningGateway] = []

    async def make(count: int = 1, **overrides: Any) -> list[RunningGateway]:
        out = []
        url = overrides.pop("redis", redis_server.url)
        for _ in range(count):
            config = Config(redis=url, node_id=f"node{len(started)}", drain_timeout=2.0, **overrides)
            running = start_gateway(config)
            started.append(running)
            out.append(running)
        await wait_for(lambda: all(n.bus.is_ready() for n in out), what="nodes ready")
        return out

    yield make
    for running in started:
        if running.service.running:
            await running.stop()

