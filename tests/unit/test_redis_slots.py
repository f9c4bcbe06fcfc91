"""Redis Cluster routing (gateway.broker.slots) with plain values.  The same functions are
checked against a real cluster's CLUSTER KEYSLOT, CLUSTER SLOTS and MOVED/ASK replies in
tests/e2e/test_cluster_routing.py."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from gateway.broker.redis import RedisBroker
from gateway.broker.slots import (
    SLOTS,
    Redirect,
    SlotMap,
    crc16,
    group_by_owner,
    hash_tag,
    key_slot,
    parse_redirect,
    parse_slots,
)
from gateway.core.channels import is_valid_channel

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)


def test_crc16_is_xmodem():
    # The check value of CRC-16/XMODEM, and the Redis Cluster specification's example.
    assert 0x31C3 == crc16(b"123456789")
    assert 0 == crc16(b"")


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),  # empty first tag: the whole key
        (b"foo{{bar}}zap", b"{bar"),
        (b"foo{bar}{zap}", b"bar"),
        (b"no tag", b"no tag"),
        (b"open{only", b"open{only"),
        (b"}{x}", b"x"),
    ],
)
def test_hash_tags_follow_the_specification(key, tag):
    assert tag == hash_tag(key)


def test_key_slots():
    # Values from CLUSTER KEYSLOT on Redis 7.0.
    assert 12182 == key_slot("foo")
    assert 5061 == key_slot("bar")
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("é") == key_slot("é".encode())
    assert all(0 <= key_slot(f"k{i}") < SLOTS for i in range(1000))


def test_every_key_of_a_channel_shares_its_slot():
    """The broker's keys for one channel (meta, history, idempotency, presence) are in one
    slot, the slot of the channel's name; a revocation is keyed by identity."""
    broker = RedisBroker("redis://127.0.0.1:1/0?prefix=gw", reactor=Clock())
    for channel in ("room:1", "a.b-c_d@e/f=g+h", "x" * 200):
        keys = [broker.meta_key(channel), broker.history_key(channel), broker.idempotency_key(channel, "k1"), *broker.presence_keys(channel)]
        assert {key_slot(channel)} == {key_slot(k) for k in keys}, (channel, keys)
    assert key_slot(broker.revocation_key("alice")) == key_slot("rev:alice")


def test_channel_names_cannot_hold_braces():
    """A '{' or '}' in a name would move the hash tag ('P:{}{}:meta' hashes whole, each
    key to its own slot: CROSSSLOT in a cluster); channel names exclude both."""
    assert not is_valid_channel("}{") and not is_valid_channel("a{b}") and not is_valid_channel("a}")


@pytest.mark.parametrize(
    ("text", "current", "expected"),
    [
        ("MOVED 3999 127.0.0.1:6381", None, Redirect("MOVED", 3999, ("127.0.0.1", 6381))),
        (b"ASK 3999 127.0.0.1:6381", None, Redirect("ASK", 3999, ("127.0.0.1", 6381))),
        ("ERR MOVED 1 10.0.0.2:7001", None, Redirect("MOVED", 1, B)),
        ("MOVED 16383 :7001", A, Redirect("MOVED", 16383, ("10.0.0.1", 7001))),
        ("MOVED 16383 :7001", None, None),
        ("MOVED 16384 10.0.0.2:7001", None, None),
        ("MOVED 1 10.0.0.2:0", None, None),
        ("MOVED x 10.0.0.2:7001", None, None),
        ("CROSSSLOT Keys in request don't hash to the same slot", None, None),
        ("READONLY You can't write against a read only replica.", None, None),
        ("", None, None),
    ],
)
def test_redirects(text, current, expected):
    assert expected == parse_redirect(text, current)


def slots_reply():
    return [
        [10923, 16383, [b"10.0.0.3", 7002, b"id3"], [b"10.0.0.6", 7005, b"id6"]],
        [0, 5460, [b"10.0.0.1", 7000, b"id1"]],
        [5461, 10922, [b"10.0.0.2", 7001, b"id2", []]],
    ]


def test_parse_slots_sorts_ranges_and_takes_the_master():
    assert [(0, 5460, A), (5461, 10922, B), (10923, 16383, C)] == parse_slots(slots_reply())
    assert [(0, 1, ("10.9.9.9", 7000))] == parse_slots([[0, 1, [b"", 7000]]], current=("10.9.9.9", 1))


@pytest.mark.parametrize(
    "reply",
    [
        b"ERR",
        [[0, 5460]],
        [[0, 16384, [b"h", 1]]],
        [[5, 1, [b"h", 1]]],
        [[0, 10, [b"h", 1]], [10, 20, [b"i", 2]]],
        [[0, 10, [b"h", b"port"]]],
        [[0, 1, [b"", 7000]]],
    ],
)
def test_unreadable_slot_replies_are_errors(reply):
    with pytest.raises(ValueError, match="CLUSTER SLOTS"):
        parse_slots(reply)


def test_slot_map_replace_moved_and_ask():
    m = SlotMap()
    assert not m.covered() and m.owner(0) is None
    assert SLOTS == len(m.replace(parse_slots(slots_reply())))
    assert m.covered() and {A, B, C} == m.masters()
    assert A == m.owner_of("bar") and C == m.owner_of("foo")
    version = m.version
    # ASK leaves the map alone; MOVED moves one slot.
    assert not m.moved(Redirect("ASK", 5061, B))
    assert A == m.owner(5061) and version == m.version
    assert m.moved(Redirect("MOVED", 5061, B))
    assert B == m.owner(5061) and version + 1 == m.version
    assert not m.moved(Redirect("MOVED", 5061, B))
    assert [(0, 5060, A), (5061, 5061, B), (5062, 5460, A), (5461, 10922, B), (10923, 16383, C)] == m.ranges()
    assert 5460 == len(m.slots_of(A))
    # A full refresh reports exactly the slots that changed owner.
    assert {5061} == m.replace(parse_slots(slots_reply()))
    assert set() == m.replace(parse_slots(slots_reply()))


def test_channels_group_by_the_shard_serving_them():
    m = SlotMap()
    m.replace([(0, 5460, A), (10923, 16383, C)])
    # Slots: bar 5061, foo 12182, c 7365 (in no range), hello 866.
    assert {A: ["bar", "hello"], C: ["foo"], None: ["c"]} == group_by_owner(m, ["bar", "foo", "c", "hello"])
