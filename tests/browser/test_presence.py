"""``gw.presence()`` in Chromium on each transport: the answer of PROTOCOL section 11
(WebSocket ``presence`` command, or ``GET /presence`` on SSE and poll), counting the
page's own connection under its token's ``sub``, and a refusal passed on as its code."""

from __future__ import annotations

import pytest

from tests.browser.conftest import wait_until

SECRET = "browser-presence-secret"
CLAIMS = {"sub": "alice", "subscribe": ["room*"], "publish": ["room*"]}
TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.fixture
def secured(gateway_factory):
    return gateway_factory("--jwt-secret", SECRET)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_presence_lists_the_page_under_its_sub(client_factory, secured, transport):
    """Subscribed as alice over one transport: presence of the channel lists alice with her connection; a channel outside her permissions rejects with forbidden."""
    client = client_factory(secured)
    client.start(transports=[transport], channels=("room",), jwt={"secret": SECRET, "ttl": 3600, "claims": CLAIMS})
    client.wait_connected(transport)
    # A poll client is present while its polls come; a stream or socket from its subscription on.
    answers = []

    def present() -> bool:
        answers.append(client.js("() => window.gw.presence('room')"))
        return bool(answers[-1]["members"])

    wait_until(present, what="alice in presence")
    answer = answers[-1]
    assert answer["channel"] == "room"
    assert answer["members"] == [{"sub": "alice", "connections": 1}]
    assert answer["anonymous"] == 0
    refused = client.js(
        """() => window.gw.presence("secret").then(a => ({ok: a}), e => ({code: e.code || String(e)}))"""
    )
    assert refused == {"code": "forbidden"}
    assert client.js("() => window.errors") == []
