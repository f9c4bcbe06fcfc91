"""Idempotency keys with Redis (docs/protocol.md section 7), on a real redis-server:
the key's name and 5-minute expiry as seen by redis-cli, retries and races across
nodes, a lost epoch, and two gateway nodes driven by independent clients
(`websockets`, `httpx`)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest_twisted
from twisted.internet import defer

from gateway.broker.redis import RedisBroker
from gateway.testing import WSClient, aio, http
from tests.contracts.conftest import RecordingListener
from tests.e2e.support import Subscriber, wait_for


@pytest_twisted.async_yield_fixture
async def brokers(redis_server):
    """``await brokers(**kwargs)`` -> a started RedisBroker (a node) on the test's Redis, and its listener."""
    from twisted.internet import reactor

    started: list[RedisBroker] = []

    async def make(**kwargs: Any) -> tuple[RedisBroker, RecordingListener]:
        broker = RedisBroker(redis_server.url, reactor=reactor, **kwargs)
        listener = RecordingListener()
        started.append(broker)
        await broker.start(listener)
        await wait_for(broker.is_ready, what="broker ready")
        return broker, listener

    yield make
    for broker in started:
        await broker.stop()


def idem_key(channel: str, key: str, prefix: str = "gateway") -> str:
    """The Redis key name docs/protocol.md section 7 gives, computed independently."""
    return f"{prefix}:{{{channel}}}:idem:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


async def test_the_key_lives_in_redis_for_300_seconds_under_the_channels_hash_tag(brokers, redis_server):
    broker, _ = await brokers()
    first = await broker.publish("room:1", {"t": 1}, idempotency_key="order-42 ✓")

    name = idem_key("room:1", "order-42 ✓")
    ttl_ms = int(redis_server.cli("PTTL", name))
    value = redis_server.cli("GET", name).strip()

    assert 299_000 < ttl_ms <= 300_000
    assert f"{first.seq}:{first.epoch}:{first.ts}" == value
    # Only the channel's usual keys and this one: nothing named after the raw key.
    assert sorted(["gateway:{room:1}:meta", "gateway:{room:1}:hist", name]) == sorted(redis_server.cli("KEYS", "*").split())
    # A repeat does not extend the 5 minutes (they count from the first publication).
    await broker.publish("room:1", {"t": 1}, idempotency_key="order-42 ✓")
    assert int(redis_server.cli("PTTL", name)) <= ttl_ms


async def test_a_retry_on_another_node_is_the_first_publication(brokers):
    a, listener = await brokers()
    b, _ = await brokers()
    await a.subscribe("c")

    first = await a.publish("c", "x", idempotency_key="k")
    retry = await b.publish("c", "x", idempotency_key="k")
    nxt = await b.publish("c", "y")
    await wait_for(lambda: len(listener.publications) == 2, what="deliveries")

    assert (first.seq, first.epoch, True) == (retry.seq, retry.epoch, retry.duplicate)
    assert [1, 2] == [p.seq for p in listener.publications]
    assert 2 == nxt.seq


async def test_concurrent_publishes_with_one_key_on_two_nodes_publish_once(brokers, redis_server):
    a, listener = await brokers()
    b, _ = await brokers()
    await a.subscribe("c")

    pubs = await defer.gatherResults(
        [node.publish("c", i, idempotency_key="race") for i in range(40) for node in (a, b)]
    )
    await a.publish("c", "after")
    await wait_for(lambda: [p.data for p in listener.publications][-1:] == ["after"], what="the publication after")

    assert {1} == {p.seq for p in pubs}
    assert 1 == sum(not p.duplicate for p in pubs)
    assert [1, 2] == [p.seq for p in listener.publications]
    assert "2" == redis_server.cli("LLEN", "gateway:{c}:hist").strip()


async def test_after_a_flush_a_retry_publishes_anew_in_the_new_epoch(brokers, redis_server):
    broker, _ = await brokers()
    first = await broker.publish("c", "x", idempotency_key="k")
    assert b"+OK" == redis_server.command("FLUSHALL")

    retry = await broker.publish("c", "x", idempotency_key="k")
    again = await broker.publish("c", "x", idempotency_key="k")

    assert (1, False) == (retry.seq, retry.duplicate)
    assert retry.epoch != first.epoch
    assert (retry.seq, retry.epoch, True) == (again.seq, again.epoch, again.duplicate)


async def test_a_key_left_from_a_lost_epoch_does_not_count(brokers, redis_server):
    """Only the channel's meta hash lost (say an operator deleted it): the key still in
    Redis names an epoch that is gone, so the retry is published in the new one."""
    broker, _ = await brokers()
    first = await broker.publish("c", "x", idempotency_key="k")
    redis_server.cli("DEL", "gateway:{c}:meta")

    retry = await broker.publish("c", "x", idempotency_key="k")

    assert (1, False) == (retry.seq, retry.duplicate)
    assert retry.epoch != first.epoch
    assert f"1:{retry.epoch}:{retry.ts}" == redis_server.cli("GET", idem_key("c", "k")).strip()


async def test_two_gateway_nodes_publish_a_retried_key_once(nodes):
    """A client publishes with key K on node A, loses the ack, and retries on node B
    (over WebSocket, then over HTTP, then as an item of a batch): every answer is
    the first seq, subscribers on both nodes see one message, and the next
    publication follows without a gap."""
    a, b = await nodes(2)
    subs = [Subscriber(a.ws_url, "room:1"), Subscriber(b.ws_url, "room:1")]
    for sub in subs:
        await aio(sub.start())

    pub_a = await WSClient.connect(a.ws_url)
    ack = await pub_a.request({"type": "publish", "channel": "room:1", "data": {"text": "hi"}, "idempotency_key": "K", "id": 1})
    await pub_a.close()
    pub_b = await WSClient.connect(b.ws_url)
    retry_ws = await pub_b.request({"type": "publish", "channel": "room:1", "data": {"text": "hi"}, "idempotency_key": "K", "id": 1})
    retry_http = await http("POST", b.base + "/publish", json={"channel": "room:1", "data": {"text": "hi"}, "idempotency_key": "K"})
    batch = await http(
        "POST",
        b.base + "/publish",
        json={"messages": [{"channel": "room:1", "data": 1, "idempotency_key": "K"}, {"channel": "room:1", "data": "next", "idempotency_key": "L"}]},
    )
    await pub_b.close()
    await wait_for(lambda: all(len(s.messages) == 2 for s in subs), what="two messages on each node")
    await wait_for(lambda: b.gateway.bus.deduplicated == 3, what="the counter")

    expected = {"channel": "room:1", "seq": 1, "epoch": ack["epoch"]}
    assert {"type": "ack", "id": 1, **expected} == ack
    assert ack == retry_ws
    assert (200, expected) == (retry_http.status_code, retry_http.json())
    assert (200, [expected, {**expected, "seq": 2}]) == (batch.status_code, batch.json()["results"])
    for sub in subs:
        assert [({"text": "hi"}, 1), ("next", 2)] == [(m["data"], m["seq"]) for m in sub.check_order()]
    metrics = (await http("GET", b.base + "/metrics")).text
    assert "gateway_publications_deduplicated_total 3.0" in metrics
    assert "gateway_publications_total 1.0" in metrics
    for sub in subs:
        await aio(sub.close())
