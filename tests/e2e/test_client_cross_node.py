"""gateway.client across nodes sharing a real redis-server: a proxy in front plays the
load balancer that moves the client to another node; positions resume there and a
publish whose ack was lost is recognised there by its idempotency key."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from gateway.client import Client
from gateway.testing import WSClient, http
from tests.e2e.support import wait_for
from tests.integration.tcpproxy import Proxy

pytestmark = pytest.mark.redis


@pytest_twisted.async_yield_fixture
async def balancer():
    made: list[Proxy] = []

    def make(port: int) -> Proxy:
        made.append(Proxy(port))
        return made[-1]

    yield make
    for proxy in made:
        await proxy.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_moved_to_another_node_while_publications_flow_gets_every_seq_once(nodes, balancer, transport):
    a, b = await nodes(2)
    proxy = balancer(a.port)
    client = Client(proxy.base, transports=(transport,), random=lambda: 0.05)
    events: list[dict[str, Any]] = []
    try:
        sub = client.subscribe("flow", events.append)
        await sub.when_ready()
        total = 60
        for n in range(1, total + 1):
            r = await http("POST", b.base + "/publish", json={"channel": "flow", "data": n})
            assert r.status_code == 200
            if n == 20:
                proxy.target_port = b.port  # the balancer now sends new connections to B
                proxy.cut()
            if n == 40:
                proxy.target_port = a.port
                proxy.cut()
        await wait_for(lambda: len(events) >= total, timeout=15, what=f"{total} events")
        assert [e["seq"] for e in events] == list(range(1, total + 1))
        assert all(e["type"] == "message" for e in events)
    finally:
        await client.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_lost_ack_retried_on_another_node_publishes_once(nodes, balancer, transport):
    a, b = await nodes(2)
    observer = await WSClient.connect(b.ws_url)
    proxy = balancer(a.port)
    client = Client(proxy.base, transports=(transport,), random=lambda: 0.05)
    states: list[dict[str, Any]] = []
    client.on_state(states.append)
    try:
        await observer.request({"type": "subscribe", "channel": "once", "id": 1})
        client.connect()
        await wait_for(lambda: client.state == "connected", what="connected to A")
        proxy.swallow = True
        d = client.publish("once", "exactly once")
        first = await observer.recv()
        assert (first["seq"], first["data"]) == (1, "exactly once")
        await wait_for(lambda: proxy.swallowed > 0, what="A's answer swallowed")
        proxy.swallow = False
        proxy.target_port = b.port
        proxy.cut()
        ack = await d
        assert (ack["seq"], ack["epoch"]) == (1, first["epoch"])
        r = await http("POST", a.base + "/publish", json={"channel": "once", "data": "next"})
        assert r.json()["seq"] == 2
        assert (await observer.recv())["seq"] == 2
        # WebSocket: the publish went again on a new connection to B. SSE (no
        # subscription, so no stream): the POST itself was retried, on B.
        assert [s["state"] for s in states].count("connected") == (2 if transport == "websocket" else 1)
    finally:
        await observer.close()
        await client.close()
