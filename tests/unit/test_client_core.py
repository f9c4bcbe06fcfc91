"""The client's sans-I/O pieces (gateway.core.client) on plain values."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.core.client import (
    Backoff,
    Liveness,
    Positions,
    SSEEvent,
    SSEParser,
    jwt_exp,
    refresh_delay,
)
from gateway.core.cursor import decode_cursor
from gateway.core.model import Position


def message(channel: str, epoch: str, seq: int) -> dict:
    return {"type": "message", "channel": channel, "epoch": epoch, "seq": seq, "data": seq}


def reset(channel: str, epoch: str, seq: int) -> dict:
    return {"type": "reset", "channel": channel, "epoch": epoch, "seq": seq}


# -- Positions ------------------------------------------------------------------------


def test_positions_deliver_new_messages_and_drop_repeats():
    """Messages above the position are delivered once; at or below it they are dropped."""
    p = Positions()
    assert [p.accept(message("a", "E", s)) for s in (1, 2, 2, 1, 3)] == [True, True, False, False, True]
    assert p.get("a") == Position("E", 3)


def test_positions_are_per_channel():
    p = Positions()
    assert p.accept(message("a", "E", 5))
    assert p.accept(message("b", "E", 1))
    assert not p.accept(message("a", "E", 5))
    assert p.get("b") == Position("E", 1)


def test_a_message_of_another_epoch_is_delivered():
    """After a reset to a new epoch (seq 0), its seq 1 is new."""
    p = Positions()
    p.accept(message("a", "E1", 9))
    assert p.accept(reset("a", "E2", 0))
    assert p.accept(message("a", "E2", 1))
    assert p.get("a") == Position("E2", 1)


def test_reset_forward_in_the_same_epoch_is_delivered_and_moves_the_position():
    p = Positions()
    p.accept(message("a", "E", 2))
    assert p.accept(reset("a", "E", 10))
    assert not p.accept(message("a", "E", 10))
    assert p.accept(message("a", "E", 11))


def test_reset_that_does_not_move_forward_is_dropped():
    p = Positions()
    p.accept(message("a", "E", 5))
    assert not p.accept(reset("a", "E", 5))
    assert not p.accept(reset("a", "E", 3))
    assert p.get("a") == Position("E", 5)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "subscribed", "channel": "a", "epoch": "E", "seq": 1},
        {"type": "message", "channel": "a", "epoch": "E", "seq": "1"},
        {"type": "message", "channel": "a", "epoch": 5, "seq": 1},
        {"type": "message", "epoch": "E", "seq": 1},
        {"type": "message", "channel": "a", "epoch": "E", "seq": True},
    ],
)
def test_malformed_or_other_events_are_not_accepted(event):
    p = Positions()
    assert not p.accept(event)
    assert p.get("a") is None


def test_subscribed_sets_only_a_missing_position():
    p = Positions()
    p.subscribed("a", "E", 7)
    assert p.get("a") == Position("E", 7)
    p.subscribed("a", "E", 9)  # with a position, the messages that follow move it
    assert p.get("a") == Position("E", 7)
    assert not p.accept(message("a", "E", 7))
    assert p.accept(message("a", "E", 8))


def test_since_and_forget():
    p = Positions()
    assert p.since("a") is None
    p.set("a", Position("E", 4))
    assert p.since("a") == {"epoch": "E", "seq": 4}
    p.forget("a")
    assert p.since("a") is None


def test_cursor_is_built_from_positions_in_the_protocol_encoding():
    """PROTOCOL section 1: base64url without padding of {"<channel>": ["<epoch>", seq]}."""
    p = Positions()
    p.set("room:1", Position("E1", 4))
    p.set("room:2", Position("E2", 0))
    p.set("other", Position("E3", 9))
    cursor = p.cursor(["room:1", "room:2", "unknown"])
    assert "=" not in cursor
    raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert raw == {"room:1": ["E1", 4], "room:2": ["E2", 0]}
    assert decode_cursor(cursor) == {"room:1": Position("E1", 4), "room:2": Position("E2", 0)}
    assert p.cursor(["unknown"]) is None


# -- Backoff --------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_and_capped():
    """random() * min(30, 0.5 * 2**attempt): with random() = 1 the ceiling itself."""
    b = Backoff(lambda: 1.0)
    assert [b.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_jitter_scales_the_ceiling():
    values = iter([0.0, 0.5, 0.25])
    b = Backoff(lambda: next(values))
    assert [b.next_delay() for _ in range(3)] == [0.0, 0.5, 0.5]


def test_backoff_resets_after_a_stable_connection_only():
    b = Backoff(lambda: 1.0)
    for _ in range(4):
        b.next_delay()
    b.connected(100.0)
    b.disconnected(129.9)  # not stable: keeps growing
    assert b.next_delay() == 8
    b.connected(200.0)
    b.disconnected(230.0)
    assert b.next_delay() == 0.5


def test_backoff_after_1001_is_a_random_delay_up_to_2_s_and_does_not_count():
    b = Backoff(lambda: 0.75)
    assert b.next_delay(going_away=True) == 1.5
    assert b.attempt == 0
    assert Backoff(lambda: 0.999).next_delay(going_away=True) < 2.0


# -- token refresh --------------------------------------------------------------------


def test_refresh_30_s_before_exp():
    assert refresh_delay(exp=1000 + 3600, now=1000) == 3570


def test_refresh_halfway_for_short_tokens():
    assert refresh_delay(exp=1040, now=1000) == 20
    assert refresh_delay(exp=1000 + 59.9, now=1000) == pytest.approx(29.95)


def test_refresh_of_an_expired_token_is_now():
    assert refresh_delay(exp=990, now=1000) == 0


def _jwt(payload: object) -> str:
    enc = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'HS256'})}.{enc(payload)}.sig"


def test_jwt_exp_reads_the_claim_without_verifying():
    assert jwt_exp(_jwt({"sub": "a", "exp": 1764180000})) == 1764180000.0


@pytest.mark.parametrize(
    "token",
    ["an-api-key", "a.b", _jwt({"sub": "a"}), _jwt({"exp": "soon"}), _jwt({"exp": True}), _jwt([1]), "x.!!!.y", "x.bm90IGpzb24.y"],
)
def test_jwt_exp_is_none_without_a_usable_exp(token):
    assert jwt_exp(token) is None


# -- Liveness -------------------------------------------------------------------------


def test_liveness_pings_once_when_quiet_then_declares_dead():
    live = Liveness(ping_after=20, dead_after=45, now=0)
    assert live.next_check(0) == 20
    assert live.check(19) == "ok"
    assert live.check(20) == "ping"
    assert live.check(21) == "ok"  # one ping per quiet spell
    assert live.next_check(21) == 24
    assert live.check(45) == "dead"


def test_liveness_traffic_postpones_everything():
    live = Liveness(ping_after=20, dead_after=45, now=0)
    assert live.check(20) == "ping"
    live.seen(30)
    assert live.check(44) == "ok"
    assert live.next_check(44) == 6
    assert live.check(50) == "ping"
    assert live.check(75) == "dead"


def test_liveness_without_ping_only_watches_for_death():
    live = Liveness(ping_after=None, dead_after=45, now=10)
    assert live.next_check(10) == 45
    assert live.check(54) == "ok"
    assert live.check(55) == "dead"


# -- SSE parser -----------------------------------------------------------------------


STREAM = (
    b"id: c1\nevent: message\ndata: {\"seq\":1}\n\n"
    b": ping\n\n"
    b"event: reset\r\nid: c2\r\ndata: {\"seq\":0}\r\n\r\n"
    b"event: error\rdata: line1\rdata: line2\r\r"
    b"data:nospace\n\n"
)
EXPECTED = [
    SSEEvent("message", '{"seq":1}', "c1"),
    SSEEvent("reset", '{"seq":0}', "c2"),
    SSEEvent("error", "line1\nline2", None),
    SSEEvent("message", "nospace", None),
]


def test_sse_parser_whole_stream():
    parser = SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.comments == 1
    assert parser.last_id == "c2"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_sse_parser_any_chunking(size):
    """CRLF split across chunks, a CR at a chunk's end: the same events."""
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i : i + size])
    assert events == EXPECTED
    assert parser.comments == 1


def test_sse_parser_ignores_unknown_fields_and_empty_blocks():
    parser = SSEParser()
    assert parser.feed(b"retry: 10\nfoo: bar\n\n\n\n") == []
    assert parser.feed(b"data: x\n") == []  # not dispatched until the blank line
    assert parser.feed(b"\n") == [SSEEvent("message", "x", None)]


# -- WebSocket adapter helpers ----------------------------------------------------------


def test_upgrade_status_from_autobahn_reason():
    from gateway.client._ws import upgrade_status

    assert upgrade_status("WebSocket connection upgrade failed [403]: Forbidden") == 403
    assert upgrade_status("WebSocket connection upgrade failed [503]: ") == 503
    assert upgrade_status("peer dropped the TCP connection without previous WebSocket closing handshake") is None
    assert upgrade_status(None) is None


@pytest.mark.parametrize(
    "base, expected",
    [
        ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws"),
        ("https://gw.example/", "wss://gw.example/ws"),
        ("https://gw.example/prefix/", "wss://gw.example/prefix/ws"),
    ],
)
def test_ws_url(base, expected):
    from gateway.client._ws import ws_url

    assert ws_url(base) == expected
