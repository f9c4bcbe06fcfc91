"""The cluster routing decisions (gateway.broker.slots) against a real 3-master Redis Cluster
started by the test: slots agree with CLUSTER KEYSLOT, the slot map read from CLUSTER SLOTS
sends every script to a node that runs it (every key of a channel in one slot, no
CROSSSLOT), other nodes answer MOVED to that owner, and a slot migration answers ASK
during and MOVED after, as the parser and the map expect.  Commands go through txredisapi,
so the error texts are the ones the broker would see."""

from __future__ import annotations

import json
import time

import pytest
import txredisapi

from gateway.auth.revocation import _REVOKE_SCRIPT
from gateway.broker.redis import RedisBroker, load_script
from gateway.broker.slots import SlotMap, key_slot, parse_redirect, parse_slots
from tests.e2e.support import RedisCluster

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = RedisCluster(str(tmp_path_factory.mktemp("cluster")), masters=3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Conns:
    """One txredisapi connection per cluster node (bytes in, bytes out)."""

    def __init__(self):
        self.by_port: dict[int, object] = {}

    async def open(self, ports):
        for port in ports:
            self.by_port[port] = await txredisapi.Connection(
                "127.0.0.1", port, reconnect=False, charset=None, convertNumbers=False
            )
        return self

    async def close(self):
        for conn in self.by_port.values():
            await conn.disconnect()


async def error_of(d):
    try:
        await d
    except txredisapi.ResponseError as e:
        return str(e)
    raise AssertionError("expected an error reply")


def broker():
    from twisted.internet import reactor

    return RedisBroker("redis://127.0.0.1:1/0?prefix=gw", reactor=reactor)


def publish_call(b, channel, data, idem=None):
    keys = [b.meta_key(channel), b.history_key(channel)] + ([b.idempotency_key(channel, idem)] if idem else [])
    args = [b.pubsub_channel(channel), json.dumps({"c": channel, "d": data, "f": None}), f"E{time.monotonic_ns()}",
            "100", "300000", "310", "86400", "300000", ""]
    return keys, args


async def test_slots_agree_with_cluster_keyslot(cluster):
    conns = await Conns().open(cluster.ports[:1])
    conn = conns.by_port[cluster.ports[0]]
    b = broker()
    try:
        keys = [f"k{i}" for i in range(100)] + ["foo", "bar", "{user1000}.following", "a{}b", "é"]
        for channel in ("room:1", "news", "x" * 200):
            keys += [b.meta_key(channel), b.history_key(channel), b.idempotency_key(channel, "k"), *b.presence_keys(channel)]
        keys.append(b.revocation_key("alice"))
        for key in keys:
            assert int(await conn.execute_command("CLUSTER", "KEYSLOT", key)) == key_slot(key), key
    finally:
        await conns.close()


async def test_scripts_run_on_the_owner_and_others_redirect_there(cluster):
    conns = await Conns().open(cluster.ports)
    b = broker()
    try:
        slot_map = SlotMap()
        slot_map.replace(parse_slots(await conns.by_port[cluster.ports[0]].execute_command("CLUSTER", "SLOTS")))
        assert slot_map.covered() and {("127.0.0.1", p) for p in cluster.ports} == slot_map.masters()
        channels = [f"room:{i}" for i in range(12)]
        assert 3 == len({slot_map.owner_of(c) for c in channels}), "channels spread over every master"
        for channel in channels:
            owner = slot_map.owner_of(b.meta_key(channel))
            other = next(p for p in cluster.ports if p != owner[1])
            keys, args = publish_call(b, channel, "hello", idem="key-1")
            # The owner runs every script of the channel (one slot: no CROSSSLOT).
            seq, epoch, _ts = (await conns.by_port[owner[1]].eval(load_script("publish.lua"), keys, args))[:3]
            assert 1 == int(seq)
            replay = await conns.by_port[owner[1]].eval(load_script("publish.lua"), keys, args)
            assert (1, 4) == (int(replay[0]), len(replay)), "the idempotency key lives in the same slot"
            hist = await conns.by_port[owner[1]].eval(
                load_script("history.lua"), keys[:2], ["Enew", epoch.decode(), "0", "86400", ""]
            )
            assert 4 == len(hist) and int(hist[1]) == 1
            presence = await conns.by_port[owner[1]].eval(
                load_script("presence.lua"), b.presence_keys(channel), ["u", b.pubsub_channel(channel), "s5:node1alice", "1", "30000"]
            )
            assert 1 == int(presence), "one join"
            # Another node answers MOVED to the owner, which the parser reads.
            error = await error_of(conns.by_port[other].eval(load_script("publish.lua"), keys, args))
            redirect = parse_redirect(error)
            assert redirect is not None and ("MOVED", key_slot(channel), owner) == (redirect.kind, redirect.slot, redirect.address)
        # A revocation is one key of its own slot.
        rev = b.revocation_key("alice")
        rev_owner = slot_map.owner_of(rev)
        await conns.by_port[rev_owner[1]].eval(_REVOKE_SCRIPT, [rev], ["1700000000", "60000"])
    finally:
        await conns.close()


async def test_a_migrating_slot_answers_ask_then_moved(cluster):
    conns = await Conns().open(cluster.ports)
    b = broker()
    try:
        slot_map = SlotMap()
        slot_map.replace(parse_slots(await conns.by_port[cluster.ports[0]].execute_command("CLUSTER", "SLOTS")))
        channel = "migrating"
        slot = key_slot(b.meta_key(channel))
        source = slot_map.owner(slot)
        target = next(("127.0.0.1", p) for p in cluster.ports if p != source[1])
        src, dst = conns.by_port[source[1]], conns.by_port[target[1]]
        keys, args = publish_call(b, channel, "before")
        await src.eval(load_script("publish.lua"), keys, args)

        await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source[1]))
        await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target[1]))
        await src.execute_command("MIGRATE", "127.0.0.1", target[1], "", 0, 5000, "KEYS", *keys)
        # Mid-migration: the keys are gone from the source, which sends this command to the target.
        error = await error_of(src.eval(load_script("publish.lua"), keys, args))
        redirect = parse_redirect(error)
        assert redirect is not None and ("ASK", slot, target) == (redirect.kind, redirect.slot, redirect.address)
        assert not slot_map.moved(redirect) and source == slot_map.owner(slot)
        # ASKING then the command, on the target: it continues the channel's stream.
        await dst.execute_command("ASKING")
        assert 2 == int((await dst.eval(load_script("publish.lua"), keys, args))[0])

        for conn in conns.by_port.values():
            await conn.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target[1]))
        error = await error_of(src.eval(load_script("publish.lua"), keys, args))
        redirect = parse_redirect(error)
        assert redirect is not None and ("MOVED", slot, target) == (redirect.kind, redirect.slot, redirect.address)
        assert slot_map.moved(redirect) and target == slot_map.owner(slot)
        assert 3 == int((await dst.eval(load_script("publish.lua"), keys, args))[0])
        # A full refresh agrees with the map the MOVED left.
        fresh = SlotMap()
        fresh.replace(parse_slots(await dst.execute_command("CLUSTER", "SLOTS")))
        assert fresh.ranges() == slot_map.ranges()
    finally:
        await conns.close()
