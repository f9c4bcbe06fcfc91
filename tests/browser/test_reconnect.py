"""Reconnect behaviour over real sockets (the same rules have deterministic fake-clock
tests in test_client_timing.py): a draining node's clients come back within 2 s
whatever their backoff, the browser's `online` event cuts a long backoff short, and a
connection that goes silent without closing is detected and replaced on every
transport without losing a message."""

from __future__ import annotations

import pytest

TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_drained_node_clients_come_back_within_2s(client, gateway, transport):
    """SIGTERM drains (WebSocket 1001, SSE stream ended): the next attempt is random() x 2 s away (0.999 -> 1998 ms), not the long backoff of a 10 s base."""
    client.start(transports=[transport], channels=("room",), randomValue=0.999, _timing={"backoffBase": 10000})
    client.wait_connected(transport)
    gateway.stop()
    client.wait("window.states.some(s => s.state === 'reconnecting')")
    first = next(s for s in client.states() if s["state"] == "reconnecting")
    assert first["delay"] == 1998
    gateway.start()
    client.wait_connected(transport)


def test_online_event_cuts_a_long_backoff_short(client, gateway):
    """Gateway down: the client waits ~20 s to retry; the browser goes offline and online: it connects at once."""
    client.start(transports=["websocket"], channels=("room",), randomValue=0.999, _timing={"backoffBase": 20000, "goingAwaySpread": 0})
    client.wait_connected("websocket")
    gateway.kill()
    client.wait("window.states.some(s => s.state === 'reconnecting' && s.delay > 15000)")
    gateway.start()
    waiting = [s for s in client.states() if s["state"] == "reconnecting"][-1]
    client.context.set_offline(True)
    client.context.set_offline(False)
    client.wait_connected("websocket")
    connected = client.states()[-1]
    assert connected["at"] - waiting["at"] < waiting["delay"] / 2  # well before the timer would have fired
    gateway.publish("room", "back")
    # A restarted single node is a new epoch: a reset, then the message.
    assert [(e["type"], e.get("data")) for e in client.wait_events(2, "room")] == [("reset", None), ("message", "back")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_silent_connection_is_detected_and_replaced(client_factory, gateway_factory, relay_factory, transport):
    """Every connection through a relay goes silent (not closed): with heartbeat 1 s the client gives up after 2 x 1 + 0.5 s
    (a poll after its 1 s timeout + 1 s), reconnects, and nothing published meanwhile is lost."""
    gateway = gateway_factory("--heartbeat", "1")
    relay = relay_factory(gateway)
    client = client_factory(relay)
    timing = {"heartbeat": 1000, "deadSlack": 500, "pollTimeout": 1, "connectTimeout": 1000}
    client.start(transports=[transport], channels=("room",), _timing=timing)
    client.wait_connected(transport)
    gateway.publish("room", 0)
    client.wait_events(1, "room")
    assert relay.stall() >= 1
    for n in range(1, 4):
        gateway.publish("room", n)
    client.wait("window.states.some(s => s.state === 'reconnecting')")
    events = client.wait_events(4, "room")
    assert [e["data"] for e in events] == [0, 1, 2, 3]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    client.wait_connected(transport)
