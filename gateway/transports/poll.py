"""Long-polling (docs/protocol.md section 6): ``GET /poll``.

A poll is a :class:`~gateway.transports.sse.ChannelSetRequest` that answers once:
with every event already there after the cursor, else with the first live one,
else with no messages when its timeout runs out.  The cursor it returns holds the
position of every listed channel (for a channel without events, where it stood
when the request arrived), so the next poll continues without a gap.

Polls keep no state on the server between requests: the cursor is all of it, so
any node can answer any poll and no sticky sessions are needed.

Authentication is the shared step of :class:`~gateway.transports.sse.ChannelSetRequest`;
a held poll whose token expires is answered at that moment with its cursor, and one
whose identity is revoked gets a 403.  A JSONP poll authenticates only with its
``token=`` parameter, never with cookies or ``Authorization``.

JSONP (``callback=NAME``) wraps every answer, errors included, as ``NAME(<json>);``
with status 200, because a script tag cannot read a status.
"""

from __future__ import annotations

import math
import re
from typing import Any

from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from gateway.core.cursor import encode_cursor
from gateway.core.events import dumps
from gateway.core.presence import parse_client_id
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Internal,
    Unauthorized,
    Unavailable,
)
from gateway.transports._auth import respond, respond_error
from gateway.transports._http import (
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
    parse_join_leave,
)

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


_POLL_SINGLE = "poll-1"


def _single_channel_body(channel: str, prepared: Any) -> Any:
    def build(payload: bytes) -> bytes:
        return poll_body([payload], encode_cursor({channel: prepared.publication.position}))

    return build


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

    @property
    def jsonp(self) -> bool:
        return self.callback is not None

    def _open(self, first: list[Event]) -> None:
        if first or self.timeout == 0:
            self._answer(first)
            return
        self._timer = self.gateway.deadlines.call_later(self.timeout, self)
        # Held: what twisted.web keeps of the arrived request is not needed (memory),
        # if it is still held in a moment.
        self.gateway.slimming.hold(self, self.request)

    def _deliver(self, event: Event) -> None:
        self._answer([event])

    def on_deadline(self) -> None:
        """The timeout passed (:class:`~gateway.transports._deadlines.Deadlines`)."""
        self._timed_out()

    def _timed_out(self) -> None:
        self._timer = None
        self._answer([])

    def _answer(self, events: list[Event]) -> None:
        # Release first: nothing may arrive after the cursor has been computed.
        self.release()
        for event in events:
            self.advance(event)
        prepared = events[0].prepared if len(events) == 1 else None
        if prepared is not None and len(self.channels) == 1:
            # One publication for a poll of its channel alone: the cursor after it is
            # the publication's own position, so the body is the same for every such
            # poll and is built once.
            body = prepared.form(_POLL_SINGLE, _single_channel_body(self.channels[0], prepared))
        else:
            body = poll_body([event.payload for event in events], self.cursor())
        delivered = sum(1 for event in events if event.prepared is not None)
        if delivered and not is_gone(self.request):
            self.gateway.delivered("poll", delivered)
        respond(self.request, 200, body, self.callback)

    def _refuse(self, error: GatewayError) -> None:
        respond_error(self.request, error, self.callback)

    # A poll client is present while its polls keep coming: held polls count by
    # sub (or client= when anonymous), and stay --presence-ttl after they end.
    def _count_presence(self, presence: Any, channel: str, sub: str | None) -> None:
        presence.poll_started(channel, sub, self.client)

    def _uncount_presence(self, presence: Any, channel: str, sub: str | None) -> None:
        presence.poll_ended(channel, sub, self.client)

    def _on_release(self) -> None:
        if self._timer is not None:
            self.gateway.deadlines.cancel(self._timer)
            self._timer = None
        self.gateway.slimming.release(self)

    def expired(self) -> None:
        """The token expired while held: answered now with its cursor (the next
        request with that token is a 401)."""
        if self.released:
            return
        if not self.opened:
            self._fail(Unauthorized("the token has expired"))
            return
        self._answer([])

    def revoked(self) -> None:
        """The identity was revoked: a 403."""
        if self.released:
            return
        self.release()
        respond_error(self.request, Forbidden("this identity was revoked"), self.callback)

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
            respond_error(request, e, callback)
        except Exception:
            self._log.failure("error starting a poll")
            respond_error(request, Internal("internal error"), callback)
        return NOT_DONE_YET

    def _start(self, request: Request, params: dict[str, list[str]], callback: str | None) -> None:
        gateway = self.gateway
        channels = parse_channels(params)
        cursor = parse_cursor(single_param(params, "cursor"), "cursor") or {}
        timeout = parse_timeout(single_param(params, "timeout"))
        if gateway.draining:
            raise Unavailable("node is draining")
        unavailable = gateway.bus.unavailable(channels)
        if unavailable is not None:
            # Only the channels whose Redis shard is down: the others go on.
            raise unavailable
        join_leave = parse_join_leave(single_param(params, "join_leave"))
        client = parse_client_id(single_param(params, "client"))
        since = {c: p for c, p in cursor.items() if c in channels}
        HeldPoll(gateway, request, channels, since, join_leave=join_leave, client=client, timeout=timeout, callback=callback).start()


__all__ += ["poll_body", "respond"]
