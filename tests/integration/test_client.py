"""gateway.client against a real gateway over real sockets: both transports, fallback
through a refusing or silent proxy and an origin check, resume after cuts and
restarts, idempotent publish retry, token refresh in place, and every refusal.

Independent clients (``websockets``, ``httpx``) publish and observe where the test
needs a second opinion."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.broker.memory import InMemoryBroker
from gateway.client import Client, ClientError
from gateway.config import Config
from gateway.core.model import Position
from gateway.service import GatewayService
from gateway.testing import WSClient, http
from tests.e2e.support import free_port, wait_for
from tests.integration.tcpproxy import Proxy

SECRET = "client-tests-secret-0123456789abcdef"


def token_for(sub: str = "alice", ttl: float | None = 3600, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "subscribe": ["*"], "publish": ["*"], **claims}
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, SECRET, algorithm="HS256")


class Recorder:
    """Events a subscription delivered, and the client's states."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events if e["type"] == "message"]

    def connected_over(self) -> list[str]:
        return [s["transport"] for s in self.states if s["state"] == "connected"]


@pytest_twisted.async_yield_fixture
async def clients():
    """Make clients that are closed at the end of the test, pass or fail."""
    made: list[Client] = []

    def make(url: str, **kwargs: Any) -> tuple[Client, Recorder]:
        rec = Recorder()
        client = Client(url, **kwargs)
        client.on_state(rec.states.append)
        made.append(client)
        return client, rec

    yield make
    for client in made:
        await client.close()


@pytest_twisted.async_yield_fixture
async def proxies():
    made: list[Proxy] = []

    def make(port: int) -> Proxy:
        proxy = Proxy(port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.stop()


async def publish_http(base: str, channel: str, data: Any, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = await http("POST", base + "/publish", json={"channel": channel, "data": data}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def failure_of(d: defer.Deferred[Any]) -> ClientError:
    try:
        await d
    except ClientError as e:
        return e
    raise AssertionError("expected a ClientError")


# -- both transports -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_subscribe_and_publish(gw, clients, transport):
    """Acks carry channel/seq/epoch; the subscriber gets its own and others' publications once, in order."""
    client, rec = clients(gw.base, transports=(transport,))
    sub = client.subscribe("room:1", rec)
    ready = await sub.when_ready()
    if transport == "websocket":
        assert ready == Position(ready.epoch, 0)
    acks = [await client.publish("room:1", {"n": n}) for n in range(3)]
    assert [a["seq"] for a in acks] == [1, 2, 3]
    assert {a["channel"] for a in acks} == {"room:1"} and len({a["epoch"] for a in acks}) == 1
    await publish_http(gw.base, "room:1", "from httpx")
    await wait_for(lambda: len(rec.events) == 4, what="4 events")
    assert rec.seqs() == [1, 2, 3, 4]
    assert [e["data"] for e in rec.events] == [{"n": 0}, {"n": 1}, {"n": 2}, "from httpx"]
    assert rec.connected_over() == [transport]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_publish_reaches_an_independent_subscriber(gw, clients, transport):
    ws = await WSClient.connect(gw.ws_url)
    try:
        assert (await ws.request({"type": "subscribe", "channel": "c", "id": 1}))["type"] == "subscribed"
        client, _ = clients(gw.base, transports=(transport,))
        ack = await client.publish("c", [1, "two"])
        event = await ws.recv()
        assert (event["type"], event["seq"], event["data"]) == ("message", ack["seq"], [1, "two"])
    finally:
        await ws.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_unsubscribe_stops_delivery(gw, clients, transport):
    client, rec = clients(gw.base, transports=(transport,))
    other = Recorder()
    sub = client.subscribe("a", rec)
    client.subscribe("b", other)
    await sub.when_ready()
    await client.publish("a", 1)
    await wait_for(lambda: rec.seqs() == [1], what="first message")
    sub.unsubscribe()
    await client.publish("a", 2)
    await client.publish("b", 1)
    await wait_for(lambda: other.seqs() == [1], what="b's message")
    assert rec.seqs() == [1]


async def test_latest_is_the_channel_position(gw, clients):
    client, _ = clients(gw.base)
    for n in range(5):
        ack = await publish_http(gw.base, "hist", n)
    position = await client.latest("hist")
    assert position == Position(ack["epoch"], 5)


async def test_subscribe_since_replays_history(gw, clients):
    acks = [await publish_http(gw.base, "h", n) for n in range(6)]
    client, rec = clients(gw.base)
    client.subscribe("h", rec, since=Position(acks[0]["epoch"], 3))
    await wait_for(lambda: rec.seqs() == [4, 5, 6], what="seqs 4-6")


# -- fallback --------------------------------------------------------------------------


async def test_falls_back_to_sse_when_a_proxy_refuses_the_upgrade(gw, clients, proxies):
    proxy = proxies(gw.port)
    proxy.refuse_upgrades = True
    client, rec = clients(proxy.base)
    sub = client.subscribe("room", rec)
    await sub.when_ready()
    assert proxy.refused == 1
    ack = await client.publish("room", "over http")
    await wait_for(lambda: rec.seqs() == [ack["seq"]], what="the message over SSE")
    assert rec.connected_over() == ["sse"]
    assert [s["transport"] for s in rec.states if s["state"] == "connecting"] == ["websocket", "sse"]


async def test_falls_back_to_sse_when_the_upgrade_gets_no_answer(gw, clients, proxies):
    proxy = proxies(gw.port)
    proxy.hold_upgrades = True
    client, rec = clients(proxy.base, connect_timeout=1.0)
    sub = client.subscribe("room", rec)
    await sub.when_ready()
    assert proxy.held == 1
    await client.publish("room", 1)
    await wait_for(lambda: rec.seqs() == [1], what="the message over SSE")
    assert rec.connected_over() == ["sse"]


async def test_falls_back_to_sse_when_the_gateway_refuses_the_origin(gw_factory, clients):
    gw = gw_factory(allowed_origin=("https://app.example:443",))
    client, rec = clients(gw.base, headers={"Origin": "https://elsewhere.example"})
    sub = client.subscribe("room", rec)
    await sub.when_ready()
    await publish_http(gw.base, "room", 1)
    await wait_for(lambda: rec.seqs() == [1], what="the message over SSE")
    assert rec.connected_over() == ["sse"]
    # The gateway refuses publishes from an origin it does not allow, with the code.
    assert (await failure_of(client.publish("room", 2))).code == "forbidden"


async def test_a_websocket_only_client_keeps_retrying_a_refused_upgrade(gw, clients, proxies):
    proxy = proxies(gw.port)
    proxy.refuse_upgrades = True
    client, rec = clients(proxy.base, transports=("websocket",), random=lambda: 0.01)
    client.connect()
    await wait_for(lambda: proxy.refused >= 3, what="3 refused upgrades")
    assert rec.connected_over() == []
    proxy.refuse_upgrades = False
    await wait_for(lambda: rec.connected_over() == ["websocket"], what="connected once the proxy lets it through")


# -- resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_resume_after_the_connection_is_cut_gets_every_seq_once(gw, clients, proxies, transport):
    """Cut the connection while an independent publisher is busy: 1..N once, in order."""
    proxy = proxies(gw.port)
    client, rec = clients(proxy.base, transports=(transport,), random=lambda: 0.05)
    sub = client.subscribe("flow", rec)
    await sub.when_ready()
    total = 60
    for n in range(1, total + 1):
        await publish_http(gw.base, "flow", n)
        if n in (15, 35):
            proxy.cut()
    await wait_for(lambda: len(rec.seqs()) >= total, timeout=10, what=f"{total} messages")
    assert rec.seqs() == list(range(1, total + 1))
    assert [e["data"] for e in rec.events] == list(range(1, total + 1))
    assert len(rec.connected_over()) >= 3


async def _service_on(port: int, broker: Any) -> GatewayService:
    config = Config(listen=(f"tcp:{port}:interface=127.0.0.1",), drain_timeout=2.0)
    service = GatewayService(config, broker=broker)
    service.startService()
    return service


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_resume_after_the_gateway_restarts_with_history(clients, transport):
    """The node drains (1001 / stream end) and comes back with the same history:
    the client resumes from its position, nothing lost or repeated, no reset."""
    port = free_port()
    broker = InMemoryBroker()
    service = await _service_on(port, broker)
    try:
        client, rec = clients(f"http://127.0.0.1:{port}/", transports=(transport,), random=lambda: 0.2)
        sub = client.subscribe("r", rec)
        await sub.when_ready()
        for n in range(3):
            await client.publish("r", n)
        await wait_for(lambda: rec.seqs() == [1, 2, 3], what="1-3")
        await service.stopService()
        for n in range(3, 6):
            await broker.publish("r", n)  # published while no node serves
        service = await _service_on(port, broker)
        await wait_for(lambda: len(rec.seqs()) >= 6, timeout=10, what="4-6 after the restart")
        ack = await client.publish("r", 6)
        await wait_for(lambda: len(rec.seqs()) >= 7, what="7")
        assert ack["seq"] == 7
        assert rec.seqs() == [1, 2, 3, 4, 5, 6, 7]
        assert all(e["type"] == "message" for e in rec.events)
    finally:
        await service.stopService()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_memory_bus_restart_is_a_reset(clients, transport):
    """A new node with a fresh in-memory bus (history lost, new epoch): the callback gets a reset."""
    port = free_port()
    service = await _service_on(port, InMemoryBroker())
    try:
        client, rec = clients(f"http://127.0.0.1:{port}/", transports=(transport,), random=lambda: 0.2)
        sub = client.subscribe("r", rec)
        await sub.when_ready()
        first = await client.publish("r", "old")
        await wait_for(lambda: rec.seqs() == [1], what="1")
        await service.stopService()
        fresh = InMemoryBroker()
        service = await _service_on(port, fresh)
        new = await fresh.publish("r", "new epoch")
        assert new.epoch != first["epoch"]
        await wait_for(lambda: any(e["type"] == "reset" for e in rec.events), timeout=10, what="a reset")
        reset = next(e for e in rec.events if e["type"] == "reset")
        assert reset["epoch"] == new.epoch
        ack = await client.publish("r", "after")
        await wait_for(lambda: rec.events[-1].get("seq") == ack["seq"] and rec.events[-1]["type"] == "message", what="after")
        assert ack["epoch"] == new.epoch
        messages = [(e["epoch"], e["seq"]) for e in rec.events if e["type"] == "message"]
        assert messages[0] == (first["epoch"], 1)
        assert len(messages) == len(set(messages))
    finally:
        await service.stopService()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_publish_whose_ack_was_lost_is_retried_and_happens_once(gw, clients, proxies, transport):
    """The server accepts the publish but its answer never arrives (the proxy swallows
    it, then the connection drops): the retry after the reconnect carries the same
    idempotency key and gets the first publication's ack; an observer sees it once."""
    ws = await WSClient.connect(gw.ws_url)
    try:
        await ws.request({"type": "subscribe", "channel": "once", "id": 1})
        proxy = proxies(gw.port)
        client, rec = clients(proxy.base, transports=(transport,), random=lambda: 0.05)
        client.connect()
        await wait_for(lambda: rec.connected_over() == [transport], what="connected")
        proxy.swallow = True
        d = client.publish("once", "exactly once")
        seen = await ws.recv()
        assert (seen["seq"], seen["data"]) == (1, "exactly once")
        await wait_for(lambda: proxy.swallowed > 0, what="the swallowed answer")
        assert not d.called
        proxy.swallow = False
        proxy.cut()
        ack = await d
        assert ack["seq"] == 1
        after = await publish_http(gw.base, "once", "next")
        assert after["seq"] == 2
        assert (await ws.recv())["seq"] == 2  # nothing in between: published once
    finally:
        await ws.close()


async def test_publish_made_while_disconnected_is_sent_on_reconnect(gw, clients, proxies):
    proxy = proxies(gw.port)
    client, rec = clients(proxy.base, transports=("websocket",), random=lambda: 0.3)
    sub = client.subscribe("q", rec)
    await sub.when_ready()
    proxy.cut()
    await wait_for(lambda: client.state == "reconnecting", what="reconnecting")
    ack = await client.publish("q", "queued")
    assert ack["seq"] == 1
    await wait_for(lambda: rec.seqs() == [1], what="delivered")


# -- authentication --------------------------------------------------------------------


async def test_websocket_token_refreshed_in_place(gw_factory, clients):
    """A 4 s token (refreshed halfway): the same connection outlives several tokens."""
    gw = gw_factory(jwt_secret=SECRET)
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.time())
        return token_for(ttl=4)

    client, rec = clients(gw.base, token=fresh, transports=("websocket",))
    sub = client.subscribe("t", rec)
    await sub.when_ready()
    started = time.time()
    await wait_for(lambda: len(calls) >= 4, timeout=15, what="three refreshes")
    assert time.time() - started > 4  # past the first token's exp
    ack = await client.publish("t", "still here")
    await wait_for(lambda: rec.seqs() == [ack["seq"]], what="delivery after the refreshes")
    assert rec.connected_over() == ["websocket"]
    assert [s["state"] for s in rec.states] == ["connecting", "connected"]


async def test_sse_reconnects_with_a_fresh_token_before_exp(gw_factory, clients):
    gw = gw_factory(jwt_secret=SECRET)
    calls: list[str] = []

    def fresh() -> str:
        calls.append(token_for(ttl=3))
        return calls[-1]

    client, rec = clients(gw.base, token=fresh, transports=("sse",))
    sub = client.subscribe("t", rec)
    await sub.when_ready()
    await wait_for(lambda: len(calls) >= 3, timeout=15, what="two new streams")
    ack = await client.publish("t", 1)
    await wait_for(lambda: rec.seqs() == [ack["seq"]], what="delivered on the new stream")
    assert not [s for s in rec.states if s["state"] == "reconnecting"]


async def test_token_function_returning_a_deferred(gw_factory, clients):
    gw = gw_factory(jwt_secret=SECRET)
    client, _ = clients(gw.base, token=lambda: defer.succeed(token_for()))
    ack = await client.publish("d", 1)
    assert ack["seq"] == 1


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_unauthorized_token_closes_the_client(gw_factory, clients, transport):
    gw = gw_factory(jwt_secret=SECRET)
    client, rec = clients(gw.base, token="not-a-valid-token", transports=(transport,))
    sub = client.subscribe("x", rec)
    error = await failure_of(client.when_closed())
    assert error.code == "unauthorized"
    assert (await failure_of(sub.when_ready())).code == "unauthorized"
    assert rec.states[-1]["state"] == "closed" and rec.states[-1]["error"].code == "unauthorized"


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_publish_with_an_unauthorized_token_fails(gw_factory, clients, transport):
    gw = gw_factory(jwt_secret=SECRET)
    client, _ = clients(gw.base, token=token_for(ttl=-10), transports=(transport,))
    assert (await failure_of(client.publish("x", 1))).code == "unauthorized"


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_forbidden_subscription_fails_alone(gw_factory, clients, transport):
    gw = gw_factory(jwt_secret=SECRET)
    token = token_for(subscribe=["room:*"], publish=["room:*"])
    client, rec = clients(gw.base, token=token, transports=(transport,))
    good = client.subscribe("room:1", rec)
    await good.when_ready()
    bad = client.subscribe("secret", Recorder())
    assert (await failure_of(bad.when_ready())).code == "forbidden"
    ack = await client.publish("room:1", "ok")
    await wait_for(lambda: rec.seqs() == [ack["seq"]], what="room:1 still delivered")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_forbidden_subscription_made_together_with_allowed_ones(gw_factory, clients, transport):
    """SSE cannot tell which channel of a stream was refused: the client finds out by
    adding them one by one; only the forbidden one fails."""
    gw = gw_factory(jwt_secret=SECRET)
    token = token_for(subscribe=["room:*"], publish=["room:*"])
    client, _ = clients(gw.base, token=token, transports=(transport,))
    recs = {c: Recorder() for c in ("room:1", "secret", "room:2")}
    subs = {c: client.subscribe(c, recs[c]) for c in recs}
    assert (await failure_of(subs["secret"].when_ready())).code == "forbidden"
    await subs["room:1"].when_ready()
    await subs["room:2"].when_ready()
    for channel in ("room:1", "room:2"):
        ack = await client.publish(channel, channel)
        await wait_for(lambda c=channel, a=ack: recs[c].seqs() == [a["seq"]], what=f"{channel} delivered")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_forbidden_publish_fails_with_the_code(gw_factory, clients, transport):
    gw = gw_factory(jwt_secret=SECRET)
    client, _ = clients(gw.base, token=token_for(publish=["room:*"]), transports=(transport,))
    error = await failure_of(client.publish("elsewhere", 1))
    assert error.code == "forbidden"
    assert (await client.publish("room:1", 1))["seq"] == 1


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_too_large_publish_fails_with_the_code(gw_factory, clients, transport):
    """Over --max-message-size: HTTP 413, or on WebSocket a close 1009, after which
    the publish is not retried (it could never go) and the client carries on."""
    gw = gw_factory(max_message_size=1024)
    client, rec = clients(gw.base, transports=(transport,), random=lambda: 0.05)
    sub = client.subscribe("big", rec)
    await sub.when_ready()
    error = await failure_of(client.publish("big", "x" * 4096))
    assert error.code == "too_large"
    ack = await client.publish("big", "small")
    await wait_for(lambda: rec.seqs() == [ack["seq"]], what="the small one delivered")
    assert ack["seq"] == 1


async def test_server_unreachable_publish_times_out(clients):
    client, rec = clients(f"http://127.0.0.1:{free_port()}/", publish_timeout=1.0, random=lambda: 0.05)
    error = await failure_of(client.publish("x", 1))
    assert error.code == "timeout"
    assert "reconnecting" in [s["state"] for s in rec.states]


async def test_close_is_clean_while_reconnecting(clients):
    client, rec = clients(f"http://127.0.0.1:{free_port()}/", random=lambda: 0.5)
    client.connect()
    await wait_for(lambda: client.state == "reconnecting", what="reconnecting")
    await client.close()
    assert rec.states[-1]["state"] == "closed"
