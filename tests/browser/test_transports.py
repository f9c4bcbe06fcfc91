"""Each transport forced on its own, in real Chromium against a real gateway: the
client subscribes, receives publications in order, publishes and gets the ack."""

from __future__ import annotations

import pytest

TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forced_transport_receives_in_order_and_publishes(client, gateway, transport):
    """Subscribe over one transport, get 5 publications made with httpx in order, publish 3 from the page (acks with seqs), see them too."""
    client.start(transports=[transport], channels=("room", "other"))
    client.wait_connected(transport)
    acks = [gateway.publish("room", {"n": n}) for n in range(1, 6)]
    assert [a["seq"] for a in acks] == [1, 2, 3, 4, 5]
    events = client.wait_events(5, "room")
    assert [(e["type"], e["seq"], e["data"]) for e in events] == [("message", n, {"n": n}) for n in range(1, 6)]
    assert {e["epoch"] for e in events} == {acks[0]["epoch"]}
    results = [client.publish("room", {"from": "page", "n": n}) for n in range(3)]
    assert [r.get("ack", r)["seq"] for r in results] == [6, 7, 8]
    assert all(r["ack"]["channel"] == "room" and r["ack"]["epoch"] == acks[0]["epoch"] for r in results)
    events = client.wait_events(8, "room")
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert client.events("other") == []
    assert client.state() == {"state": "connected", "transport": transport, "delay": 0}
    assert [s["transport"] for s in client.states()] == [transport] * len(client.states())
