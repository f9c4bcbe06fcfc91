"""Redis Cluster with one master down and no replica to take over: a partial outage stays
partial.  A real 3-master cluster (no replicas, ``cluster-require-full-coverage no``) and
two gateway nodes; one master is paused with SIGSTOP (its connections stay open, nothing
answers: the gateway must notice by itself) long enough for the cluster to mark it
failed, then resumed.

Checked while it is down: publishes on the other masters' channels go on (HTTP and
delivery to WebSocket subscribers on the other node), SSE streams, polls and presence on
them work, and the down master's channel gets 503 ``unavailable`` on publish, SSE, poll
and presence; ``/readyz`` is ``200 degraded`` naming the master, ``gateway_broker_up`` 0.
After it is back: every acked publication reaches every subscriber once, in order (or
behind a ``reset``), and the channel publishes, streams and polls again.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from gateway.broker.slots import key_slot
from gateway.config import Config
from gateway.testing import aio, start_gateway
from tests.e2e.support import TIMEOUT_FACTOR, Subscriber, running_cluster, until
from tests.e2e.test_cluster import Publisher, channels_on_every_shard, cluster_url
from tests.e2e.test_sentinel import check_stream

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path, replicas=0)


async def first_sse_message(client: httpx.AsyncClient, url: str) -> tuple[int, dict | None]:
    """Open ``url``; the status, and the first ``message`` event's data (None unless 200)."""
    async with client.stream("GET", url) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.json()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if data.get("type", "message") == "message" and "seq" in data and "data" in data:
                    return 200, data
    raise AssertionError("the stream ended without a message")


async def test_one_master_down_without_replica_only_its_channels_are_unavailable(cluster):
    a = start_gateway(Config(node_id="a", redis=cluster_url(cluster), drain_timeout=2.0))
    b = start_gateway(Config(node_id="b", redis=cluster_url(cluster), drain_timeout=2.0))

    async def scenario():
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=20, what="nodes ready")
        channels = channels_on_every_shard(a.bus.broker, 1)
        victim_channel, healthy = channels[0], channels[1:]
        victim = a.bus.broker.slot_map.owner(key_slot(victim_channel))
        node = next(n for n in cluster.nodes if n.port == victim[1])
        other = next(n for n in cluster.nodes if n.port != victim[1])
        subs = [Subscriber(b.ws_url, c) for c in channels]
        for s in subs:
            await s.start()
        pub = Publisher(a.base, channels, "p")
        task = asyncio.ensure_future(pub.run())
        await until(lambda: len(pub.acked()) >= 30, timeout=20, what="acks before the pause")
        node.pause()
        paused = time.monotonic()
        seen: dict = {}
        try:
            await until(
                lambda: not a.bus.broker.channel_ready(victim_channel) and not b.bus.broker.channel_ready(victim_channel),
                timeout=10,
                what="the paused master noticed",
            )
            seen["noticed"] = time.monotonic() - paused
            # The cluster itself gives up on it (no replica to promote): the healthy masters
            # go on serving their slots.
            fail_deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
            while "fail" not in next(line for line in other.cli("CLUSTER", "NODES").splitlines() if f":{victim[1]}@" in line).split()[2]:
                assert time.monotonic() < fail_deadline, "the cluster did not mark the master failed"
                await asyncio.sleep(0.05)
            before = {c: len(pub.acked(c)) for c in channels}
            await until(lambda: all(len(pub.acked(c)) >= before[c] + 10 for c in healthy), timeout=20, what="healthy acks while down")
            assert len(pub.acked(victim_channel)) == before[victim_channel], "a publish on the down shard was acked"
            async with httpx.AsyncClient(timeout=10 * TIMEOUT_FACTOR) as client:
                seen["publish_down"] = await client.post(b.base + "/publish", json={"channel": victim_channel, "data": "no"})
                seen["readyz"] = await client.get(b.base + "/readyz")
                seen["metrics"] = (await client.get(b.base + "/metrics")).text
                seen["sse_up"] = await first_sse_message(client, f"{b.base}/sse?channel={healthy[0]}")
                seen["sse_down"] = await first_sse_message(client, f"{b.base}/sse?channel={victim_channel}")
                seen["sse_mixed"] = await first_sse_message(client, f"{b.base}/sse?channel={healthy[0]}&channel={victim_channel}")
                seen["poll_up"] = await client.get(b.base + "/poll", params={"channel": healthy[1], "timeout": 5})
                seen["poll_down"] = await client.get(b.base + "/poll", params={"channel": victim_channel, "timeout": 0})
                seen["presence_up"] = await client.get(b.base + "/presence", params={"channel": healthy[0]})
                seen["presence_down"] = await client.get(b.base + "/presence", params={"channel": victim_channel})
            # Delivered to the other node's subscribers meanwhile.
            last_healthy = {c: pub.acked(c)[-1][1] for c in healthy}
            await until(
                lambda: all(any(m["data"] == last_healthy[s.channel] for m in s.messages) for s in subs if s.channel in healthy),
                timeout=15,
                what="healthy deliveries while down",
            )
        finally:
            node.resume()
        resumed = time.monotonic()
        seen["down_for"] = resumed - paused
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=30, what="ready again")
        seen["back_after"] = time.monotonic() - resumed
        after = len(pub.acked(victim_channel))
        await until(lambda: len(pub.acked(victim_channel)) >= after + 10, timeout=20, what="acks on the resumed master")
        async with httpx.AsyncClient(timeout=10 * TIMEOUT_FACTOR) as client:
            seen["sse_back"] = await first_sse_message(client, f"{b.base}/sse?channel={victim_channel}")
            seen["readyz_back"] = await client.get(b.base + "/readyz")
        pub.stop.set()
        await task
        last = {c: pub.acked(c)[-1] for c in channels}
        await until(lambda: all(s.messages and s.messages[-1]["data"] == last[s.channel][1] for s in subs), timeout=15, what="last delivered")
        for s in subs:
            await s.close()
        return subs, pub, seen, victim, victim_channel

    try:
        subs, pub, seen, victim, victim_channel = await aio(scenario())
    finally:
        await a.stop()
        await b.stop()
    shard = f"{victim[0]}:{victim[1]}"
    assert (503, "unavailable") == (seen["publish_down"].status_code, seen["publish_down"].json()["error"]["code"])
    assert 200 == seen["readyz"].status_code
    assert ("degraded", [shard]) == (seen["readyz"].json()["status"], seen["readyz"].json()["shards_down"])
    assert "gateway_broker_up 0.0" in seen["metrics"] and f'gateway_redis_shard_up{{shard="{shard}"}} 0.0' in seen["metrics"]
    assert 200 == seen["sse_up"][0] and seen["sse_up"][1]["data"].startswith("p")
    for key in ("sse_down", "sse_mixed"):
        assert (503, "unavailable") == (seen[key][0], seen[key][1]["error"]["code"]), key
    assert 200 == seen["poll_up"].status_code and seen["poll_up"].json()["messages"], seen["poll_up"].text
    assert (503, "unavailable") == (seen["poll_down"].status_code, seen["poll_down"].json()["error"]["code"])
    assert 200 == seen["presence_up"].status_code and 1 == seen["presence_up"].json()["anonymous"]
    assert (503, "unavailable") == (seen["presence_down"].status_code, seen["presence_down"].json()["error"]["code"])
    assert 200 == seen["sse_back"][0] and (200, "ready") == (seen["readyz_back"].status_code, seen["readyz_back"].json()["status"])
    refused = [o for o in pub.outcomes if o[2] == "unavailable"]
    assert refused and all(o[0] == victim_channel for o in refused), "only the down master's channel was refused"
    figures = {}
    for s in subs:
        acked = {(o[3], o[4]): o[1] for o in pub.acked(s.channel)}
        figures[s.channel] = check_stream(s, acked)
        if s.channel != victim_channel:
            assert 0 == figures[s.channel]["resets"], (s.channel, figures[s.channel])
    print(
        f"\ncluster master paused (no replica) {seen['down_for']:.1f} s: noticed after {seen['noticed'] * 1000:.0f} ms, "
        f"ready {seen['back_after'] * 1000:.0f} ms after it resumed; {len(pub.acked())} acked, {len(refused)} refused "
        f"(all on its channel); {figures}"
    )
