"""gateway.js against a two-node cluster in real Chromium: two ``twistd -n gateway --redis``
processes on a real redis-server of the test's own, behind the proxy of
tests/browser/_middlebox.py acting as the load balancer (each new connection goes to
the first node that accepts it, so a dead or draining node is passed over).

* A node killed (SIGKILL) and restarted while publications flow, then the other one:
  the page's callback sees every seq once, in order, on each transport.
* A page publishing while its node dies, with acks lost on the way back just before
  (the proxy's "mute" mode), so the client must send publishes that already took
  effect again, on the other node: every publish happens once (no data value twice in
  the channel's history, none missing; the acks name distinct seqs).
* A node drained (SIGTERM: WebSockets closed with 1001): its clients come back on the
  other node, each after a delay the client drew below the 2 s spread, still on
  WebSocket, without losing or repeating a message.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any, Self

import httpx
import pytest

from tests.browser._many import count_connected, start_many, summary
from tests.browser._middlebox import middleboxes
from tests.browser.conftest import TIMEOUT, GatewayProcess, http, wait_until
from tests.e2e.support import RedisServer

TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.fixture(name="middlebox_factory")
def middlebox_factory_fixture() -> Iterator[Any]:
    yield from middleboxes()


@pytest.fixture
def redis_server(tmp_path: Any) -> Any:
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def cluster(gateway_factory: Any, redis_server: RedisServer) -> list[GatewayProcess]:
    nodes = [gateway_factory("--redis", redis_server.url, "--node-id", name, start=False) for name in ("a", "b")]
    for node in nodes:  # both start at once
        node.spawn()
    return [node.wait_ready() for node in nodes]


class ClusterPublisher:
    """Publishes {"n": 0, 1, ...} with httpx to whichever node answers, each with its own
    idempotency key, retried (same key) on the other node until acknowledged: so each
    n is published exactly once even when a node dies with the request in flight."""

    def __init__(self, nodes: list[GatewayProcess], channel: str = "room", interval: float = 0.03) -> None:
        self.nodes = nodes
        self.channel = channel
        self.interval = interval
        self.acks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as http:
            n = 0
            while not self._stop.is_set():
                body = {"channel": self.channel, "data": {"n": n}, "idempotency_key": f"n{n}"}
                for attempt in range(1000):
                    node = self.nodes[attempt % len(self.nodes)]
                    try:
                        r = http.post(node.base + "publish", json=body)
                    except httpx.TransportError:
                        continue
                    if r.status_code == 200:
                        self.acks.append(r.json())
                        break
                    self._stop.wait(0.05)
                n += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.acks) >= count, what=f"{count} publications")


def history(node: GatewayProcess, channel: str, epoch: str) -> list[dict[str, Any]]:
    """Every publication of ``channel`` in history, read with a poll from seq 0 (a cursor built by hand)."""
    cursor = base64.urlsafe_b64encode(json.dumps({channel: [epoch, 0]}).encode()).rstrip(b"=").decode()
    r = http().get(node.base + "poll", params={"channel": channel, "cursor": cursor, "timeout": "0"}, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def assert_every_seq_once_in_order(client: Any, acks: list[dict[str, Any]]) -> None:
    count = len(acks)
    try:
        client.wait_events(count, "room")
    except AssertionError as e:
        raise AssertionError(f"{e}; seqs {[ev['seq'] for ev in client.events('room')]}") from None
    events = client.events("room")
    assert [e["type"] for e in events] == ["message"] * count
    assert [e["seq"] for e in events] == [a["seq"] for a in acks] == list(range(acks[0]["seq"], acks[0]["seq"] + count))
    assert [e["data"]["n"] for e in events] == list(range(count))
    assert len({e["epoch"] for e in events}) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_killed_and_restarted_while_publications_flow(client_factory, cluster, middlebox_factory, transport):
    """The page's node is SIGKILLed (the client goes to the other one), restarted, then the other node is
    killed (the client comes back): every seq once, in order, the same epoch throughout."""
    a, b = cluster
    box = middlebox_factory(a.port, b.port)
    client = client_factory(box)
    client.start(transports=[transport])
    client.wait_connected(transport)
    assert box.arrivals and box.arrivals[-1].upstream == 0
    with ClusterPublisher([b, a]) as publisher:
        publisher.wait_for(10)
        a.kill()
        publisher.wait_for(len(publisher.acks) + 15)
        client.wait(f"window.events.length >= {len(publisher.acks)}")
        assert box.arrivals[-1].upstream == 1
        a.start()
        publisher.wait_for(len(publisher.acks) + 10)
        b.kill()
        publisher.wait_for(len(publisher.acks) + 15)
        client.wait(f"window.events.length >= {len(publisher.acks)}")
        assert box.arrivals[-1].upstream == 0
        b.start()
        publisher.wait_for(len(publisher.acks) + 10)
    assert_every_seq_once_in_order(client, publisher.acks)
    assert client.state()["transport"] == transport
    # The client did lose its node: twice on WebSocket and SSE; a poll client is at the
    # restarted node (first in the proxy's order) by the time the second node dies.
    assert [s["state"] for s in client.states()].count("reconnecting") >= (1 if transport == "poll" else 2)


PUBLISH_LOOP = """async ([channel, count, interval, pause]) => {
  // Publish {i: 0..count-1} every `interval` ms without waiting for acks; after `pause`
  // of them, wait (for their acks and) until the test calls window.resume().
  window.published = [];
  const resumed = new Promise((r) => { window.resume = r; });
  window.publishing = (async () => {
    const pending = [];
    for (let i = 0; i < count; i++) {
      if (i === pause) {
        await Promise.all(pending);
        await resumed;
      }
      pending.push(gw.publish(channel, {i: i}).then(
        (ack) => window.published.push({i: i, ack: ack}),
        (e) => window.published.push({i: i, error: e.code || String(e)})));
      await new Promise((r) => setTimeout(r, interval));
    }
    await Promise.all(pending);
  })();
}"""


def metric(node: GatewayProcess, name: str) -> float:
    for line in http().get(node.base + "metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_page_publishing_while_its_node_dies_publishes_each_once(client_factory, cluster, middlebox_factory, transport):
    """The page publishes 60 values (without waiting for acks); after the first 15 the proxy loses every
    answer on the way back for a while (publishes still reach node a and take effect: their acks are lost), then
    node a is SIGKILLed. The client sends the unacknowledged publishes again on node b, with their keys:
    every publish is acked, with distinct seqs, the channel's history holds each value exactly once, and
    node b recognised the repeats. (WebSocket publishes with the `publish` command; on SSE with
    POST /publish, through the same proxy.)"""
    a, b = cluster
    box = middlebox_factory(a.port, b.port)
    client = client_factory(box)
    client.start(transports=[transport], channels=("pubs",))
    client.wait_connected(transport)
    count = 60
    client.js(PUBLISH_LOOP, ["pubs", count, 20, 15])
    client.wait("window.published.length >= 15")
    epoch = client.js("() => window.published[0].ack.epoch")
    box.set_mode("mute")
    client.js("() => window.resume()")
    # Publishes that took effect on node a without the page hearing of it.
    wait_until(lambda: len(history(b, "pubs", epoch)) >= 20, what="publishes applied without an ack")
    assert len(client.js("() => window.published")) == 15
    # Node a out of the proxy's rotation before the answers flow again, so that every
    # retry goes to node b; then a dies.
    box.disabled.add(0)
    box.set_mode("pass")
    a.kill()
    client.wait(f"window.published.length >= {count}", timeout=2 * TIMEOUT)
    published = client.js("() => window.published")
    assert [p for p in published if "error" in p] == []
    seqs = [p["ack"]["seq"] for p in published]
    assert len(set(seqs)) == count
    stored = history(b, "pubs", epoch)
    values = [m["data"]["i"] for m in stored]
    assert sorted(values) == list(range(count)), values
    assert [m["seq"] for m in stored] == list(range(1, count + 1))
    # Each ack names the publication that holds its value.
    by_seq = {m["seq"]: m["data"]["i"] for m in stored}
    assert {p["i"]: by_seq[p["ack"]["seq"]] for p in published} == {i: i for i in range(count)}
    # The publishes whose acks were lost were sent again and recognised by node b.
    assert metric(b, "gateway_publications_deduplicated_total") >= 1
    # The page's own subscription saw them all once, in order.
    events = client.wait_events(count, "pubs")
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    assert box.arrivals[-1].upstream == 1


def test_drained_node_clients_move_to_the_other_within_the_spread(client_factory, cluster, middlebox_factory):
    """30 clients (in two pages) on node a; a is drained (SIGTERM): each client is told 1001, waits a delay
    it drew below 2 s and connects again, through the proxy, to node b, on WebSocket; no message lost or
    repeated while a publisher keeps going."""
    a, b = cluster
    box = middlebox_factory(a.port, b.port)
    pages = [client_factory(box), client_factory(box)]
    for page in pages:
        start_many(page.page, box.base, 15, _timing={"goingAwaySpread": 2000})
    wait_until(lambda: sum(count_connected(p.page) for p in pages) == 30, what="30 clients on WebSocket")
    assert len(box.arrivals_at(0, websocket=True)) == 30 and not box.arrivals_at(1, websocket=True)
    with ClusterPublisher([b]) as publisher:
        publisher.wait_for(5)
        # twistd ends with the signal it got once its shutdown (the drain) is done.
        assert a.stop() in (0, -signal.SIGTERM)
        wait_until(lambda: len(box.arrivals_at(1, websocket=True)) == 30, what="30 clients at node b")
        wait_until(lambda: sum(count_connected(p.page) for p in pages) == 30, what="30 clients connected again")
        publisher.wait_for(len(publisher.acks) + 10)
    first = publisher.acks[0]["seq"]
    last = publisher.acks[-1]["seq"]
    for page in pages:
        wait_until(lambda page=page: all(len(c["seqs"]["room"]) >= last for c in summary(page.page)), what="every message")
        for c in summary(page.page):
            # Every seq once, in order (those before the publisher started included: the channel started at 1).
            assert c["seqs"]["room"] == list(range(1, last + 1))
            going = [s for s in c["states"] if s["state"] == "reconnecting"]
            assert len(going) == 1 and 0 <= going[0]["delay"] < 2000, c["states"]
            assert [s["transport"] for s in c["states"]] == ["websocket"] * len(c["states"])
            assert c["state"]["state"] == "connected"
    assert first >= 1 and "gateway draining 30 connection(s)" in a.output()
