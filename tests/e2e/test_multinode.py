"""Several gateway nodes sharing one real Redis: ordering, outages, flushes, failover.

Each scenario runs as one asyncio coroutine (``aio``): the nodes run on the same
loop through the asyncio reactor, so the coroutine can also kill Redis or stop a
node between client steps.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.testing import aio
from tests.e2e.support import (
    TIMEOUT_FACTOR,
    Subscriber,
    publish_until_stopped_http,
    publish_until_stopped_ws,
    until,
    ws_publish_many,
)

pytestmark = pytest.mark.redis


async def test_concurrent_publishers_on_every_node(nodes):
    """Publishers on three nodes at once (WebSocket and HTTP): every subscriber on every node
    sees 1..N in order without a duplicate, and the acks hand out exactly 1..N."""
    running = await nodes(3)

    async def scenario():
        subs = [Subscriber(n.ws_url, "room") for n in running for _ in range(2)]
        for s in subs:
            await s.start()
        per_ws, per_http = 40, 10
        datas = {n: [f"ws{i}-{k}" for k in range(per_ws)] for i, n in enumerate(running)}

        async def http_publisher(i, node):
            async with httpx.AsyncClient(timeout=10) as client:
                out = []
                for k in range(per_http):
                    r = await client.post(node.base + "/publish", json={"channel": "room", "data": f"http{i}-{k}"})
                    out.append(r.json())
                return out

        results = await asyncio.gather(
            *[ws_publish_many(n.ws_url, "room", datas[n]) for n in running],
            *[http_publisher(i, n) for i, n in enumerate(running)],
        )
        total = len(running) * (per_ws + per_http)
        await until(lambda: all(len(s.messages) == total for s in subs), what="every delivery")
        for s in subs:
            await s.close()
        return subs, [r for rs in results for r in rs]

    subs, acks = await aio(scenario())

    total = 3 * 50
    assert list(range(1, total + 1)) == sorted(a["seq"] for a in acks)
    assert 1 == len({a["epoch"] for a in acks})
    for s in subs:
        messages = s.check_order()
        assert list(range(1, total + 1)) == [m["seq"] for m in messages]
    # Everyone saw the same data under the same seq.
    assert 1 == len({tuple((m["seq"], m["data"]) for m in s.messages) for s in subs})


async def test_redis_killed_and_restarted_mid_stream(nodes, redis_server):
    """Publishing through an outage: every acked publication is delivered to every subscriber,
    every other publish got 503/unavailable, WebSocket clients stay connected, /readyz follows
    Redis, and the restarted (empty) Redis shows up as a reset to a new epoch, never as a gap."""
    a, b = await nodes(2)

    async def scenario():
        subs = [Subscriber(a.ws_url, "live"), Subscriber(b.ws_url, "live")]
        for s in subs:
            await s.start()
        outcomes: list[tuple] = []  # (data, "ok"|"unavailable", epoch, seq)
        stop = asyncio.Event()

        tasks = [
            asyncio.ensure_future(publish_until_stopped_http(a.base, "live", stop, outcomes, 0.005)),
            asyncio.ensure_future(publish_until_stopped_ws(b.ws_url, "live", stop, outcomes, 0.005, 10)),
        ]
        await until(lambda: len(outcomes) >= 30, what="acks before the outage")

        killed = time.monotonic()
        redis_server.kill()
        await until(lambda: not a.bus.is_ready() and not b.bus.is_ready(), what="nodes unready")
        detected = time.monotonic() - killed
        async with httpx.AsyncClient(timeout=5) as client:
            ready_down = [(await client.get(n.base + "/readyz")).status_code for n in (a, b)]
        failures_before = sum(1 for o in outcomes if o[1] == "unavailable")
        await until(lambda: sum(1 for o in outcomes if o[1] == "unavailable") >= failures_before + 10, what="refused publishes")
        await asyncio.sleep(0.5)  # a longer outage: the reconnect backoff reaches its cap

        redis_server.start()
        restarted = time.monotonic()
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=5, what="nodes ready again")
        recovered = time.monotonic() - restarted
        async with httpx.AsyncClient(timeout=5) as client:
            ready_up = [(await client.get(n.base + "/readyz")).status_code for n in (a, b)]
        acked_after = len([o for o in outcomes if o[1] == "ok"])
        await until(lambda: len([o for o in outcomes if o[1] == "ok"]) >= acked_after + 30, what="acks after the outage")
        stop.set()
        await asyncio.gather(*tasks)
        acked = [o for o in outcomes if o[1] == "ok"]
        last = max(acked[-5:], key=lambda o: o[3])
        await until(
            lambda: all(s.messages and (s.messages[-1]["epoch"], s.messages[-1]["seq"]) == (last[2], last[3]) for s in subs),
            what="last publication delivered",
        )
        for s in subs:
            await s.close()
        return subs, outcomes, detected, recovered, ready_down, ready_up

    subs, outcomes, detected, recovered, ready_down, ready_up = await aio(scenario())

    print(f"\nnodes: outage detected in {detected * 1000:.0f} ms, ready {recovered * 1000:.0f} ms after Redis restarted")
    assert [503, 503] == ready_down
    assert [200, 200] == ready_up
    assert detected < 0.5 * TIMEOUT_FACTOR
    assert recovered < 2.5 * TIMEOUT_FACTOR
    acked = {(o[2], o[3]): o[0] for o in outcomes if o[1] == "ok"}
    assert len(acked) == len([o for o in outcomes if o[1] == "ok"]), "an (epoch, seq) was acked twice"
    assert 2 == len({epoch for epoch, _ in acked}), "the restarted Redis should give a new epoch"
    for s in subs:
        assert s.close_code == 1000  # closed by us at the end, not by the outage
        messages = s.check_order()
        delivered = {(m["epoch"], m["seq"]): m["data"] for m in messages}
        missing = sorted(key for key, data in acked.items() if delivered.get(key) != data)
        assert not missing, f"acked publications not delivered to {s.url}: {missing}; delivered {sorted(delivered)}"
        assert 1 == sum(1 for e in s.events if e["type"] == "reset")


async def test_lost_pubsub_messages_are_filled_from_history(nodes, redis_server):
    """When a node's pub/sub connection drops mid-stream, what was published meanwhile is
    fetched from Redis history: subscribers see every seq, in order, with no reset."""
    a, b = await nodes(2)

    async def scenario():
        subs = [Subscriber(a.ws_url, "g"), Subscriber(b.ws_url, "g")]
        for s in subs:
            await s.start()
        count = 0
        async with httpx.AsyncClient(timeout=10) as client:
            for round_ in range(3):
                for _ in range(20):
                    r = await client.post(b.base + "/publish", json={"channel": "g", "data": count})
                    assert 200 == r.status_code
                    count += 1
                    if count % 10 == 5:
                        # Drop every node's pub/sub connection while publishing goes on.
                        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: all(len(s.messages) == count for s in subs), what="every delivery")
        for s in subs:
            await s.close()
        return subs, count

    subs, count = await aio(scenario())

    for s in subs:
        messages = s.check_order()
        assert list(range(1, count + 1)) == [m["seq"] for m in messages]
        assert list(range(count)) == [m["data"] for m in messages]
        assert not [e for e in s.events if e["type"] == "reset"]


async def test_flushall_resets_subscribers_to_a_new_epoch(nodes, redis_server):
    """FLUSHALL: the next publication starts a new epoch at seq 1, subscribers on every node get a
    reset to it, and a client resuming from the old epoch gets recovered=false, a reset to the
    start of the new epoch and its publications, like the subscribers that were connected."""
    a, b = await nodes(2)

    async def scenario():
        subs = [Subscriber(a.ws_url, "f"), Subscriber(b.ws_url, "f")]
        for s in subs:
            await s.start()
        old = await ws_publish_many(a.ws_url, "f", [1, 2, 3])
        await until(lambda: all(len(s.messages) == 3 for s in subs), what="first deliveries")
        redis_server.command("FLUSHALL")
        new = await ws_publish_many(b.ws_url, "f", ["after flush"])
        await until(lambda: all(len(s.messages) == 4 for s in subs), what="delivery after flush")
        late = Subscriber(a.ws_url, "f")
        reply = await late.start(since={"epoch": old[-1]["epoch"], "seq": 3})
        await until(lambda: len(late.events) == 3, what="reset and message for the late client")
        for s in subs + [late]:
            await s.close()
        return subs, late, reply, old, new

    subs, late, reply, old, new = await aio(scenario())

    new_epoch = new[0]["epoch"]
    assert new_epoch != old[0]["epoch"]
    assert 1 == new[0]["seq"]
    for s in subs:
        s.check_order()
        assert {"type": "reset", "channel": "f", "epoch": new_epoch, "seq": 0} == s.events[-2]
        assert ("after flush", new_epoch, 1) == (s.events[-1]["data"], s.events[-1]["epoch"], s.events[-1]["seq"])
    assert (False, new_epoch, 0) == (reply["recovered"], reply["epoch"], reply["seq"])
    assert {"type": "reset", "channel": "f", "epoch": new_epoch, "seq": 0} == late.events[1]
    assert ("after flush", new_epoch, 1) == (late.events[2]["data"], late.events[2]["epoch"], late.events[2]["seq"])
    late.check_order()


async def test_client_of_a_stopped_node_resumes_on_another(nodes):
    """A node stops mid-stream (its clients get 1001); a client resumes on another node with
    `since` and has every publication exactly once, in order."""
    a, b, c = await nodes(3)

    async def scenario():
        client = Subscriber(c.ws_url, "m")
        await client.start()
        stop = asyncio.Event()
        published = []

        async def publisher():
            async with httpx.AsyncClient(timeout=10) as http:
                k = 0
                while not stop.is_set():
                    r = await http.post(a.base + "/publish", json={"channel": "m", "data": k})
                    assert 200 == r.status_code
                    published.append(r.json()["seq"])
                    k += 1
                    await asyncio.sleep(0.005)

        task = asyncio.ensure_future(publisher())
        await until(lambda: len(client.messages) >= 20, what="messages before the stop")
        await c.stop().asFuture(asyncio.get_running_loop())
        await client._task
        first = client
        await until(lambda: len(published) >= len(first.messages) + 20, what="publications while away")
        resumed = Subscriber(b.ws_url, "m")
        reply = await resumed.start(since=first.position)
        await asyncio.sleep(0.1)
        stop.set()
        await task
        await until(lambda: resumed.messages and resumed.messages[-1]["seq"] == published[-1], what="caught up")
        await resumed.close()
        return first, resumed, reply, published

    first, resumed, reply, published = await aio(scenario())

    assert 1001 == first.close_code
    assert reply["recovered"] is True
    first.check_order()
    resumed.check_order()
    seqs = [m["seq"] for m in first.messages] + [m["seq"] for m in resumed.messages]
    assert list(range(1, len(published) + 1)) == seqs
    assert [m["data"] for m in first.messages + resumed.messages] == list(range(len(published)))


async def test_one_redis_subscription_per_channel_per_node(nodes, redis_server):
    """However many local subscribers a channel has, a node holds one Redis subscription for it,
    all on one pub/sub connection, and drops it when the last local subscriber leaves (after
    Config.channel_linger seconds, so that a client coming straight back finds it)."""
    a, b = await nodes(2, channel_linger=0.5)

    def numsub(channel):
        reply = redis_server.cli("PUBSUB", "NUMSUB", a.bus.broker.pubsub_channel(channel)).split()
        return int(reply[1])

    def pubsub_connections():
        return [line for line in redis_server.cli("CLIENT", "LIST").splitlines() if "flags=P" in line]

    async def scenario():
        subs = [Subscriber(n.ws_url, "shared") for n in (a, b) for _ in range(3)] + [Subscriber(a.ws_url, "solo")]
        for s in subs:
            await s.start()
        during = (numsub("shared"), numsub("solo"), len(pubsub_connections()))
        for s in subs:
            await s.close()
        await until(lambda: numsub("shared") == 0 and numsub("solo") == 0, what="unsubscribed")
        return during

    shared, solo, connections = await aio(scenario())

    assert (2, 1, 2) == (shared, solo, connections)
