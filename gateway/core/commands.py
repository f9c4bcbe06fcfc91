"""Parsing of client commands (docs/protocol.md section 4) into typed values.

Everything a client sends passes through :func:`parse_command`, which either returns
one of the command classes below or raises a :class:`~gateway.errors.GatewayError`
carrying the request ``id`` when one could be read, so the error reply can echo it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Union

import attrs

from gateway.core.channels import validate_channel
from gateway.core.cursor import MAX_EPOCH_LENGTH
from gateway.core.events import encode_json
from gateway.core.idempotency import validate_idempotency_key
from gateway.core.model import Position
from gateway.errors import BadRequest, GatewayError

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_TOKEN_LENGTH",
    "Auth",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "Ping",
    "PresenceCommand",
    "Command",
    "CommandError",
    "has_surrogate_escape",
    "loads_json_object",
    "loads_strict",
    "parse_command",
    "parse_idempotency_key",
    "parse_publication",
    "top_level_id",
]

MAX_DEPTH = 64
MAX_ID_LENGTH = 128
MAX_TOKEN_LENGTH = 8192

RequestId = Union[str, int, float, None]


@attrs.frozen
class Auth:
    id: RequestId
    token: str


@attrs.frozen
class Subscribe:
    id: RequestId
    channel: str
    since: Position | None
    join_leave: bool = False


@attrs.frozen
class Unsubscribe:
    id: RequestId
    channel: str


@attrs.frozen
class Publish:
    id: RequestId
    channel: str
    data: Any
    idempotency_key: str | None = None


@attrs.frozen
class Ping:
    """``{"type":"ping"}``: answered ``pong`` (with the id echoed), so a client that
    cannot see WebSocket-level pings (a browser) can tell a dead connection from a
    quiet one.  Other fields are ignored."""

    id: RequestId


@attrs.frozen
class PresenceCommand:
    """``{"type":"presence","channel":..}`` (docs/protocol.md section 11), with the
    extensions ``limit`` and ``after`` (paging ``members``)."""

    id: RequestId
    channel: str
    limit: int
    after: str | None


Command = Union[Auth, Subscribe, Unsubscribe, Publish, Ping, PresenceCommand]


class CommandError(Exception):
    """A :class:`GatewayError` raised while parsing, with the request id (if readable)."""

    def __init__(self, error: GatewayError, request_id: RequestId = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e400 would become inf, which cannot be encoded back to JSON.
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


# A JSON escape of a UTF-16 surrogate (\\uD800-\\uDFFF): the only way a decoded
# document can hold a string that UTF-8 cannot encode.
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\[uU][dD][89a-fA-F]")


def has_surrogate_escape(text: str | bytes) -> bool:
    """Whether JSON text holds an escaped UTF-16 surrogate (``\\ud800``): only then
    can a decoded value hold a string that UTF-8 cannot encode."""
    if isinstance(text, bytes):
        return _SURROGATE_ESCAPE_BYTES.search(text) is not None
    return _SURROGATE_ESCAPE.search(text) is not None


def loads_strict(text: str | bytes, max_depth: int = MAX_DEPTH, encodable: bool = True) -> Any:
    """Parse JSON strictly: no NaN/Infinity, nesting at most ``max_depth``, and no
    string that cannot be sent back out as UTF-8 (an unpaired surrogate escape);
    with ``encodable`` False that last check is left to the caller (which then
    names the part of the document that holds one).

    Raises:
        BadRequest: for anything that is not such a JSON document.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as e:
        raise BadRequest(f"invalid JSON: {str(e)[:200]}") from None
    if not _depth_ok(value, max_depth):
        raise BadRequest(f"JSON nested deeper than {max_depth} levels")
    if encodable and has_surrogate_escape(text):
        # Escaped surrogate pairs decode to one character and are fine; a lone one
        # would fail at delivery, after a seq was taken.
        encode_json(value, "the JSON document")
    return value


def _skip_value(text: str, i: int) -> int:
    """Index just past the JSON value starting at ``text[i]``, without recursion
    (the value may be nested far deeper than the parser accepts)."""
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c in "[{":
            depth += 1
            i += 1
        elif c in "]}":
            depth -= 1
            i += 1
        elif depth == 0 and c in ",":
            return i
        else:
            i += 1
        if depth == 0 and c in '"]}':
            return i
        if depth < 0:
            raise ValueError("unbalanced")
    if depth:
        raise ValueError("truncated")
    return i


def top_level_id(text: str | bytes) -> Any:
    """The ``id`` member of a top-level JSON object, read without parsing its other
    members, or None.  Used to echo the id of a command refused as a whole (nested
    too deep, a number too large), so the client can match the error to its request.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    try:
        i = ws.match(text, 0).end()  # type: ignore[union-attr]
        if text[i : i + 1] != "{":
            return None
        i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
        while text[i : i + 1] == '"':
            key, i = decoder.raw_decode(text, i)
            i = ws.match(text, i).end()  # type: ignore[union-attr]
            if text[i : i + 1] != ":":
                return None
            i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
            if key == "id":
                value, _ = decoder.raw_decode(text, i)
                return value
            i = ws.match(text, _skip_value(text, i)).end()  # type: ignore[union-attr]
            if text[i : i + 1] != ",":
                return None
            i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
    except (ValueError, IndexError, RecursionError):
        return None
    return None


def loads_json_object(body: bytes, shape: str = "a JSON object", encodable: bool = True) -> dict[str, Any]:
    """Parse an HTTP request body that must be one JSON object (strictly, as
    :func:`loads_strict`, ``encodable`` included).

    Raises:
        BadRequest: for a body that is not UTF-8, not JSON, or not an object
            (``shape`` says what was expected).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    obj = loads_strict(text, encodable=encodable)
    if not isinstance(obj, dict):
        raise BadRequest(f"body must be {shape}")
    return obj


def _request_id(obj: dict[str, Any]) -> RequestId:
    if "id" not in obj:
        return None
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
        raise CommandError(BadRequest("id must be a string or a number"))
    if isinstance(rid, str) and len(rid) > MAX_ID_LENGTH:
        raise CommandError(BadRequest(f"id longer than {MAX_ID_LENGTH} characters"))
    if isinstance(rid, str):
        try:
            rid.encode("utf-8")
        except UnicodeEncodeError:
            # It could not be echoed back: refuse it without an id.
            raise CommandError(BadRequest("id is not encodable as UTF-8 (an unpaired surrogate)")) from None
    if isinstance(rid, int) and abs(rid) > 2**53 - 1:
        raise CommandError(BadRequest("id is not a safe integer"))
    if isinstance(rid, float) and not math.isfinite(rid):
        raise CommandError(BadRequest("id must be finite"))
    return rid


def _since(value: Any) -> Position:
    if not isinstance(value, dict) or set(value) - {"epoch", "seq"}:
        raise BadRequest('since must be {"epoch": <string>, "seq": <integer>}')
    epoch, seq = value.get("epoch"), value.get("seq")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise BadRequest(f"since.epoch must be a string of 1-{MAX_EPOCH_LENGTH} characters")
    if type(seq) is not int or seq < 0 or seq > 2**63:
        raise BadRequest("since.seq must be an integer >= 0")
    return Position(epoch, seq)


def parse_publication(obj: Any) -> tuple[str, Any]:
    """Validate a ``{"channel": .., "data": ..}`` object; return (channel, data)."""
    if not isinstance(obj, dict):
        raise BadRequest("a publication must be a JSON object")
    if "channel" not in obj:
        raise BadRequest("missing field: channel")
    channel = validate_channel(obj["channel"])
    if "data" not in obj:
        raise BadRequest("missing field: data")
    return channel, obj["data"]


def parse_idempotency_key(obj: dict[str, Any]) -> str | None:
    """The ``idempotency_key`` of a publication object, or None when it has none.

    Raises:
        BadRequest: for a key that is not a string of 1-64 characters (``null``
            included: a client that sends the field means to use a key).
    """
    if "idempotency_key" not in obj:
        return None
    return validate_idempotency_key(obj["idempotency_key"])


def parse_command(text: str | bytes) -> Command:
    """Parse one WebSocket text message into a command.

    Raises:
        CommandError: wrapping the :class:`GatewayError` to reply with.
    """
    try:
        obj = loads_strict(text)
    except GatewayError as e:
        rid: RequestId = None
        candidate = top_level_id(text)
        if candidate is not None:
            try:
                rid = _request_id({"id": candidate})
            except CommandError:
                rid = None
        raise CommandError(e, rid) from None
    if not isinstance(obj, dict):
        raise CommandError(BadRequest("a command must be a JSON object"))
    rid = _request_id(obj)
    try:
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise BadRequest("missing field: type (a string)")
        if kind == "subscribe":
            channel = validate_channel(_required(obj, "channel"))
            since = _since(obj["since"]) if obj.get("since") is not None else None
            join_leave = obj.get("join_leave", False)
            if not isinstance(join_leave, bool):
                raise BadRequest("join_leave must be true or false")
            return Subscribe(rid, channel, since, join_leave)
        if kind == "unsubscribe":
            return Unsubscribe(rid, validate_channel(_required(obj, "channel")))
        if kind == "publish":
            channel, data = parse_publication(obj)
            return Publish(rid, channel, data, parse_idempotency_key(obj))
        if kind == "ping":
            return Ping(rid)
        if kind == "auth":
            token = _required(obj, "token")
            if not isinstance(token, str):
                raise BadRequest("token must be a string")
            if len(token) > MAX_TOKEN_LENGTH:
                raise BadRequest(f"token longer than {MAX_TOKEN_LENGTH} characters")
            return Auth(rid, token)
        if kind == "presence":
            from gateway.core.presence import parse_presence_query

            query = parse_presence_query(_required(obj, "channel"), obj.get("limit"), obj.get("after"))
            return PresenceCommand(rid, query.channel, query.limit, query.after)
        shown = kind if len(kind) <= 32 else kind[:32] + "..."
        raise BadRequest(f"unknown command type {shown!r}")
    except GatewayError as e:
        raise CommandError(e, rid) from None


def _required(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise BadRequest(f"missing field: {name}")
    return obj[name]
