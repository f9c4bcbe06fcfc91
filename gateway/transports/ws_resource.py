"""``GET /ws`` in front of Autobahn (docs/protocol.md section 4).

Autobahn's ``WebSocketResource`` answers a plain ``GET`` with a status page that
shows its version and follows ``?redirect=URL`` (an open redirect), accepts the
hybi-8 handshake with its ``Sec-WebSocket-Origin`` header (which an origin check
reading ``Origin`` never sees), upgrades HTTP/1.0 requests (it replays every
request to its protocol as HTTP/1.1), and answers the rest with bare status lines.
:class:`WebSocketEndpoint` decides every one of those cases itself, with JSON, and
hands Autobahn only a well-formed RFC 6455 handshake:

* a method other than ``GET``: ``405`` with ``Allow: GET``;
* no upgrade to ``websocket`` (``Upgrade`` and ``Connection: upgrade``), an HTTP
  version other than 1.1, or a ``Sec-WebSocket-Version`` other than exactly ``13``:
  ``426`` with ``Upgrade: websocket`` and ``Sec-WebSocket-Version: 13``;
* a missing or malformed ``Host``, ``Sec-WebSocket-Key`` or ``Origin`` (or one
  given twice), a fragment in the URI, a repeated subprotocol: ``400``;
* an ``Origin`` (or ``Sec-WebSocket-Origin``) not allowed by ``--allowed-origin``:
  ``403``;
* a draining node, or one at ``--max-connections``: ``503``.

Extension offers (``Sec-WebSocket-Extensions``) are dropped before the handshake
reaches Autobahn, since the gateway negotiates none (see
:attr:`WebSocketEndpoint.negotiates_extensions`).

Every error body is ``{"error":{"code":..,"message":..}}``.  This is a resource, so
it holds in any Site the gateway is mounted in.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource
from twisted.web.server import Request

from gateway.errors import BadRequest, Forbidden, GatewayError, Unavailable
from gateway.transports._http import error_body, send_error, send_json

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["SUPPORTED_VERSION", "UpgradeRequired", "WebSocketEndpoint", "header_tokens", "origin_well_formed"]

SUPPORTED_VERSION = b"13"


def header_tokens(request: Request, name: bytes) -> set[bytes]:
    """The lower-cased comma-separated tokens of every ``name`` header line."""
    tokens: set[bytes] = set()
    for value in request.requestHeaders.getRawHeaders(name, []):
        tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def _one(request: Request, name: bytes) -> bytes | None:
    """The value of a header that must appear at most once (BadRequest if repeated)."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name.decode('ascii')} header given more than once")
    return values[0].strip()


def origin_well_formed(origin: str) -> bool:
    """True for ``null`` or a ``scheme://host[:port]`` origin whose port is a number."""
    if origin.lower() == "null":
        return True
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() == "file" or bool(parts.hostname)


def _key_well_formed(key: bytes) -> bool:
    # RFC 6455 section 4.1: base64 of 16 random bytes (24 characters).
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _host_well_formed(host: bytes) -> bool:
    if not host:
        return False
    if b":" in host and not host.endswith(b"]"):
        port = host.rsplit(b":", 1)[1].strip()
        return port.isdigit()
    return True


class UpgradeRequired(Exception):
    """A ``GET /ws`` that is not a usable WebSocket upgrade: ``426``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WebSocketEndpoint(resource.Resource):
    """``/ws``: checks the handshake, then hands it to Autobahn's ``WebSocketResource``.

    Args:
        gateway: the node (for ``--allowed-origin`` and draining).
        factory: the Autobahn ``WebSocketServerFactory`` that serves the upgrade.

    Attributes:
        factory: that factory (also as ``_factory``, the name Autobahn's resource uses).
        websocket: the ``WebSocketResource`` requests are handed to.
    """

    isLeaf = True
    # The factory sets no perMessageCompressionAccept: every extension offer is
    # declined, so offers are dropped before Autobahn parses them.  Set to True
    # (and validate offers) when an extension is enabled.
    negotiates_extensions = False

    def __init__(self, gateway: Gateway, factory: Any) -> None:
        super().__init__()
        self.gateway = gateway
        self.factory = self._factory = factory
        self.websocket = WebSocketResource(factory)

    def render(self, request: Request) -> bytes | int:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            body = send_json(request, 405, error_body(BadRequest(f"method {request.method.decode('ascii', 'replace')} not allowed; use GET")))
            return b"" if request.method == b"HEAD" else body
        try:
            self.check(request)
        except UpgradeRequired as e:
            request.setHeader(b"upgrade", b"websocket")
            # An Upgrade header goes with Connection: upgrade (RFC 9110 section 7.8),
            # kept beside a "close" twisted.web may have set.
            connection = request.responseHeaders.getRawHeaders(b"connection", [])
            request.setHeader(b"connection", b", ".join([*connection, b"Upgrade"]))
            request.setHeader(b"sec-websocket-version", SUPPORTED_VERSION)
            body = send_json(request, 426, error_body(BadRequest(e.message)))
            request.setResponseCode(426, b"Upgrade Required")
            return body
        except GatewayError as e:
            return send_error(request, e)
        if not self.negotiates_extensions:
            # Autobahn parses permessage-deflate offers even when it will accept
            # none, and answers a malformed one with a bare 400; an offer we would
            # decline anyway is simply not passed on.
            request.requestHeaders.removeHeader(b"sec-websocket-extensions")
        result: bytes | int = self.websocket.render(request)
        channel = request.channel
        if channel is not None and channel.transport is None:
            # Upgraded: the socket is the WebSocket's now.  Nothing may keep the
            # HTTP channel (and through it this request, its headers and its
            # buffers) alive for the life of the connection.
            connections = getattr(getattr(channel, "site", None), "connections", None)
            if connections is not None:
                connections.upgraded(channel)
        return result

    def check(self, request: Request) -> None:
        """Raise :class:`UpgradeRequired` or a :class:`GatewayError` unless ``request``
        is an RFC 6455 handshake this node accepts."""
        if b"websocket" not in header_tokens(request, b"upgrade") or b"upgrade" not in header_tokens(request, b"connection"):
            raise UpgradeRequired("this endpoint is a WebSocket: send Upgrade: websocket and Connection: Upgrade")
        if request.clientproto != b"HTTP/1.1":
            raise UpgradeRequired("a WebSocket upgrade needs HTTP/1.1")
        if request.requestHeaders.getRawHeaders(b"sec-websocket-version") != [SUPPORTED_VERSION]:
            raise UpgradeRequired("only Sec-WebSocket-Version: 13 is supported")
        host = _one(request, b"host")
        if host is None or not _host_well_formed(host):
            raise BadRequest("missing or malformed Host header")
        key = _one(request, b"sec-websocket-key")
        if key is None or not _key_well_formed(key):
            raise BadRequest("missing or malformed Sec-WebSocket-Key")
        if b"#" in request.uri:
            raise BadRequest("a WebSocket URI has no fragment")
        protocols = [p.strip() for v in request.requestHeaders.getRawHeaders(b"sec-websocket-protocol", []) for p in v.split(b",")]
        if len(protocols) != len(set(protocols)):
            raise BadRequest("a subprotocol is offered twice")
        # Sec-WebSocket-Origin is the hybi-8 name of Origin: refused like Origin,
        # so that no header a browser could send bypasses --allowed-origin.
        for name in (b"origin", b"sec-websocket-origin"):
            raw = _one(request, name)
            if raw is None:
                continue
            origin = raw.decode("latin-1")
            if not origin_well_formed(origin):
                raise BadRequest(f"malformed {name.decode('ascii')} header")
            if not self.gateway.origin_allowed(origin):
                raise Forbidden("origin not allowed")
        if self.gateway.draining:
            raise Unavailable("node is draining")
        self.gateway.check_connection_limit()
