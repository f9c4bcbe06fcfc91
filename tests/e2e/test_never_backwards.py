"""docs/protocol.md section 3, "Never backwards", with two real nodes on one real Redis
while Redis loses its data (``FLUSHALL``) and the nodes lose their pub/sub connection.

Within one epoch a client never gets a ``reset`` to a seq below one it was already
given, and never the same publication twice.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.testing import aio
from tests.e2e.support import Subscriber, until

pytestmark = pytest.mark.redis


def assert_never_backwards(s: Subscriber) -> None:
    """Within an epoch no position given to the client is ever followed by a lower one or
    a repeat, and every message continues the position before it (no silent gap)."""
    given: dict[str, int] = {}  # epoch -> highest seq given
    seen: set[tuple[str, int]] = set()
    for e in s.events:
        if e["type"] not in ("subscribed", "reset", "message"):
            continue
        epoch, seq = e["epoch"], e["seq"]
        if e["type"] == "message":
            assert (epoch, seq) not in seen, f"publication {epoch}:{seq} delivered twice: {s.events}"
            seen.add((epoch, seq))
        elif e["type"] == "reset":
            assert seq >= given.get(epoch, 0), f"reset to {epoch}:{seq} after {epoch}:{given[epoch]}: {s.events}"
        if not (e["type"] == "subscribed" and e.get("recovered")):
            given[epoch] = max(given.get(epoch, 0), seq)
    s.check_order()


async def test_flushall_then_pubsub_reconnect_never_goes_backwards(nodes, redis_server):
    """Node B has a subscriber; FLUSHALL; the pub/sub connections are killed (and kept from
    coming back for a while); node A publishes in the new epoch; a client subscribes on B
    and is told (E2, 3), another resumes on B from the old epoch and is given (E2, 0) and
    1-3 from history.  When B's pub/sub connection is back and B fills what it missed,
    neither is reset back to (E2, 0) nor given seqs 1-3 again; the older subscriber gets
    one reset to (E2, 0) and every new publication."""
    a, b = await nodes(2)
    redis_channel = b.bus.broker.pubsub_channel("nb")

    def numsub():
        return int(redis_server.cli("PUBSUB", "NUMSUB", redis_channel).split()[1])

    async def publish(data):
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(a.base + "/publish", json={"channel": "nb", "data": data})
        assert 200 == r.status_code, r.text
        return r.json()

    async def scenario():
        early = Subscriber(b.ws_url, "nb")
        await early.start()
        old = [await publish(data) for data in (1, 2, 3)]
        await until(lambda: len(early.messages) == 3, what="first deliveries")
        redis_server.command("FLUSHALL")
        # Keep the pub/sub connections from resubscribing until the new epoch has
        # publications and a client was told its top.
        redis_server.command("ACL", "SETUSER", "default", "-subscribe")
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: numsub() == 0, what="pub/sub connections gone")
        new = [await publish(data) for data in (4, 5, 6)]
        late = Subscriber(b.ws_url, "nb")
        await late.start()
        resumed = Subscriber(b.ws_url, "nb")
        await resumed.start(since={"epoch": old[-1]["epoch"], "seq": old[-1]["seq"]})
        await until(lambda: len(resumed.events) == 5, what="the resumed client's reset and history")
        redis_server.command("ACL", "SETUSER", "default", "+subscribe")
        await until(lambda: numsub() == 1, timeout=10, what="node B resubscribed")
        after = [await publish(data) for data in (7, 8, 9)]
        last = (after[-1]["epoch"], after[-1]["seq"])
        subs = [early, late, resumed]
        await until(
            lambda: all(s.messages and (s.messages[-1]["epoch"], s.messages[-1]["seq"]) == last for s in subs),
            what="last publication delivered",
        )
        await asyncio.sleep(0.2)  # anything wrong that is still on its way
        for s in subs:
            await s.close()
        return early, late, resumed, old, new, after

    early, late, resumed, old, new, after = await aio(scenario())

    old_epoch, new_epoch = old[0]["epoch"], new[0]["epoch"]
    assert new_epoch != old_epoch
    assert [(new_epoch, seq) for seq in range(1, 7)] == [(ack["epoch"], ack["seq"]) for ack in new + after]
    for s in (early, late, resumed):
        assert_never_backwards(s)
    # The late client: subscribed (E2, 3), then 4..6 only, no reset.
    assert ("subscribed", new_epoch, 3) == (late.events[0]["type"], late.events[0]["epoch"], late.events[0]["seq"])
    assert [4, 5, 6] == [m["seq"] for m in late.messages]
    assert [] == [e for e in late.events if e["type"] == "reset"]
    # The resumed client: recovered false, one reset to (E2, 0), then 1..6 once each.
    assert [("subscribed", new_epoch, 0), ("reset", new_epoch, 0)] == [
        (e["type"], e["epoch"], e["seq"]) for e in resumed.events[:2]
    ]
    assert [1, 2, 3, 4, 5, 6] == [m["seq"] for m in resumed.messages]
    assert [e for e in resumed.events if e["type"] == "reset"] == [resumed.events[1]]
    # The early subscriber: 1..3 of the old epoch, one reset to (E2, 0), then all of E2.
    assert [(old_epoch, 1), (old_epoch, 2), (old_epoch, 3)] + [(new_epoch, seq) for seq in range(1, 7)] == [
        (m["epoch"], m["seq"]) for m in early.messages
    ]
    assert [(new_epoch, 0)] == [(e["epoch"], e["seq"]) for e in early.events if e["type"] == "reset"]
