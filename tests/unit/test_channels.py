"""Channel names (docs/protocol.md section 1) and permission patterns (section 8)."""

from __future__ import annotations

import pytest

from gateway.core.channels import is_valid_channel, pattern_matches, validate_channel
from gateway.errors import BadRequest

VALID = [
    "a",
    "room:1",
    "A-Z_a-z.0-9",
    "user@example.com",
    "path/to/thing",
    "k=v+w",
    "-_:.@/=+",
    "a" * 200,
]

INVALID = [
    "",
    "a" * 201,
    "room:*",
    "room:?",
    "room 1",
    " room",
    "room\t1",
    "room\n",
    "a#b",
    "a,b",
    "a%20b",
    "a\\b",
    "caf\u00e9",
    "\u623f\u95f4",
    "\uff41",  # fullwidth a
    "\u0661",  # Arabic-Indic digit one
    "a\x00",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_name_is_valid(name):
    """A name of 1-200 characters from A-Z a-z 0-9 _ - : . @ / = + is valid."""
    assert True == is_valid_channel(name)


@pytest.mark.parametrize("name", INVALID, ids=repr)
def test_invalid_name_is_invalid(name):
    """A name that is empty, too long or has any other character is invalid."""
    assert False == is_valid_channel(name)


@pytest.mark.parametrize("name", [None, 1, b"room", ["room"]], ids=repr)
def test_non_string_is_invalid(name):
    """Only strings can be channel names."""
    assert False == is_valid_channel(name)


@pytest.mark.parametrize("name", VALID)
def test_validate_channel_returns_valid_name(name):
    """validate_channel returns a valid name unchanged."""
    assert name == validate_channel(name)


@pytest.mark.parametrize("name", INVALID + [None, 1, b"room"], ids=repr)
def test_validate_channel_rejects_invalid_name(name):
    """validate_channel raises BadRequest for an invalid name or a non-string."""
    with pytest.raises(BadRequest):
        validate_channel(name)


def test_validate_channel_message_of_long_name_is_shortened():
    """The error for an enormous name does not echo the whole name."""
    with pytest.raises(BadRequest) as info:
        validate_channel("#" * 10_000)
    assert True == (len(info.value.message) < 300)


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("room:*", "room:1", True),
        ("room:*", "room:lobby:general", True),
        ("room:*", "room:", True),
        ("room:*", "room", False),
        ("room:*", "rooms:1", False),
        ("room:*", "lobby:room:1", False),
        ("*", "anything/at@all", True),
        ("*:admin", "room:admin", True),
        ("*:admin", "room:admins", False),
        ("room:?", "room:1", True),
        ("room:?", "room:12", False),
        ("room:?", "room:", False),
        ("room:??", "room:12", True),
        ("user:?*", "user:a", True),
        ("user:?*", "user:", False),
        ("room:1", "room:1", True),
        ("room:1", "room:10", False),
        ("room.1", "roomx1", False),
        ("a+b", "aab", False),
        ("a+b", "a+b", True),
        ("k=v", "k=v", True),
        ("Room:*", "room:1", False),
    ],
)
def test_pattern_matching(pattern, channel, expected):
    """'*' matches any run (even empty), '?' exactly one character, everything else literally."""
    assert expected == pattern_matches(pattern, channel)
