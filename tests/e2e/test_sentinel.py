"""Redis Sentinel: two gateway nodes on ``redis+sentinel://`` with a real master, replica
and three Sentinels; the master is killed with SIGKILL while publications flow.

Checked: while there is no master, publishes get 503/unavailable and ``/readyz`` is 503;
the nodes find the promoted replica, resubscribe and are ready again; every acked
publication is delivered to every subscriber exactly once, in order, or a ``reset``
announces that it is gone (the tail the replica had not received: the test holds the
replica with SIGSTOP just before the kill so that there is such a tail); no seq is ever
delivered with two different data (the promoted replica does not continue the old
epoch).  The unavailability window is printed (``-s``) for the closing notes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from gateway.config import Config
from gateway.testing import aio, start_gateway
from tests.e2e.support import (
    TIMEOUT_FACTOR,
    SentinelSet,
    Subscriber,
    publish_until_stopped_http,
    publish_until_stopped_ws,
    until,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def sentinels(tmp_path):
    s = SentinelSet(str(tmp_path))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def check_stream(sub: Subscriber, acked: dict[tuple[str, int], str]) -> dict[str, int]:
    """Every acked publication delivered once with its own data, or skipped by a reset
    that moved the subscriber out of its epoch past it."""
    messages = sub.check_order()
    delivered = {(m["epoch"], m["seq"]): m["data"] for m in messages}
    assert len(delivered) == len(messages), "a publication was delivered twice"
    for key, data in delivered.items():
        if key in acked:
            assert acked[key] == data, f"{key} delivered with other data: a seq was reused"
    # The last position seen in each epoch before a reset left it.
    left: dict[str, int] = {}
    position = None
    for e in sub.events:
        if e["type"] in ("subscribed", "message"):
            position = (e["epoch"], e["seq"])
        elif e["type"] == "reset":
            if position is not None and position[0] != e["epoch"]:
                left[position[0]] = position[1]
            position = (e["epoch"], e["seq"])
    lost = 0
    for epoch, seq in acked:
        if (epoch, seq) in delivered:
            continue
        assert epoch in left and seq > left[epoch], f"acked {(epoch, seq)} silently missing for {sub.channel}"
        lost += 1
    return {"delivered": len(delivered), "lost_with_reset": lost, "resets": sum(e["type"] == "reset" for e in sub.events)}


async def test_master_killed_mid_stream_fails_over_without_silent_loss(sentinels):
    config = {"redis": sentinels.url, "drain_timeout": 2.0}
    a = start_gateway(Config(node_id="a", **config))
    b = start_gateway(Config(node_id="b", **config))

    async def scenario():
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=10, what="nodes ready")
        subs = [Subscriber(n.ws_url, "live") for n in (a, b) for _ in range(2)]
        for s in subs:
            await s.start()
        outcomes: list[tuple] = []  # (data, "ok"|"unavailable", epoch, seq)
        stop = asyncio.Event()

        tasks = [
            asyncio.ensure_future(publish_until_stopped_http(a.base, "live", stop, outcomes, 0.002)),
            asyncio.ensure_future(publish_until_stopped_ws(b.ws_url, "live", stop, outcomes, 0.002, 10 * TIMEOUT_FACTOR)),
        ]
        await until(lambda: len(outcomes) >= 100, timeout=20, what="acks before the failover")

        # A subscriber that leaves before the failover and resumes after it.
        away = Subscriber(a.ws_url, "live")
        await away.start()
        await until(lambda: len(away.messages) >= 5, what="the leaving subscriber's first messages")
        await away.close()
        # Hold the replica still (SIGSTOP, well under the Sentinels' 1 s) so that the
        # master acks publications the replica never gets, then kill the master.
        old_port = sentinels.master.port
        sentinels.replica.proc.send_signal(signal.SIGSTOP)
        acked_before = len([o for o in outcomes if o[1] == "ok"])
        try:
            await until(lambda: len([o for o in outcomes if o[1] == "ok"]) >= acked_before + 20, what="acks the replica misses")
        finally:
            killed = time.monotonic()
            sentinels.master.kill()
            sentinels.replica.proc.send_signal(signal.SIGCONT)
        await until(lambda: not a.bus.is_ready() and not b.bus.is_ready(), what="nodes unready")
        async with httpx.AsyncClient(timeout=5) as client:
            down = [await client.get(n.base + "/readyz") for n in (a, b)]
            ready_down = [r.status_code for r in down]
            shards_down = [r.json().get("shards_down") for r in down]
            metrics_down = (await client.get(a.base + "/metrics")).text
            refused = await client.post(a.base + "/publish", json={"channel": "other", "data": 1})
        await until(lambda: a.bus.is_ready() and b.bus.is_ready(), timeout=30, what="nodes ready on the new master")
        window = time.monotonic() - killed
        async with httpx.AsyncClient(timeout=5) as client:
            ready_up = [(await client.get(n.base + "/readyz")).status_code for n in (a, b)]
        acked_after = len([o for o in outcomes if o[1] == "ok"])
        await until(lambda: len([o for o in outcomes if o[1] == "ok"]) >= acked_after + 100, timeout=20, what="acks after")
        resumed = Subscriber(b.ws_url, "live")
        resumed_reply = await resumed.start(since=away.position)
        stop.set()
        await asyncio.gather(*tasks)
        acked = [o for o in outcomes if o[1] == "ok"]
        last = max(acked, key=lambda o: (o[2] != acked[0][2], o[3]))
        await until(
            lambda: all(s.messages and (s.messages[-1]["epoch"], s.messages[-1]["seq"]) == (last[2], last[3]) for s in subs),
            timeout=10,
            what="last publication delivered",
        )
        await until(lambda: (resumed.messages or [{}])[-1].get("seq") == last[3], timeout=10, what="resumed caught up")
        for s in subs:
            await s.close()
        await resumed.close()
        async with httpx.AsyncClient(timeout=5) as client:
            metrics_up = (await client.get(a.base + "/metrics")).text
        extra = (shards_down, metrics_down, metrics_up)
        return subs, outcomes, window, ready_down, ready_up, refused, old_port, away, resumed, resumed_reply, extra

    try:
        subs, outcomes, window, ready_down, ready_up, refused, old_port, away, resumed, resumed_reply, extra = await aio(scenario())
    finally:
        await a.stop()
        await b.stop()

    assert [503, 503] == ready_down
    assert [200, 200] == ready_up
    shards_down, metrics_down, metrics_up = extra
    assert [["mymaster"], ["mymaster"]] == shards_down
    assert 'gateway_redis_shard_up{shard="mymaster"} 0.0' in metrics_down
    assert 'gateway_redis_shard_up{shard="mymaster"} 1.0' in metrics_up
    assert 'gateway_redis_pubsub_reconnects_total{shard="mymaster"} 1.0' in metrics_up
    assert metric(metrics_up, 'gateway_redis_command_seconds_count{shard="mymaster"}') >= 20  # node a publishes over HTTP
    assert 503 == refused.status_code and "unavailable" == refused.json()["error"]["code"]
    assert sentinels.replica.port == sentinels.master_port() != old_port
    assert a.bus.broker.master_changes == 1 and b.bus.broker.master_changes == 1
    acked = {(o[2], o[3]): o[0] for o in outcomes if o[1] == "ok"}
    assert len(acked) == len([o for o in outcomes if o[1] == "ok"]), "an (epoch, seq) was acked twice"
    # The promoted replica starts a new epoch: whatever it missed cannot hide behind reused seqs.
    assert 2 == len({epoch for epoch, _ in acked})
    figures = [check_stream(s, acked) for s in subs]
    assert all(f["resets"] == 1 for f in figures), figures
    # The subscriber that was away resumes with a reset to the new epoch: the publications
    # it missed (some acked by the dead master only) are announced as gone, not skipped.
    new_epoch = {epoch for epoch, _ in acked} - {away.position["epoch"]}
    assert resumed_reply["recovered"] is False
    assert [("reset", *new_epoch)] == [(e["type"], e["epoch"]) for e in resumed.events if e["type"] == "reset"]
    check_stream(resumed, {k: v for k, v in acked.items() if k[0] in new_epoch and k[1] > resumed.events[1]["seq"]})
    refused_count = sum(o[1] == "unavailable" for o in outcomes)
    print(
        f"\nsentinel failover: unavailable for {window * 1000:.0f} ms (kill -9 to both nodes ready), "
        f"{len(acked)} acked, {refused_count} refused; per subscriber {figures}"
    )


def run_script(server, name, keys, args):
    from gateway.broker.redis import load_script

    out = server.cli("EVAL", load_script(name).decode(), str(len(keys)), *keys, *args)
    return out.split("\n")


def publish_as(server, writer, data="x"):
    keys = ["t:{c}:meta", "t:{c}:hist"]
    args = ["t:pub:c", json.dumps({"c": "c", "d": data, "f": None}), f"E{time.monotonic_ns()}", "100", "300000", "310", "86400", "300000", writer]
    seq, epoch = run_script(server, "publish.lua", keys, args)[:2]
    return epoch, int(seq)


def history_as(server, writer, epoch, seq):
    keys = ["t:{c}:meta", "t:{c}:hist"]
    reply = run_script(server, "history.lua", keys, ["Enew", epoch, str(seq), "86400", writer])
    return reply[0], int(reply[1]), len([line for line in reply[3:] if line])


def test_scripts_start_a_new_epoch_under_another_writer(redis_server):
    """publish.lua and history.lua keep a stream's epoch while the writer (the master's
    replication ID) is the one that wrote it, and start a new epoch under another one;
    with no writer (one Redis) there is no check."""
    e1, _ = publish_as(redis_server, "A")
    assert (e1, 2) == publish_as(redis_server, "A")
    assert (e1, 2, 1) == history_as(redis_server, "A", e1, 1)
    assert (e1, 3) == publish_as(redis_server, "")  # unguarded: the stream goes on
    # Another writer: a fresh epoch from seq 1, the old history gone.
    e2, s2 = publish_as(redis_server, "B")
    assert (e2 != e1, s2) == (True, 1)
    assert (e2, 1, 0) == history_as(redis_server, "B", e1, 1)
    # history.lua installs the new epoch itself when it is the first to see the writer change.
    assert ("Enew", 0, 0) == history_as(redis_server, "C", e2, 1)
    assert ("Enew", 1) == publish_as(redis_server, "C")


async def test_demoted_master_that_stays_up_is_left_for_the_new_one(sentinels):
    """SENTINEL FAILOVER with the master alive: it becomes a replica (writes get READONLY,
    ROLE says slave) and the nodes must move to the promoted one on their own."""
    # A Sentinel demotes the old master once it has reported itself a master for 4
    # publish periods (4 x 2 s by default), seen in its INFO (every 10 s by default):
    # shorten both (SENTINEL DEBUG, Redis >= 7; older ones answer an error and take longer).
    for port in sentinels.sentinel_ports:
        sentinels.sentinel(port, "SENTINEL", "DEBUG", "INFO-PERIOD", "500", "PUBLISH-PERIOD", "250")
    node = start_gateway(Config(node_id="a", redis=sentinels.url, drain_timeout=2.0))

    async def scenario():
        await until(node.bus.is_ready, timeout=10, what="node ready")
        sub = Subscriber(node.ws_url, "c")
        await sub.start()
        acks = []
        async with httpx.AsyncClient(timeout=10) as client:
            async def publish(data):
                r = await client.post(node.base + "/publish", json={"channel": "c", "data": data})
                if r.status_code == 200:
                    acks.append((r.json()["epoch"], r.json()["seq"], data))
                else:
                    assert 503 == r.status_code, r.text

            await publish("before")
            assert "OK" in sentinels.sentinel(sentinels.sentinel_ports[0], "SENTINEL", "FAILOVER", sentinels.name)
            await until(lambda: sentinels.master_port() == sentinels.replica.port, timeout=30, what="replica promoted")
            k = 0
            while not (acks and acks[-1][0] != acks[0][0]):
                await publish(f"after{k}")
                k += 1
                await asyncio.sleep(0.01)
                assert k < 3000 * TIMEOUT_FACTOR, "never published on the new master"
        await until(lambda: sub.messages and sub.messages[-1]["data"] == acks[-1][2], what="delivered")
        await sub.close()
        return sub, acks

    try:
        sub, acks = await aio(scenario())
        peers = {c.transport.getPeer().port for c in node.bus.broker._commands}
    finally:
        await node.stop()
    assert {sentinels.replica.port} == peers
    assert 1 == node.bus.broker.master_changes
    check_stream(sub, {(e, s): d for e, s, d in acks})
    assert 2 == len({e for e, _, _ in acks})


async def test_one_redis_is_one_shard_in_metrics_and_readyz(nodes, redis_server):
    """With redis://, the shard is host:port: down while Redis is killed (named by /readyz),
    up with one pub/sub reconnect after it returns; commands land in the histogram."""
    (node,) = await nodes(1)
    shard = f"127.0.0.1:{redis_server.port}"

    async def scenario():
        async with httpx.AsyncClient(timeout=5) as client:
            assert 200 == (await client.post(node.base + "/publish", json={"channel": "c", "data": 1})).status_code
            before = (await client.get(node.base + "/metrics")).text
            redis_server.kill()
            await until(lambda: not node.bus.is_ready(), what="unready")
            down = await client.get(node.base + "/readyz")
            during = (await client.get(node.base + "/metrics")).text
            redis_server.start()
            await until(lambda: node.bus.broker.shard.pubsub_reconnects == 1 and node.bus.is_ready(), what="back")
            after = (await client.get(node.base + "/metrics")).text
        return before, down, during, after

    before, down, during, after = await aio(scenario())
    assert 503 == down.status_code and [shard] == down.json()["shards_down"]
    assert f'gateway_redis_shard_up{{shard="{shard}"}} 1.0' in before
    assert f'gateway_redis_shard_up{{shard="{shard}"}} 0.0' in during
    assert f'gateway_redis_pubsub_reconnects_total{{shard="{shard}"}} 1.0' in after
    assert metric(before, f'gateway_redis_command_seconds_count{{shard="{shard}"}}') >= 1
    assert metric(before, f'gateway_redis_command_seconds_bucket{{le="+Inf",shard="{shard}"}}') == metric(
        before, f'gateway_redis_command_seconds_count{{shard="{shard}"}}'
    )
