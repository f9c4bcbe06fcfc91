"""The client's timing on a Clock, with scripted connections in place of sockets:
backoff schedule, the 1001 delay, connect-timeout fallback, dead-connection detection,
token refresh ahead of exp, publish retry and timeout, close() leaving nothing."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.client import Client, ClientError
from gateway.core.model import Position


class FakeConn:
    """Records what the client asks of a connection; the test reports back for it."""

    def __init__(self, client: Client, kind: str, token: str | None) -> None:
        self.client = client
        self.kind = kind
        self.token = token
        self.can_ping = kind == "websocket"
        self.can_refresh = kind == "websocket"
        self.streaming = True
        self.ready = self.was_ready = self.refused = False
        self.sent: list[tuple] = []
        self.aborted = False
        self.closed = False

    def open(self) -> None:
        self.sent.append(("open",))

    def subscribe(self, channel: str) -> None:
        self.sent.append(("subscribe", channel, self.client.positions.since(channel)))

    def unsubscribe(self, channel: str) -> None:
        self.sent.append(("unsubscribe", channel))

    def publish(self, pending: Any) -> None:
        if pending.sent_on is self:
            return
        pending.sent_on = self
        self.sent.append(("publish", pending.key, pending.channel, pending.data))

    def ping(self) -> None:
        self.sent.append(("ping",))

    def refresh(self, token: str) -> None:
        self.sent.append(("refresh", token))

    def abort(self) -> None:
        self.aborted = True
        self.lost()

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    # test side
    def up(self) -> None:
        self.ready = self.was_ready = True
        self.client.conn_ready(self)

    def lost(self, code: int | None = None, error: Any = None) -> None:
        self.ready = False
        self.client.conn_lost(self, code, error)


class ScriptedClient(Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conns: list[FakeConn] = []

    def _make_connection(self, kind: str, token: str | None) -> FakeConn:
        conn = FakeConn(self, kind, token)
        self.conns.append(conn)
        return conn


def make(clock: Clock, **kwargs: Any) -> ScriptedClient:
    kwargs.setdefault("random", lambda: 1.0)
    client = ScriptedClient("http://gw.example/", reactor=clock, **kwargs)
    client.states = []  # type: ignore[attr-defined]
    client.on_state(client.states.append)  # type: ignore[attr-defined]
    return client


def delays(client: Any) -> list[float]:
    return [s["delay"] for s in client.states if s["state"] == "reconnecting"]


def test_reconnect_delays_double_with_full_jitter_up_to_30_s():
    clock = Clock()
    client = make(clock)
    client.connect()
    for _ in range(9):
        client.conns[-1].lost()
        clock.advance(delays(client)[-1])
    assert delays(client) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert len(client.conns) == 10
    client.close()
    assert clock.getDelayedCalls() == []


def test_jitter_comes_from_the_injected_random():
    clock = Clock()
    values = iter([0.1, 0.5, 0.9])
    client = make(clock, random=lambda: next(values))
    client.connect()
    for _ in range(3):
        client.conns[-1].lost()
        clock.advance(delays(client)[-1])
    assert delays(client) == pytest.approx([0.05, 0.5, 1.8])
    client.close()


def test_backoff_resets_after_30_s_stable():
    clock = Clock()
    client = make(clock)
    client.connect()
    for _ in range(3):
        client.conns[-1].lost()
        clock.advance(delays(client)[-1])
    client.conns[-1].up()
    clock.advance(30)
    client.conns[-1].lost()
    assert delays(client)[-1] == 0.5
    client.close()


def test_going_away_1001_waits_a_random_delay_up_to_2_s():
    clock = Clock()
    client = make(clock, random=lambda: 0.25)
    client.connect()
    client.conns[-1].up()
    client.conns[-1].lost(1001)
    assert delays(client) == [0.5]
    clock.advance(0.49)
    assert len(client.conns) == 1
    clock.advance(0.01)
    assert len(client.conns) == 2
    client.close()


def test_connect_timeout_falls_back_to_sse_for_good():
    clock = Clock()
    client = make(clock, connect_timeout=10)
    client.connect()
    assert client.conns[0].kind == "websocket"
    clock.advance(9.9)
    assert not client.conns[0].aborted
    clock.advance(0.1)
    assert client.conns[0].aborted and client.conns[0].refused
    clock.advance(0)
    assert client.conns[1].kind == "sse"
    client.conns[1].up()
    client.conns[1].lost()
    clock.advance(delays(client)[-1])
    assert client.conns[2].kind == "sse"
    client.close()


def test_a_refused_upgrade_falls_back_but_a_network_failure_does_not():
    clock = Clock()
    client = make(clock)
    client.connect()
    client.conns[0].lost()  # e.g. connection refused: same transport, backoff
    clock.advance(delays(client)[-1])
    assert client.conns[1].kind == "websocket"
    client.conns[1].refused = True
    client.conns[1].lost()
    clock.advance(0)
    assert client.conns[2].kind == "sse"
    client.close()


def test_resubscribes_with_since_after_a_reconnect():
    clock = Clock()
    client = make(clock)
    got: list[dict] = []
    client.subscribe("a", got.append)
    conn = client.conns[0]
    conn.up()
    assert ("subscribe", "a", None) in conn.sent
    client.conn_subscribed(conn, "a", Position("E", 3))
    client.conn_event(conn, {"type": "message", "channel": "a", "epoch": "E", "seq": 4})
    conn.lost()
    clock.advance(delays(client)[-1])
    conn2 = client.conns[1]
    conn2.up()
    assert ("subscribe", "a", {"epoch": "E", "seq": 4}) in conn2.sent
    # a repeat of seq 4 after the resume is dropped; the old connection is ignored
    client.conn_event(conn2, {"type": "message", "channel": "a", "epoch": "E", "seq": 4})
    client.conn_event(conn, {"type": "message", "channel": "a", "epoch": "E", "seq": 9})
    client.conn_event(conn2, {"type": "message", "channel": "a", "epoch": "E", "seq": 5})
    assert [e["seq"] for e in got] == [4, 5]
    client.close()


def test_dead_websocket_pings_when_idle_then_reconnects():
    clock = Clock()
    client = make(clock, heartbeat=20)
    client.connect()
    conn = client.conns[0]
    conn.up()
    clock.advance(19)
    client.conn_traffic(conn)  # something arrived at 19
    clock.advance(19.9)
    assert ("ping",) not in conn.sent
    clock.advance(0.1)  # quiet for 20 s
    assert conn.sent.count(("ping",)) == 1
    clock.advance(24.9)
    assert not conn.aborted
    clock.advance(0.1)  # quiet for 2 * 20 + 5 s
    assert conn.aborted
    assert client.state == "reconnecting"
    client.close()


def test_an_sse_client_without_subscriptions_has_nothing_to_watch():
    clock = Clock()
    client = make(clock, heartbeat=1, transports=("sse",))
    client.connect()
    conn = client.conns[0]
    conn.streaming = False
    conn.up()
    assert clock.getDelayedCalls() == []
    client.close()


def test_dead_sse_stream_without_heartbeat_reconnects():
    clock = Clock()
    client = make(clock, heartbeat=1, transports=("sse",))
    client.connect()
    conn = client.conns[0]
    conn.up()
    clock.advance(6.9)
    assert not conn.aborted and ("ping",) not in conn.sent
    clock.advance(0.1)
    assert conn.aborted
    client.close()


def test_websocket_token_refreshed_in_place_30_s_before_exp():
    clock = Clock()
    clock.advance(1000)
    tokens = iter(["t1", "t2", "t3"])
    client = make(clock, token=lambda: next(tokens), heartbeat=10000)
    client.connect()
    conn = client.conns[0]
    assert conn.token == "t1"
    conn.up()
    client.conn_authenticated(conn, 1000 + 3600)
    clock.advance(3569)
    assert not [s for s in conn.sent if s[0] == "refresh"]
    clock.advance(1)
    assert ("refresh", "t2") in conn.sent
    client.conn_authenticated(conn, 1000 + 3570 + 40)  # a short token: halfway
    clock.advance(19.9)
    assert ("refresh", "t3") not in conn.sent
    clock.advance(0.1)
    assert ("refresh", "t3") in conn.sent
    assert len(client.conns) == 1
    client.close()


def test_sse_token_refresh_reconnects_with_a_new_token():
    clock = Clock()
    clock.advance(1000)
    tokens = iter(["t1", "t2"])
    client = make(clock, token=lambda: next(tokens), transports=("sse",), heartbeat=10000)
    client.connect()
    conn = client.conns[0]
    conn.up()
    client.conn_authenticated(conn, 1100)
    clock.advance(70)
    assert conn.aborted
    assert client.conns[1].token == "t2"
    client.close()


def test_a_string_token_is_never_refreshed():
    clock = Clock()
    client = make(clock, token="fixed")
    client.connect()
    client.conns[0].up()
    client.conn_authenticated(client.conns[0], 100)
    assert not [c for c in clock.getDelayedCalls() if "refresh" in repr(c.func)]
    client.close()


def test_publish_is_sent_again_after_a_reconnect_with_the_same_key():
    clock = Clock()
    client = make(clock)
    d = client.publish("a", {"x": 1})
    conn = client.conns[0]
    conn.up()
    (first,) = [s for s in conn.sent if s[0] == "publish"]
    conn.lost()
    clock.advance(delays(client)[-1])
    conn2 = client.conns[1]
    conn2.up()
    (second,) = [s for s in conn2.sent if s[0] == "publish"]
    assert first == second and len(first[1]) == 32
    client.conn_acked(first[1], {"type": "ack", "channel": "a", "seq": 7, "epoch": "E"})
    assert d.result == {"channel": "a", "seq": 7, "epoch": "E"}
    client.close()


def test_publish_times_out_with_a_clear_error():
    clock = Clock()
    client = make(clock, publish_timeout=30)
    d = client.publish("a", 1)
    failures: list = []
    d.addErrback(failures.append)
    clock.advance(29.9)
    assert not failures
    clock.advance(0.1)
    assert failures[0].value.code == "timeout"
    client.close()


def test_publish_refused_fails_with_the_server_code():
    clock = Clock()
    client = make(clock)
    d = client.publish("a", 1)
    client.conns[0].up()
    key = next(s for s in client.conns[0].sent if s[0] == "publish")[1]
    client.conn_publish_failed(key, ClientError("forbidden", "no"))
    failures: list = []
    d.addErrback(failures.append)
    assert failures[0].value.code == "forbidden"
    client.close()


@pytest.mark.parametrize("data", [float("nan"), object(), "\ud800"])
def test_publish_of_data_that_is_not_json_is_bad_request(data):
    client = make(Clock())
    failures: list = []
    client.publish("a", data).addErrback(failures.append)
    assert failures[0].value.code == "bad_request"
    assert client.conns == []
    client.close()


@pytest.mark.parametrize("channel", ["", "has space", "a*", "x" * 201, 5])
def test_invalid_channel_names_are_bad_request(channel):
    client = make(Clock())
    with pytest.raises(ClientError) as e:
        client.subscribe(channel, print)
    assert e.value.code == "bad_request"
    failures: list = []
    client.publish(channel, 1).addErrback(failures.append)
    assert failures[0].value.code == "bad_request"
    client.close()


@pytest.mark.parametrize("url", ["ftp://gw/", "gw.example", "http://", "http://gw:port/"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        Client(url, reactor=Clock())


def test_refused_identity_ends_the_client():
    clock = Clock()
    client = make(clock)
    closed: list = []
    client.when_closed().addErrback(closed.append)
    d = client.publish("a", 1)
    d.addErrback(lambda f: None)
    client.connect()
    client.conns[0].up()
    client.conns[0].lost(4003)
    assert closed[0].value.code == "forbidden"
    assert client.states[-1]["state"] == "closed"
    assert clock.getDelayedCalls() == []


def test_4001_before_working_is_unauthorized_but_after_is_a_reconnect():
    clock = Clock()
    client = make(clock)
    client.connect()
    client.conns[0].up()
    client.conns[0].lost(4001)  # the token expired: reconnect, fresh token
    assert client.state == "reconnecting"
    clock.advance(delays(client)[-1])
    closed: list = []
    client.when_closed().addErrback(closed.append)
    client.conns[1].lost(4001)
    assert closed[0].value.code == "unauthorized"


def test_close_leaves_no_timers_and_fails_pending_publishes():
    clock = Clock()
    client = make(clock, token=lambda: "t")
    client.subscribe("a", print)
    d = client.publish("a", 1)
    client.conns[0].up()
    client.conn_authenticated(client.conns[0], clock.seconds() + 3600)
    assert clock.getDelayedCalls()
    failures: list = []
    d.addErrback(failures.append)
    closed = client.close()
    assert closed.called
    assert client.conns[0].closed
    assert clock.getDelayedCalls() == []
    assert failures[0].value.code == "closed"
    assert client.states[-1] == {"state": "closed", "transport": "websocket", "delay": None}
    with pytest.raises(ClientError):
        client.subscribe("b", print)


def test_unsubscribe_forgets_the_channel():
    clock = Clock()
    client = make(clock)
    got: list = []
    sub = client.subscribe("a", got.append)
    conn = client.conns[0]
    conn.up()
    sub.unsubscribe()
    sub.unsubscribe()
    assert conn.sent.count(("unsubscribe", "a")) == 1
    client.conn_event(conn, {"type": "message", "channel": "a", "epoch": "E", "seq": 1})
    assert got == [] and client.positions.get("a") is None
    client.close()


def test_reopening_an_sse_stream_leaves_one_connect_timer():
    clock = Clock()
    client = make(clock, transports=("sse",))
    client.connect()
    client.conn_reopen(client.conns[0])
    client.conn_reopen(client.conns[1])
    assert len(client.conns) == 3
    assert len(clock.getDelayedCalls()) == 1
    client.close()
    assert clock.getDelayedCalls() == []
