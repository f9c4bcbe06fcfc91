"""WebSocket transport (docs/protocol.md section 4): Autobahn on twisted.web.

A thin adaptor: Autobahn callbacks go in, :mod:`gateway.core.commands` parses them,
the :class:`~gateway.core.session.Session` keeps per-connection state, the
:class:`~gateway.bus.Bus` does the work, and replies go back out.  Heartbeats and
the slow-consumer policy live here, on the reactor's clock.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.bus import SubscribeResult, Subscription
from gateway.core.auth import OPEN
from gateway.core.commands import (
    Auth,
    CommandError,
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
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_DATA,
    GatewayError,
    Internal,
    NotFound,
    Unavailable,
)
from gateway.transports._backpressure import HeldMessages

__all__ = ["GatewayWebSocketFactory", "GatewayWebSocketProtocol", "websocket_resource"]

_WS_FORM = "ws"


class GatewayWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket client connection."""

    _log = Logger()
    factory: GatewayWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        # Replies and publications, held back whole while the client is not reading.
        self._out = HeldMessages(self._write_message)
        self._heartbeat_call: Any = None
        self._awaiting_pong: bytes | None = None
        self._pings = 0

    # -- Autobahn callbacks ---------------------------------------------------

    def onConnect(self, request: Any) -> None:
        # WebSocketEndpoint (ws_resource.py) has already checked all of this and
        # answered with JSON; these checks hold for a factory used without it.
        gateway = self.factory.gateway
        if request.version != 13:
            raise ConnectionDeny(426, "only Sec-WebSocket-Version: 13 is supported")
        if gateway.draining:
            raise ConnectionDeny(503, "node is draining")
        try:
            gateway.check_connection_limit()
        except Unavailable as e:
            raise ConnectionDeny(503, e.message) from None
        # Every header an origin can come in (Autobahn reads Sec-WebSocket-Origin
        # for hybi versions below 13), not only the one Autobahn used.
        origins = {request.origin or None, request.headers.get("origin"), request.headers.get("sec-websocket-origin")}
        origins.discard(None)
        if any(not gateway.origin_allowed(origin) for origin in origins):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        return None

    def onOpen(self) -> None:
        gateway = self.factory.gateway
        self.session = Session(max_subscriptions=gateway.config.max_subscriptions, identity=OPEN)
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

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported: send JSON text")
            return
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
        try:
            if isinstance(command, Subscribe):
                self._subscribe(session, command)
            elif isinstance(command, Unsubscribe):
                sub = session.remove(command.channel)
                if sub is not None:
                    sub.cancel()
                self.send_event(reply("unsubscribed", command.id, channel=command.channel))
            elif isinstance(command, Publish):
                self._publish(command)
            elif isinstance(command, Auth):
                self._auth(session, command)
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

    def _subscribed(self, result: SubscribeResult, command: Subscribe, sub: Subscription) -> None:
        fields: dict[str, Any] = {"channel": command.channel, "epoch": result.top.epoch, "seq": result.top.seq}
        if command.since is not None:
            fields["recovered"] = bool(result.recovered)
        self.send_event(reply("subscribed", command.id, **fields))
        if result.recovered is False:
            self.send_event(reset_event(command.channel, result.top))
        for prepared in result.publications:
            self.send_publication(prepared)

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

    def _publish(self, command: Publish) -> None:
        self.factory.gateway.check_publish_rate(f"ws:{id(self)}")
        identity = self.session.identity.sender if self.session and self.session.identity else None
        d = self.factory.gateway.publish(command.channel, command.data, identity)
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
        # No authenticator is configured yet: every token is accepted, anonymously.
        session.authenticate(OPEN)
        self.send_event(reply("authenticated", command.id, sub=None))

    # -- output -------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        """Send one JSON event, if the connection is still open."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            data = dumps(event)
            self._enqueue((data, None), len(data))

    def send_publication(self, prepared: PreparedPublication) -> None:
        """Send a prepared ``message`` frame (shared by every subscriber)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self._enqueue((prepared.payload, prepared), len(prepared.payload))

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
        frame = prepared.form(_WS_FORM, self.factory.prepareMessage)
        if self._perMessageCompress is None and not self.send_queue:
            # What sendPreparedMessage() ends up doing for an uncompressed connection,
            # minus Autobahn's per-send debug formatting (measured at 8-14% of a
            # delivery's CPU in bench/fanout.py).
            self.transport.write(frame.payloadHybi)  # type: ignore[union-attr]
        else:
            self.sendPreparedMessage(frame)
        self.factory.gateway.stats.deliveries["websocket"] += 1

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
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def going_away(self) -> None:
        """Close with 1001: the node is shutting down; reconnect elsewhere and resume."""
        self._close(CLOSE_GOING_AWAY, "node shutting down")


class _WebSocketSubscriber:
    """The bus-facing side of one connection's subscriptions."""

    __slots__ = ("proto",)

    def __init__(self, proto: GatewayWebSocketProtocol) -> None:
        self.proto = proto

    def on_publication(self, prepared: PreparedPublication) -> None:
        self.proto.send_publication(prepared)

    def on_reset(self, channel: str, position: Position) -> None:
        self.proto.send_event(reset_event(channel, position))


class GatewayWebSocketFactory(WebSocketServerFactory):
    """Autobahn factory bound to one :class:`~gateway.resource.Gateway`."""

    protocol = GatewayWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, gateway: Any) -> None:
        from gateway.transports._http import SERVER_NAME

        # No version in the Server header of the 101 answer.
        super().__init__(server=SERVER_NAME.decode("ascii"))
        self.gateway = gateway
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


def websocket_resource(gateway: Any) -> Any:
    """The ``/ws`` resource for ``gateway``: handshake checks (JSON answers, no
    status page) in front of Autobahn's ``WebSocketResource``
    (:class:`~gateway.transports.ws_resource.WebSocketEndpoint`)."""
    from gateway.transports.ws_resource import WebSocketEndpoint

    return WebSocketEndpoint(gateway, GatewayWebSocketFactory(gateway))
