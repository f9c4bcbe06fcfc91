"""Server events (docs/protocol.md section 3) and their encodings.

A publication is encoded once per node (:class:`PreparedPublication`); transports
derive their own framing from that one encoding and cache it on the object, so
every subscriber of a transport gets the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.core.model import Position, Publication
from gateway.errors import BadRequest, GatewayError

__all__ = ["PreparedPublication", "dumps", "encode_json", "reply", "error_event", "reset_event"]

T = TypeVar("T")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding used on every transport."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_json(value: Any, what: str = "data") -> bytes:
    """Encode ``value`` as :func:`dumps` does, or raise :class:`BadRequest`.

    This is the check every broker makes before a publication takes a seq: data
    that cannot go out on the wire (a string with an unpaired surrogate such as
    ``"\\ud800"``, NaN, an object that is not JSON) is refused up front instead of
    being stored and then failing at delivery.
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not encodable as UTF-8 JSON (a string holds an unpaired surrogate)") from None
    except (TypeError, ValueError, RecursionError) as e:
        raise BadRequest(f"{what} is not JSON: {str(e)[:200]}") from None


class PreparedPublication:
    """A publication with its JSON ``message`` event encoded once.

    Attributes:
        publication: the publication.
        payload: the UTF-8 JSON of its ``message`` event.
        ws_frame: the whole unmasked, uncompressed WebSocket text frame of
            ``payload``, set by the first WebSocket that sends it (None until then):
            the one value the per-subscriber fan-out needs, read without a call.
        sse_single: likewise for SSE streams of this channel alone: the whole
            event with its ``id:`` line, the same as one HTTP/1.1 chunk, and the
            publication's position (the stream's after it).
    """

    __slots__ = ("publication", "payload", "_forms", "ws_frame", "sse_single")

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        self.payload = dumps(publication.to_event())
        self._forms: dict[str, Any] = {}
        self.ws_frame: bytes | None = None
        self.sse_single: tuple[bytes, bytes, Position] | None = None

    def form(self, key: str, build: Callable[[bytes], T]) -> T:
        """Return the transport form ``key``, building it from the payload once."""
        try:
            return self._forms[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._forms[key] = build(self.payload)
            return value


def reply(kind: str, request_id: Any = None, **fields: Any) -> dict[str, Any]:
    """A reply event with ``id`` echoed when the command had one."""
    event: dict[str, Any] = {"type": kind}
    if request_id is not None:
        event["id"] = request_id
    event.update(fields)
    return event


def error_event(error: GatewayError, request_id: Any = None) -> dict[str, Any]:
    return reply("error", request_id, code=error.code, message=error.message)


def reset_event(channel: str, position: Position) -> dict[str, Any]:
    return {"type": "reset", "channel": channel, "epoch": position.epoch, "seq": position.seq}
