"""Token functions across expiry, over real sockets in Chromium: a gateway with
--jwt-secret and short-lived tokens (4 s, minted in the page); publications flow until
the page has refreshed three times (past the first tokens' expiry) and every one arrives
once, in order, without the connection ever failing. On WebSocket the refresh is an `auth` on the same socket."""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import TIMEOUT

SECRET = "browser-test-secret"
KEY = "browser-test-api-key"
CLAIMS = {"sub": "alice", "subscribe": ["room*"], "publish": ["room*"]}
TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.fixture
def secured(gateway_factory):
    return gateway_factory("--jwt-secret", SECRET, "--jwt-leeway", "0", "--api-key", KEY, "--heartbeat", "2")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_short_lived_tokens_refresh_without_loss_or_repeat(client_factory, secured, transport):
    """4 s tokens until three refreshes (past the first token's exp): refreshed about every 2 s, never a reconnect, seqs 1..N once in order, page publishes acked as alice."""
    client = client_factory(secured)
    client.start(transports=[transport], channels=("room",), jwt={"secret": SECRET, "ttl": 4, "claims": CLAIMS})
    client.wait_connected(transport)
    auth = {"Authorization": f"Bearer {KEY}"}
    seq = 0
    # Publications flow until the page has refreshed three times: each refresh comes halfway
    # through the current token's 3-4 s (whole seconds), so the third one is at least 4.5 s
    # in, after the first token has expired (and as the second one does).
    deadline = time.monotonic() + TIMEOUT
    while len(client.js("() => window.refreshes")) < 3:
        assert time.monotonic() < deadline, client.js("() => window.refreshes")
        seq = secured.publish("room", {"n": seq + 1}, headers=auth)["seq"]
        client.wait_events(seq, "room")  # paces the loop: each publication is seen before the next
        time.sleep(0.2)  # spread the publications over the token lifetimes
    result = client.publish("room", {"from": "page"})
    assert "ack" in result, result
    events = client.wait_events(seq + 1, "room")
    assert [e["seq"] for e in events] == list(range(1, seq + 2))
    assert events[-1]["from"] == "alice"
    refreshes = client.js("() => window.refreshes")
    assert len(refreshes) >= 3, refreshes
    assert {r["transport"] for r in refreshes} == {transport}
    assert client.js("() => window.tokensIssued") >= 4
    states = client.states()
    assert [s["state"] for s in states if s["state"] != "connected"] in ([], ["connecting"]), states
    assert client.js("() => window.errors") == []
    if transport == "websocket":
        # In place: one WebSocket for the whole run.
        assert client.js("() => __live.socketsCreated") == 1
