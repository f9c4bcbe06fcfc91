"""Cursors (docs/protocol.md section 1): base64url without padding of the UTF-8 JSON
``{"<channel>": ["<epoch>", <seq>]}``, at most 4,096 characters."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.channels import CHANNEL_RE
from gateway.core.cursor import MAX_CURSOR_LENGTH, decode_cursor, encode_cursor
from gateway.core.model import Position
from gateway.errors import BadRequest


def b64(raw: bytes) -> str:
    """base64url without padding, built independently of the code under test."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def cursor_of(text: str) -> str:
    return b64(text.encode("utf-8"))


channels = st.from_regex(CHANNEL_RE, fullmatch=True)
# Any text of 1-64 characters (Hypothesis never generates lone surrogates here).
epochs = st.text(min_size=1, max_size=64)
positions = st.builds(Position, epochs, st.integers(min_value=0, max_value=2**63))
# At most 4 channels: even the longest names and epochs then fit in 4,096 characters.
position_maps = st.dictionaries(channels, positions, max_size=4)


@settings(max_examples=150, deadline=None)
@given(position_maps)
def test_round_trip(mapping):
    """decode_cursor(encode_cursor(m)) == m for any valid channels and positions."""
    cursor = encode_cursor(mapping)
    assert mapping == decode_cursor(cursor)


@settings(max_examples=100, deadline=None)
@given(position_maps)
def test_encoding_is_url_safe_ascii_without_padding(mapping):
    """Every encoded cursor uses only the base64url alphabet, with no '=' padding."""
    cursor = encode_cursor(mapping)
    assert set() == set(cursor) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        # '{"room:1":["e7Yq",41]}' is 22 bytes: base64 ends with '==', which is stripped.
        ({"room:1": Position("e7Yq", 41)}, "eyJyb29tOjEiOlsiZTdZcSIsNDFdfQ"),
        # '{"a":["??>",7]}' encodes to a '_' where standard base64 has '/'.
        ({"a": Position("??>", 7)}, "eyJhIjpbIj8_PiIsN119"),
        # '{"room:1":["k2Pd?>",17]}' encodes to a '-' where standard base64 has '+'.
        ({"room:1": Position("k2Pd?>", 17)}, "eyJyb29tOjEiOlsiazJQZD8-IiwxN119"),
    ],
)
def test_exact_encoding(positions, expected):
    """The encoding is exactly base64url, unpadded, of the compact JSON object."""
    assert expected == encode_cursor(positions)


def test_decodes_cursor_built_by_a_client_library():
    """A client-built cursor (spaces, \\u escapes, any key order) decodes to its positions."""
    text = json.dumps({"b": ["\u00e9poque", 3], "a": ["e1", 0]}, ensure_ascii=True, indent=1)
    assert {"a": Position("e1", 0), "b": Position("\u00e9poque", 3)} == decode_cursor(cursor_of(text))


def test_empty_object_is_a_valid_cursor():
    """The cursor of no positions, '{}', decodes to an empty mapping."""
    assert {} == decode_cursor(cursor_of("{}"))


def test_longest_epoch_is_accepted():
    """An epoch of exactly 64 characters is accepted."""
    assert {"a": Position("e" * 64, 1)} == decode_cursor(cursor_of('{"a":["' + "e" * 64 + '",1]}'))


def test_cursor_of_exactly_max_length_is_accepted():
    """A valid cursor of exactly 4,096 characters (3,072 bytes of JSON) is accepted."""
    text = '{"a":["e",1]' + " " * (3072 - 13) + "}"
    cursor = cursor_of(text)
    assert (MAX_CURSOR_LENGTH, {"a": Position("e", 1)}) == (len(cursor), decode_cursor(cursor))


_TOO_LONG_JSON = '{"a":["e",1],' + ",".join(f'"c{i}":["e",1]' for i in range(400)) + "}"


MALFORMED = {
    "standard alphabet '+'": "eyJhIjpbImUiLDFdfQ+",
    "standard alphabet '/'": "eyJhIjpbIj8/PiIsN119",
    "character outside base64": "eyJhIjpbImUiLDFdfQ!",
    "padding characters": "eyJyb29tOjEiOlsiZTdZcSIsNDFdfQ==",
    "single padding character": "eyJyb29tOjEiOlsiZTdZcX4iLDQxXX0=",
    "trailing newline": cursor_of('{"a":["e",1]}') + "\n",
    "length 1 mod 4": "eyJhI",
    "one character": "e",
    "not UTF-8": b64(b'{"a":["\xff\xfe",1]}'),
    "empty string (no JSON)": "",
    "not JSON": cursor_of("hello"),
    "truncated JSON": cursor_of('{"a":["e",1]'),
    "JSON array": cursor_of('[["e",1]]'),
    "JSON string": cursor_of('"a"'),
    "JSON number": cursor_of("1"),
    "JSON null": cursor_of("null"),
    "position an object": cursor_of('{"a":{"epoch":"e","seq":1}}'),
    "position a 1-list": cursor_of('{"a":["e"]}'),
    "position a 3-list": cursor_of('{"a":["e",1,2]}'),
    "position a string": cursor_of('{"a":"e"}'),
    "epoch a number": cursor_of('{"a":[1,1]}'),
    "epoch null": cursor_of('{"a":[null,1]}'),
    "epoch empty": cursor_of('{"a":["",1]}'),
    "epoch 65 characters": cursor_of('{"a":["' + "e" * 65 + '",1]}'),
    "seq negative": cursor_of('{"a":["e",-1]}'),
    "seq float": cursor_of('{"a":["e",1.0]}'),
    "seq exponent float": cursor_of('{"a":["e",1e3]}'),
    "seq bool": cursor_of('{"a":["e",true]}'),
    "seq string": cursor_of('{"a":["e","1"]}'),
    "seq null": cursor_of('{"a":["e",null]}'),
    "seq NaN": cursor_of('{"a":["e",NaN]}'),
    "seq Infinity": cursor_of('{"a":["e",Infinity]}'),
    "top-level NaN": cursor_of("NaN"),
    "channel empty": cursor_of('{"":["e",1]}'),
    "channel with '*'": cursor_of('{"room:*":["e",1]}'),
    "channel with space": cursor_of('{"a b":["e",1]}'),
    "channel non-ASCII": cursor_of('{"caf\u00e9":["e",1]}'),
    "channel 201 characters": cursor_of('{"' + "a" * 201 + '":["e",1]}'),
    "over 4096 characters": cursor_of(_TOO_LONG_JSON),
    "4097 characters of base64url": "A" * 4097,
}


@pytest.mark.parametrize("cursor", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_cursor_is_bad_request(cursor):
    """Every cursor that does not decode to the documented shape is rejected with BadRequest."""
    with pytest.raises(BadRequest):
        decode_cursor(cursor)


def test_oversize_example_is_really_oversize():
    """The oversize example above is over 4,096 characters (guards the table)."""
    assert True == (len(cursor_of(_TOO_LONG_JSON)) > MAX_CURSOR_LENGTH)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1500 + "]" * 1500,
        '{"a":' + "[" * 1500 + "]" * 1500 + "}",
        '{"a":["e",' + "[" * 1500 + "]" * 1500 + "]}",
    ],
    ids=["nested-arrays", "nested-position", "nested-seq"],
)
def test_deeply_nested_cursor_within_size_limit_is_bad_request(text):
    """A cursor of deeply nested JSON (under 4,096 characters) is BadRequest, not RecursionError."""
    cursor = cursor_of(text)
    assert True == (len(cursor) <= MAX_CURSOR_LENGTH)
    with pytest.raises(BadRequest):
        decode_cursor(cursor)


def test_non_string_cursor_is_bad_request():
    """A cursor that is not a str (e.g. bytes) is rejected with BadRequest."""
    with pytest.raises(BadRequest):
        decode_cursor(b"e30")  # type: ignore[arg-type]
