"""close() stops everything, checked from inside the page (setTimeout/setInterval,
WebSocket and fetch are instrumented before any script runs) and from Playwright's
view of the network: no timer, no open socket, no request in flight, nothing new
afterwards; pending publishes reject with "closed"."""

from __future__ import annotations

import pytest

TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_leaves_nothing_running(client, gateway, transport):
    client.start(transports=[transport], channels=("room", "other"))
    client.wait_connected(transport)
    gateway.publish("room", 1)
    client.wait_events(1, "room")
    # Something of everything in flight: a held poll or open stream/socket, timers, a presence query.
    running = client.live_resources()
    assert running["timers"], running
    client.js("() => { window.closedState = null; gw.on('state', s => { if (s.state === 'closed') window.closedState = s; }); gw.close(); }")
    assert client.js("() => window.closedState") == {"state": "closed", "transport": transport, "delay": 0}
    client.wait("liveResources().timers.length === 0 && liveResources().sockets.length === 0 && __live.fetches === 0")
    client.wait_no_requests()
    started = len(client.started)
    # Nothing new: publications no longer arrive, no request starts, close() again is harmless.
    gateway.publish("room", 2)
    client.js("() => gw.close()")
    result = client.js("() => gw.publish('room', 3).then(() => 'acked', e => e.code)")
    assert result == "closed"
    client.page.wait_for_timeout(1000)  # a window in which nothing may happen
    assert client.live_resources() == {"timers": [], "sockets": [], "sources": []}
    assert len(client.events("room")) == 1
    assert client.pending_requests() == []
    assert len(client.started) == started
