"""The :class:`Client`: one logical connection to a gateway, over WebSocket or SSE.

The client owns what outlives a connection (subscriptions, positions, publishes
waiting for their ack, the backoff); a connection object (:mod:`._ws`, :mod:`._sse`)
lives for one attempt and reports back through the ``conn_*`` methods. A report from
a connection that is no longer the current one is ignored.
"""

from __future__ import annotations

import json
import random as _random
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from gateway.core.channels import is_valid_channel
from gateway.core.client import Backoff, Liveness, Positions, jwt_exp, refresh_delay
from gateway.core.cursor import decode_cursor
from gateway.core.model import Position
from gateway.errors import BadRequest

__all__ = ["Client", "ClientError", "Subscription"]

TRANSPORTS = ("websocket", "sse")

# Close codes that end the client instead of reconnecting (PROTOCOL section 4).
_CLOSE_FORBIDDEN = 4003
_CLOSE_UNAUTHORIZED = 4001
_CLOSE_GOING_AWAY = 1001


class ClientError(Exception):
    """A refusal or failure, with the protocol's error ``code`` (``forbidden``,
    ``bad_request``, ``unauthorized``, ...) or one of the client's own: ``timeout``
    (no ack in time), ``closed`` (the client was closed first)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class Subscription:
    """One channel subscription. :meth:`when_ready` fires with the position the server
    confirmed (WebSocket ``subscribed``; None on SSE, once the stream opened) or fails
    with :class:`ClientError` (the subscription is then gone)."""

    def __init__(self, client: Client, channel: str, callback: Callable[[dict[str, Any]], Any]) -> None:
        self.client = client
        self.channel = channel
        self.callback = callback
        self.active = True
        self._outcome: Any = _NOT_YET
        self._waiters: list[defer.Deferred[Position | None]] = []

    def unsubscribe(self) -> None:
        """Stop receiving this channel (idempotent)."""
        self.client._unsubscribe(self)

    def when_ready(self) -> defer.Deferred[Position | None]:
        d: defer.Deferred[Position | None] = defer.Deferred()
        if self._outcome is _NOT_YET:
            self._waiters.append(d)
        else:
            self._fire(d)
        return d

    def _fire(self, d: defer.Deferred[Position | None]) -> None:
        if isinstance(self._outcome, ClientError):
            d.errback(self._outcome)
        else:
            d.callback(self._outcome)

    def _settle(self, outcome: Any) -> None:
        if self._outcome is not _NOT_YET:
            return
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _confirm(self, position: Position | None) -> None:
        self._settle(position)

    def _fail(self, error: ClientError) -> None:
        self.active = False
        self._settle(error)


_NOT_YET = object()


class _Pending:
    def __init__(self, key: str, channel: str, data: Any, deferred: defer.Deferred[dict[str, Any]]) -> None:
        self.key = key
        self.channel = channel
        self.data = data
        self.deferred = deferred
        self.timeout: Any = None
        self.sent_on: Any = None  # the connection it was last sent on

    def command(self) -> dict[str, Any]:
        return {"channel": self.channel, "data": self.data, "idempotency_key": self.key}


class Client:
    """A gateway client (see the package docstring).

    Args:
        url: the gateway's base URL, ``http://`` or ``https://`` (endpoints are
            resolved under it: ``/ws``, ``/sse``, ``/publish``).
        token: None (anonymous), a string (JWT or API key), or a callable returning a
            string or a Deferred of one; a callable is called before each connection and,
            for a JWT with ``exp`` (or an ``authenticated`` reply with one), ahead of
            expiry: WebSocket refreshes in place with ``auth``, SSE reconnects.
        transports: the order to try (``"websocket"``, ``"sse"``); a transport whose
            upgrade is refused or that delivers nothing within ``connect_timeout`` is
            skipped for the rest of this client's life.
        heartbeat: the server's ``--heartbeat``; a connection silent for
            ``2 * heartbeat + 5`` seconds is dead (WebSocket sends ``ping`` when idle
            for ``heartbeat`` seconds).
        publish_timeout: seconds before a publish without an ack fails (``timeout``).
        headers: extra HTTP headers for every request and upgrade.
        reactor, random: injectable for tests (``random()`` in [0, 1) for the jitter).
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        token: str | Callable[[], Any] | None = None,
        *,
        transports: tuple[str, ...] | list[str] = TRANSPORTS,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        heartbeat: float = 20.0,
        headers: dict[str, str] | None = None,
        reactor: Any = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway URL must be http:// or https:// with a host, not {url!r}")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError(f"gateway URL has a bad port: {url!r}") from None
        transports = tuple(transports)
        if not transports or any(t not in TRANSPORTS for t in transports):
            raise ValueError(f"transports must be taken from {TRANSPORTS}, not {transports!r}")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.transports = transports
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.heartbeat = heartbeat
        self.headers = dict(headers or {})
        self.reactor = reactor
        self.random = random or _random.random
        self.positions = Positions()
        self.backoff = Backoff(self.random)
        self.state = "idle"
        self.transport: str | None = None
        self._transport_index = 0
        self._subs: dict[str, Subscription] = {}
        self._pending: dict[str, _Pending] = {}
        self._conn: Any = None
        self._connecting: Any = None  # Deferred of the token for the attempt under way
        self._token: str | None = None
        self._retry_call: Any = None
        self._connect_timer: Any = None
        self._liveness: Liveness | None = None
        self._liveness_call: Any = None
        self._refresh_call: Any = None
        self._started = False
        self._closed = False
        self._state_callbacks: list[Callable[[dict[str, Any]], Any]] = []
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._final_error: ClientError | None = None
        self._http: Any = None
        self._gone: defer.Deferred[None] | None = None
        self._sse_one_by_one = False  # see SSEConnection._start

    # -- public API -------------------------------------------------------------

    def on_state(self, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``callback({"state", "transport", "delay"[, "error"]})`` on each change:
        ``connecting``, ``connected``, ``reconnecting`` (``delay`` in seconds),
        ``closed`` (with ``error``, a :class:`ClientError`, when the server refused)."""
        self._state_callbacks.append(callback)

    def connect(self) -> None:
        """Start connecting (subscribe and publish do it on first use)."""
        if self._closed:
            raise ClientError("closed", "the client is closed")
        if not self._started:
            self._started = True
            self._attempt()

    def subscribe(
        self, channel: str, callback: Callable[[dict[str, Any]], Any], since: Position | None = None
    ) -> Subscription:
        """Deliver ``channel``'s ``message`` and ``reset`` events to ``callback``, each once
        and in order, across reconnects. ``since`` starts after that position (history
        permitting) instead of now. Raises :class:`ClientError` ``bad_request`` for an
        invalid name or a channel already subscribed."""
        if self._closed:
            raise ClientError("closed", "the client is closed")
        if not isinstance(channel, str) or not is_valid_channel(channel):
            raise ClientError("bad_request", f"invalid channel name {channel!r}")
        if channel in self._subs:
            raise ClientError("bad_request", f"already subscribed to {channel!r}")
        sub = Subscription(self, channel, callback)
        self._subs[channel] = sub
        if since is not None:
            self.positions.set(channel, since)
        self.connect()
        if self._conn is not None and self._conn.ready:
            self._conn.subscribe(channel)
        return sub

    def publish(self, channel: str, data: Any) -> defer.Deferred[dict[str, Any]]:
        """Publish ``data``; a Deferred of the ack ``{"channel", "seq", "epoch"}``.

        The publish carries an idempotency key and is sent again after a reconnect
        until acknowledged, so it happens once. Fails with :class:`ClientError`: the
        server's code, ``timeout`` after ``publish_timeout`` seconds, or ``closed``.
        """
        if self._closed:
            return defer.fail(ClientError("closed", "the client is closed"))
        if not isinstance(channel, str) or not is_valid_channel(channel):
            return defer.fail(ClientError("bad_request", f"invalid channel name {channel!r}"))
        try:
            json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            return defer.fail(ClientError("bad_request", f"data is not encodable as JSON: {e}"))
        key = uuid.uuid4().hex
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        pending = _Pending(key, channel, data, d)
        pending.timeout = self.reactor.callLater(self.publish_timeout, self._publish_timed_out, key)
        self._pending[key] = pending
        self.connect()
        if self._conn is not None and self._conn.ready:
            self._conn.publish(pending)
        return d

    def latest(self, channel: str) -> defer.Deferred[Position]:
        """The channel's current position (epoch, latest seq), asked with one
        ``GET /poll?timeout=0`` (whose cursor holds "now")."""
        if not isinstance(channel, str) or not is_valid_channel(channel):
            return defer.fail(ClientError("bad_request", f"invalid channel name {channel!r}"))

        def ask(token: str | None) -> Any:
            return self._http_client().latest(channel, token)

        def position(cursor: str) -> Position:
            try:
                return decode_cursor(cursor)[channel]
            except (BadRequest, KeyError):
                raise ClientError("internal", "the poll answer's cursor does not hold the channel") from None

        def unreachable(failure: Any) -> Any:
            if failure.check(ClientError):
                return failure
            raise ClientError("unavailable", failure.getErrorMessage())

        return self._get_token().addCallback(ask).addCallbacks(position, unreachable)

    def when_closed(self) -> defer.Deferred[None]:
        """A Deferred that fires when the client is closed: None after :meth:`close`,
        a :class:`ClientError` failure when the server refused it for good
        (``unauthorized``, ``forbidden``)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.state == "closed":
            self._fire_closed(d)
        else:
            self._closed_waiters.append(d)
        return d

    def close(self) -> defer.Deferred[None]:
        """Close everything: connections, timers, requests; pending publishes fail
        with ``closed``. The Deferred fires once nothing is left on the reactor."""
        return self._shutdown(None)

    # -- attempts ---------------------------------------------------------------

    def _attempt(self) -> None:
        self._retry_call = None
        if self._closed:
            return
        kind = self.transports[self._transport_index]
        self.transport = kind
        self._set_state("connecting")
        d = self._get_token()
        self._connecting = d
        d.addCallbacks(self._open, self._token_failed, callbackArgs=(kind,))

    def _get_token(self) -> defer.Deferred[str | None]:
        token = self.token
        if not callable(token):
            return defer.succeed(token)
        d = defer.maybeDeferred(token)

        def check(value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ClientError("unauthorized", "the token function did not return a string")
            return value

        return d.addCallback(check)

    def _token_failed(self, failure: Any) -> None:
        self._connecting = None
        if self._closed:
            return
        self._log.failure("the token function failed", failure)
        self._schedule_retry()

    def _open(self, token: str | None, kind: str) -> None:
        self._connecting = None
        if self._closed:
            return
        self._token = token
        self._conn = self._make_connection(kind, token)
        self._cancel("_connect_timer")
        self._connect_timer = self.reactor.callLater(self.connect_timeout, self._connect_timed_out, self._conn)
        self._conn.open()

    def _make_connection(self, kind: str, token: str | None) -> Any:
        """One connection attempt over ``kind`` (the unit tests substitute their own)."""
        if kind == "websocket":
            from gateway.client._ws import WSConnection

            return WSConnection(self, token)
        from gateway.client._sse import SSEConnection

        return SSEConnection(self, token, self._http_client())

    def _http_client(self) -> Any:
        if self._http is None:
            from gateway.client._sse import HTTPClient

            self._http = HTTPClient(self)
        return self._http

    def _connect_timed_out(self, conn: Any) -> None:
        self._connect_timer = None
        if conn is self._conn and not conn.ready:
            self._log.info("no answer on {transport} within {timeout} s", transport=self.transport, timeout=self.connect_timeout)
            conn.refused = True
            conn.abort()

    def _schedule_retry(self, going_away: bool = False, delay: float | None = None) -> None:
        if self._closed:
            return
        if delay is None:
            delay = self.backoff.next_delay(going_away)
        self._set_state("reconnecting", delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._attempt)

    # -- reports from the current connection ---------------------------------------

    def conn_ready(self, conn: Any) -> None:
        """The connection works (WebSocket: authenticated or first answer; SSE: the
        stream opened): resume subscriptions and send pending publishes."""
        if conn is not self._conn:
            return
        self._cancel("_connect_timer")
        self.backoff.connected(self.reactor.seconds())
        self._set_state("connected")
        self._watch(conn)
        for channel in list(self._subs):
            conn.subscribe(channel)
        for pending in list(self._pending.values()):
            conn.publish(pending)
        self._schedule_refresh()

    def conn_traffic(self, conn: Any) -> None:
        """Anything arrived (event, reply, ``pong``, ``: ping``)."""
        if conn is self._conn and self._liveness is not None:
            self._liveness.seen(self.reactor.seconds())

    def conn_event(self, conn: Any, event: dict[str, Any]) -> None:
        """A ``message`` or ``reset`` event: delivered unless it is a repeat."""
        if conn is not self._conn:
            return
        sub = self._subs.get(event.get("channel"))  # type: ignore[arg-type]
        if sub is None or not self.positions.accept(event):
            return
        try:
            sub.callback(event)
        except Exception:  # noqa: BLE001 - the application's callback: logged, delivery goes on
            self._log.failure("a subscription callback raised")

    def conn_subscribed(self, conn: Any, channel: str, position: Position | None) -> None:
        sub = self._subs.get(channel)
        if conn is not self._conn or sub is None:
            return
        if position is not None:
            self.positions.subscribed(channel, position.epoch, position.seq)
        sub._confirm(position)

    def conn_subscribe_failed(self, conn: Any, channel: str, error: ClientError) -> None:
        sub = self._subs.get(channel)
        if conn is not self._conn or sub is None:
            return
        self._drop_sub(sub)
        sub._fail(error)

    def conn_acked(self, key: str, ack: dict[str, Any]) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timeout.active():
            pending.timeout.cancel()
        pending.deferred.callback({"channel": ack.get("channel"), "seq": ack.get("seq"), "epoch": ack.get("epoch")})

    def conn_publish_failed(self, key: str, error: ClientError) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timeout.active():
            pending.timeout.cancel()
        pending.deferred.errback(error)

    def conn_authenticated(self, conn: Any, exp: float | None) -> None:
        """An ``authenticated`` reply on WebSocket (first or refresh)."""
        if conn is self._conn:
            self._schedule_refresh(exp)

    def conn_lost(self, conn: Any, close_code: int | None = None, error: ClientError | None = None) -> None:
        """The connection ended. ``conn.refused`` (upgrade refused, nothing within
        the connect timeout) moves to the next transport; ``error`` ends the client;
        4001 after working reconnects with a fresh token; 1001 after a short delay."""
        if conn is not self._conn:
            return
        self._conn = None
        self._cancel("_connect_timer")
        self._cancel("_liveness_call")
        self._cancel("_refresh_call")
        self._liveness = None
        self.backoff.disconnected(self.reactor.seconds())
        for pending in self._pending.values():
            if pending.sent_on is conn:
                pending.sent_on = None
        if self._closed:
            return
        if error is None and close_code == _CLOSE_FORBIDDEN:
            error = ClientError("forbidden", "the server refused this identity (close 4003)")
        if error is None and close_code == _CLOSE_UNAUTHORIZED and not conn.was_ready:
            error = ClientError("unauthorized", "the server refused the token (close 4001)")
        if error is not None:
            self._shutdown(error)
            return
        if conn.refused and not conn.was_ready and self._transport_index + 1 < len(self.transports):
            self._transport_index += 1
            self._log.info(
                "{old} refused or silent, falling back to {new}",
                old=self.transports[self._transport_index - 1],
                new=self.transports[self._transport_index],
            )
            self._schedule_retry(delay=0.0)
            return
        self._schedule_retry(going_away=close_code == _CLOSE_GOING_AWAY)

    def conn_reopen(self, conn: Any) -> None:
        """The SSE stream must be reopened (its channel set or token changed): end it
        and start again at once, resuming from the positions."""
        if conn is not self._conn:
            return
        self._conn = None
        self._cancel("_connect_timer")
        self._cancel("_liveness_call")
        self._cancel("_refresh_call")
        self._liveness = None
        for pending in self._pending.values():
            if pending.sent_on is conn:
                pending.sent_on = None
        conn.abort()
        if not self._closed:
            self._attempt()

    # -- timers -------------------------------------------------------------------

    def _watch(self, conn: Any) -> None:
        if not conn.streaming:
            return  # an SSE client without subscriptions holds no stream to watch
        now = self.reactor.seconds()
        ping_after = self.heartbeat if conn.can_ping else None
        self._liveness = Liveness(ping_after, 2 * self.heartbeat + 5, now)
        self._liveness_call = self.reactor.callLater(self._liveness.next_check(now), self._check_liveness)

    def _check_liveness(self) -> None:
        self._liveness_call = None
        conn, liveness = self._conn, self._liveness
        if conn is None or liveness is None:
            return
        now = self.reactor.seconds()
        verdict = liveness.check(now)
        if verdict == "dead":
            self._log.info("nothing from the server for {s} s: reconnecting", s=liveness.dead_after)
            conn.abort()
            return
        if verdict == "ping":
            conn.ping()
        self._liveness_call = self.reactor.callLater(liveness.next_check(now), self._check_liveness)

    def _schedule_refresh(self, exp: float | None = None) -> None:
        self._cancel("_refresh_call")
        if not callable(self.token) or self._token is None or self._conn is None:
            return
        if exp is None:
            exp = jwt_exp(self._token)
        if exp is None:
            return
        delay = refresh_delay(exp, self.reactor.seconds())
        self._refresh_call = self.reactor.callLater(delay, self._refresh, self._conn)

    def _refresh(self, conn: Any) -> None:
        self._refresh_call = None
        if conn is not self._conn:
            return
        if not conn.can_refresh:
            # SSE: a new stream with a fresh token (the token function is called
            # before each connection) and the cursor.
            self.conn_reopen(conn)
            return
        d = self._get_token()

        def got(token: str) -> None:
            if conn is not self._conn:
                return
            self._token = token
            conn.refresh(token)

        def failed(failure: Any) -> None:
            self._log.failure("the token function failed (refresh)", failure)

        d.addCallbacks(got, failed)

    def _publish_timed_out(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.deferred.errback(ClientError("timeout", f"no ack within {self.publish_timeout} s"))

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    # -- internals ----------------------------------------------------------------

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        self._drop_sub(sub)
        if self._conn is not None and self._conn.ready:
            self._conn.unsubscribe(sub.channel)

    def _drop_sub(self, sub: Subscription) -> None:
        sub.active = False
        del self._subs[sub.channel]
        self.positions.forget(sub.channel)

    def _set_state(self, state: str, **extra: Any) -> None:
        self.state = state
        info: dict[str, Any] = {"state": state, "transport": self.transport, "delay": extra.pop("delay", None)}
        info.update(extra)
        for callback in list(self._state_callbacks):
            try:
                callback(info)
            except Exception:  # noqa: BLE001 - the application's callback: logged, delivery goes on
                self._log.failure("a state callback raised")

    def _fire_closed(self, d: defer.Deferred[None]) -> None:
        if self._final_error is not None:
            d.errback(self._final_error)
        else:
            d.callback(None)

    def _shutdown(self, error: ClientError | None) -> defer.Deferred[None]:
        if self._closed:
            return self._gone if self._gone is not None else defer.succeed(None)
        self._closed = True
        self._final_error = error
        for name in ("_retry_call", "_connect_timer", "_liveness_call", "_refresh_call"):
            self._cancel(name)
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        waits = []
        conn, self._conn = self._conn, None
        if conn is not None:
            waits.append(conn.close())
        if self._http is not None:
            waits.append(self._http.close())
        pending, self._pending = self._pending, {}
        failure = error or ClientError("closed", "the client was closed")
        for p in pending.values():
            if p.timeout.active():
                p.timeout.cancel()
            p.deferred.errback(failure)
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            sub._fail(failure)
        self._set_state("closed", **({"error": error} if error is not None else {}))
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            self._fire_closed(d)
        gone: defer.Deferred[Any] = defer.DeferredList(waits, consumeErrors=True)
        gone.addCallback(lambda _: None)
        self._gone = gone
        return gone
