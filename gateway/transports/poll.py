"""Long-polling (docs/protocol.md section 6): ``GET /poll``.

A poll is a :class:`~gateway.transports.sse.ChannelSetRequest` that answers once:
with every event already there after the cursor, else with the first live one,
else with no messages when its timeout runs out.  The cursor it returns holds the
position of every listed channel (for a channel without events, where it stood
when the request arrived), so the next poll continues without a gap.

Polls keep no state on the server between requests: the cursor is all of it, so
any node can answer any poll and no sticky sessions are needed.

JSONP (``callback=NAME``) wraps every answer, errors included, as ``NAME(<json>);``
with status 200, because a script tag cannot read a status.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from gateway.core.events import dumps
from gateway.errors import BadRequest, GatewayError, Internal, Unavailable
from gateway.transports._http import (
    error_body,
    is_gone,
    query_params,
    single_param,
)
from gateway.transports.cors import CORSResource, apply_cors
from gateway.transports.sse import (
    ChannelSetRequest,
    Event,
    parse_channels,
    parse_cursor,
)

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "CALLBACK_RE", "PollResource", "HeldPoll", "parse_timeout"]

DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 60.0
CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}")
# Plain decimal seconds: float() would also take "nan", "inf", "1e3" and "1_0".
_TIMEOUT_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_timeout(value: str | None) -> float:
    """The hold time in seconds: default 25, over 60 taken as 60.

    Raises:
        BadRequest: negative or not a number.
    """
    if value is None:
        return DEFAULT_TIMEOUT
    if not _TIMEOUT_RE.fullmatch(value):
        raise BadRequest("timeout must be a number of seconds")
    seconds = float(value)
    if seconds < 0 or math.isnan(seconds):
        raise BadRequest("timeout must not be negative")
    return min(seconds, MAX_TIMEOUT)


def poll_body(messages: list[bytes], cursor: str) -> bytes:
    """``{"messages":[...],"cursor":"..."}`` from already-encoded events.

    Publications are spliced in as the bytes encoded once per publication.
    """
    return b'{"messages":[' + b",".join(messages) + b'],"cursor":' + dumps(cursor) + b"}"


def respond(request: Request, status: int, body: bytes, callback: str | None) -> None:
    """Write a poll answer (JSON, or JSONP when ``callback`` is set) and finish."""
    if is_gone(request):
        return
    if callback is None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
    else:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/javascript")
        body = callback.encode("ascii") + b"(" + body + b");"
    # Stops a browser from running a JSON answer as a script of another type.
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


class HeldPoll(ChannelSetRequest):
    """One ``GET /poll``: answered with the first events, or held until some come.

    Args:
        timeout: seconds to hold the request when nothing is there yet.
        callback: the JSONP function name, or None for plain JSON.
    """

    transport = "poll"

    def __init__(self, *args: Any, timeout: float, callback: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self.callback = callback
        self._timer: Any = None

    def _open(self, first: list[Event]) -> None:
        if first or self.timeout == 0:
            self._answer(first)
            return
        self._timer = self.gateway.reactor.callLater(self.timeout, self._timed_out)

    def _deliver(self, event: Event) -> None:
        self._answer([event])

    def _timed_out(self) -> None:
        self._timer = None
        self._answer([])

    def _answer(self, events: list[Event]) -> None:
        # Release first: nothing may arrive after the cursor has been computed.
        self.release()
        for event in events:
            self.advance(event)
        messages = [event.payload for event in events]
        body = poll_body(messages, self.cursor())
        delivered = sum(1 for event in events if event.prepared is not None)
        if delivered and not is_gone(self.request):
            self.gateway.delivered("poll", delivered)
        respond(self.request, 200, body, self.callback)

    def _refuse(self, error: GatewayError) -> None:
        respond(self.request, error.http_status, dumps(error_body(error)), self.callback)

    def _on_release(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def going_away(self) -> None:
        """Answer now with the current cursor (the node is draining)."""
        if self.released:
            return
        if not self.opened:
            self._fail(Unavailable("node is draining"))
            return
        self._answer([])


class PollResource(CORSResource):
    """``GET /poll?channel=a[&cursor=..][&timeout=25][&callback=NAME]``."""

    _log = Logger()

    def render_GET(self, request: Request) -> bytes | int:
        apply_cors(self.gateway, request)
        # The callback is checked first: once it is known to be valid, every
        # answer, errors included, is JSONP; an invalid one is a plain 400.
        params = query_params(request)
        callback = single_param(params, "callback")
        if callback is not None and not CALLBACK_RE.fullmatch(callback):
            raise BadRequest("callback must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")
        try:
            self._start(request, params, callback)
        except GatewayError as e:
            respond(request, e.http_status, dumps(error_body(e)), callback)
        except Exception:
            self._log.failure("error starting a poll")
            error = Internal("internal error")
            respond(request, error.http_status, dumps(error_body(error)), callback)
        return NOT_DONE_YET

    def _start(self, request: Request, params: dict[str, list[str]], callback: str | None) -> None:
        gateway = self.gateway
        channels = parse_channels(params)
        cursor = parse_cursor(single_param(params, "cursor"), "cursor") or {}
        timeout = parse_timeout(single_param(params, "timeout"))
        if gateway.draining:
            raise Unavailable("node is draining")
        gateway.check_connection_limit()
        if not gateway.bus.is_ready():
            raise Unavailable("the message bus is not available")
        since = {c: p for c, p in cursor.items() if c in channels}
        HeldPoll(gateway, request, channels, since, timeout=timeout, callback=callback).start()


__all__ += ["poll_body", "respond"]
