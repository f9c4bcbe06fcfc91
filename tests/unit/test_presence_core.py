"""The sans-I/O presence state (gateway/core/presence.py) with plain values."""

from __future__ import annotations

import pytest

from gateway.core.commands import (
    CommandError,
    PresenceCommand,
    Subscribe,
    parse_command,
)
from gateway.core.presence import (
    MAX_LIMIT,
    NodePresence,
    PresenceChange,
    PresenceEvent,
    PresencePage,
    PresenceTable,
    parse_client_id,
    parse_member,
    parse_presence_query,
)
from gateway.errors import BadRequest


def change(channel="c", kind="s", id_="alice", owner="n1", count=1, ttl=15.0):
    return PresenceChange(channel, kind, id_, owner, count, ttl)


def test_member_names_round_trip_whatever_the_characters():
    """A member name encodes kind, owner and id so that any sub or node id comes back intact."""
    for owner, id_ in [("n1", "alice"), ("", "bob"), ("a:b|c", "x:1:y"), ("node", ""), ("", "ünï✓")]:
        m = change(owner=owner, id_=id_).member
        assert ("s", owner, id_) == parse_member(m)


def test_first_connection_joins_and_last_leaves_across_nodes():
    """An identity joins when its cluster-wide connections leave 0 and leaves when they return to 0."""
    t = PresenceTable()

    assert {"c": [PresenceEvent("join", "c", "alice")]} == t.update([change(owner="n1")], 0)
    assert {} == t.update([change(owner="n2", count=2)], 0)
    assert {} == t.update([change(owner="n1", count=0)], 0)
    page, _ = t.query("c", 10, None, 0)
    assert (("alice", 2),) == page.members
    assert {"c": [PresenceEvent("leave", "c", "alice")]} == t.update([change(owner="n2", count=0)], 0)
    assert PresencePage("c", (), 0, 0) == t.query("c", 10, None, 0)[0]
    assert [] == t.channels


def test_anonymous_are_counted_not_listed_and_cause_no_events():
    t = PresenceTable()

    events = t.update([change(kind="a", id_="", owner="n1", count=3), change(kind="a", id_="cli-1", owner="")], 0)
    page, _ = t.query("c", 10, None, 0)

    assert {} == events
    assert PresencePage("c", (), 0, 4) == page
    t.update([change(kind="a", id_="", owner="n1", count=1)], 0)
    assert 2 == t.query("c", 10, None, 0)[0].anonymous


def test_expired_entries_are_swept_with_their_leaves():
    """A node that stops refreshing loses its entries at their expiry: the next update or query sweeps them."""
    t = PresenceTable()
    t.update([change(owner="n1", ttl=10), change(id_="bob", owner="n2", ttl=30)], 100)

    assert [] == t.sweep("c", 109.9)
    page, events = t.query("c", 10, None, 110)

    assert [PresenceEvent("leave", "c", "alice")] == events
    assert (("bob", 1),) == page.members


def test_expiry_only_moves_later():
    """A lease refreshed with a shorter ttl keeps its later expiry (the last poll's end wins)."""
    t = PresenceTable()
    t.update([change(owner="", ttl=30)], 0)
    t.update([change(owner="", ttl=5)], 1)

    assert [] == t.sweep("c", 29)
    assert [PresenceEvent("leave", "c", "alice")] == t.sweep("c", 30)


def test_query_pages_members_sorted_by_sub():
    t = PresenceTable()
    subs = [f"u{i:03d}" for i in range(25)]
    t.update([change(id_=s) for s in reversed(subs)], 0)

    first, _ = t.query("c", 10, None, 0)
    second, _ = t.query("c", 10, first.members[-1][0], 0)
    last, _ = t.query("c", 10, second.members[-1][0], 0)

    assert subs == [m for p in (first, second, last) for m, _ in p.members]
    assert (25, True, True, False) == (first.count, first.more, second.more, last.more)
    assert first.to_json()["next"] == "u009"
    assert "next" not in last.to_json()


def test_page_json_shape():
    page = PresencePage("c", (("alice", 2),), 1, 3)
    assert {"channel": "c", "members": [{"sub": "alice", "connections": 2}], "anonymous": 3, "count": 1} == page.to_json()


# -- NodePresence ---------------------------------------------------------------


def test_node_batches_changes_to_the_latest_count():
    """Any number of connects and disconnects between two flushes are one change per entry."""
    n = NodePresence("n1", ttl=30)
    for _ in range(1000):
        n.connection_added("c", "alice")
    for _ in range(999):
        n.connection_removed("c", "alice")
    for _ in range(5):
        n.connection_added("c", None)

    changes = n.take_changes()

    assert sorted([("a", "", 5), ("s", "alice", 1)]) == sorted((c.kind, c.id, c.count) for c in changes)
    assert all(c.owner == "n1" and c.ttl == 15 for c in changes)
    assert [] == n.take_changes()
    assert not n.pending


def test_node_removal_is_a_zero_count():
    n = NodePresence("n1", ttl=30)
    n.connection_added("c", "alice")
    n.take_changes()
    n.connection_removed("c", "alice")

    assert [change(owner="n1", count=0, ttl=15)] == n.take_changes()
    assert {} == n.held()


def test_refresh_sends_everything_held_and_pending_removals():
    n = NodePresence("n1", ttl=8)
    n.connection_added("c", "alice")
    n.connection_added("d", "bob")
    n.poll_started("e", None, "cli")
    n.take_changes()
    n.connection_removed("d", "bob")

    changes = n.refresh_changes()

    assert sorted(changes, key=lambda c: c.channel) == [
        change("c", "s", "alice", "n1", 1, 4),
        change("d", "s", "bob", "n1", 0, 4),
        change("e", "a", "cli", "", 1, 4),
    ]
    assert (2.0, 4.0) == (n.refresh_interval, n.entry_ttl)


def test_poll_lease_lives_the_full_ttl_after_the_poll_ends():
    n = NodePresence("n1", ttl=30)

    assert n.poll_started("c", "alice", None)
    held = n.take_changes()
    n.poll_ended("c", "alice", None)
    ended = n.take_changes()

    assert [change(owner="", ttl=15)] == held
    assert [change(owner="", ttl=30)] == ended
    # Once handed over, the lease is the store's: not refreshed by this node.
    assert [] == n.refresh_changes()


def test_anonymous_poll_without_client_is_not_counted():
    n = NodePresence("n1", ttl=30)

    assert not n.poll_started("c", None, None)
    n.poll_ended("c", None, None)
    assert [] == n.take_changes()


def test_overlapping_polls_of_one_client_are_one_lease():
    n = NodePresence("n1", ttl=30)
    n.poll_started("c", "alice", None)
    n.poll_started("c", "alice", None)
    n.take_changes()
    n.poll_ended("c", "alice", None)

    assert [change(owner="", ttl=15)] == n.take_changes()
    n.poll_ended("c", "alice", None)
    assert [change(owner="", ttl=30)] == n.take_changes()


def test_changes_put_back_go_with_the_next_flush():
    """An update the store did not take is sent again, removals and ended leases included."""
    n = NodePresence("n1", ttl=30)
    n.connection_added("c", "alice")
    n.poll_started("d", "bob", None)
    n.poll_ended("d", "bob", None)
    lost = n.take_changes()

    n.put_back(lost)

    assert sorted(lost, key=lambda c: c.channel) == sorted(n.take_changes(), key=lambda c: c.channel)


def test_node_and_table_together_two_nodes():
    """Two nodes' batches through one table: join once, leave once, counts per sub summed."""
    t = PresenceTable()
    a, b = NodePresence("A", 30), NodePresence("B", 30)
    a.connection_added("room", "alice")
    b.connection_added("room", "alice")
    b.connection_added("room", "bob")

    ev1 = t.update(a.take_changes(), 0)
    ev2 = t.update(b.take_changes(), 0)
    page, _ = t.query("room", 100, None, 0)

    assert [PresenceEvent("join", "room", "alice")] == ev1["room"]
    assert [PresenceEvent("join", "room", "bob")] == ev2["room"]
    assert (("alice", 2), ("bob", 1)) == page.members
    # Node B dies: its entries expire (entry ttl 15) and A's refresh sweeps them.
    assert {} == t.update(a.refresh_changes(), 10)
    events = t.update(a.refresh_changes(), 16)
    assert [PresenceEvent("leave", "room", "bob")] == events["room"]
    assert (("alice", 1),) == t.query("room", 100, None, 16)[0].members


# -- parsing ------------------------------------------------------------------------


def test_presence_command_parses_with_paging():
    cmd = parse_command(b'{"type":"presence","id":7,"channel":"room:1","limit":5,"after":"bob"}')
    assert PresenceCommand(7, "room:1", 5, "bob") == cmd
    assert PresenceCommand(None, "c", 1000, None) == parse_command(b'{"type":"presence","channel":"c"}')


@pytest.mark.parametrize(
    "text",
    [
        b'{"type":"presence","id":1}',
        b'{"type":"presence","id":1,"channel":"bad channel"}',
        b'{"type":"presence","id":1,"channel":"c","limit":0}',
        b'{"type":"presence","id":1,"channel":"c","limit":1001}',
        b'{"type":"presence","id":1,"channel":"c","limit":true}',
        b'{"type":"presence","id":1,"channel":"c","limit":2.5}',
        b'{"type":"presence","id":1,"channel":"c","after":""}',
        b'{"type":"presence","id":1,"channel":"c","after":5}',
        b'{"type":"subscribe","id":1,"channel":"c","join_leave":1}',
    ],
)
def test_bad_presence_commands_are_bad_requests(text):
    with pytest.raises(CommandError) as e:
        parse_command(text)
    assert "bad_request" == e.value.error.code
    assert 1 == e.value.request_id


def test_subscribe_join_leave_flag():
    assert parse_command(b'{"type":"subscribe","channel":"c","join_leave":true}') == Subscribe(None, "c", None, True)
    assert parse_command(b'{"type":"subscribe","channel":"c"}') == Subscribe(None, "c", None, False)


def test_query_parameters_from_http():
    assert MAX_LIMIT == parse_presence_query("c", str(MAX_LIMIT)).limit
    for bad in ["-1", "abc", "1e3", "", "99999999999"]:
        with pytest.raises(BadRequest):
            parse_presence_query("c", bad)


def test_client_ids():
    assert "tab-1.x:y_z" == parse_client_id("tab-1.x:y_z")
    assert parse_client_id(None) is None
    for bad in ["", "a b", "x" * 65, "é"]:
        with pytest.raises(BadRequest):
            parse_client_id(bad)
