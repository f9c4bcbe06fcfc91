"""One WebSocket connection attempt (Autobahn's Twisted client) for :class:`Client`."""

from __future__ import annotations

import itertools
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger

from gateway.core.model import Position

if TYPE_CHECKING:
    from gateway.client._client import Client, _Pending

__all__ = ["WSConnection", "upgrade_status", "ws_url"]

_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d{3})\]")
# Statuses of a refused upgrade that mean "this transport does not get through here"
# (a proxy or an origin check), as opposed to a node that is busy or draining.
_RETRY_STATUSES = {429, 502, 503, 504}
_CLOSE_TOO_LARGE = 1009


def upgrade_status(reason: str | None) -> int | None:
    """The HTTP status of a refused upgrade, read from the reason Autobahn's client
    gives ``onClose`` ("WebSocket connection upgrade failed [403]: Forbidden"), or None.

    Autobahn keeps no other record of the status; the fallback tests in
    tests/integration/test_client.py pin this against a real 403 from a proxy.
    """
    match = _UPGRADE_FAILED.search(reason or "")
    return int(match.group(1)) if match else None


def ws_url(base: str) -> str:
    """``http(s)://host[:port]/prefix/`` -> ``ws(s)://host[:port]/prefix/ws``."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


class _Protocol(WebSocketClientProtocol):
    owner: WSConnection

    def onOpen(self) -> None:
        self.owner.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.owner.frame(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.owner.closed(code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol

    def __init__(self, owner: WSConnection, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def buildProtocol(self, addr: Any) -> _Protocol:
        proto: Any = super().buildProtocol(addr)
        proto.owner = self.owner
        return proto  # type: ignore[no-any-return]


class WSConnection:
    """One ``GET /ws`` connection: authenticates with an ``auth`` command (or waits for
    the answer to a first ``ping``), then relays commands and events for the client."""

    can_ping = True
    can_refresh = True
    streaming = True
    _log = Logger()

    def __init__(self, client: Client, token: str | None) -> None:
        self.client = client
        self.token = token
        self.ready = False
        self.was_ready = False
        self.refused = False
        self._proto: _Protocol | None = None
        self._opened = False
        self._ids = itertools.count(1)
        self._requests: dict[int, tuple[str, Any]] = {}
        self._connecting: defer.Deferred[Any] | None = None
        self._auth_error: Any = None
        self._ended = False
        self._waiters: list[defer.Deferred[None]] = []
        self._sizes: dict[str, int] = {}  # publish key -> bytes of its command

    # -- driven by the client ---------------------------------------------------------

    def open(self) -> None:
        client = self.client
        url = ws_url(client.url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        factory = _Factory(self, url, reactor=client.reactor, headers=dict(client.headers) or None)
        # Our own timers decide about slow opens and dead connections (Client); the
        # closing handshake gets a bound so close() always ends.
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=1, serverConnectionDropTimeout=1)
        endpoint: Any = HostnameEndpoint(client.reactor, host, port, timeout=max(1, int(client.connect_timeout)))
        if parts.scheme == "wss":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        d = endpoint.connect(factory)
        self._connecting = d
        d.addCallbacks(self._tcp_connected, self._tcp_failed)

    def subscribe(self, channel: str) -> None:
        command: dict[str, Any] = {"type": "subscribe", "channel": channel}
        since = self.client.positions.since(channel)
        if since is not None:
            command["since"] = since
        self._request("sub", channel, command)

    def unsubscribe(self, channel: str) -> None:
        self._request("unsub", channel, {"type": "unsubscribe", "channel": channel})

    def publish(self, pending: _Pending) -> None:
        if pending.sent_on is self:
            return
        pending.sent_on = self
        self._request("pub", pending.key, {"type": "publish", **pending.command()})

    def ping(self) -> None:
        self._request("ping", None, {"type": "ping"})

    def refresh(self, token: str) -> None:
        self.token = token
        self._request("refresh", None, {"type": "auth", "token": token})

    def abort(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        elif self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self._ended:
            d.callback(None)
            return d
        self._waiters.append(d)
        if self._opened and self._proto is not None:
            self._proto.sendClose(1000)
        else:
            self.abort()
        return d

    # -- Autobahn and endpoint callbacks --------------------------------------------

    def _tcp_connected(self, proto: _Protocol) -> None:
        self._connecting = None
        self._proto = proto

    def _tcp_failed(self, failure: Any) -> None:
        self._connecting = None
        self._ended_now()
        self._log.debug("WebSocket connection failed: {e}", e=failure.getErrorMessage())
        self.client.conn_lost(self)

    def opened(self, proto: _Protocol) -> None:
        self._proto = proto
        self._opened = True
        if self.token is not None:
            self._request("auth", None, {"type": "auth", "token": self.token})
        else:
            # Ready on the first frame back, whatever it is (an old server answers
            # an unknown command with an error): the connection delivers.
            self._request("ping", None, {"type": "ping"})

    def frame(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            self._log.warn("a frame that is not JSON: {payload!r}", payload=payload[:200])
            return
        if not isinstance(event, dict):
            return
        client = self.client
        client.conn_traffic(self)
        kind = event.get("type")
        rid = event.get("id")
        request = self._requests.pop(rid, None) if isinstance(rid, int) else None
        if not self.ready and self.token is None:
            self._became_ready()
        if kind in ("message", "reset"):
            if self.ready:
                client.conn_event(self, event)
        elif kind == "authenticated":
            exp = event.get("exp")
            exp = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
            if request is not None and request[0] == "auth":
                self._became_ready()
            client.conn_authenticated(self, exp)
        elif kind == "subscribed" and request is not None and request[0] == "sub":
            epoch, seq = event.get("epoch"), event.get("seq")
            position = Position(epoch, seq) if isinstance(epoch, str) and type(seq) is int else None
            client.conn_subscribed(self, request[1], position)
        elif kind == "ack" and request is not None and request[0] == "pub":
            client.conn_acked(request[1], event)
        elif kind == "error":
            self._error(request, event)

    def _error(self, request: tuple[str, Any] | None, event: dict[str, Any]) -> None:
        from gateway.client._client import ClientError

        error = ClientError(str(event.get("code")), str(event.get("message", "")))
        if request is None:
            self._log.info("server error: {error}", error=error)
            return
        kind, arg = request
        if kind == "auth":
            self._auth_error = error
        elif kind == "sub":
            self.client.conn_subscribe_failed(self, arg, error)
        elif kind == "pub":
            self.client.conn_publish_failed(arg, error)
        elif kind == "refresh":
            self._log.warn("token refresh refused ({error}); the old token stays in force", error=error)

    def closed(self, code: int | None, reason: str | None) -> None:
        self.ready = False
        self._ended_now()
        if not self._opened:
            status = upgrade_status(reason)
            if status is not None and status not in _RETRY_STATUSES:
                self._log.info("WebSocket upgrade refused with {status}", status=status)
                self.refused = True
        if code == _CLOSE_TOO_LARGE:
            self._fail_largest_publish()
        self.client.conn_lost(self, code if self._opened else None, self._auth_error)

    def _fail_largest_publish(self) -> None:
        """A close 1009: the server refused a message over its size limit. The largest
        publish still unacknowledged on this connection is the one that cannot go; it
        fails with ``too_large`` instead of being retried forever."""
        from gateway.client._client import ClientError

        keys = [arg for kind, arg in self._requests.values() if kind == "pub"]
        sizes = {key: self._sizes.get(key, 0) for key in keys}
        if sizes:
            key = max(sizes, key=lambda k: sizes[k])
            self.client.conn_publish_failed(key, ClientError("too_large", "the server closed with 1009: message too large"))

    # -- helpers ----------------------------------------------------------------------

    def _became_ready(self) -> None:
        if not self.ready:
            self.ready = self.was_ready = True
            self.client.conn_ready(self)

    def _request(self, kind: str, arg: Any, command: dict[str, Any]) -> None:
        proto = self._proto
        if proto is None or not self._opened or self._ended:
            return
        rid = next(self._ids)
        self._requests[rid] = (kind, arg)
        command["id"] = rid
        payload = json.dumps(command, ensure_ascii=False).encode("utf-8")
        if kind == "pub":
            self._sizes[arg] = len(payload)
        try:
            proto.sendMessage(payload)
        except Exception:  # noqa: BLE001 - autobahn.exception.Disconnected: closing already
            self._requests.pop(rid, None)

    def _ended_now(self) -> None:
        if self._ended:
            return
        self._ended = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
