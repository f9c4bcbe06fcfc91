"""Transport fallback in real Chromium against real middleboxes (docs/protocol.md section 9).

The page reaches a real gateway only through the switchable proxy of
tests/browser/_middlebox.py, so each reason for falling back is a real network
behaviour, not a scripted one:

* a WebSocket upgrade refused by the proxy (400, 403): SSE at once;
* an upgrade that succeeds on a socket that never delivers anything: SSE after the
  connect timeout;
* an SSE stream held back by a buffering proxy (not even the first ``: ping`` gets
  through): long-polling after the connect timeout;

and back up: once the proxy passes the better transport again, the background retry
moves the client to it.  A publisher (httpx, straight to the gateway) keeps a numbered
stream going through every switch; the page's callback must see every seq once, in
order.  The connect timeout (10 s) and the retry period (60 s) are shortened with the
client's internal ``_timing`` option; their exact values are pinned by the
deterministic tests in test_client_timing.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Self

import httpx
import pytest

from tests.browser._middlebox import Middlebox, middleboxes
from tests.browser.conftest import TIMEOUT, GatewayProcess, wait_until

# Fast enough for a test, slow enough for a loaded 2-core machine to connect in time
# (a transport that works must get its first server event within connectTimeout).
TIMING = {"connectTimeout": round(5000 * TIMEOUT / 20), "upgradeEvery": 1500}


@pytest.fixture(name="middlebox_factory")
def middlebox_factory_fixture() -> Iterator[Any]:
    yield from middleboxes()


class Publisher:
    """Publishes {"n": 0, 1, 2, ...} on a channel with httpx, every ``interval`` s, until stopped."""

    def __init__(self, gateway: GatewayProcess, channel: str = "room", interval: float = 0.03) -> None:
        self.gateway = gateway
        self.channel = channel
        self.interval = interval
        self.acks: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            n = 0
            while not self._stop.is_set():
                r = http.post(self.gateway.base + "publish", json={"channel": self.channel, "data": {"n": n}})
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code} {r.text}")
                    return
                self.acks.append(r.json())
                n += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        """Stop and return how many were published."""
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self.errors, self.errors
        return len(self.acks)

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.acks) >= count or bool(self.errors), what=f"{count} publications")


def connected_transports(client: Any) -> list[str]:
    """The transports of the successive "connected" states, repeats folded."""
    out: list[str] = []
    for s in client.states():
        if s["state"] == "connected" and (not out or out[-1] != s["transport"]):
            out.append(s["transport"])
    return out


def assert_every_seq_once_in_order(client: Any, published: int) -> None:
    try:
        client.wait_events(published, "room")
    except AssertionError as e:
        raise AssertionError(f"{e}; seqs {[ev['seq'] for ev in client.events('room')]}") from None
    events = client.events("room")
    assert [e["type"] for e in events] == ["message"] * published
    assert [e["seq"] for e in events] == list(range(1, published + 1))
    assert [e["data"]["n"] for e in events] == list(range(published))
    assert len({e["epoch"] for e in events}) == 1


def upgrades(box: Middlebox, since: float = 0.0) -> list[str]:
    """The modes the proxy was in for each WebSocket upgrade it saw (and each SSE request)."""
    return [mode for at, mode, _, path in list(box.requests) if path.startswith("/ws") and at >= since]


@pytest.fixture
def node(gateway_factory: Any) -> GatewayProcess:
    return gateway_factory()


@pytest.mark.parametrize("status", [400, 403])
def test_refused_upgrade_falls_back_to_sse_and_moves_back_up(client_factory, node, middlebox_factory, status):
    """A proxy answering the upgrade with 400/403 (the gateway never sees it): SSE;
    when the proxy passes WebSocket again, the background retry moves the client up; seqs once, in order throughout."""
    box = middlebox_factory(node.port)
    box.set_mode("refuse", status)
    client = client_factory(box)
    client.start(_timing=TIMING)
    client.wait_connected("sse")
    # Publications from now on (earlier ones were before the client's "now").
    with Publisher(node) as publisher:
        # The upgrade was refused by the proxy (the gateway never saw it), then SSE.
        assert upgrades(box) and set(upgrades(box)) == {"refuse"}
        assert not box.arrivals_at(0, websocket=True)
        assert [s["transport"] for s in client.states() if s["state"] == "connecting"] == ["sse"]
        publisher.wait_for(len(publisher.acks) + 10)
        client.wait("window.events.length >= 5")
        box.set_mode("pass")
        client.wait_connected("websocket")
        publisher.wait_for(len(publisher.acks) + 10)
    assert_every_seq_once_in_order(client, len(publisher.acks))
    assert connected_transports(client) == ["sse", "websocket"]
    assert not [line for line in client.console if line.startswith("pageerror")]


def test_socket_that_never_delivers_falls_back_after_the_connect_timeout(client_factory, node, middlebox_factory):
    """An upgrade that succeeds on a socket swallowing every frame: no first server event within the
    connect timeout, so SSE; back on WebSocket once the proxy delivers again; seqs once, in order."""
    box = middlebox_factory(node.port)
    box.set_mode("swallow")
    client = client_factory(box)
    started = client.js("() => performance.now()")
    client.start(_timing=TIMING)
    client.wait_connected("sse")
    # The socket was opened end to end (the gateway got the upgrade), and the client waited the connect timeout.
    assert box.arrivals_at(0, websocket=True)
    went_sse = next(s for s in client.states() if s["transport"] == "sse")
    assert went_sse["at"] - started >= TIMING["connectTimeout"]
    # Publications from now on (earlier ones were before the client's "now").
    with Publisher(node) as publisher:
        publisher.wait_for(len(publisher.acks) + 10)
        box.set_mode("pass")
        client.wait_connected("websocket")
        publisher.wait_for(len(publisher.acks) + 10)
    assert_every_seq_once_in_order(client, len(publisher.acks))
    assert connected_transports(client) == ["sse", "websocket"]


def test_buffered_event_stream_falls_back_to_poll(client_factory, node, middlebox_factory):
    """A proxy refusing WebSocket and holding event streams back: SSE gets nothing (not even the first
    ': ping') within the connect timeout, so long-polling; when the proxy streams again the client moves
    up to SSE, and when it passes WebSocket too, up to WebSocket; seqs once, in order, through both moves."""
    box = middlebox_factory(node.port)
    box.set_mode("refuse+buffer")
    client = client_factory(box)
    client.start(_timing=TIMING)
    client.wait_connected("poll")
    # Publications from now on (earlier ones were before the client's "now").
    with Publisher(node) as publisher:
        assert [s["transport"] for s in client.states() if s["state"] == "connecting"] == ["sse", "poll"]
        # The stream was asked for and held back, not refused.
        assert any(mode == "refuse+buffer" and path.startswith("/sse") for _, mode, _, path in box.requests)
        publisher.wait_for(len(publisher.acks) + 10)
        box.set_mode("refuse")
        client.wait_connected("sse")
        publisher.wait_for(len(publisher.acks) + 10)
        box.set_mode("pass")
        client.wait_connected("websocket")
        publisher.wait_for(len(publisher.acks) + 10)
    assert_every_seq_once_in_order(client, len(publisher.acks))
    assert connected_transports(client) == ["poll", "sse", "websocket"]


def test_buffered_stream_with_websocket_back_moves_straight_up(client_factory, node, middlebox_factory):
    """From poll (WebSocket refused, SSE buffered), a proxy that passes everything again: the retry tries
    the best transport first and the client goes straight to WebSocket; seqs once, in order."""
    box = middlebox_factory(node.port)
    box.set_mode("refuse+buffer")
    client = client_factory(box)
    client.start(_timing=TIMING)
    client.wait_connected("poll")
    # Publications from now on (earlier ones were before the client's "now").
    with Publisher(node) as publisher:
        publisher.wait_for(len(publisher.acks) + 10)
        box.set_mode("pass")
        client.wait_connected("websocket")
        publisher.wait_for(len(publisher.acks) + 10)
    assert_every_seq_once_in_order(client, len(publisher.acks))
    assert connected_transports(client) == ["poll", "websocket"]
