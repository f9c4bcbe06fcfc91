"""Server-Sent Events (docs/protocol.md section 5): ``GET /sse``, and the base it shares
with long-polling.

Theory of operation
-------------------
An SSE stream and a long poll are both *one HTTP request subscribed to a set of
channels*, positioned by a cursor.  :class:`ChannelSetRequest` is that shared
part (poll.py builds on it, as Nchan builds its EventSource subscriber on its
long-poll one):

0. the request is authenticated (docs/protocol.md section 8: ``Authorization``,
   ``token=``, cookies; a JSONP poll only ``token=``), and its identity must be
   permitted to subscribe to every listed channel, else the answer is a JSON 401,
   403 (naming the channel) or 503 and nothing is subscribed.  The identity lives
   in a :class:`~gateway.transports._session.ClientSession` until the request
   ends: at its ``exp`` the subclass's ``expired()`` is called (an SSE stream
   sends ``event: error`` ``unauthorized`` and ends; a held poll is answered with
   its cursor), and on revocation ``revoked()`` (``forbidden``; a held poll 403);
1. the request's channels are subscribed on the bus, each from its position in
   the cursor when it has one, else from "now";
2. nothing is written until *every* subscription is live, so errors (503 when the
   bus cannot subscribe) are still plain JSON, and "now" is fixed before the
   response starts;
3. then the start of each channel is known (``SubscribeResult``): a ``reset``
   when the position could not be continued, the missed publications when it
   could; those come first, resets before anything else, then whatever was
   published while subscribing;
4. after that, live events flow as the bus delivers them.  Each event advances
   the request's positions; the cursor after an event is those positions.

``request.notifyFinish()`` ends it all: whether the response finished or the
client went away, every subscription and timer is released at once and the
connection is unregistered from the gateway.

The SSE ``event:``/``data:`` block of a publication is built once per publication
(:meth:`PreparedPublication.form`) and shared by every stream; only the ``id:``
line, which carries each stream's own cursor, is written per connection.

A stream of one channel needs not even that: the cursor after a publication is
the publication's own position, so the whole event, ``id:`` line and HTTP/1.1
chunk framing included, is the same bytes for every such stream and is built
once per publication (``PreparedPublication.sse_single``).  Once such a stream is
open on a plain TCP connection, its live deliveries are written like a
WebSocket's: those shared bytes appended to the connection's buffer by the
gateway's :class:`~gateway.transports._tickwrite.TickWriter`, with no Python
object made per stream and event (see :meth:`SSEStream.on_publication`).
"""

from __future__ import annotations

import functools
import sys
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import toChunk
from twisted.web.server import NOT_DONE_YET, Request

from gateway.bus import SubscribeResult, Subscription
from gateway.core.auth import OPEN, Identity
from gateway.core.channels import validate_channel
from gateway.core.cursor import MAX_CURSOR_LENGTH, decode_cursor, encode_cursor
from gateway.core.events import PreparedPublication, dumps, reset_event
from gateway.core.model import Position
from gateway.core.session import Session
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Internal,
    Unauthorized,
    Unavailable,
)
from gateway.transports._auth import as_gateway_error, authenticate_request
from gateway.transports._backpressure import SendBuffer
from gateway.transports._compact import on_finish
from gateway.transports._http import (
    error_body,
    is_gone,
    query_params,
    send_json,
    single_param,
)
from gateway.transports._session import ClientSession
from gateway.transports._tickwrite import (
    TickWriter,
    body_transport,
    tick_writer,
    write_body,
)
from gateway.transports.cors import CORSResource, apply_cors

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["MAX_CHANNELS", "SSE_HEADERS", "ChannelSetRequest", "Event", "SSEResource", "SSEStream", "parse_channels", "parse_cursor", "parse_join_leave"]

MAX_CHANNELS = 64

# Headers that keep every hop from caching or buffering the stream (nginx reads
# X-Accel-Buffering; SSE is always UTF-8, so no charset parameter is needed).
SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)

# A cursor must stay within MAX_CURSOR_LENGTH for the client to hand it back.  A
# request is refused up front when its channels would not fit with seqs of up to
# this many digits (10**12 publications per channel).
_SEQ_HEADROOM = 10**12 - 1

_SSE_FORM = "sse"
_PING = b": ping\n\n"


@attrs.frozen
class Event:
    """One server event for a request: a ``message`` or a ``reset``.

    Attributes:
        channel: the event's channel.
        position: the channel's position after this event.
        prepared: the publication, for a ``message``; None for a ``reset``.
    """

    channel: str
    position: Position | None
    prepared: PreparedPublication | None = None
    presence: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        if self.presence is not None:
            return str(self.presence["type"])
        return "reset" if self.prepared is None else "message"

    @property
    def payload(self) -> bytes:
        """The event's JSON (shared bytes for a ``message``)."""
        if self.prepared is not None:
            return self.prepared.payload
        if self.presence is not None:
            return dumps(self.presence)
        assert self.position is not None
        return dumps(reset_event(self.channel, self.position))


def parse_channels(params: dict[str, list[str]]) -> list[str]:
    """The distinct ``channel`` parameters, in order.

    Raises:
        BadRequest: none given, an invalid name, or more than :data:`MAX_CHANNELS`.
    """
    names = params.get("channel") or []
    if not names:
        raise BadRequest("at least one channel= parameter is required")
    channels = list(dict.fromkeys(names))
    if len(channels) > MAX_CHANNELS:
        raise BadRequest(f"at most {MAX_CHANNELS} channels per request")
    for name in channels:
        validate_channel(name)
    # One string per channel name however many requests name it (memory: each
    # held request keeps its channels for as long as it is held); a list of
    # the exact size.
    return list(dict.fromkeys(map(sys.intern, channels)))


def parse_join_leave(value: str | None) -> bool:
    """``join_leave=1`` (or ``true``) asks for join/leave events; ``0``/``false`` or absent does not."""
    if value is None or value in ("0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequest("join_leave must be 1 or 0")


def parse_cursor(value: str | None, name: str) -> dict[str, Position] | None:
    """Decode a cursor parameter; None when absent; :class:`BadRequest` when invalid."""
    if value is None:
        return None
    try:
        return decode_cursor(value)
    except BadRequest as e:
        raise BadRequest(f"{name}: {e.message}") from None


@functools.lru_cache(maxsize=1024)
def _cursor_fits(tops: tuple[tuple[str, str, int], ...]) -> bool:
    """Whether a cursor of these (channel, epoch, seq) stays within MAX_CURSOR_LENGTH."""
    worst = {channel: Position(epoch, seq) for channel, epoch, seq in tops}
    return len(encode_cursor(worst)) <= MAX_CURSOR_LENGTH


class ChannelSetRequest:
    """One HTTP request subscribed to a set of channels (base of SSE and poll).

    Subclasses implement :meth:`_open` (every subscription is live; the first
    events are given), :meth:`_deliver` (a live event after that),
    :meth:`_refuse` (an error before opening), :meth:`going_away`,
    :meth:`expired` and :meth:`revoked`.

    Args:
        gateway: the node.
        request: the HTTP request, rendered with ``NOT_DONE_YET``.
        channels: the distinct channels to subscribe to.
        since: per channel, the position to continue from (channels absent start
            at "now"); already restricted to ``channels``.
        reset_all: start every channel with a ``reset`` (the client's position
            could not be read at all).

    Attributes:
        positions: each channel's position after the last event handed out (a
            channel is absent only while its first ``reset`` is still to come).
    """

    transport: ClassVar[str]
    _log = Logger()
    # Read after opening (empty then): the opening's own are dropped (memory).
    _live: list[Event] = ()  # type: ignore[assignment]
    _resets: list[Event] = ()  # type: ignore[assignment]
    _backlog: list[Event] = ()  # type: ignore[assignment]
    _waiting: set[str] = frozenset()  # type: ignore[assignment]
    _tops: dict[str, Position] = MappingProxyType({})  # type: ignore[assignment]
    since: dict[str, Position] = MappingProxyType({})  # type: ignore[assignment]

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        channels: list[str],
        since: dict[str, Position],
        reset_all: bool = False,
        join_leave: bool = False,
        client: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.join_leave = join_leave
        self.client = client
        # The sub counted in presence (section 11) while open; False when not counted.
        self._present: str | None | bool = False
        self.request = request
        self.channels = channels
        self.since = since
        self.reset_all = reset_all
        self.positions: dict[str, Position] = {}
        self.opened = False
        self.released = False
        self._subscriptions: list[Subscription] = []
        self._waiting = set(channels)
        self._tops = {}
        self._resets = []
        self._backlog = []
        self._live = []
        self.session: ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def jsonp(self) -> bool:
        """True when only ``token=`` may authenticate the request (a JSONP poll)."""
        return False

    def start(self) -> None:
        """Register with the gateway, authenticate, then subscribe every channel.

        Raises:
            Unavailable: the node holds ``--max-connections`` already.
        """
        self.gateway.check_connection_limit()
        self.gateway.connection_opened(self.transport, self)
        on_finish(self.request, self._finished)
        if not self.gateway.auth.configured:
            # No authentication configured: what authenticate_request would answer
            # (OPEN; a token= given twice is still a 400), without reading the
            # credentials or a Deferred chain.
            try:
                single_param(query_params(self.request), "token")
            except GatewayError as e:
                self._fail(e)
                return
            try:
                self._authenticated(OPEN)
            except Exception:
                self._crashed(Failure())
            return
        d = authenticate_request(self.gateway, self.request, self.transport, self.jsonp)
        d.addCallbacks(self._authenticated, self._auth_failed)
        d.addErrback(self._crashed)

    def _auth_failed(self, failure: Failure) -> None:
        self._fail(as_gateway_error(failure))

    def _crashed(self, failure: Failure) -> None:
        self._log.failure("starting a {transport} request failed", failure, transport=self.transport)
        self._fail(Internal("internal error"))

    def _authenticated(self, identity: Identity) -> None:
        """Check every channel's permission (403 naming it), start the session
        (deadline, revocation), then subscribe."""
        if self.released:
            return
        try:
            for channel in self.channels:
                identity.check_subscribe(channel)
            if identity.sub is not None or identity.exp is not None:
                # The deadline runs on the clock the authenticators judged exp by.
                session = ClientSession(self.gateway, self, Session(MAX_CHANNELS, identity=None), now=self.gateway.auth.now)
                self.session = session
                session.authenticate(identity)
            # else nothing can expire or be revoked: no session (memory).
        except GatewayError as e:
            self._fail(e)
            return
        self._subscribe_all()

    def _subscribe_all(self) -> None:
        bus = self.gateway.bus
        for channel in self.channels:
            if self.released:
                return
            sub = bus.subscribe(channel, self, self.since.get(channel))
            self._subscriptions.append(sub)
            sub.ready.addCallbacks(self._ready, self._subscribe_failed, (channel,), errbackArgs=(channel,))
            sub.settle()

    def _finished(self, result: Any) -> None:
        # Fires with None after finish() and with a Failure when the client went
        # away; either way nothing more can be written.
        self.release()

    def release(self) -> None:
        """Cancel every subscription and timer and unregister (idempotent)."""
        if self.released:
            return
        self.released = True
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            sub.cancel()
        try:
            del self._live  # what arrived before opening (memory: the class's empty one)
        except AttributeError:
            pass
        try:
            self._leave_presence()
            # Dropped, not only closed: the session refers back to this request, and
            # a cycle would leave the whole request (headers, channel, cursor) to the
            # cyclic garbage collector instead of freeing it here.
            session, self.session = self.session, None
            if session is not None:
                session.close()
            self._on_release()
        finally:
            self.gateway.connection_closed(self.transport, self)

    def _on_release(self) -> None:
        """Cancel the subclass's timers and producers (called once, on release)."""

    def cursor(self) -> str:
        """The cursor at the current positions."""
        return encode_cursor(self.positions)

    # -- subscribing ------------------------------------------------------------

    def _ready(self, result: SubscribeResult, channel: str) -> None:
        if self.released:
            return
        self._tops[channel] = result.top
        since = self.since.get(channel)
        if self.reset_all or result.recovered is False:
            self._resets.append(Event(channel, result.top))
            if since is not None:
                # Until its reset is out, the client is still where it said it was.
                self.positions[channel] = since
        elif result.recovered:
            assert since is not None
            self.positions[channel] = since
        else:
            self.positions[channel] = result.top
        self._backlog.extend(Event(channel, p.publication.position, p) for p in result.publications)
        self._waiting.discard(channel)
        if not self._waiting:
            self._all_ready()

    def _subscribe_failed(self, failure: Failure, channel: str) -> None:
        if self.released:
            return
        if failure.check(GatewayError):
            error: GatewayError = failure.value
        elif failure.check(defer.CancelledError):
            error = Unavailable("subscription cancelled")
        else:
            self._log.failure("subscribing {channel} failed", failure, channel=channel)
            error = Internal("internal error")
        self._fail(error)

    def _fail(self, error: GatewayError) -> None:
        """Refuse the request with ``error`` (only before it opened)."""
        self.release()
        if not self.opened and not is_gone(self.request):
            self._refuse(error)

    def _all_ready(self) -> None:
        try:
            self._check_cursor_fits()
        except GatewayError as e:
            self._fail(e)
            return
        self.opened = True
        first = self._resets + self._backlog + self._live
        # Only the opening needed these: the class's empty ones from now on.
        del self._resets, self._backlog, self._live, self._waiting, self._tops, self.since
        self._join_presence()
        self._open(first)

    def _check_cursor_fits(self) -> None:
        if not _cursor_fits(tuple((channel, top.epoch, max(top.seq, _SEQ_HEADROOM)) for channel, top in self._tops.items())):
            raise BadRequest(
                f"these channels make a cursor longer than {MAX_CURSOR_LENGTH} characters: use fewer or shorter names"
            )

    # -- the bus's Subscriber ---------------------------------------------------

    def on_publication(self, prepared: PreparedPublication) -> None:
        pub = prepared.publication
        self._event(Event(pub.channel, pub.position, prepared))

    def on_reset(self, channel: str, position: Position) -> None:
        self._event(Event(channel, position))

    def _event(self, event: Event) -> None:
        if self.released:
            return
        if not self.opened:
            self._live.append(event)
            return
        self._deliver(event)

    def advance(self, event: Event) -> None:
        """Move the positions past ``event`` (join/leave events have none)."""
        if event.position is not None:
            self.positions[event.channel] = event.position

    # -- presence (section 11) ----------------------------------------------------

    def _presence_sub(self) -> str | None:
        identity = self.session.identity if self.session is not None else None
        return identity.sender if identity is not None else None

    def _join_presence(self) -> None:
        """Every subscription is live: count this request on its channels, and
        listen for join/leave when asked."""
        presence = self.gateway.presence
        sub = self._presence_sub()
        self._present = sub
        for channel in self.channels:
            self._count_presence(presence, channel, sub)
            if self.join_leave:
                presence.listen(channel, self)

    def _leave_presence(self) -> None:
        if self._present is False:
            return
        sub = self._present
        assert sub is not True
        self._present = False
        presence = self.gateway.presence
        for channel in self.channels:
            if self.join_leave:
                presence.unlisten(channel, self)
            self._uncount_presence(presence, channel, sub)

    def _count_presence(self, presence: Any, channel: str, sub: str | None) -> None:
        presence.connection_added(channel, sub)

    def _uncount_presence(self, presence: Any, channel: str, sub: str | None) -> None:
        presence.connection_removed(channel, sub)

    def on_presence(self, event: Any) -> None:
        """A join/leave on one of the channels (only with ``join_leave``)."""
        self._event(Event(event.channel, None, presence=event.to_event()))

    # -- for subclasses -----------------------------------------------------------

    def _open(self, first: list[Event]) -> None:
        raise NotImplementedError

    def _deliver(self, event: Event) -> None:
        raise NotImplementedError

    def _refuse(self, error: GatewayError) -> None:
        raise NotImplementedError

    def going_away(self) -> None:
        raise NotImplementedError

    def expired(self) -> None:
        """The identity's ``exp`` passed (called by the :class:`ClientSession`)."""
        raise NotImplementedError

    def revoked(self) -> None:
        """The identity was revoked (called by the :class:`ClientSession`)."""
        raise NotImplementedError


def _sse_block(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


# The items of PreparedPublication.sse_single: the event's bytes (an HTTP/1.0
# response's body), the same as one HTTP/1.1 chunk, and the position after it.
_RAW: Final = 0
_CHUNK: Final = 1
_POSITION: Final = 2


def _single_channel_event(prepared: PreparedPublication) -> tuple[bytes, bytes, Position]:
    """A publication's whole event for a stream of its channel alone: (the event's
    bytes, the same as one HTTP/1.1 chunk, the position after it), built once and
    kept on ``prepared``."""
    event = prepared.sse_single
    if event is None:
        pub = prepared.publication
        position = pub.position
        cursor = encode_cursor({pub.channel: position})
        data = b"id: " + cursor.encode("ascii") + b"\n" + _sse_block(b"message", prepared.payload)
        event = prepared.sse_single = (data, b"".join(toChunk(data)), position)
    return event


class _Fanout:
    """What every SSE stream of a gateway shares on its live path: the gateway's
    :class:`TickWriter`, and the count of events its streams wrote that way (read
    by the gateway's stats: one integer add per delivery)."""

    __slots__ = ("delivered", "writer")

    def __init__(self, writer: TickWriter) -> None:
        self.writer = writer
        self.delivered = 0


def _fanout(gateway: Gateway) -> _Fanout:
    fanout: _Fanout | None = getattr(gateway, "_sse_fanout", None)
    if fanout is None:
        fanout = gateway._sse_fanout = _Fanout(tick_writer(gateway))  # type: ignore[attr-defined]
        gateway.stats.add_delivery_source("sse", fanout)
    return fanout


class SSEStream(ChannelSetRequest):
    """One ``GET /sse`` response: events framed with their cursor, pings between.

    A client that stops reading while more than ``config.max_send_buffer`` bytes
    wait for it is disconnected (a slow consumer), as on WebSocket; it resumes from
    its last id when it can keep up again.
    """

    transport = "sse"
    _log = Logger()
    # Set while the live path of on_publication() applies (an open stream of one
    # channel on a plain TCP connection): that connection, and which item of
    # PreparedPublication.sse_single is its framing (_RAW or _CHUNK).
    _wire: Any = None
    _framing: Literal[0, 1] = _CHUNK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heartbeat: Any = None
        self._buffer: SendBuffer | None = None
        self._fanout = _fanout(self.gateway)

    def _open(self, first: list[Event]) -> None:
        request = self.request
        request.setResponseCode(200)
        for name, value in SSE_HEADERS:
            request.setHeader(name, value)
        # The stream opens with its starting cursor (an `id:` without data: no event,
        # but EventSource's Last-Event-ID from now on, so a stream that drops before
        # its first event still resumes where it started) and a `: ping`. It also sends
        # the status line and headers now: a client (gateway.js) tells an open stream
        # from one a buffering proxy holds back by whether this block arrives
        # (docs/protocol.md section 5).
        request.write(b"id: " + self.cursor().encode("ascii") + b"\n" + _PING)
        self._buffer = SendBuffer()
        request.registerProducer(self._buffer, True)
        for event in first:
            self._deliver(event)
        if not self.released:
            self._schedule_ping()
            if len(self.channels) == 1:
                wire = body_transport(request)
                if wire is not None:
                    self._wire = wire
                    if not request.chunked:
                        self._framing = _RAW  # HTTP/1.0 (memory: the class's otherwise)
            # The head is out: what twisted.web keeps for it is not needed (memory),
            # if the stream is still open in a moment (by then twisted.web is done
            # with the request's arrival, which set some attributes back).
            self.gateway.slimming.hold(self, request)

    def on_publication(self, prepared: PreparedPublication) -> None:
        """The bus's delivery of the next publication.

        This runs once per stream per publication.  On the live path (``_wire``
        set: see :meth:`_open`; cleared on release, so set only while the request
        is open, its head written, not finished and not disconnected) the shared
        event goes to the connection as :func:`write_body` would write it, with
        its checks made once at opening, and the stream's position becomes the
        event's; anything else takes :meth:`_on_publication`."""
        wire = self._wire
        if wire is None:
            self._on_publication(prepared)
            return
        event = prepared.sse_single or _single_channel_event(prepared)
        buffer = self._buffer
        if buffer.paused and buffer.overflows(len(event[_RAW]), self.gateway.config.max_send_buffer):  # type: ignore[union-attr]
            self._drop_slow_consumer()
            return
        self.positions[self.channels[0]] = event[_POSITION]
        self.request.sentLength += len(event[_RAW])
        fanout = self._fanout
        fanout.writer.write(wire, event[self._framing])
        fanout.delivered += 1

    def _on_publication(self, prepared: PreparedPublication) -> None:
        if self.opened and not self.released and len(self.channels) == 1:
            # A one-channel stream off the live path (not plain TCP, a HEAD), without an Event.
            self.positions[self.channels[0]] = (prepared.sse_single or _single_channel_event(prepared))[_POSITION]
            self._deliver_single(prepared)
        else:
            super().on_publication(prepared)

    def _deliver_single(self, prepared: PreparedPublication) -> None:
        # One channel: the whole event is shared (see the module docstring;
        # write_body takes the chunk when the response is chunked).
        data, chunk, _ = prepared.sse_single or _single_channel_event(prepared)
        buffer = self._buffer
        if buffer is not None and buffer.paused and buffer.overflows(len(data), self.gateway.config.max_send_buffer):
            self._drop_slow_consumer()
            return
        write_body(self._fanout.writer, self.request, data, chunk)
        self._fanout.delivered += 1

    def _deliver(self, event: Event) -> None:
        if self.released:
            return
        if event.presence is not None:
            # No id: line: join/leave are not in history and move no position.
            self._write(_sse_block(event.kind.encode("ascii"), event.payload))
            return
        self.advance(event)
        prepared = event.prepared
        if prepared is not None and len(self.channels) == 1:
            self._deliver_single(prepared)
            return
        if prepared is not None:
            block = prepared.form(_SSE_FORM, lambda payload: _sse_block(b"message", payload))
        else:
            block = _sse_block(b"reset", event.payload)
        self._write(b"id: " + self.cursor().encode("ascii") + b"\n" + block)
        if prepared is not None:
            self.gateway.delivered("sse")

    def _write(self, data: bytes, chunk: bytes | None = None) -> None:
        buffer = self._buffer
        if buffer is not None and buffer.paused and buffer.overflows(len(data), self.gateway.config.max_send_buffer):
            self._drop_slow_consumer()
            return
        # Sent with the other streams' at the end of the reactor turn (_tickwrite).
        write_body(self._fanout.writer, self.request, data, chunk)

    def _drop_slow_consumer(self) -> None:
        self._log.info("dropping a slow SSE consumer ({count} bytes unsent)", count=self._buffer.queued if self._buffer else 0)
        transport = getattr(self.request.channel, "transport", None)
        self.release()
        # abortConnection, not loseConnection: the latter would wait for the
        # client to read everything first.  connectionLost then ends the request.
        if transport is not None:
            transport.abortConnection()

    def _refuse(self, error: GatewayError) -> None:
        self.request.write(send_json(self.request, error.http_status, error_body(error)))
        self.request.finish()

    def _schedule_ping(self) -> None:
        self._heartbeat = self.gateway.deadlines.call_later(self.gateway.config.heartbeat, self)

    def on_deadline(self) -> None:
        """The heartbeat is due (:class:`~gateway.transports._deadlines.Deadlines`)."""
        self._ping()

    def _ping(self) -> None:
        self._heartbeat = None
        if self.released or is_gone(self.request):
            return
        # Besides keeping idle proxies from closing the stream, the write is what
        # reveals a peer that vanished without closing the connection.
        self._write(_PING)
        if not self.released:
            self._schedule_ping()

    def _on_release(self) -> None:
        # Off the live path: nothing is written to the connection any more.
        self._wire = None
        self.gateway.slimming.release(self)
        if self._heartbeat is not None:
            self.gateway.deadlines.cancel(self._heartbeat)
        self._heartbeat = None
        if self._buffer is not None:
            # Free the connection's producer slot: after a finish() the
            # keep-alive connection may carry another request.
            self._buffer = None
            if self.request.channel is not None:
                self.request.unregisterProducer()

    def expired(self) -> None:
        """The token expired: ``event: error`` ``unauthorized``, and the stream ends."""
        self._end_with_error(Unauthorized("the token has expired"))

    def revoked(self) -> None:
        """The identity was revoked: ``event: error`` ``forbidden``, and the stream ends."""
        self._end_with_error(Forbidden("this identity was revoked"))

    def _end_with_error(self, error: GatewayError) -> None:
        # The error event has no id: line, so the client's Last-Event-ID stays at
        # its last event and it resumes from there with a fresh token.
        if self.released:
            return
        if not self.opened:
            self._fail(error)
            return
        if is_gone(self.request):
            self.release()
            return
        self._write(_sse_block(b"error", dumps({"type": "error", "code": error.code, "message": error.message})))
        if self.released:
            # Dropped as a slow consumer meanwhile.
            return
        self.release()
        self.request.finish()

    def going_away(self) -> None:
        """End the stream (the node is draining); the client resumes elsewhere."""
        if is_gone(self.request):
            self.release()
            return
        if not self.opened:
            self._fail(Unavailable("node is draining"))
            return
        self.release()
        self.request.finish()


class SSEResource(CORSResource):
    """``GET /sse?channel=a&channel=b[&since=<cursor>]``."""

    def render_GET(self, request: Request) -> bytes | int:
        gateway = self.gateway
        apply_cors(gateway, request)
        params = query_params(request)
        channels = parse_channels(params)
        since = parse_cursor(single_param(params, "since"), "since") or {}
        reset_all = False
        last_event_id = request.getHeader(b"last-event-id")
        if last_event_id:
            # The browser's reconnect: newer than the `since` still in its URL.
            # An unreadable one must not be a 400, which would make the browser
            # give up: every channel starts with a reset instead.
            try:
                since = decode_cursor(last_event_id.decode("ascii"))
            except (BadRequest, UnicodeDecodeError):
                since, reset_all = {}, True
        if gateway.draining:
            raise Unavailable("node is draining")
        unavailable = gateway.bus.unavailable(channels)
        if unavailable is not None:
            # Only the channels whose Redis shard is down: the others go on.
            raise unavailable
        since = {c: p for c, p in since.items() if c in channels}
        join_leave = parse_join_leave(single_param(params, "join_leave"))
        SSEStream(gateway, request, channels, since, reset_all, join_leave).start()
        return NOT_DONE_YET
