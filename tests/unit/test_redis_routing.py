"""RedisBroker's choice of command connection for a publish (publisher order): plain values,
no Redis.  The e2e tests in tests/e2e/test_publisher_order.py check the order itself."""

from __future__ import annotations

import zlib

from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.broker.redis import RedisBroker


def broker_with(connections):
    broker = RedisBroker("redis://127.0.0.1:1/0", reactor=Clock(), poolsize=len(connections))
    broker._commands = list(connections)
    return broker


def channel_hashing_to(index, size):
    return next(f"c{i}" for i in range(1000) if zlib.crc32(f"c{i}".encode()) % size == index)


def test_a_channel_maps_to_one_connection_by_its_name():
    a, b = "conn-a", "conn-b"
    broker = broker_with([a, b])
    first, second = channel_hashing_to(0, 2), channel_hashing_to(1, 2)
    assert [broker._connection_for(first) for _ in range(5)] == [a] * 5
    assert [broker._connection_for(second) for _ in range(5)] == [b] * 5


def test_publishes_in_flight_keep_their_connection_when_the_pool_changes():
    """A channel whose publishes are in flight on one connection keeps using it after a
    connection joins the pool (else a later publish could overtake them), then moves to its
    hashed connection once none is in flight."""
    a, b = "conn-a", "conn-b"
    broker = broker_with([a])
    channel = channel_hashing_to(1, 2)
    first, second = defer.Deferred(), defer.Deferred()
    broker._track(channel, broker._connection_for(channel), first)
    broker._track(channel, broker._connection_for(channel), second)
    broker._commands.append(b)

    assert broker._connection_for(channel) is a
    first.callback(None)
    assert broker._connection_for(channel) is a
    second.callback(None)
    assert broker._connection_for(channel) is b
    assert broker._inflight == {}


def test_a_lost_connection_is_not_reused():
    a, b = "conn-a", "conn-b"
    broker = broker_with([a, b])
    channel = channel_hashing_to(0, 2)
    broker._track(channel, a, defer.Deferred())
    broker._commands.remove(a)
    assert broker._connection_for(channel) is b
    broker._commands.clear()
    assert broker._connection_for(channel) is None
