"""The idempotency-key part of the IBroker contract (gateway/interfaces.py,
docs/protocol.md section 7), checked against every broker: the in-memory one and the
Redis one on a real redis-server (where two brokers on one server are two nodes)."""

from __future__ import annotations

import time

from twisted.internet import defer

from gateway.core.model import Position
from gateway.errors import BadRequest
from gateway.testing import sleep
from tests.e2e.support import wait_for


async def marker(broker, listener, count):
    """Wait until ``count`` publications were delivered, then publish a marker on
    another subscribed channel and wait for it: whatever was sent before it (a
    duplicate wrongly delivered included) has arrived by then."""
    await wait_for(lambda: len(listener.publications) >= count, what="deliveries")
    await broker.subscribe("marker")
    await broker.publish("marker", "m")
    await wait_for(lambda: listener.publications and listener.publications[-1].channel == "marker", what="marker")
    return [p for p in listener.publications if p.channel != "marker"]


async def test_a_repeat_is_answered_with_the_first_publication_and_publishes_nothing(make_broker):
    broker, listener = await make_broker()
    await broker.subscribe("c")

    first = await broker.publish("c", {"n": 1}, "alice", idempotency_key="k-1")
    again = await broker.publish("c", {"n": 2, "other": "data"}, "bob", idempotency_key="k-1")
    plain = await broker.publish("c", "no key")
    delivered = await marker(broker, listener, 2)
    history = await broker.history("c", Position(first.epoch, 0))

    assert (1, False) == (first.seq, first.duplicate)
    assert (first.seq, first.epoch, first.ts, True) == (again.seq, again.epoch, again.ts, again.duplicate)
    assert 2 == plain.seq
    assert [first, plain] == delivered
    assert (first, plain) == history.publications
    assert 2 == history.top.seq


async def test_keys_are_per_channel_and_distinct_keys_publish(make_broker):
    broker, _ = await make_broker()

    a = await broker.publish("a", 1, idempotency_key="k")
    b = await broker.publish("b", 1, idempotency_key="k")
    a2 = await broker.publish("a", 1, idempotency_key="K")
    a3 = await broker.publish("a", 1, idempotency_key="k ")

    assert [(1, False), (1, False), (2, False), (3, False)] == [(p.seq, p.duplicate) for p in (a, b, a2, a3)]


async def test_keys_of_any_text_are_kept_apart(make_broker):
    """Keys holding key-name syntax, hash tags, separators or non-ASCII text neither
    collide nor break anything."""
    broker, _ = await make_broker()
    keys = ["{c}", "c}:idem:x", ":", "*", "\U0001f600" * 64, "x" * 64, "ключ", "a\x00b", "a\nb", " "]

    firsts = [await broker.publish("c", i, idempotency_key=k) for i, k in enumerate(keys)]
    repeats = [await broker.publish("c", "again", idempotency_key=k) for k in keys]

    assert list(range(1, len(keys) + 1)) == [p.seq for p in firsts]
    assert [p.seq for p in firsts] == [p.seq for p in repeats]
    assert all(p.duplicate for p in repeats)


async def test_concurrent_publishes_with_one_key_publish_once(make_broker):
    broker, listener = await make_broker()
    await broker.subscribe("c")

    pubs = await defer.gatherResults([broker.publish("c", i, idempotency_key="same") for i in range(50)])
    delivered = await marker(broker, listener, 1)

    assert {1} == {p.seq for p in pubs}
    assert 1 == sum(not p.duplicate for p in pubs)
    assert 1 == len(delivered)


async def test_a_refused_publish_does_not_use_up_its_key(make_broker):
    broker, _ = await make_broker()

    try:
        await broker.publish("c", "\ud800", idempotency_key="k")
    except BadRequest:
        pass
    else:
        raise AssertionError("a lone surrogate was accepted")
    pub = await broker.publish("c", "fine", idempotency_key="k")

    assert (1, False) == (pub.seq, pub.duplicate)


async def test_a_key_is_forgotten_after_the_ttl(make_broker):
    """With a short ttl: the repeat right away is a duplicate; once the ttl has passed
    a repeat publishes anew (seq 2), and that new publication is what the key answers
    from then on.  (The exact 300 s boundary is tested on a fake clock, and Redis'
    default expiry in tests/e2e/test_idempotency_redis.py.)"""
    broker, _ = await make_broker(idempotency_ttl=0.3)
    started = time.monotonic()
    first = await broker.publish("c", 1, idempotency_key="k")
    assert (await broker.publish("c", 1, idempotency_key="k")).duplicate

    await sleep(0.35)
    later = await broker.publish("c", 1, idempotency_key="k")
    after = await broker.publish("c", 1, idempotency_key="k")

    assert time.monotonic() - started >= 0.3
    assert (1, 2) == (first.seq, later.seq)
    assert not later.duplicate
    assert (2, True) == (after.seq, after.duplicate)
