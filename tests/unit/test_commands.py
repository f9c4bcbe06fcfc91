"""WebSocket command parsing (docs/protocol.md section 4): typed values, echoed ids and
``bad_request`` for everything malformed."""

from __future__ import annotations

import json

import pytest

from gateway.core.commands import (
    Auth,
    CommandError,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    loads_strict,
    parse_command,
    parse_publication,
)
from gateway.core.model import Position
from gateway.errors import BadRequest


def rejection(text: str | bytes) -> tuple[str, object]:
    """Parse ``text`` expecting a CommandError; return (error code, request id)."""
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert isinstance(info.value.error, BadRequest)
    return info.value.error.code, info.value.request_id


def cmd(**fields: object) -> str:
    return json.dumps(fields)


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- commands parsed to typed values ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (cmd(type="auth", token="abc.def.ghi"), Auth(None, "abc.def.ghi")),
        (cmd(type="subscribe", channel="room:1"), Subscribe(None, "room:1", None)),
        (cmd(type="subscribe", channel="room:1", since=None), Subscribe(None, "room:1", None)),
        (
            cmd(type="subscribe", channel="room:1", since={"epoch": "e7Yq", "seq": 41}),
            Subscribe(None, "room:1", Position("e7Yq", 41)),
        ),
        (cmd(type="subscribe", channel="c", since={"epoch": "e", "seq": 0}), Subscribe(None, "c", Position("e", 0))),
        (cmd(type="unsubscribe", channel="room:1"), Unsubscribe(None, "room:1")),
        (cmd(type="publish", channel="room:1", data={"text": "hi"}), Publish(None, "room:1", {"text": "hi"})),
        (cmd(type="publish", channel="room:1", data=None), Publish(None, "room:1", None)),
        (cmd(type="publish", channel="room:1", data=[1, "two", 3.5, True]), Publish(None, "room:1", [1, "two", 3.5, True])),
        (cmd(type="publish", channel="room:1", data="text"), Publish(None, "room:1", "text")),
    ],
    ids=[
        "auth",
        "subscribe",
        "subscribe-since-null",
        "subscribe-since",
        "subscribe-since-seq-0",
        "unsubscribe",
        "publish-object",
        "publish-data-null",
        "publish-array",
        "publish-string",
    ],
)
def test_command_parsed_to_typed_value(text, expected):
    """Each valid command becomes its typed value."""
    assert expected == parse_command(text)


def test_command_given_as_utf8_bytes_is_parsed():
    """A command given as UTF-8 bytes parses like the same text."""
    assert Publish(None, "c", "caf\u00e9") == parse_command('{"type":"publish","channel":"c","data":"caf\u00e9"}'.encode())


def test_publish_from_field_is_not_carried():
    """A client-supplied "from" is not part of the parsed publish (the server sets it)."""
    assert Publish(None, "c", 1) == parse_command(cmd(type="publish", channel="c", data=1, **{"from": "mallory"}))


@pytest.mark.parametrize("rid", ["req-1", "", "x" * 128, 7, 0, -3, 2**53 - 1, 1.5], ids=repr)
def test_id_is_echoed_on_success(rid):
    """A string or number id (strings up to 128 characters) is carried on the parsed command."""
    assert rid == parse_command(cmd(type="unsubscribe", channel="c", id=rid)).id


# -- errors carry the id when it was readable ---------------------------------


@pytest.mark.parametrize(
    "text",
    [
        cmd(id="r1", type="nope", channel="c"),
        cmd(id="r1", channel="c"),
        cmd(id="r1", type=None),
        cmd(id="r1", type=5),
        cmd(id="r1", type="subscribe"),
        cmd(id="r1", type="subscribe", channel=5),
        cmd(id="r1", type="subscribe", channel="a b"),
        cmd(id="r1", type="subscribe", channel="c", since={"epoch": "e"}),
        cmd(id="r1", type="auth", token=5),
        cmd(id="r1", type="publish", channel="c"),
    ],
    ids=[
        "unknown-type",
        "missing-type",
        "type-null",
        "type-number",
        "missing-channel",
        "channel-number",
        "bad-channel",
        "bad-since",
        "token-number",
        "missing-data",
    ],
)
def test_error_echoes_string_id(text):
    """A rejected command with a readable string id carries it in CommandError.request_id."""
    assert ("bad_request", "r1") == rejection(text)


def test_error_echoes_numeric_id():
    """A rejected command with a readable numeric id carries it in CommandError.request_id."""
    assert ("bad_request", 42) == rejection(cmd(id=42, type="unknown"))


def test_error_without_id_has_no_request_id():
    """A rejected command without an id has request_id None."""
    assert ("bad_request", None) == rejection(cmd(type="unknown"))


# -- malformed documents --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"type":"auth","token":"t"',
        "{'type':'auth'}",
        '{"type":"auth","token":"t"} trailing',
        b'{"type":"publish","channel":"c","data":"\xff"}',
    ],
    ids=["empty", "open-brace", "unterminated", "single-quotes", "trailing-garbage", "not-utf8"],
)
def test_invalid_json_is_bad_request(text):
    """Text that is not one JSON document is bad_request (no id is readable)."""
    assert ("bad_request", None) == rejection(text)


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        '{"id":"r1","type":"publish","channel":"c","data":NaN}',
        '{"id":"r1","type":"publish","channel":"c","data":Infinity}',
        '{"id":"r1","type":"publish","channel":"c","data":[1,-Infinity]}',
        '{"id":NaN,"type":"unsubscribe","channel":"c"}',
    ],
    ids=["NaN", "Infinity", "-Infinity", "data-NaN", "data-Infinity", "nested--Infinity", "id-NaN"],
)
def test_nan_and_infinity_are_bad_request(text):
    """The non-standard JSON constants NaN and Infinity are rejected (echoing a readable top-level id)."""
    assert ("bad_request", "r1" if '"id":"r1"' in text else None) == rejection(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"id":"r1","type":"publish","channel":"c","data":1e400}',
        '{"id":"r1","type":"publish","channel":"c","data":-1e400}',
        '{"id":"r1","type":"publish","channel":"c","data":{"x":[1E999]}}',
    ],
    ids=["1e400", "-1e400", "nested-1E999"],
)
def test_number_overflowing_to_infinity_is_bad_request(text):
    """A JSON number too large for a float (it would become inf, re-encoded as Infinity) is rejected."""
    assert "bad_request" == rejection(text)[0]


@pytest.mark.parametrize("text", ["1e400", "-1e400", '{"data":[2e308]}'], ids=["1e400", "-1e400", "nested-2e308"])
def test_loads_strict_rejects_number_overflowing_to_infinity(text):
    """loads_strict (also used by POST /publish) rejects a number that would parse to +-inf."""
    with pytest.raises(BadRequest):
        loads_strict(text)


@pytest.mark.parametrize("text", ["[]", '["subscribe"]', '"subscribe"', "1", "1.5", "null", "true"])
def test_non_object_json_is_bad_request(text):
    """A JSON document that is not an object is bad_request."""
    assert ("bad_request", None) == rejection(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "subscribe"},
        {"type": "subscribe", "channel": None},
        {"type": "subscribe", "channel": 5},
        {"type": "subscribe", "channel": ["c"]},
        {"type": "unsubscribe"},
        {"type": "unsubscribe", "channel": 5},
        {"type": "publish", "data": 1},
        {"type": "publish", "channel": 5, "data": 1},
        {"type": "publish", "channel": "c"},
        {"type": "auth"},
        {"type": "auth", "token": None},
        {"type": "auth", "token": 5},
        {"type": "auth", "token": ["t"]},
        {"type": "auth", "token": "t" * 8193},
    ],
    ids=[
        "subscribe-no-channel",
        "subscribe-channel-null",
        "subscribe-channel-number",
        "subscribe-channel-list",
        "unsubscribe-no-channel",
        "unsubscribe-channel-number",
        "publish-no-channel",
        "publish-channel-number",
        "publish-no-data",
        "auth-no-token",
        "auth-token-null",
        "auth-token-number",
        "auth-token-list",
        "auth-token-too-long",
    ],
)
def test_missing_or_wrongly_typed_field_is_bad_request(fields):
    """A command missing a required field or with a wrongly typed one is bad_request."""
    assert ("bad_request", "x") == rejection(json.dumps({"id": "x", **fields}))


@pytest.mark.parametrize(
    "since",
    [
        [],
        "e7Yq:41",
        41,
        {},
        {"epoch": "e"},
        {"seq": 1},
        {"epoch": 1, "seq": 1},
        {"epoch": None, "seq": 1},
        {"epoch": "", "seq": 1},
        {"epoch": "e" * 65, "seq": 1},
        {"epoch": "e", "seq": -1},
        {"epoch": "e", "seq": 1.5},
        {"epoch": "e", "seq": 1.0},
        {"epoch": "e", "seq": "1"},
        {"epoch": "e", "seq": True},
        {"epoch": "e", "seq": None},
        {"epoch": "e", "seq": 2**64},
        {"epoch": "e", "seq": 1, "extra": 1},
    ],
    ids=repr,
)
def test_malformed_since_is_bad_request(since):
    """A since that is not {"epoch": 1-64 chars, "seq": integer >= 0} is bad_request."""
    assert ("bad_request", "x") == rejection(cmd(id="x", type="subscribe", channel="c", since=since))


@pytest.mark.parametrize(
    "channel",
    ["", "a" * 201, "room:*", "room:?", "room 1", "caf\u00e9", "\u623f\u95f4", "a\n", "a#b"],
    ids=["empty", "201-chars", "star", "question-mark", "space", "accented", "cjk", "newline", "hash"],
)
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "publish"])
def test_bad_channel_name_is_bad_request(kind, channel):
    """A channel name outside ^[A-Za-z0-9_\\-:.@/=+]{1,200}$ is bad_request in every command."""
    assert ("bad_request", "x") == rejection(cmd(id="x", type=kind, channel=channel, data=1))


def test_channel_of_200_characters_is_accepted():
    """A channel name of exactly 200 characters is accepted."""
    assert "a" * 200 == parse_command(cmd(type="subscribe", channel="a" * 200)).channel


# -- ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_id",
    [
        '"' + "x" * 129 + '"',
        '"' + "x" * 100_000 + '"',
        str(2**53 + 1),
        str(-(2**53 + 1)),
        "1" + "0" * 300,
        "1e400",
        "true",
        "false",
        "{}",
        '{"a":1}',
        "[]",
        '["r1"]',
    ],
    ids=["str-129", "str-100000", "2**53+1", "-(2**53+1)", "10**300", "1e400", "true", "false", "empty-object", "object", "empty-list", "list"],
)
def test_unacceptable_id_is_bad_request(raw_id):
    """An id that is not a short string or a safe finite number is bad_request (and not echoed)."""
    assert ("bad_request", None) == rejection('{"id":' + raw_id + ',"type":"unsubscribe","channel":"c"}')


# -- nesting ------------------------------------------------------------------


def test_loads_strict_accepts_64_levels():
    """loads_strict accepts 64 nested containers (the top-level one counts as level 1)."""
    assert json.loads(nested_lists(64)) == loads_strict(nested_lists(64))


def test_loads_strict_rejects_65_levels():
    """loads_strict rejects 65 nested containers with BadRequest."""
    with pytest.raises(BadRequest):
        loads_strict(nested_lists(65))


def test_loads_strict_counts_objects_as_levels():
    """Nested objects count like lists: 65 levels of objects are rejected."""
    with pytest.raises(BadRequest):
        loads_strict('{"a":' * 64 + "{}" + "}" * 64)


def test_loads_strict_scalar_below_deepest_container_is_fine():
    """A scalar inside 64 containers does not count as a 65th level."""
    text = "[" * 64 + "1" + "]" * 64
    assert json.loads(text) == loads_strict(text)


def test_loads_strict_honours_max_depth_argument():
    """loads_strict(max_depth=2) rejects three nested levels."""
    with pytest.raises(BadRequest):
        loads_strict("[[[]]]", max_depth=2)


def test_command_with_data_at_64_levels_is_accepted():
    """The command object is level 1, so data nested 63 deep (64 in all) is accepted."""
    text = '{"type":"publish","channel":"c","data":' + nested_lists(63) + "}"
    assert json.loads(text)["data"] == parse_command(text).data


def test_command_with_data_at_65_levels_is_rejected():
    """Data nested 64 deep (65 levels with the command object) is bad_request."""
    text = '{"type":"publish","channel":"c","data":' + nested_lists(64) + "}"
    assert ("bad_request", None) == rejection(text)


@pytest.mark.parametrize(
    "text",
    [
        nested_lists(100_000),
        "[" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"type":"publish","channel":"c","data":' + nested_lists(100_000) + "}",
    ],
    ids=["lists", "unclosed-lists", "objects", "in-data"],
)
def test_enormous_nesting_is_bad_request_not_recursion_error(text):
    """100,000 nested levels give bad_request, not RecursionError."""
    assert ("bad_request", None) == rejection(text)


def test_enormous_nesting_as_bytes_is_bad_request():
    """100,000 nested lists given as bytes give bad_request, not RecursionError."""
    assert ("bad_request", None) == rejection(nested_lists(100_000).encode())


# -- parse_publication (shared with POST /publish) ----------------------------


def test_parse_publication_returns_channel_and_data():
    """parse_publication returns (channel, data), data null included."""
    assert ("room:1", None) == parse_publication({"channel": "room:1", "data": None})


@pytest.mark.parametrize(
    "obj",
    [None, [], "c", {"data": 1}, {"channel": "c"}, {"channel": 5, "data": 1}, {"channel": "room:*", "data": 1}],
    ids=["null", "list", "string", "no-channel", "no-data", "channel-number", "bad-channel"],
)
def test_parse_publication_rejects_malformed(obj):
    """parse_publication raises BadRequest for a non-object, a missing field or a bad channel."""
    with pytest.raises(BadRequest):
        parse_publication(obj)


# -- the top-level id of a command refused as a whole, and unencodable strings --------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.core.commands import top_level_id  # noqa: E402
from gateway.core.events import encode_json  # noqa: E402
from gateway.errors import BadRequest as _BadRequest  # noqa: E402


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"id": 5}', 5),
        (' {\n"a" : {"id": 1, "x": "}\\"{"} , "id":"two"}', "two"),
        ('{"a":[[[' + "[" * 500 + "]" * 500 + ']]],"id":3.5}', 3.5),
        ('{"x":"\\\\","id":"after-escaped-backslash"}', "after-escaped-backslash"),
        ('{"x":1}', None),
        ("[1,2]", None),
        ('"id"', None),
        ('{"a":[1,2', None),
        ("{oops", None),
        (b'{"id":"\xff"}', None),
        (b'{"id":"bytes"}', "bytes"),
        ("", None),
    ],
)
def test_top_level_id_reads_only_the_top_level_member(text, expected):
    assert top_level_id(text) == expected


@given(st.dictionaries(st.text(max_size=5), st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=10), max_size=4), st.one_of(st.integers(), st.text(max_size=8)))
def test_top_level_id_agrees_with_the_parser(obj, rid):
    """For any object the scanner finds the same top-level id json.loads does."""
    import json as _json

    obj = {**obj, "id": rid}
    text = _json.dumps(obj, ensure_ascii=bool(len(obj) % 2))
    assert top_level_id(text) == _json.loads(text)["id"]


@pytest.mark.parametrize("value", ["\ud800", ["ok", {"k": "\udfff"}], {"\ud83d": 1}, float("nan"), float("inf"), {1}, object()])
def test_encode_json_refuses_what_cannot_go_on_the_wire(value):
    with pytest.raises(_BadRequest):
        encode_json(value)


def test_encode_json_accepts_astral_characters_and_matches_dumps():
    from gateway.core.events import dumps

    value = {"t": "\U0001f600 ünï", "n": [1, 2.5, None, True]}
    assert encode_json(value) == dumps(value)


@pytest.mark.parametrize(
    "text,rid",
    [
        ('{"type":"publish","channel":"c","data":"\\ud800","id":1}', 1),
        ('{"type":"publish","channel":"c","data":"x","id":"\\udc00"}', None),
        ('{"type":"publish","channel":"c","data":"\\ud83d\\ude00","id":2}', "ok"),
    ],
)
def test_parse_command_refuses_lone_surrogates_with_the_id_when_it_can(text, rid):
    if rid == "ok":
        assert parse_command(text).data == "\U0001f600"
        return
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert info.value.error.code == "bad_request"
    assert info.value.request_id == rid


# -- ping (docs/protocol.md section 4) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (cmd(type="ping"), Ping(None)),
        (cmd(type="ping", id=7), Ping(7)),
        (cmd(type="ping", id="p-1"), Ping("p-1")),
        (cmd(type="ping", id=1.5), Ping(1.5)),
        (cmd(type="ping", id="x", channel="ignored", data=[1]), Ping("x")),
    ],
    ids=["no-id", "int-id", "string-id", "float-id", "other-fields-ignored"],
)
def test_ping_is_parsed(text, expected):
    assert expected == parse_command(text)


@pytest.mark.parametrize("raw_id", [True, None, [1], {"a": 1}, "x" * 129, 2**53])
def test_ping_with_unacceptable_id_is_bad_request(raw_id):
    """A ping's id follows the rules of every command's id; an explicit null id is refused too."""
    assert ("bad_request", None) == rejection(json.dumps({"type": "ping", "id": raw_id}))


def test_ping_type_is_case_sensitive():
    assert ("bad_request", 3) == rejection(cmd(type="PING", id=3))


# -- idempotency_key on publish (docs/protocol.md section 4) ----------------------


def test_publish_carries_its_idempotency_key():
    assert Publish(1, "c", {"a": 1}, "k-1") == parse_command(cmd(type="publish", channel="c", data={"a": 1}, idempotency_key="k-1", id=1))
    assert Publish(1, "c", None, "x" * 64) == parse_command(cmd(type="publish", channel="c", data=None, idempotency_key="x" * 64, id=1))
    assert Publish(1, "c", 1, None) == parse_command(cmd(type="publish", channel="c", data=1, id=1))


@pytest.mark.parametrize("key", [None, "", "x" * 65, 7, True, ["k"], {"k": 1}], ids=["null", "empty", "65-chars", "number", "bool", "list", "object"])
def test_publish_with_a_bad_idempotency_key_is_bad_request_with_the_id(key):
    assert ("bad_request", "p") == rejection(cmd(type="publish", channel="c", data=1, idempotency_key=key, id="p"))


def test_publish_with_a_lone_surrogate_key_is_bad_request_with_the_id():
    assert ("bad_request", "p") == rejection('{"type":"publish","channel":"c","data":1,"idempotency_key":"\\ud800","id":"p"}')


def test_idempotency_key_is_ignored_on_other_commands():
    assert Subscribe(None, "c", None) == parse_command(cmd(type="subscribe", channel="c", idempotency_key=""))
