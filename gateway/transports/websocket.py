"""WebSocket transport (docs/protocol.md section 4): Autobahn on twisted.web.

A thin adaptor: Autobahn callbacks go in, :mod:`gateway.core.commands` parses them,
the :class:`~gateway.core.session.Session` keeps per-connection state, the
:class:`~gateway.bus.Bus` does the work, and replies go back out.  Heartbeats and
the slow-consumer policy live here, on the reactor's clock.

Authentication (docs/protocol.md sections 4 and 8), when the node has an
authenticator configured:

* At the upgrade, ``onConnect`` gathers the credentials (``Authorization``,
  ``token=``, the cookies, ``Origin``) and, when any came, returns the Deferred of
  their authentication, so the 101 answer waits for it and no command can arrive
  before the connection knows who it is.  A refused ``Authorization: Bearer`` or
  ``token=`` is a close 4001 right after the upgrade (a revoked identity 4003);
  refused cookies alone are not, since a browser sends a stale ``gateway_token``
  cookie whatever the page does: the connection then waits for an ``auth``
  command like one that presented nothing.  An authenticator that is down refuses
  the upgrade with 503 (fail closed).
* Without an identity the connection must send ``auth`` within
  ``--auth-timeout`` seconds; any other command first, or nothing, is 4001.  A
  refused first ``auth`` is the error ``unauthorized`` (``forbidden`` for a revoked
  identity) and close 4001 (4003); ``unavailable`` leaves it open to try again
  within the timeout.
* ``auth`` on an authenticated connection is a refresh: the same ``sub`` moves the
  deadline to the new ``exp``; another ``sub`` is ``forbidden``, and a token that
  is refused (invalid, expired) is ``unauthorized``; in both cases the connection
  keeps its old identity and deadline, so the client can still try again before
  that deadline.
* Commands that arrive while an ``auth`` is being checked (an authenticator that
  answers later, e.g. ``--auth-url``) wait for it and then run in order, so a
  client may send ``auth`` and its subscriptions without waiting for the reply.
* The :class:`~gateway.transports._session.ClientSession` closes the connection at
  the identity's ``exp`` (4001, :meth:`GatewayWebSocketProtocol.expired`) and when
  it is revoked (4003, :meth:`GatewayWebSocketProtocol.revoked`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.bus import SubscribeResult, Subscription
from gateway.core.auth import OPEN, Credentials, Identity
from gateway.core.commands import (
    Auth,
    CommandError,
    Ping,
    PresenceCommand,
    Publish,
    Subscribe,
    Unsubscribe,
    parse_command,
)
from gateway.core.events import (
    PreparedPublication,
    dumps,
    error_event,
    reply,
    reset_event,
)
from gateway.core.model import Position, Publication
from gateway.core.session import Session
from gateway.errors import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NOT_AUTHENTICATED,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_DATA,
    Forbidden,
    GatewayError,
    Internal,
    NotFound,
    Unauthorized,
    Unavailable,
)
from gateway.transports import _wscompact
from gateway.transports._backpressure import HeldMessages
from gateway.transports._compact import shrink
from gateway.transports._session import ClientSession
from gateway.transports._tickwrite import tick_writer

__all__ = ["GatewayWebSocketFactory", "GatewayWebSocketProtocol", "upgrade_credentials", "websocket_resource"]

_WS_FORM = "ws"
_STATE_OPEN = WebSocketProtocol.STATE_OPEN

# The most bytes of publication frames send_publications() joins into one write.
JOIN_BYTES = 4096
# Commands held while an auth command is being checked; a client that sends more
# than this before the answer is closed with 1008.
MAX_HELD_COMMANDS = 1000
# A close frame's reason is at most 123 bytes (RFC 6455 section 5.5).
_MAX_REASON = 123


def _cookies(header: str | None) -> dict[str, str]:
    """The ``name=value`` pairs of a ``Cookie`` header (malformed pairs skipped)."""
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if sep and name and name not in cookies:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


def upgrade_credentials(request: Any) -> Credentials:
    """What an upgrade request (Autobahn's ``ConnectionRequest``) presents: the
    ``Authorization`` header, the first ``token=`` query parameter, the cookies and
    the ``Origin``."""
    headers = request.headers or {}
    tokens = (request.params or {}).get("token") or []
    return Credentials(
        transport="websocket",
        authorization=headers.get("authorization"),
        token=tokens[0] if tokens else None,
        cookies=_cookies(headers.get("cookie")),
        origin=headers.get("origin"),
    )


def _exp(identity: Identity) -> dict[str, Any]:
    """The ``exp`` field of an ``authenticated`` reply (absent without one)."""
    if identity.exp is None:
        return {}
    exp = identity.exp
    return {"exp": int(exp) if float(exp).is_integer() else exp}


def _reason(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= _MAX_REASON:
        return raw
    return raw[: _MAX_REASON - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."


class GatewayWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket client connection."""

    _log = Logger()
    factory: GatewayWebSocketFactory

    # Per-connection state, read from the class until first set: an idle
    # connection keeps only what differs (see _wscompact).
    session: Session | None = None
    # The session's clock-and-node side (expiry, revocation); from onOpen to onClose.
    client: ClientSession | None = None
    # What the upgrade's credentials came to: an identity, or a refusal that
    # closes the connection once open, or (cookies only) a note for the 4001.
    _upgrade_identity: Identity | None = None
    _upgrade_refusal: GatewayError | None = None
    _upgrade_note: str | None = None
    _origin: str | None = None
    _auth_timer: Any = None
    # Commands received while an auth command is being checked, or None.
    _held: deque[bytes] | None = None
    _heartbeat_call: Any = None
    _awaiting_pong: bytes | None = None
    _pings = 0
    # Presence (section 11): channel -> (sub counted, join/leave listener or None);
    # an empty mapping on the class until the first join.
    _presence: Mapping[str, tuple[str | None, Any]] = MappingProxyType({})

    def __init__(self) -> None:
        super().__init__()
        # Replies and publications, held back whole while the client is not reading.
        self._out = HeldMessages(self._write_message)

    # -- Autobahn internals (see _wscompact) -------------------------------------

    def succeedHandshake(self, res: Any) -> None:
        super().succeedHandshake(res)
        # The handshake is over: drop what only it needed.
        _wscompact.compact(self)
        if self.transport is not None:
            shrink(self.transport)

    def onFrameEnd(self) -> bool | None:
        result: bool | None = super().onFrameEnd()
        _wscompact.frame_done(self)
        return result

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize:
            _wscompact.ensure_send_queue(self)
        super().sendData(data, sync, chopsize)

    def on(self, event: str, handler: Any) -> None:
        if "_results" not in self.__dict__:
            # Dropped after the handshake (_wscompact.HANDSHAKE_ONLY): restored
            # for whoever listens to events after all.
            self.set_valid_events(["message"])
        super().on(event, handler)

    # -- Autobahn callbacks ---------------------------------------------------

    def onConnect(self, request: Any) -> None:
        # WebSocketEndpoint (ws_resource.py) has already checked all of this and
        # answered with JSON; these checks hold for a factory used without it.
        gateway = self.factory.gateway
        if request.version != 13:
            raise ConnectionDeny(426, "only Sec-WebSocket-Version: 13 is supported")
        if gateway.draining:
            raise ConnectionDeny(503, "node is draining")
        # Every header an origin can come in (Autobahn reads Sec-WebSocket-Origin
        # for hybi versions below 13), not only the one Autobahn used.
        origins = {request.origin or None, request.headers.get("origin"), request.headers.get("sec-websocket-origin")}
        origins.discard(None)
        if any(not gateway.origin_allowed(origin) for origin in origins):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        try:
            gateway.check_connection_limit()
        except GatewayError as e:
            raise ConnectionDeny(e.http_status, e.message) from None
        if not gateway.auth.configured:
            return None
        credentials = upgrade_credentials(request)
        self._origin = credentials.origin
        if credentials.anonymous:
            return None
        explicit = credentials.bearer is not None or credentials.token is not None
        d = gateway.auth.authenticate(credentials)
        if not d.called:
            # Until the authenticator answers, the upgrade holds a place under
            # --max-connections (it is not a connection yet).
            gateway.connection_pending(1)
            d.addBoth(_not_pending, gateway)
        d.addCallbacks(self._upgrade_authenticated, self._upgrade_refused, errbackArgs=(explicit,))
        return d

    def _upgrade_authenticated(self, identity: Identity) -> None:
        if self.state == WebSocketProtocol.STATE_CLOSED:
            # The client went away while its credentials were checked.
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "connection lost")
        self._upgrade_identity = identity

    def _upgrade_refused(self, failure: Failure, explicit: bool) -> None:
        if self.state == WebSocketProtocol.STATE_CLOSED:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "connection lost")
        error = failure.value
        if isinstance(error, Unauthorized):
            if explicit:
                self._upgrade_refusal = error
            else:
                self._upgrade_note = error.message
            return
        if isinstance(error, Forbidden):
            self._upgrade_refusal = error
            return
        if not isinstance(error, Unavailable):
            self._log.failure("authenticating a WebSocket upgrade failed", failure)
        # Fail closed: no upgrade while credentials cannot be checked.
        raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "authentication is not available")

    def onOpen(self) -> None:
        gateway = self.factory.gateway
        configured = gateway.auth.configured
        self.session = Session(max_subscriptions=gateway.config.max_subscriptions, identity=None if configured else OPEN)
        self.client = ClientSession(gateway, self, self.session, now=gateway.auth.now)
        gateway.connection_opened("websocket", self)
        self._heartbeat_call = gateway.reactor.callLater(gateway.config.heartbeat, self._heartbeat)
        transport: Any = self.transport
        if transport is not None:
            # twisted.web's HTTPChannel is still registered as the producer of the
            # socket after the upgrade; take its place to learn when the client
            # stops reading (see ../shared/STACK.md section 2).
            try:
                transport.unregisterProducer()
                transport.registerProducer(self._out, True)
            except Exception:  # pragma: no cover - transports without producers
                self._log.debug("no producer support on {transport!r}", transport=transport)
        if configured:
            self._open_authentication()

    def _open_authentication(self) -> None:
        """Apply what the upgrade's credentials came to, or start the auth timeout."""
        refusal, identity = self._upgrade_refusal, self._upgrade_identity
        self._upgrade_refusal = self._upgrade_identity = None
        if refusal is not None:
            self._refuse(refusal)
            return
        if identity is not None:
            self._set_identity(identity)
            return
        gateway = self.factory.gateway
        self._auth_timer = gateway.reactor.callLater(gateway.config.auth_timeout, self._auth_timed_out)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported: send JSON text")
            return
        if self._held is not None:
            if len(self._held) >= MAX_HELD_COMMANDS:
                self._close(CLOSE_POLICY, "too many commands before the auth answer")
                return
            self._held.append(payload)
            return
        self._safe_handle(payload)

    def _safe_handle(self, payload: bytes) -> None:
        try:
            self._handle(payload)
        except Exception:
            self._log.failure("unexpected error handling a WebSocket message")
            self.send_event(error_event(Internal("internal error")))

    def onPong(self, payload: bytes) -> None:
        if payload == self._awaiting_pong:
            self._awaiting_pong = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._heartbeat_call is not None and self._heartbeat_call.active():
            self._heartbeat_call.cancel()
        self._heartbeat_call = None
        self._cancel_auth_timer()
        self._held = None
        client, self.client = self.client, None
        if client is not None:
            client.close()
        for channel in list(self._presence):
            self._leave_presence(channel)
        session, self.session = self.session, None
        if session is not None:
            for sub in session.clear():
                sub.cancel()
            self.factory.gateway.connection_closed("websocket", self)
            self.factory.gateway.forget_publish_rate(f"ws:{id(self)}")

    # -- heartbeat ------------------------------------------------------------
    # Our own timer rather than Autobahn's autoPing: txaio's batched timers round
    # deadlines down to whole seconds, so a pong timeout could fire almost at once.

    def _heartbeat(self) -> None:
        self._heartbeat_call = None
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        if self._awaiting_pong is not None:
            self._log.info("closing WebSocket {peer}: no pong within {seconds}s", peer=self.peer, seconds=self.factory.gateway.config.heartbeat)
            self.dropConnection(abort=True)
            return
        self._pings += 1
        self._awaiting_pong = b"gw%d" % self._pings
        self.sendPing(self._awaiting_pong)
        gateway = self.factory.gateway
        self._heartbeat_call = gateway.reactor.callLater(gateway.config.heartbeat, self._heartbeat)

    # -- commands -------------------------------------------------------------

    def _handle(self, payload: bytes) -> None:
        session = self.session
        if session is None:
            return
        try:
            command = parse_command(payload)
        except CommandError as e:
            self.send_event(error_event(e.error, e.request_id))
            return
        if not session.admits(command):
            note = self._upgrade_note
            message = "authenticate first: send an auth command" + (f" ({note})" if note else "")
            self._close(CLOSE_NOT_AUTHENTICATED, message)
            return
        try:
            if isinstance(command, Subscribe):
                self._subscribe(session, command)
            elif isinstance(command, Unsubscribe):
                sub = session.remove(command.channel)
                if sub is not None:
                    sub.cancel()
                self._leave_presence(command.channel)
                self.send_event(reply("unsubscribed", command.id, channel=command.channel))
            elif isinstance(command, Publish):
                self._publish(session, command)
            elif isinstance(command, Auth):
                self._auth(session, command)
            elif isinstance(command, Ping):
                self.send_event(session.pong(command))
            elif isinstance(command, PresenceCommand):
                self._presence_query(session, command)
        except GatewayError as e:
            self.send_event(error_event(e, command.id))

    def _subscribe(self, session: Session, command: Subscribe) -> None:
        session.check_subscribe(command.channel)
        sub = self.factory.gateway.bus.subscribe(command.channel, _WebSocketSubscriber(self), command.since)
        session.add(command.channel, sub)
        sub.ready.addCallbacks(
            self._subscribed,
            self._subscribe_failed,
            callbackArgs=(command, sub),
            errbackArgs=(command, sub),
        )
        sub.settle()

    def _subscribed(self, result: SubscribeResult, command: Subscribe, sub: Subscription) -> None:
        fields: dict[str, Any] = {"channel": command.channel, "epoch": result.top.epoch, "seq": result.top.seq}
        if command.since is not None:
            fields["recovered"] = bool(result.recovered)
        self.send_event(reply("subscribed", command.id, **fields))
        if result.recovered is False:
            self.send_event(reset_event(command.channel, result.top))
        for prepared in result.publications:
            self.send_publication(prepared)
        self._join_presence(command.channel, command.join_leave)

    # -- presence (section 11) -------------------------------------------------

    def _join_presence(self, channel: str, join_leave: bool) -> None:
        """The subscription is live: count this connection on ``channel``."""
        session = self.session
        if session is None or session.identity is None or channel in self._presence:
            return
        presence = self.factory.gateway.presence
        listener = _PresenceForwarder(self) if join_leave else None
        if listener is not None:
            presence.listen(channel, listener)
        sub = session.identity.sender
        if "_presence" not in self.__dict__:
            self._presence = {}
        self._presence[channel] = (sub, listener)  # type: ignore[index]
        presence.connection_added(channel, sub)

    def _leave_presence(self, channel: str) -> None:
        if channel not in self._presence:
            return
        entry = self._presence.pop(channel)  # type: ignore[attr-defined]
        if entry is None:
            return
        presence = self.factory.gateway.presence
        sub, listener = entry
        if listener is not None:
            presence.unlisten(channel, listener)
        presence.connection_removed(channel, sub)

    def _presence_query(self, session: Session, command: PresenceCommand) -> None:
        if session.identity is None:
            raise Unauthorized("authenticate first")
        session.identity.check_subscribe(command.channel)
        d = self.factory.gateway.presence.query(command.channel, command.limit, command.after)
        d.addCallbacks(self._presence_answered, self._publish_failed, callbackArgs=(command,), errbackArgs=(command,))

    def _presence_answered(self, page: Any, command: PresenceCommand) -> None:
        self.send_event(reply("presence", command.id, **page.to_json()))

    def _subscribe_failed(self, failure: Failure, command: Subscribe, sub: Subscription) -> None:
        if self.session is not None and self.session.get(command.channel) is sub:
            self.session.remove(command.channel)
        if failure.check(defer.CancelledError):
            error: GatewayError = NotFound("unsubscribed before the subscription took effect")
        elif failure.check(GatewayError):
            error = failure.value
        else:
            self._log.failure("subscribe failed", failure)
            error = Internal("internal error")
        self.send_event(error_event(error, command.id))

    def _publish(self, session: Session, command: Publish) -> None:
        session.check_publish(command.channel)
        gateway = self.factory.gateway
        gateway.check_publish_rate(f"ws:{id(self)}")
        # `from` is the token's sub, never anything the client sent.
        sender = session.identity.sender if session.identity is not None else None
        d = gateway.publish(command.channel, command.data, sender, idempotency_key=command.idempotency_key)
        d.addCallbacks(self._published, self._publish_failed, callbackArgs=(command,), errbackArgs=(command,))

    def _published(self, pub: Publication, command: Publish) -> None:
        self.send_event(reply("ack", command.id, channel=pub.channel, seq=pub.seq, epoch=pub.epoch))

    def _publish_failed(self, failure: Failure, command: Publish) -> None:
        if failure.check(GatewayError):
            self.send_event(error_event(failure.value, command.id))
        else:
            self._log.failure("publish failed", failure)
            self.send_event(error_event(Internal("internal error"), command.id))

    def _auth(self, session: Session, command: Auth) -> None:
        gateway = self.factory.gateway
        if not gateway.auth.configured:
            # No authenticator configured: every token is accepted, anonymously.
            session.authenticate(OPEN)
            self.send_event(reply("authenticated", command.id, sub=None))
            return
        # Only the command's token: cookies and headers of the upgrade do not
        # stand in for a token the client chose to send.
        credentials = Credentials(transport="websocket", token=command.token, origin=self._origin)
        self._held = deque()
        d = gateway.auth.authenticate(credentials)
        d.addCallbacks(self._authenticated, self._auth_refused, callbackArgs=(command,), errbackArgs=(command,))
        d.addErrback(self._auth_answer_failed)
        d.addBoth(self._release_held)

    def _authenticated(self, identity: Identity, command: Auth) -> None:
        session = self.session
        if session is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        try:
            self._set_identity(identity)
        except GatewayError as e:
            # A refresh with another sub: the old identity and deadline stay.
            self.send_event(error_event(e, command.id))
            return
        self.send_event(reply("authenticated", command.id, sub=identity.sub, **_exp(identity)))

    def _auth_refused(self, failure: Failure, command: Auth) -> None:
        session = self.session
        if session is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        if isinstance(failure.value, GatewayError):
            error: GatewayError = failure.value
        else:
            self._log.failure("authenticating an auth command failed", failure)
            error = Unavailable("authentication is not available")
        self.send_event(error_event(error, command.id))
        if session.authenticated:
            # A refused refresh: the connection keeps its identity and deadline.
            return
        if isinstance(error, (Unauthorized, Forbidden)):
            self._refuse(error)
        # Unavailable: still unauthenticated; the auth timeout runs on.

    def _auth_answer_failed(self, failure: Failure) -> None:
        self._log.failure("handling an auth answer failed", failure)

    def _release_held(self, _: Any) -> None:
        held, self._held = self._held, None
        while held:
            if self.state != WebSocketProtocol.STATE_OPEN:
                return
            self._safe_handle(held.popleft())
            if self._held is not None:
                # Another auth command is being checked: the rest waits behind it.
                self._held.extend(held)
                return

    def _set_identity(self, identity: Identity) -> None:
        """Authenticate or refresh (ClientSession moves the deadline).

        Raises:
            Forbidden: a refresh with another ``sub``.
        """
        assert self.client is not None
        self.client.authenticate(identity)
        self._cancel_auth_timer()
        self._upgrade_note = None

    def _refuse(self, error: GatewayError) -> None:
        code = CLOSE_FORBIDDEN if isinstance(error, Forbidden) else CLOSE_NOT_AUTHENTICATED
        self._close(code, error.message)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.session is not None and not self.session.authenticated:
            seconds = self.factory.gateway.config.auth_timeout
            self._close(CLOSE_NOT_AUTHENTICATED, f"no auth command within {seconds:g}s")

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    # -- ClientSession callbacks -------------------------------------------

    def expired(self) -> None:
        """The identity's ``exp`` passed without a refresh: close 4001."""
        self._close(CLOSE_NOT_AUTHENTICATED, "the token expired")

    def revoked(self) -> None:
        """The identity was revoked (POST /disconnect): close 4003."""
        self._close(CLOSE_FORBIDDEN, "the identity was revoked")

    # -- output -------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        """Send one JSON event, if the connection is still open."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            data = dumps(event)
            self._enqueue((data, None), len(data))

    def send_publication(self, prepared: PreparedPublication) -> None:
        """Send a prepared ``message`` frame (shared by every subscriber).

        This runs once per subscriber per publication, so the common case (open,
        not held back, uncompressed, Autobahn's own queue empty: the frame bytes go
        straight into the socket's buffer) is written out here without further
        calls; anything else takes :meth:`_enqueue` / :meth:`_write_publication`."""
        if self.state != _STATE_OPEN:
            return
        if not self._out.idle:
            self._enqueue((prepared.payload, prepared), len(prepared.payload))
            return
        frame = prepared.ws_frame
        if frame is None or self._perMessageCompress is not None or self.send_queue:
            self._write_publication(prepared)
            return
        factory = self.factory
        factory.writer.write(self.transport, frame)
        factory.delivered += 1

    def send_publications(self, prepared: list[PreparedPublication]) -> None:
        """:meth:`send_publication` for each of ``prepared`` in order, with the
        per-message checks done once and the frames written in chunks of up to
        :data:`JOIN_BYTES` while nothing is held back (the socket's buffer not full).

        Once the socket is full the rest is held, as one by one; a chunk written just
        before that can leave up to :data:`JOIN_BYTES` more in Twisted's buffer than
        one-by-one writes would have."""
        if self.state != _STATE_OPEN:
            return
        if self._perMessageCompress is not None or self.send_queue:
            for p in prepared:
                self.send_publication(p)
            return
        out, write, transport = self._out, self.factory.writer.write, self.transport
        prepare = self.factory.prepareMessage
        frames = [p.form(_WS_FORM, prepare).payloadHybi for p in prepared]
        done = 0
        while done < len(frames):
            if not out.idle:
                # The socket filled up: the rest is held (or the client is slow).
                for rest in prepared[done:]:
                    self.send_publication(rest)
                break
            end, size = done, 0
            while end < len(frames) and (end == done or size + len(frames[end]) <= JOIN_BYTES):
                size += len(frames[end])
                end += 1
            write(transport, frames[done] if end == done + 1 else b"".join(frames[done:end]))
            self.factory.delivered += end - done
            done = end

    def _enqueue(self, message: tuple[bytes, PreparedPublication | None], size: int) -> None:
        if not self._out.offer(message, size, self.factory.gateway.config.max_send_buffer):
            self._slow_consumer()

    def _write_message(self, message: tuple[bytes, PreparedPublication | None]) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        payload, prepared = message
        if prepared is None:
            self.sendMessage(payload)
            return
        self._write_publication(prepared)

    def _write_publication(self, prepared: PreparedPublication) -> None:
        frame = prepared.form(_WS_FORM, self.factory.prepareMessage)
        if self._perMessageCompress is None and not self.send_queue:
            # What sendPreparedMessage() ends up doing for an uncompressed connection,
            # minus Autobahn's per-send debug formatting (measured at 8-14% of a
            # delivery's CPU in bench/fanout.py), sent once per connection at the
            # end of the reactor turn (see _tickwrite).
            if prepared.ws_frame is None:
                prepared.ws_frame = frame.payloadHybi
            self.factory.writer.write(self.transport, frame.payloadHybi)
        else:
            self.sendPreparedMessage(frame)
        self.factory.delivered += 1

    def _slow_consumer(self) -> None:
        """The client stopped reading and its backlog passed the cap: close it (1008).

        What it did not get yet is dropped (it resumes by seq), so the close frame
        is next on the wire after what the socket already holds: a client that
        reads again sees the code and the reason rather than only a reset."""
        dropped = self._out.drop()
        self._log.info(
            "closing slow WebSocket consumer {peer}: {count} message(s) not yet sent dropped",
            peer=self.peer,
            count=dropped,
        )
        self._close(CLOSE_POLICY, "slow consumer: send buffer full")

    def _close(self, code: int, reason: str) -> None:
        # sendClose() refuses 1001/1003/1008 (it only allows 1000 and 3000-4999).
        if self.state == WebSocketProtocol.STATE_OPEN:
            self._held = None
            self.sendCloseFrame(code=code, reasonUtf8=_reason(reason), isReply=False)

    def going_away(self) -> None:
        """Close with 1001: the node is shutting down; reconnect elsewhere and resume."""
        self._close(CLOSE_GOING_AWAY, "node shutting down")


def _not_pending(result: Any, gateway: Any) -> Any:
    gateway.connection_pending(-1)
    return result


class _WebSocketSubscriber:
    """The bus-facing side of one connection's subscriptions.

    ``on_publication`` is the connection's own ``send_publication`` (a bound
    method stored once), so the fan-out calls it with no wrapper in between.
    """

    __slots__ = ("on_publication", "proto")

    def __init__(self, proto: GatewayWebSocketProtocol) -> None:
        self.proto = proto
        self.on_publication = proto.send_publication

    def on_publications(self, prepared: list[PreparedPublication]) -> None:
        self.proto.send_publications(prepared)

    def on_reset(self, channel: str, position: Position) -> None:
        self.proto.send_event(reset_event(channel, position))


class _PresenceForwarder:
    """Hands join/leave events of one subscription to its connection."""

    __slots__ = ("proto",)

    def __init__(self, proto: GatewayWebSocketProtocol) -> None:
        self.proto = proto

    def on_presence(self, event: Any) -> None:
        self.proto.send_event(event.to_event())


class GatewayWebSocketFactory(WebSocketServerFactory):
    """Autobahn factory bound to one :class:`~gateway.resource.Gateway`."""

    protocol = GatewayWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, gateway: Any) -> None:
        from gateway.transports._http import SERVER_NAME

        # No version in the Server header of the 101 answer.
        super().__init__(server=SERVER_NAME.decode("ascii"))
        self.gateway = gateway
        self.writer = tick_writer(gateway)
        # Publications written by this factory's connections; the gateway's stats
        # read it (one integer add per delivery instead of a Counter update).
        self.delivered = 0
        gateway.stats.add_delivery_source("websocket", self)
        config = gateway.config
        self.setProtocolOptions(
            failByDrop=False,
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            openHandshakeTimeout=30,
            closeHandshakeTimeout=2,
            allowNullOrigin=True,
            # RFC 6455 only, and never the status page (with its ?redirect=).
            versions=[13],
            webStatus=False,
        )
        # Connections read these options from their class, not from a copy each.
        self.protocol = _wscompact.protocol_class(GatewayWebSocketProtocol, self)  # type: ignore[assignment]

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        bound = self.protocol.__dict__.get("factory")
        if bound is self:
            _wscompact.bind_options(self.protocol, self)


def websocket_resource(gateway: Any) -> Any:
    """The ``/ws`` resource for ``gateway``: handshake checks (JSON answers, no
    status page) in front of Autobahn's ``WebSocketResource``
    (:class:`~gateway.transports.ws_resource.WebSocketEndpoint`)."""
    from gateway.transports.ws_resource import WebSocketEndpoint

    return WebSocketEndpoint(gateway, GatewayWebSocketFactory(gateway))
