"""The control channel of the IBroker contract (``publish_control`` / ``control_received``),
on every broker, and across nodes and reconnects on Redis."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.broker.redis import RedisBroker
from gateway.errors import BadRequest, Unavailable
from tests.contracts.conftest import RecordingListener
from tests.e2e.support import RedisServer, wait_for

REVOKE = {"type": "revoke", "sub": "alice", "origin": "n1"}


async def test_control_message_reaches_the_publishing_node_without_subscribe(make_broker):
    """A control message comes back to the node's own listener, equal to what was sent,
    though nothing was subscribed; it is no publication."""
    broker, listener = await make_broker()

    result = await broker.publish_control(REVOKE)
    await wait_for(lambda: listener.controls, what="control message")

    assert result is None
    assert [REVOKE] == listener.controls
    assert [] == listener.publications


async def test_control_messages_arrive_in_order_with_every_json_shape(make_broker):
    """Several control messages arrive once each, in the order sent, whatever JSON they hold."""
    broker, listener = await make_broker()
    messages = [{"type": "revoke", "sub": f"u{i}", "n": [i, 2.5, None, True], "s": "ünï ✓"} for i in range(20)]

    for m in messages:
        await broker.publish_control(m)
    await wait_for(lambda: len(listener.controls) == len(messages), what="control messages")

    assert messages == listener.controls


async def test_publications_do_not_reach_the_control_path(make_broker):
    """Publications on a subscribed channel go to publication_received only."""
    broker, listener = await make_broker()
    await broker.subscribe("control")

    await broker.publish("control", {"type": "revoke", "sub": "alice"})
    await wait_for(lambda: listener.publications, what="publication")

    assert [] == listener.controls


async def test_unencodable_control_message_is_refused(make_broker):
    """A message that is not JSON-encodable fails with BadRequest and nothing is delivered."""
    broker, listener = await make_broker()

    with pytest.raises(BadRequest):
        await broker.publish_control({"sub": "\ud800"})
    await broker.publish_control(REVOKE)
    await wait_for(lambda: listener.controls, what="the next control message")

    assert [REVOKE] == listener.controls


# -- Redis: every node, reconnects, outages -----------------------------------------


async def _redis_broker(server: RedisServer, started: list[Any]) -> tuple[RedisBroker, RecordingListener]:
    from twisted.internet import reactor

    broker = RedisBroker(server.url, reactor=reactor)
    listener = RecordingListener()
    started.append(broker)
    await broker.start(listener)
    await wait_for(broker.is_ready, what="broker ready")
    # The pub/sub connection subscribes to the control channel once it is up.
    await wait_for(lambda: _numsub(server, broker) == len(started), what="control channel subscribed")
    return broker, listener


def _numsub(server: RedisServer, broker: RedisBroker) -> int:
    return int(server.cli("PUBSUB", "NUMSUB", broker.control_channel).split()[1])


@pytest.fixture
def redis_server(tmp_path: Any) -> Any:
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.kill()


async def test_redis_control_message_reaches_every_node(redis_server):
    """With three nodes on one Redis, a control message sent by one reaches all three once."""
    started: list[Any] = []
    try:
        nodes = [await _redis_broker(redis_server, started) for _ in range(3)]

        await nodes[1][0].publish_control(REVOKE)
        await wait_for(lambda: all(listener.controls for _, listener in nodes), what="every node")

        assert [[REVOKE]] * 3 == [listener.controls for _, listener in nodes]
    finally:
        for broker in started:
            await broker.stop()


async def test_redis_control_channel_is_resubscribed_after_a_pubsub_reconnect(redis_server):
    """After Redis drops the pub/sub connections, each node subscribes to the control channel again."""
    started: list[Any] = []
    try:
        (a, la), (_, lb) = [await _redis_broker(redis_server, started) for _ in range(2)]

        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_for(lambda: _numsub(redis_server, a) == 0, what="pub/sub connections dropped")
        await wait_for(lambda: _numsub(redis_server, a) == 2, what="control channel resubscribed")
        await a.publish_control(REVOKE)
        await wait_for(lambda: la.controls and lb.controls, what="control message after the reconnect")

        assert ([REVOKE], [REVOKE]) == (la.controls, lb.controls)
    finally:
        for broker in started:
            await broker.stop()


async def test_redis_control_message_while_redis_is_down_fails_fast(redis_server):
    """With Redis gone, publish_control fails at once with Unavailable (nothing queued for later)."""
    started: list[Any] = []
    try:
        broker, listener = await _redis_broker(redis_server, started)
        redis_server.kill()
        await wait_for(lambda: not broker.is_ready(), what="broker unready")

        d = broker.publish_control(REVOKE)

        assert d.called
        with pytest.raises(Unavailable):
            await d
        assert [] == listener.controls
    finally:
        for started_broker in started:
            await started_broker.stop()
