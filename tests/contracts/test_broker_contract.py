"""The IBroker contract (gateway/interfaces.py), checked against every broker.

Each test runs twice: on :class:`~gateway.broker.memory.InMemoryBroker` and on
:class:`~gateway.broker.redis.RedisBroker` with a real redis-server.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from zope.interface.verify import verifyObject

from gateway.core.model import Position
from gateway.interfaces import IBroker
from gateway.testing import sleep
from tests.e2e.support import wait_for


async def test_provides_ibroker(make_broker):
    """The broker provides IBroker and reports itself ready once started."""
    broker, _ = await make_broker()

    assert verifyObject(IBroker, broker)
    assert broker.is_ready() is True


async def test_seqs_start_at_one_and_increase_by_one(make_broker):
    """Publications on a channel get seqs 1, 2, 3 in one epoch; other channels count on their own."""
    broker, _ = await make_broker()

    pubs = [await broker.publish("c", i) for i in range(3)]
    other = await broker.publish("d", "x")

    assert [1, 2, 3] == [p.seq for p in pubs]
    assert len({p.epoch for p in pubs}) == 1
    assert 1 == other.seq


async def test_publication_fields_round_trip(make_broker):
    """Data of every JSON shape, the sender and the timestamp come back unchanged through delivery and history."""
    broker, listener = await make_broker()
    await broker.subscribe("c")
    values = [{"a": [1, 2.5, None, True]}, "007", 7, None, "ünïcødé ✓", ["x", {"y": {}}], ""]
    before = int(time.time() * 1000)

    published = [await broker.publish("c", v, "alice" if i % 2 else None) for i, v in enumerate(values)]
    await wait_for(lambda: len(listener.publications) == len(values), what="deliveries")
    history = await broker.history("c", Position(published[0].epoch, 0))

    after = int(time.time() * 1000)
    assert values == [p.data for p in published]
    assert published == listener.publications
    assert tuple(published) == history.publications
    assert [None, "alice"] * 3 + [None] == [p.sender for p in published]
    assert all(before - 1000 <= p.ts <= after + 1000 for p in published)
    assert [p.ts for p in published] == sorted(p.ts for p in published)


async def test_concurrent_publishes_get_unique_gapless_seqs(make_broker):
    """Many publishes in flight at once get seqs 1..N, each exactly once."""
    broker, _ = await make_broker()

    pubs = await defer.gatherResults([broker.publish("c", i) for i in range(200)])

    assert list(range(1, 201)) == sorted(p.seq for p in pubs)


async def test_history_of_a_new_channel_fixes_its_epoch(make_broker):
    """history() of a channel never published on answers seq 0, and the first publication keeps that epoch."""
    broker, _ = await make_broker()

    empty = await broker.history("fresh", None)
    pub = await broker.publish("fresh", "first")

    assert 0 == empty.top.seq
    assert () == empty.publications
    assert empty.top.epoch == pub.epoch
    assert 1 == pub.seq


async def test_history_after_a_position(make_broker):
    """history(since) returns exactly the publications after since, in order, with the top."""
    broker, _ = await make_broker()
    pubs = [await broker.publish("c", i) for i in range(5)]
    epoch = pubs[0].epoch

    result = await broker.history("c", Position(epoch, 2))
    at_top = await broker.history("c", Position(epoch, 5))
    from_start = await broker.history("c", Position(epoch, 0))
    now = await broker.history("c", None)

    assert Position(epoch, 5) == result.top
    assert [3, 4, 5] == [p.seq for p in result.publications]
    assert [2, 3, 4] == [p.data for p in result.publications]
    assert () == at_top.publications
    assert [1, 2, 3, 4, 5] == [p.seq for p in from_start.publications]
    assert (Position(epoch, 5), ()) == (now.top, now.publications)


async def test_history_cannot_continue_another_epoch_or_a_future_seq(make_broker):
    """A position in another epoch, ahead of the top or negative gets publications=None."""
    broker, _ = await make_broker()
    pub = await broker.publish("c", "x")

    other_epoch = await broker.history("c", Position("not-" + pub.epoch, 0))
    ahead = await broker.history("c", Position(pub.epoch, 2))
    negative = await broker.history("c", Position(pub.epoch, -1))

    assert other_epoch.publications is None
    assert ahead.publications is None
    assert negative.publications is None
    assert Position(pub.epoch, 1) == other_epoch.top


async def test_history_is_bounded_by_count(make_broker):
    """Only the newest history_size publications are kept; a position older than that cannot continue."""
    broker, _ = await make_broker(history_size=3)
    pubs = [await broker.publish("c", i) for i in range(6)]
    epoch = pubs[0].epoch

    too_old = await broker.history("c", Position(epoch, 2))
    oldest_kept = await broker.history("c", Position(epoch, 3))

    assert too_old.publications is None
    assert [4, 5, 6] == [p.seq for p in oldest_kept.publications]


async def test_history_is_bounded_by_age(make_broker):
    """Publications older than history_ttl are gone from history; the seq goes on."""
    broker, _ = await make_broker(history_ttl=0.3)
    first = await broker.publish("c", "old")
    await sleep(0.45)
    second = await broker.publish("c", "new")

    from_start = await broker.history("c", Position(first.epoch, 0))
    from_first = await broker.history("c", Position(first.epoch, 1))

    assert 2 == second.seq
    assert from_start.publications is None
    assert [2] == [p.seq for p in from_first.publications]


async def test_delivery_only_while_subscribed(make_broker):
    """publication_received gets each publication of a subscribed channel once, in order, and nothing else."""
    broker, listener = await make_broker()
    await broker.publish("c", "before")
    await broker.subscribe("c")

    during = [await broker.publish("c", i) for i in range(3)]
    await broker.publish("other", "not subscribed")
    await wait_for(lambda: len(listener.publications) >= 3, what="deliveries")
    await broker.unsubscribe("c")
    await broker.publish("c", "after")
    # A marker on a subscribed channel: once it arrives, anything sent before it has too.
    await broker.subscribe("marker")
    await broker.publish("marker", "m")
    await wait_for(lambda: len(listener.publications) >= 4, what="marker")

    assert during + ["marker"] == listener.publications[:3] + [listener.publications[3].channel]
    assert 4 == len(listener.publications)


async def test_data_that_cannot_be_encoded_is_refused_before_taking_a_seq(make_broker):
    """A lone surrogate (valid JSON text, not encodable as UTF-8), NaN or a non-JSON object is
    a BadRequest: it takes no seq, is not stored or delivered, and the channel stays usable
    (the next publication is seq 1, history from 0 answers at once)."""
    from gateway.errors import BadRequest

    broker, listener = await make_broker()
    await broker.subscribe("c")

    for bad in ["\ud800", {"k": ["ok", "x\udfff"]}, {"\ud83d": 1}, float("nan"), {1, 2}]:
        try:
            await broker.publish("c", bad)
        except BadRequest:
            pass
        else:
            raise AssertionError(f"{bad!r} was accepted")
    good = await broker.publish("c", "\U0001f600 fine")
    await wait_for(lambda: len(listener.publications) == 1, what="the good publication")
    history = await broker.history("c", Position(good.epoch, 0))

    assert 1 == good.seq
    assert [good] == listener.publications
    assert (good,) == history.publications
