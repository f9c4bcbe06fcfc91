"""Cursors: base64url (no padding) of the JSON ``{"<channel>": ["<epoch>", <seq>]}``.

The encoding is part of the protocol (docs/protocol.md section 1) so that client libraries
can build a cursor from positions they tracked on another transport.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping

from gateway.core.channels import is_valid_channel
from gateway.core.model import Position
from gateway.errors import BadRequest

__all__ = ["MAX_CURSOR_LENGTH", "MAX_EPOCH_LENGTH", "encode_cursor", "decode_cursor"]

MAX_CURSOR_LENGTH = 4096
MAX_EPOCH_LENGTH = 64
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# Many clients hold the same cursor (every long poll of a channel after the same
# publication): the last ones encoded and decoded are remembered, bounded.
_CACHE_SIZE = 1024
_encoded: dict[tuple[str, Position], str] = {}
_decoded: dict[str, dict[str, Position]] = {}


def _remember(cache: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def encode_cursor(positions: Mapping[str, Position]) -> str:
    """Encode channel positions into a cursor string (deterministic: keys sorted)."""
    if len(positions) == 1:
        key = next(iter(positions.items()))
        cursor = _encoded.get(key)
        if cursor is None:
            cursor = _encode(positions)
            _remember(_encoded, key, cursor)
        return cursor
    return _encode(positions)


def _encode(positions: Mapping[str, Position]) -> str:
    obj = {channel: [pos.epoch, pos.seq] for channel, pos in sorted(positions.items())}
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> dict[str, Position]:
    """Decode a cursor; raise :class:`BadRequest` unless it has exactly the documented shape."""
    if not isinstance(cursor, str):
        raise BadRequest("cursor must be a string")
    positions = _decoded.get(cursor)
    if positions is None:
        positions = _decode(cursor)
        _remember(_decoded, cursor, positions)
    return dict(positions)


def _decode(cursor: str) -> dict[str, Position]:
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise BadRequest(f"cursor longer than {MAX_CURSOR_LENGTH} characters")
    if not _B64URL.fullmatch(cursor) or len(cursor) % 4 == 1:
        raise BadRequest("cursor is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        obj = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("cursor does not decode to JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("cursor must encode a JSON object")
    positions: dict[str, Position] = {}
    for channel, value in obj.items():
        if not is_valid_channel(channel):
            raise BadRequest("cursor holds an invalid channel name")
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not 0 < len(value[0]) <= MAX_EPOCH_LENGTH
            or type(value[1]) is not int
            or value[1] < 0
        ):
            raise BadRequest(f"cursor position for {channel!r} must be [\"<epoch>\", <seq >= 0>]")
        positions[channel] = Position(value[0], value[1])
    return positions
