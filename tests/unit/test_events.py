"""Server events (docs/protocol.md section 3) and replies (section 4)."""

from __future__ import annotations

import json

from gateway.core.events import PreparedPublication, dumps, error_event, reply, reset_event
from gateway.core.model import Position, Publication
from gateway.errors import BadRequest, Forbidden


def test_message_event_fields():
    """A publication's message event has type, channel, seq, epoch, data, ts and from."""
    pub = Publication("room:1", 42, "e7Yq", {"text": "hi"}, 1764180000123, "alice")
    expected = {"type": "message", "channel": "room:1", "seq": 42, "epoch": "e7Yq", "data": {"text": "hi"}, "ts": 1764180000123, "from": "alice"}
    assert expected == json.loads(PreparedPublication(pub).payload)


def test_message_event_without_sender_has_no_from():
    """An anonymous publication's message event has no "from" field."""
    pub = Publication("room:1", 1, "e", None, 0)
    assert False == ("from" in json.loads(PreparedPublication(pub).payload))


def test_payload_is_compact_utf8():
    """The payload is compact JSON with non-ASCII text as UTF-8, not \\u escapes."""
    pub = Publication("c", 1, "e", "caf\u00e9", 5)
    assert b'{"type":"message","channel":"c","seq":1,"epoch":"e","data":"caf\xc3\xa9","ts":5}' == PreparedPublication(pub).payload


def test_transport_form_is_built_once():
    """A transport form is built once from the payload and then reused."""
    prepared = PreparedPublication(Publication("c", 1, "e", 1, 0))
    calls = []

    def build(payload: bytes) -> bytes:
        calls.append(payload)
        return b"data: " + payload

    first, second = prepared.form("sse", build), prepared.form("sse", build)
    assert (1, True) == (len(calls), first is second)


def test_reply_echoes_id():
    """A reply carries the request id when the command had one."""
    assert {"type": "ack", "id": 7, "channel": "c", "seq": 1} == reply("ack", 7, channel="c", seq=1)


def test_reply_without_id_has_no_id():
    """A reply to a command without id has no "id" field."""
    assert {"type": "unsubscribed", "channel": "c"} == reply("unsubscribed", None, channel="c")


def test_error_event_shape():
    """An error event has type error, the id, the code and the message."""
    assert {"type": "error", "id": "r1", "code": "forbidden", "message": "no"} == error_event(Forbidden("no"), "r1")


def test_error_event_default_message_is_code():
    """An error without a message uses its code as the message."""
    assert {"type": "error", "code": "bad_request", "message": "bad_request"} == error_event(BadRequest())


def test_reset_event_shape():
    """A reset event has type reset, the channel, and the channel's epoch and latest seq."""
    assert {"type": "reset", "channel": "room:1", "epoch": "k2Pd", "seq": 17} == reset_event("room:1", Position("k2Pd", 17))


def test_dumps_is_compact_utf8():
    """dumps gives compact UTF-8 JSON."""
    assert '{"a":[1,2],"b":"\u00e9"}'.encode() == dumps({"a": [1, 2], "b": "\u00e9"})
