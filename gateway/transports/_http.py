"""Shared HTTP plumbing: JSON bodies, JSON errors, method dispatch without HTML pages."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import http, resource
from twisted.web.server import Request

from gateway.core.events import dumps
from gateway.errors import BadRequest, GatewayError, Internal, NotFound

__all__ = ["JSONResource", "NotFoundResource", "json_body", "error_body", "send_json", "send_error"]

_log = Logger()


def json_body(obj: Any) -> bytes:
    return dumps(obj)


def error_body(error: GatewayError) -> dict[str, Any]:
    return {"error": error.to_json()}


def send_json(request: Request, status: int, obj: Any) -> bytes:
    """Set status and JSON headers; return the body (for ``render_*`` to return)."""
    body = json_body(obj)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    return body


def send_error(request: Request, error: GatewayError) -> bytes:
    return send_json(request, error.http_status, error_body(error))


def finish_json(request: Request, status: int, obj: Any) -> None:
    """Write a JSON response to a request rendered with NOT_DONE_YET (if still connected)."""
    if is_gone(request):
        return
    request.write(send_json(request, status, obj))
    request.finish()


class JSONResource(resource.Resource):
    """A leaf resource whose every outcome, errors included, is JSON.

    Subclasses implement ``render_GET``/``render_POST``/... and may raise
    :class:`GatewayError`; unknown methods get a JSON 405.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + method, None)
        if handler is None:
            allowed = sorted(m[len("render_") :] for m in dir(self) if m.startswith("render_") and m != "render_HEAD")
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            body = json_body(error_body(BadRequest(f"method {method} not allowed; use {', '.join(allowed)}")))
            request.setResponseCode(405)
            request.setHeader(b"content-type", b"application/json")
            return body
        try:
            result: bytes | int = handler(request)
            return result
        except GatewayError as e:
            return send_error(request, e)
        except Exception:
            _log.failure("error rendering {path}", path=request.path)
            return send_error(request, Internal("internal error"))


class NotFoundResource(JSONResource):
    def render(self, request: Request) -> bytes | int:
        return send_error(request, NotFound("no such endpoint"))


__all__ += ["finish_json"]


# -- query strings (GET /sse, GET /poll) ---------------------------------------

# The longest query string the streaming endpoints accept.  Twisted itself drops a
# request line over 16 KiB; below that, an oversize query is our own JSON 400, and
# 8 KiB is room for 64 channel names plus a full 4,096-character cursor.
MAX_QUERY_LENGTH = 8192


def query_params(request: Request, max_length: int = MAX_QUERY_LENGTH) -> dict[str, list[str]]:
    """The request's query parameters as text, validated.

    Raises:
        BadRequest: when the query string is longer than ``max_length`` bytes or a
            name or value is not UTF-8.
    """
    query = request.uri.partition(b"?")[2]
    if len(query) > max_length:
        raise BadRequest(f"query string longer than {max_length} bytes")
    params: dict[str, list[str]] = {}
    args: dict[bytes, list[bytes]] = request.args or {}
    for raw_name, raw_values in args.items():
        try:
            name = raw_name.decode("utf-8")
            params[name] = [v.decode("utf-8") for v in raw_values]
        except UnicodeDecodeError:
            raise BadRequest("query parameters must be UTF-8") from None
    return params


def single_param(params: dict[str, list[str]], name: str) -> str | None:
    """The one value of ``name``, or None when absent.

    Raises:
        BadRequest: when ``name`` is given more than once (which value wins would
            be a guess).
    """
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    return values[0]


def is_gone(request: Request) -> bool:
    """True once ``request`` can take no more output (finished or client gone)."""
    return bool(request.finished or getattr(request, "_disconnected", False))


__all__ += ["MAX_QUERY_LENGTH", "query_params", "single_param", "is_gone"]


class LineLimitHTTPChannel(http.HTTPChannel):
    """An ``HTTPChannel`` that answers an over-long request or header line with JSON.

    twisted.web drops the connection without a word when one line of the request
    head is longer than ``MAX_LENGTH`` (16 KiB); this answers a ``400`` JSON
    ``bad_request`` first, so a client learns why.  Use it as a Site's protocol::

        site = server.Site(resource)
        site.protocol = LineLimitHTTPChannel

    (That replaces Twisted's HTTP/1.1-or-HTTP/2 negotiating factory: only do it on
    listeners that do not offer HTTP/2.)
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        connections = getattr(self.site, "connections", None)
        if connections is not None:
            connections.opened(self)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        connections = getattr(self.site, "connections", None)
        if connections is not None:
            connections.closed(self)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        connections = getattr(self.site, "connections", None)
        if connections is not None and connections.draining:
            # Draining: this answer is the connection's last.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def lineLengthExceeded(self, line: bytes) -> None:
        body = json_body(error_body(BadRequest(f"request line or header line longer than {self.MAX_LENGTH} bytes")))
        head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        transport = self.transport
        assert transport is not None
        transport.write(head % len(body) + body)
        transport.loseConnection()


__all__ += ["LineLimitHTTPChannel"]
