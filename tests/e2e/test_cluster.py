"""Redis Cluster: gateway nodes on ``redis+cluster://`` against a real cluster of three
masters, each with a replica, started by the test.

Checked: channels in every shard published and subscribed from two nodes (WebSocket and
HTTP), idempotency keys, presence and revocations routed to their slot's master; a master
killed (its replica promoted) and a slot resharded while publications flow: every acked
publication reaches every subscriber once, in order, or a ``reset`` announces it is gone.
Figures are printed (``-s``) for the closing notes.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from gateway.broker.slots import key_slot
from gateway.config import Config
from gateway.testing import aio, start_gateway
from tests.e2e.support import TIMEOUT_FACTOR, Subscriber, running_cluster, until
from tests.e2e.test_sentinel import check_stream

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, replicas=1)


def cluster_url(cluster) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports[:2])


def channels_on_every_shard(broker, count_per_shard=2):
    out: dict = {}
    i = 0
    while len(out) < 3 or any(len(v) < count_per_shard for v in out.values()):
        name = f"room:{i}"
        out.setdefault(broker.slot_map.owner(key_slot(name)), [])
        if len(out[broker.slot_map.owner(key_slot(name))]) < count_per_shard:
            out[broker.slot_map.owner(key_slot(name))].append(name)
        i += 1
    return [c for cs in out.values() for c in cs]


class Publisher:
    """Publishes to ``channels`` round-robin over HTTP until stopped; records outcomes."""

    def __init__(self, base: str, channels: list[str], tag: str) -> None:
        self.base, self.channels, self.tag = base, channels, tag
        self.outcomes: list[tuple] = []  # (channel, data, "ok"|"unavailable", epoch, seq)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10 * TIMEOUT_FACTOR) as client:
            k = 0
            while not self.stop.is_set():
                channel = self.channels[k % len(self.channels)]
                data = f"{self.tag}{k}"
                r = await client.post(self.base + "/publish", json={"channel": channel, "data": data})
                if r.status_code == 200:
                    self.outcomes.append((channel, data, "ok", r.json()["epoch"], r.json()["seq"]))
                else:
                    assert 503 == r.status_code, r.text
                    assert "unavailable" == r.json()["error"]["code"]
                    self.outcomes.append((channel, data, "unavailable", None, None))
                k += 1
                await asyncio.sleep(0.002)

    def acked(self, channel: str | None = None) -> list[tuple]:
        return [o for o in self.outcomes if o[2] == "ok" and (channel is None or o[0] == channel)]


async def test_channels_on_every_shard_from_two_nodes(cluster):
    a = start_gateway(Config(node_id="a", redis=cluster_url(cluster), drain_timeout=2.0))
    b = start_gateway(Config(node_id="b", redis=cluster_url(cluster), drain_timeout=2.0))

    async def scenario():
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=20, what="nodes ready")
        channels = channels_on_every_shard(a.bus.broker)
        subs = [Subscriber(n.ws_url, c) for n in (a, b) for c in channels]
        for s in subs:
            await s.start()
        per = 10
        async with httpx.AsyncClient(timeout=10) as client, websockets.connect(b.ws_url) as ws:
            for k in range(per):
                for c in channels:
                    r = await client.post(a.base + "/publish", json={"channel": c, "data": f"h{k}"})
                    assert 200 == r.status_code, r.text
                    await ws.send(json.dumps({"type": "publish", "channel": c, "data": f"w{k}", "id": f"{c}/{k}"}))
                    assert "ack" == json.loads(await ws.recv())["type"]
            # Idempotency keys live in the channel's slot too.
            first = await client.post(a.base + "/publish", json={"channel": channels[0], "data": "once", "idempotency_key": "k1"})
            again = await client.post(b.base + "/publish", json={"channel": channels[0], "data": "once", "idempotency_key": "k1"})
            # Presence (batched every 50 ms) of the two anonymous subscribers, one per node.
            presence = None
            deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
            while time.monotonic() < deadline:
                presence = await client.get(b.base + "/presence", params={"channel": channels[-1]})
                if presence.status_code == 200 and presence.json()["anonymous"] == 2:
                    break
                await asyncio.sleep(0.05)
            metrics = (await client.get(a.base + "/metrics")).text
        await until(lambda: all(len(s.messages) == 2 * per + (s.channel == channels[0]) for s in subs), what="deliveries")
        for s in subs:
            await s.close()
        owners = {a.bus.broker.slot_map.owner(key_slot(c)) for c in channels}
        assert 3 == len(owners), "the channels span every master"
        return channels, subs, first, again, presence, metrics

    try:
        channels, subs, first, again, presence, metrics = await aio(scenario())
        masters = a.bus.broker.slot_map.masters()
    finally:
        await a.stop()
        await b.stop()
    assert 3 == len(masters)
    for s in subs:
        expected = 2 * 10 + (1 if s.channel == channels[0] else 0)
        assert list(range(1, expected + 1)) == [m["seq"] for m in s.check_order()]
    assert (first.json()["seq"], first.json()["epoch"]) == (again.json()["seq"], again.json()["epoch"])  # published once
    assert 200 == presence.status_code and 2 == presence.json()["anonymous"]
    for host, port in masters:
        assert f'gateway_redis_shard_up{{shard="{host}:{port}"}} 1.0' in metrics


async def test_master_killed_replica_promoted_without_silent_loss(cluster):
    a = start_gateway(Config(node_id="a", redis=cluster_url(cluster), drain_timeout=2.0))
    b = start_gateway(Config(node_id="b", redis=cluster_url(cluster), drain_timeout=2.0))

    async def scenario():
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=20, what="nodes ready")
        channels = channels_on_every_shard(a.bus.broker, 1)
        subs = [Subscriber(n.ws_url, c) for n in (a, b) for c in channels]
        for s in subs:
            await s.start()
        pub = Publisher(a.base, channels, "p")
        task = asyncio.ensure_future(pub.run())
        await until(lambda: len(pub.acked()) >= 60, timeout=20, what="acks before the kill")
        victim_channel = channels[0]
        victim = a.bus.broker.slot_map.owner(key_slot(victim_channel))
        node = next(n for n in cluster.nodes if n.port == victim[1])
        killed = time.monotonic()
        node.kill()
        await until(lambda: not a.bus.is_ready(), timeout=10, what="node a unready")
        async with httpx.AsyncClient(timeout=5) as client:
            down = await client.get(a.base + "/readyz")
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=30, what="ready on the promoted replica")
        window = time.monotonic() - killed
        after = len(pub.acked(victim_channel))
        await until(lambda: len(pub.acked(victim_channel)) >= after + 20, timeout=20, what="acks on the promoted replica")
        pub.stop.set()
        await task
        last = {c: pub.acked(c)[-1] for c in channels}
        await until(
            lambda: all(s.messages and s.messages[-1]["data"] == last[s.channel][1] for s in subs), timeout=15, what="last delivered"
        )
        for s in subs:
            await s.close()
        return subs, pub, window, down, victim, victim_channel

    try:
        subs, pub, window, down, victim, victim_channel = await aio(scenario())
    finally:
        await a.stop()
        await b.stop()
    # The other masters serve their channels meanwhile: degraded, not out of the load balancer.
    assert (200, "degraded") == (down.status_code, down.json()["status"])
    assert [f"{victim[0]}:{victim[1]}"] == down.json()["shards_down"]
    refused = [o for o in pub.outcomes if o[2] == "unavailable"]
    assert all(o[0] == victim_channel for o in refused), "a publish on a healthy master's channel was refused"
    figures = []
    for s in subs:
        acked = {(o[3], o[4]): o[1] for o in pub.acked(s.channel)}
        figures.append(check_stream(s, acked))
        # The killed shard's channel starts a new epoch on the promoted replica; the
        # other shards' channels go on untouched.
        assert (1 if s.channel == victim_channel else 0) == figures[-1]["resets"], (s.channel, figures[-1])
    refused = sum(o[2] == "unavailable" for o in pub.outcomes)
    print(f"\ncluster master kill: node a unavailable for the shard {window * 1000:.0f} ms; {len(pub.acked())} acked, {refused} refused; {figures}")


async def test_slot_resharded_while_publishing(cluster):
    a = start_gateway(Config(node_id="a", redis=cluster_url(cluster), drain_timeout=2.0))
    b = start_gateway(Config(node_id="b", redis=cluster_url(cluster), drain_timeout=2.0))

    async def scenario():
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=20, what="nodes ready")
        channel = "moving"
        slot = key_slot(channel)
        broker = a.bus.broker
        source = broker.slot_map.owner(slot)
        target = next(m for m in sorted(broker.slot_map.masters()) if m != source)
        subs = [Subscriber(n.ws_url, channel) for n in (a, b)]
        for s in subs:
            await s.start()
        pub = Publisher(a.base, [channel], "p")
        pub_b = Publisher(b.base, [channel], "q")
        tasks = [asyncio.ensure_future(pub.run()), asyncio.ensure_future(pub_b.run())]
        await until(lambda: len(pub.acked()) + len(pub_b.acked()) >= 40, timeout=20, what="acks before the move")
        src_id, dst_id = cluster.node_id(source[1]), cluster.node_id(target[1])
        src = next(n for n in cluster.nodes if n.port == source[1])
        dst = next(n for n in cluster.nodes if n.port == target[1])
        dst.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
        src.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
        while True:
            keys = src.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            src.cli("MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *keys)
        # Mid-migration (keys on the target, the slot still the source's): ASK.
        async with httpx.AsyncClient(timeout=10) as client:
            asked = await client.post(a.base + "/publish", json={"channel": channel, "data": "asked"})
        assert 200 == asked.status_code, asked.text
        pub.outcomes.append((channel, "asked", "ok", asked.json()["epoch"], asked.json()["seq"]))
        for n in cluster.nodes:
            n.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
        moved = time.monotonic()
        before = len(pub.acked()) + len(pub_b.acked())
        await until(lambda: len(pub.acked()) + len(pub_b.acked()) >= before + 40, timeout=20, what="acks after the move")
        for p in (pub, pub_b):
            p.stop.set()
        await asyncio.gather(*tasks)
        acked = pub.acked() + pub_b.acked()
        last = max(acked, key=lambda o: (o[3] == acked[-1][3], o[4]))
        await until(lambda: all(s.messages and s.messages[-1]["data"] == last[1] for s in subs), timeout=15, what="last delivered")
        following = {n.bus.broker._channels.get(channel) for n in (a, b)}
        followed = [(dict(n.bus.broker.redirects), n.bus.broker.dropped) for n in (a, b)]
        for s in subs:
            await s.close()
        return subs, acked, target, following, time.monotonic() - moved, pub.outcomes + pub_b.outcomes, followed

    try:
        subs, acked, target, following, elapsed, outcomes, followed = await aio(scenario())
    finally:
        await a.stop()
        await b.stop()
    assert {target} == following
    # Both nodes publish continuously: each met the move as a redirect, and each had its
    # sharded subscription dropped by the old owner.
    assert all(r["MOVED"] + r["ASK"] >= 1 and d == 1 for r, d in followed), followed
    assert followed[0][0]["ASK"] >= 1, followed
    by_key = {(o[3], o[4]): o[1] for o in acked}
    assert len(by_key) == len(acked), "an (epoch, seq) was acked twice"
    figures = [check_stream(s, by_key) for s in subs]
    # The channel's keys moved to another master: one reset to a new epoch there.
    assert all(f["resets"] == 1 for f in figures), figures
    refused = sum(o[2] == "unavailable" for o in outcomes)
    print(f"\ncluster reshard: {len(acked)} acked, {refused} refused, {elapsed:.1f} s after the move; (redirects followed, subscriptions dropped) per node {followed}; {figures}")
