"""The presence part of the IBroker contract (``presence_update``, ``presence_query``,
``presence_received``), checked against the in-memory broker and the Redis broker."""

from __future__ import annotations

from twisted.internet import defer

from gateway.core.presence import PresenceChange, PresenceEvent, PresencePage
from gateway.testing import sleep
from tests.e2e.support import wait_for


def ch(channel="room", kind="s", id_="alice", owner="n1", count=1, ttl=30.0):
    return PresenceChange(channel, kind, id_, owner, count, ttl)


async def test_members_sorted_with_connections_and_anonymous(make_broker):
    """Members are subs sorted, with their connections summed over nodes and leases; anonymous are counted."""
    broker, _ = await make_broker()

    await broker.presence_update([
        ch(id_="carol", owner="n1", count=2),
        ch(id_="alice", owner="n2"),
        ch(id_="alice", owner="n1", count=2),
        ch(id_="bob", owner=""),
        ch(kind="a", id_="", owner="n1", count=3),
        ch(kind="a", id_="tab-7", owner=""),
        ch(channel="other", id_="zed"),
    ])
    page = await broker.presence_query("room", 100, None)

    assert PresencePage("room", (("alice", 3), ("bob", 1), ("carol", 2)), 3, 4, False) == page
    assert PresencePage("nobody", (), 0, 0, False) == await broker.presence_query("nobody", 100, None)


async def test_join_and_leave_go_to_subscribed_nodes_once(make_broker):
    """The first connection of a sub anywhere is one join, the last one gone one leave; the
    events reach the listener of a node subscribed to the channel, not of others."""
    broker, listener = await make_broker()
    await broker.subscribe("room")

    await broker.presence_update([ch(owner="n1")])
    await broker.presence_update([ch(owner="n2", count=3)])
    await broker.presence_update([ch(owner="n1", count=0), ch(channel="elsewhere", id_="x")])
    await broker.presence_update([ch(owner="n2", count=0)])

    expected = [PresenceEvent("join", "room", "alice"), PresenceEvent("leave", "room", "alice")]
    await wait_for(lambda: len(listener.presence) >= 2, what="join and leave")
    await sleep(0.1)
    assert expected == listener.presence


async def test_expired_entries_leave_on_the_next_query(make_broker):
    """An entry not refreshed within its ttl is gone at the next query of its channel, with its leave."""
    broker, listener = await make_broker()
    await broker.subscribe("room")
    await broker.presence_update([ch(id_="alice", ttl=0.2), ch(id_="bob", ttl=30)])
    await wait_for(lambda: len(listener.presence) == 2, what="joins")

    await sleep(0.4)
    page = await broker.presence_query("room", 10, None)

    assert (("bob", 1),) == page.members
    await wait_for(lambda: len(listener.presence) == 3, what="leave")
    assert PresenceEvent("leave", "room", "alice") == listener.presence[-1]


async def test_refresh_keeps_entries_and_expiry_only_moves_later(make_broker):
    """A shorter ttl does not shorten an entry's life; a refresh extends it past its first
    expiry.  (Margins of 0.7 s and more: the exact rule has plain-value tests.)"""
    broker, _ = await make_broker()
    await broker.presence_update([ch(owner="", ttl=1.0)])
    await broker.presence_update([ch(owner="", ttl=0.05)])

    await sleep(0.3)
    assert (("alice", 1),) == (await broker.presence_query("room", 10, None)).members
    await broker.presence_update([ch(owner="", ttl=10.0)])
    await sleep(1.0)
    assert (("alice", 1),) == (await broker.presence_query("room", 10, None)).members


async def test_pages_of_a_large_channel(make_broker):
    """10,000 members: a page of at most ``limit`` after ``after``, with the total count."""
    broker, _ = await make_broker()
    subs = [f"user{i:05d}" for i in range(10000)]
    await broker.presence_update([ch(id_=s, owner="n1") for s in subs])

    first = await broker.presence_query("room", 1000, None)
    middle = await broker.presence_query("room", 3, "user04999")
    last = await broker.presence_query("room", 1000, "user09500")

    assert (10000, 1000, True) == (first.count, len(first.members), first.more)
    assert subs[:1000] == [m for m, _ in first.members]
    assert (("user05000", 1), ("user05001", 1), ("user05002", 1)) == middle.members
    assert (subs[9501:], False) == ([m for m, _ in last.members], last.more)


async def test_unicode_and_odd_subs_round_trip(make_broker):
    broker, listener = await make_broker()
    await broker.subscribe("room")
    odd = ["ünï✓", "a:b", "s1:x", 'q"uote', "sl/ash"]
    await broker.presence_update([ch(id_=s, owner="node:1") for s in odd])

    page = await broker.presence_query("room", 10, None)

    assert sorted(odd) == [m for m, _ in page.members]
    await wait_for(lambda: len(listener.presence) == len(odd), what="joins")
    assert sorted(odd) == sorted(e.sub for e in listener.presence)


async def test_two_nodes_racing_decide_one_join_and_one_leave(make_broker, kind):
    """Two nodes (two brokers on one store) register alice at the same moment, many times
    over: the store decides atomically, so every listener sees exactly one join per
    round and one leave when both are gone."""
    if kind == "memory":
        # One process, one store: the race needs two brokers sharing Redis.
        broker_a, listener_a = await make_broker()
        brokers = [(broker_a, listener_a)]
    else:
        brokers = [await make_broker(), await make_broker()]
    for broker, _ in brokers:
        await broker.subscribe("room")
    owners = ["A", "B"]
    rounds = 20
    for _ in range(rounds):
        await defer.gatherResults([brokers[i % len(brokers)][0].presence_update([ch(owner=o)]) for i, o in enumerate(owners)])
        await defer.gatherResults([brokers[i % len(brokers)][0].presence_update([ch(owner=o, count=0)]) for i, o in enumerate(owners)])
    for _, listener in brokers:
        await wait_for(lambda listener=listener: len(listener.presence) >= 2 * rounds, what="events")
        await sleep(0.1)
        assert [PresenceEvent("join", "room", "alice"), PresenceEvent("leave", "room", "alice")] * rounds == listener.presence
