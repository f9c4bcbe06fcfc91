"""The middlebox of the fallback and cluster tests (tests/browser/_middlebox.py), checked
on its own with the independent ``httpx`` and ``websockets`` clients against a real
gateway: each mode does what the browser tests rely on it to do."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.sync.client import connect

from tests.browser._middlebox import Middlebox, middleboxes
from tests.browser.conftest import free_port, wait_until


@pytest.fixture(name="middlebox_factory")
def middlebox_factory_fixture() -> Iterator[Any]:
    yield from middleboxes()


def ws_url(box: Middlebox) -> str:
    return f"ws://127.0.0.1:{box.port}/ws"


def subscribe(ws, channel: str = "room") -> dict:  # type: ignore[no-untyped-def]
    ws.send(json.dumps({"type": "subscribe", "channel": channel}))
    return dict(json.loads(ws.recv(timeout=10)))


def metric(gateway, name: str) -> float:  # type: ignore[no-untyped-def]
    for line in httpx.get(gateway.base + "metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def plain(gateway_factory):  # type: ignore[no-untyped-def]
    return gateway_factory()


def test_pass_through_carries_http_and_websocket(plain, middlebox_factory):
    """pass: HTTP answers and WebSocket frames go through both ways; each request asks the upstream to close after it."""
    box = middlebox_factory(plain.port)
    assert httpx.get(box.base + "healthz").status_code == 200
    with connect(ws_url(box)) as ws:
        assert subscribe(ws)["type"] == "subscribed"
        r = httpx.post(box.base + "publish", json={"channel": "room", "data": {"n": 1}})
        assert r.status_code == 200 and r.headers["connection"].lower() == "close"
        m = json.loads(ws.recv(timeout=10))
        assert (m["type"], m["seq"], m["data"]) == ("message", 1, {"n": 1})
    assert [a.upstream for a in box.arrivals] == [0, 0, 0]
    assert [a.websocket for a in box.arrivals] == [False, True, False]


@pytest.mark.parametrize("status", [400, 403])
def test_refuse_answers_upgrades_with_the_status(plain, middlebox_factory, status):
    """refuse: a WebSocket upgrade gets 400 or 403 from the proxy (the gateway never sees it); plain HTTP still passes."""
    box = middlebox_factory(plain.port)
    box.set_mode("refuse", status)
    with pytest.raises(websockets.InvalidStatus) as info:
        connect(ws_url(box), open_timeout=10)
    assert info.value.response.status_code == status
    assert box.arrivals == []
    assert httpx.get(box.base + "healthz").status_code == 200
    box.set_mode("pass")
    with connect(ws_url(box)) as ws:
        assert subscribe(ws)["type"] == "subscribed"


def test_swallow_opens_the_socket_and_delivers_nothing(plain, middlebox_factory):
    """swallow: the handshake completes, but neither the subscribe nor any publication gets through."""
    box = middlebox_factory(plain.port)
    box.set_mode("swallow")
    # The close handshake cannot get through either: do not wait the default 10 s for it.
    with connect(ws_url(box), close_timeout=0.1) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "room"}))
        plain.publish("room", 1)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.5)
    # The gateway did get the upgrade: the socket was opened end to end.
    assert [a.websocket for a in box.arrivals] == [True]


def test_buffer_holds_event_streams_until_the_limit(plain, middlebox_factory):
    """buffer: an SSE stream shows nothing (not even the first ': ping') until buffer_limit bytes
    came, then everything at once; a poll answer passes unbuffered."""
    box = middlebox_factory(plain.port)
    box.set_mode("buffer")
    box.buffer_limit = 2000
    r = httpx.get(box.base + "poll", params={"channel": "room", "timeout": "0"})
    assert r.status_code == 200 and r.json()["messages"] == []
    # Not even the status line comes through.
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("GET", box.base + "sse", params={"channel": "room"}, timeout=httpx.Timeout(10, read=1.5)),
    ):
        pass
    # The direct stream opens at once with a block holding a ': ping'; through the proxy it is held back.
    with httpx.stream("GET", plain.base + "sse", params={"channel": "room"}, timeout=10) as direct:
        assert b": ping\n\n" in next(direct.iter_bytes())
    received: list[bytes] = []

    def read_held_stream() -> None:
        with httpx.stream("GET", box.base + "sse", params={"channel": "room"}, timeout=10) as stream:
            for chunk in stream.iter_bytes():
                received.append(chunk)
                if b'"n":0' in b"".join(received):
                    return

    reader = threading.Thread(target=read_held_stream)
    reader.start()
    # The headers are held back too: publish once the stream request has reached the gateway.
    wait_until(lambda: len([a for a in box.arrivals if a.path.startswith("/sse")]) == 2, what="the second stream")
    wait_until(lambda: metric(plain, 'gateway_connections{transport="sse"}') == 1, what="the stream to open")
    for n in range(20):
        plain.publish("room", {"n": n, "pad": "x" * 100})
    reader.join(10)
    body = b"".join(received)
    # The opening block (the stream's position and a ': ping'), then the events, all at once.
    assert body.index(b": ping\n\n") < body.index(b'"n":0')


def test_drop_cuts_open_connections_and_refuses_new_ones(plain, middlebox_factory):
    box = middlebox_factory(plain.port)
    with connect(ws_url(box)) as ws:
        assert subscribe(ws)["type"] == "subscribed"
        box.set_mode("drop")
        with pytest.raises(websockets.ConnectionClosed):
            ws.recv(timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(box.base + "healthz")
    box.set_mode("pass")
    assert httpx.get(box.base + "healthz").status_code == 200


def test_upstreams_are_tried_in_order(plain, middlebox_factory):
    """A refused connect to the first upstream moves on to the next; no upstream at all is a 502."""
    box = middlebox_factory(free_port(), plain.port)
    assert httpx.get(box.base + "healthz").status_code == 200
    assert [a.upstream for a in box.arrivals] == [1]
    box.upstreams = [free_port()]
    assert httpx.get(box.base + "healthz").status_code == 502


def test_mute_loses_answers_but_not_requests(plain, middlebox_factory):
    """mute: a publish sent on a WebSocket open when the proxy is muted takes effect (a direct subscriber
    gets it) but its ack never comes back; switching back leaves that socket muted, a new one works."""
    box = middlebox_factory(plain.port)
    with connect(ws_url(box)) as muted, connect(plain.base.replace("http", "ws") + "ws") as direct:
        assert subscribe(direct)["type"] == "subscribed"
        assert subscribe(muted)["type"] == "subscribed"
        box.set_mode("mute")
        muted.send(json.dumps({"type": "publish", "channel": "room", "data": "lost ack", "id": 1}))
        m = json.loads(direct.recv(timeout=10))
        assert (m["type"], m["seq"], m["data"]) == ("message", 1, "lost ack")
        box.set_mode("pass")
        plain.publish("room", "second")
        assert json.loads(direct.recv(timeout=10))["seq"] == 2
        with pytest.raises(TimeoutError):
            muted.recv(timeout=1.5)
        with connect(ws_url(box)) as fresh:
            assert subscribe(fresh)["seq"] == 2
    # A request made while muted: the publish happens, the answer is lost (the connection ends without it).
    box.set_mode("mute")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(box.base + "publish", json={"channel": "room", "data": "third"}, timeout=10)
    box.set_mode("pass")
    r = httpx.get(box.base + "poll", params={"channel": "room", "timeout": "0"})
    assert r.status_code == 200
    assert json.loads(base64.urlsafe_b64decode(r.json()["cursor"] + "==="))["room"][1] == 3
