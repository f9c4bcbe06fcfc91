"""Shared HTTP plumbing: JSON bodies, JSON errors, method dispatch without HTML pages,
and the gateway's own Site (:func:`gateway_site`, :func:`make_site`): a channel and a
request class that bound how requests arrive (docs/protocol.md section 2)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from gateway.core.events import dumps
from gateway.core.ratelimit import retry_after_header
from gateway.errors import (
    BadRequest,
    GatewayError,
    Internal,
    NotFound,
    RateLimited,
    TooLarge,
)
from gateway.transports._compact import LazyEmpty

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


DEFAULT_RETRY_AFTER = 1
"""Seconds a ``429`` asks the client to wait when the limiter did not say."""


def retry_after(error: GatewayError) -> int:
    """Whole seconds for ``Retry-After``: the limiter's ``retry_after`` rounded up,
    at least 1; :data:`DEFAULT_RETRY_AFTER` when it did not say."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return DEFAULT_RETRY_AFTER
    return retry_after_header(value)


def set_retry_after(request: Request, error: GatewayError) -> None:
    """Every ``429`` (``rate_limited``) carries ``Retry-After``."""
    if isinstance(error, RateLimited):
        request.setHeader(b"retry-after", b"%d" % retry_after(error))


def send_error(request: Request, error: GatewayError) -> bytes:
    set_retry_after(request, error)
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
    :class:`GatewayError`.  A method the resource does not serve gets a JSON
    ``405`` with ``Allow`` (docs/protocol.md section 7), never Twisted's HTML
    page.  ``HEAD`` is answered like ``GET`` without the body when
    :attr:`serves_head` is true (documents), and is a ``405`` otherwise (streams
    and held polls: a ``HEAD`` must not open one).
    """

    isLeaf = True
    serves_head = True

    def allowed_methods(self) -> list[str]:
        """The methods this resource serves, as listed in ``Allow``."""
        methods = {m[len("render_") :] for m in dir(type(self)) if m.startswith("render_")}
        methods.discard("HEAD")
        if "GET" in methods and self.serves_head:
            methods.add("HEAD")
        return sorted(methods)

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        head = method == "HEAD"
        if head and self.serves_head:
            handler = getattr(self, "render_GET", None)
        elif head:
            handler = None
        else:
            handler = getattr(self, "render_" + method, None)
        if handler is None:
            return self._not_allowed(request, method)
        try:
            result: bytes | int = handler(request)
        except GatewayError as e:
            result = send_error(request, e)
        except Exception:
            _log.failure("error rendering {path}", path=request.path)
            result = send_error(request, Internal("internal error"))
        if head and isinstance(result, bytes):
            # twisted.web drops a HEAD body itself, but logs a warning for each one.
            request.setHeader(b"content-length", b"%d" % len(result))
            return b""
        return result

    def _not_allowed(self, request: Request, method: str) -> bytes:
        allowed = self.allowed_methods()
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        body = send_json(request, 405, error_body(BadRequest(f"method {method} not allowed; use {', '.join(allowed)}")))
        return b"" if request.method == b"HEAD" else body


class NotFoundResource(JSONResource):
    """Every method: a JSON ``404``."""

    def render(self, request: Request) -> bytes | int:
        body = send_error(request, NotFound("no such endpoint"))
        return b"" if request.method == b"HEAD" else body


__all__ += ["DEFAULT_RETRY_AFTER", "finish_json", "retry_after", "set_retry_after"]


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
    cached: dict[str, list[str]] | None = getattr(request, "gateway_params", None)
    if cached is not None and max_length == MAX_QUERY_LENGTH:
        # Read once per request (the endpoint, then its authentication).
        return cached
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
    if max_length == MAX_QUERY_LENGTH:
        try:
            request.gateway_params = params  # type: ignore[attr-defined]
        except AttributeError:
            pass  # a request that takes no attributes: parsed again next time
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


# -- our own Site: channel, request and the defences that need them -------------

SERVER_NAME = b"gateway"
"""The ``Server`` header of every response our Site sends (no version: docs/protocol.md section 7)."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds from a request's first byte until its head and body must be in."""

LINGER_TIMEOUT = 5.0
"""Seconds a refused connection is kept half-open, reading and discarding, so the
client can read the refusal before the socket closes (a close with unread input
sends a TCP reset, which can destroy the answer on the client's side)."""

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Payload Too Large"}


def raw_error_response(status: int, error: GatewayError) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON error body.

    For answers the channel writes itself, outside any ``Request``.
    """
    body = json_body(error_body(error))
    head = (
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nContent-Type: application/json\r\n"
        b"Cache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    )
    return head % (status, _REASONS.get(status, b"Error"), SERVER_NAME, len(body)) + body


class GatewayHTTPChannel(http.HTTPChannel):
    """The HTTP/1.1 channel of the gateway's own Site.

    On top of twisted.web's ``HTTPChannel`` it:

    * answers what twisted.web would refuse silently or with a bare status line
      (an over-long request or header line, a malformed request line, header or
      chunk) with a ``400`` JSON ``bad_request``;
    * bounds the time to receive a request: from the first byte of a request until
      its head and body are complete, at most :attr:`request_timeout` seconds
      (the Site's ``request_timeout``; default 30).  twisted.web's own idle
      timeout restarts on every byte, so a client feeding one byte at a time could
      hold a connection forever.  The deadline only runs while a request is
      arriving: not while it is being answered (SSE streams, held polls), not
      after an upgrade to WebSocket, and not on an idle keep-alive connection
      (the Site's idle timeout covers that).  When it passes, the client gets a
      ``408`` with a JSON ``bad_request`` body and the connection closes;
    * sends ``Server: gateway`` on every response (twisted.web's says
      ``TwistedWeb/<version>``);
    * writes refusals with :meth:`refuse`: the answer, then a half-close that
      discards further input for up to :data:`LINGER_TIMEOUT` seconds;
    * reports its opening and closing to the Site's ``connections``
      (:class:`gateway.transports._drain.OpenConnections`) when it has one, and
      makes every answer the connection's last while those are draining.

    Use it through :func:`gateway_site` or :func:`make_site`; it also works as the ``protocol`` of a plain
    ``server.Site`` (then with the default deadline, and without the early body
    refusal of :class:`GatewayRequest`).  It speaks HTTP/1.1 only, not HTTP/2.
    """

    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    linger_timeout: float = LINGER_TIMEOUT

    # Memory of a held connection (_compact.slim_request): what twisted.web's
    # HTTPChannel.__init__ assigns, as the class default that shrink() drops in
    # its favour, and the empty buffer made again when next read.
    _transferDecoder = None
    _dataBuffer = LazyEmpty(list)

    _deadline: Any = None
    _linger: Any = None
    _answering = False
    _arriving = False
    _refused = False

    def connectionMade(self) -> None:
        site = getattr(self, "site", None)
        timeout = getattr(site, "request_timeout", self.request_timeout)
        self.request_timeout = timeout
        super().connectionMade()
        connections = getattr(site, "connections", None)
        if connections is not None:
            connections.opened(self)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        connections = getattr(getattr(self, "site", None), "connections", None)
        if connections is not None and connections.draining:
            # Draining: this answer is the connection's last.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    # -- request deadline ---------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if data and self._deadline is None and not self._answering and self.request_timeout:
            # A request is arriving.  Its deadline is armed only if these bytes do
            # not complete it (allContentReceived clears this): most requests
            # arrive whole in one read and need no timer at all.
            self._arriving = True
        super().dataReceived(data)
        if self._arriving and self._deadline is None and not self._refused:
            self._deadline = self.callLater(self.request_timeout, self._request_timed_out)

    def allContentReceived(self) -> None:
        self._arriving = False
        self._cancel_deadline()
        if self._refused:
            return
        # Set before the request runs: it may finish (and call requestDone) at once.
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._answering = False
        # Pipelined bytes buffered meanwhile come back through dataReceived, which
        # starts the next request's deadline.
        super().requestDone(request)

    def _request_timed_out(self) -> None:
        self._deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        _log.info("closing {peer}: request not received within {seconds}s", peer=peer, seconds=self.request_timeout)
        self.refuse(408, BadRequest(f"request not received within {self.request_timeout:g} s"))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    # -- refusals -------------------------------------------------------------

    def refuse(self, status: int, error: GatewayError) -> None:
        """Answer ``status`` with ``error`` as JSON and close, whatever state the
        request is in (only call it while no response has started).

        Further input is read and discarded until the client closes or
        :attr:`linger_timeout` passes, so the answer is not lost to a TCP reset.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        transport = self.transport
        if transport is None:
            return
        transport.write(raw_error_response(status, error))
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None or isinstance(transport, ProtocolWrapper):
            # No half-close under TLS (it would bypass the TLS layer).
            self.loseConnection()
            return
        half_close()
        self._linger = self.callLater(self.linger_timeout, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(400, BadRequest(f"request line or header line longer than {self.MAX_LENGTH} bytes"))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to a malformed request line, header or chunk is a
        # bare "400 Bad Request" status line; pinned by
        # tests/integration/test_http_hardening.py::test_malformed_request_gets_400_json.
        self.refuse(400, BadRequest("malformed HTTP request"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._arriving = False
        self._cancel_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)
        connections = getattr(getattr(self, "site", None), "connections", None)
        if connections is not None:
            connections.closed(self)

    # -- writing: Server header, one send per reactor turn ---------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if not isinstance(headers, Headers):
            # twisted.web's own path sanitizes other header collections first.
            super().writeHeaders(version, code, reason, headers)
            return
        headers.setRawHeaders(b"server", [SERVER_NAME])
        # The bytes twisted.web's writeHeaders builds, written through self.write.
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self.write(b"".join(head))

    def write(self, data: bytes) -> None:
        # Through the Site's TickWriter when it has one: appended to the same
        # buffer as transport.write() (order holds), sent once at the end of the
        # reactor turn without registering the socket for writing.
        writer = getattr(getattr(self, "site", None), "tick_writer", None)
        if writer is None:
            self.transport.write(data)
        else:
            writer.write(self.transport, data)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))


LineLimitHTTPChannel = GatewayHTTPChannel
"""The former name of :class:`GatewayHTTPChannel`."""


class GatewayRequest(server.Request):
    """The request class of the gateway's own Site: bodies bounded, in memory.

    twisted.web reads a whole request body before any resource sees it, into a
    temporary file when it is over 100 KB.  This request holds the body in memory
    and never takes more than the Site's ``max_body_size`` bytes of it:

    * a ``Content-Length`` over the limit is refused with ``413`` as soon as the
      head is in, before any of the body is read (no ``100 Continue`` is sent);
    * a chunked body is cut off with ``413`` the moment it passes the limit.

    A refusal closes the connection (the rest of the body is discarded).

    Query parameters come from the query string only: twisted.web would also
    parse a ``POST`` body sent as a form (``application/x-www-form-urlencoded``,
    ``multipart/form-data``) into ``args``, and to find out it parses every
    ``POST``'s ``Content-Type`` with the standard library's e-mail header parser,
    which cost about a tenth of a publish's CPU.  No gateway endpoint takes a
    form, so that parsing is switched off.
    """

    _body_refused = False

    # Memory of a held request (_compact.slim_request): the values twisted.web's
    # Request.__init__ assigns here, as class defaults that shrink() drops in
    # their favour, and its empty containers, made again when next read.
    queued = 0  # len(channel.requests) when it was made: twisted.web handles one at a time
    _parsePOSTFormSubmission = False
    gateway_params: dict[str, list[str]] | None = None  # query_params' cache
    _adapterCache = LazyEmpty(dict)
    received_cookies = LazyEmpty(dict)
    cookies = LazyEmpty(list)
    requestHeaders = LazyEmpty(Headers)
    responseHeaders = LazyEmpty(Headers)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # twisted.web's switch for reading POST form bodies into args (see above).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)

    def _body_limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        limit = getattr(site, "max_body_size", None)
        return limit if isinstance(limit, int) else None

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # type: ignore[assignment]
        limit = self._body_limit()
        if limit is not None and length is not None and length > limit:
            self._refuse_body(limit)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        content = self.content
        assert content is not None
        limit = self._body_limit()
        if limit is not None and content.tell() + len(data) > limit:
            self._refuse_body(limit)
            return
        content.write(data)

    def _refuse_body(self, limit: int) -> None:
        self._body_refused = True
        self.content = BytesIO()  # type: ignore[assignment]
        # twisted.web sends "100 Continue" right after gotLength when asked to;
        # the refusal must be the only answer.
        self.requestHeaders.removeHeader(b"expect")
        refuse = getattr(self.channel, "refuse", None)
        if refuse is not None:
            refuse(413, TooLarge(f"body larger than {limit} bytes"))
        elif self.channel is not None:
            self.channel.loseConnection()

    def processingFailed(self, reason: Any) -> None:
        # A resource raised past its own error handling: a JSON 500, not
        # twisted.web's HTML page.
        _log.failure("error rendering {uri}", reason, uri=self.uri)
        if self.finished or self.startedWriting:
            if not self.finished:
                self.finish()
            return
        body = send_error(self, Internal("internal error"))
        self.write(body)
        self.finish()


def gateway_site(
    resource: Any,
    max_body_size: int | None = None,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    reactor: Any = None,
    **kwargs: Any,
) -> server.Site:
    """A ``server.Site`` using :class:`GatewayHTTPChannel` and :class:`GatewayRequest`.

    A plain ``server.Site`` configured, not a subclass, so that anything written
    for twisted.web's Site (``site.connections`` for draining, test helpers) sees
    the class it expects.

    Args:
        resource: the root resource.
        max_body_size: the largest request body taken, in bytes (``413`` beyond);
            None for no limit.
        request_timeout: seconds from a request's first byte until its head and
            body must be in (``408`` beyond); None or 0 for no deadline.
        reactor: the reactor for timeouts (default: the global one).
        **kwargs: passed to ``server.Site`` (``timeout``: idle timeout, ``logPath``, ...).

    An SSE stream or a held poll still open after a moment keeps only the request
    headers its access-log line and its answer read
    (:data:`~gateway.transports._compact.KEPT_REQUEST_HEADERS`: ``Referer``,
    ``User-Agent``, ``X-Forwarded-For``, ``Connection``); a ``logFormatter``
    reading others sees them absent on such a request's line.
    """
    # GatewayRequest does not parse bodies as forms (see its docstring).
    site = server.Site(resource, requestFactory=GatewayRequest, reactor=reactor, **kwargs)
    site.protocol = GatewayHTTPChannel  # type: ignore[assignment]
    site.max_body_size = max_body_size  # type: ignore[attr-defined]
    site.request_timeout = request_timeout  # type: ignore[attr-defined]
    return site


def make_site(
    resource: Any, config: Any, reactor: Any = None, request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT, writer: Any = None
) -> server.Site:
    """The Site a :class:`~gateway.service.GatewayService` serves ``resource`` with.

    Request bodies are bounded by ``config.max_message_size`` before they are read,
    requests must arrive within ``request_timeout`` seconds, every answer says
    ``Server: gateway``.

    Mounting :class:`~gateway.resource.GatewayResource` in your own ``server.Site``
    keeps every endpoint's behaviour (JSON errors, ``405`` with ``Allow``,
    ``HEAD``, the ``426`` of ``GET /ws`` and its version and origin checks, the
    ``413`` for a declared ``Content-Length`` over the limit), but the defences that
    live in the channel are your Site's: twisted.web reads a body whole (to a
    temporary file above 100 KB) before ``POST /publish`` can refuse it, nothing
    bounds a slow request, and ``Server`` is whatever your Site sends.  Serve with
    :func:`gateway_site` (or set your Site's ``protocol`` to
    :class:`GatewayHTTPChannel` and its ``requestFactory`` to
    :class:`GatewayRequest`, with ``max_body_size`` and ``request_timeout``
    attributes) to have them too.
    """
    from gateway.auth.redact import access_log_formatter

    site = gateway_site(
        resource,
        max_body_size=config.max_message_size,
        request_timeout=request_timeout,
        reactor=reactor,
        logFormatter=access_log_formatter,
    )
    # Responses are sent through ``writer`` (a TickWriter: one send() per
    # connection per reactor turn, see GatewayHTTPChannel.write) when given.
    site.tick_writer = writer  # type: ignore[attr-defined]
    if not getattr(config, "access_log", True):
        # --no-access-log: no line per request (about 15% of a poll-heavy node's CPU).
        site.log = _no_access_log  # type: ignore[method-assign]
    return site


def _no_access_log(request: Any) -> None:
    """``Site.log`` for ``--no-access-log``: nothing is written."""


__all__ += [
    "DEFAULT_REQUEST_TIMEOUT",
    "LINGER_TIMEOUT",
    "SERVER_NAME",
    "GatewayHTTPChannel",
    "GatewayRequest",
    "LineLimitHTTPChannel",
    "gateway_site",
    "make_site",
    "raw_error_response",
]
