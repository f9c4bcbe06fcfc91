"""Authentication for the HTTP endpoints (docs/protocol.md sections 5, 6, 7 and 8).

``GET /sse``, ``GET /poll``, ``POST /publish`` and ``GET /metrics`` all turn a
twisted.web request into :class:`~gateway.core.auth.Credentials`
(:func:`credentials_from_request`) and ask the node's
:class:`~gateway.auth.AuthChain` who it is (:func:`authenticate_request`).  What
may come from where:

* the ``Authorization`` header (``Bearer <jwt or API key>``),
* the ``token`` query parameter,
* the request's cookies (the JWT authenticator reads ``gateway_token``; an
  ``--auth-url`` backend gets them all),
* the ``Origin`` header, for authenticators that care.

A JSONP poll (``callback=``) presents only its ``token=``: a script tag from any site
would carry the user's cookies (and a page cannot set headers on one), so neither
cookies nor ``Authorization`` count there (docs/protocol.md section 6).

Failures reach the client as the JSON errors every endpoint uses: ``unauthorized``
401, ``forbidden`` 403, ``unavailable`` 503 (:func:`as_gateway_error` makes every
failure one of those; anything unexpected fails closed, as ``unavailable``), written
by :func:`respond_error` as plain JSON or JSONP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from gateway.core.auth import Credentials, Identity
from gateway.core.events import dumps
from gateway.core.ratelimit import http_rate_key
from gateway.errors import GatewayError, Unavailable
from gateway.transports._http import (
    DEFAULT_RETRY_AFTER,
    error_body,
    is_gone,
    query_params,
    retry_after,
    set_retry_after,
    single_param,
)

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "api_keys_configured",
    "as_gateway_error",
    "authenticate_request",
    "credentials_from_request",
    "publish_rate_key",
    "respond",
    "respond_error",
    "retry_after",
]

_log = Logger()


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _cookies(request: Request) -> dict[str, str]:
    # twisted.web parsed the Cookie headers into received_cookies (bytes to bytes).
    cookies = getattr(request, "received_cookies", None) or {}
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in cookies.items()}


def credentials_from_request(request: Request, transport: str, jsonp: bool = False) -> Credentials:
    """What ``request`` presents, for ``transport`` (``"sse"``, ``"poll"``, ``"publish"``, ``"metrics"``).

    With ``jsonp`` only the ``token`` query parameter is taken: no cookies and no
    ``Authorization`` header.

    Raises:
        BadRequest: ``token`` given more than once, or a query that is not UTF-8.
    """
    token = single_param(query_params(request), "token")
    origin = _header(request, b"origin")
    if jsonp:
        return Credentials(transport=transport, token=token, origin=origin)
    return Credentials(
        transport=transport,
        authorization=_header(request, b"authorization"),
        token=token,
        cookies=_cookies(request),
        origin=origin,
    )


def as_gateway_error(failure: Failure) -> GatewayError:
    """The error a failed authentication is answered with.

    :class:`GatewayError` as it is (``unauthorized``, ``forbidden``, ``unavailable``);
    anything else fails closed as ``unavailable`` (and is logged).
    """
    if failure.check(GatewayError):
        return failure.value  # type: ignore[no-any-return]
    if failure.check(defer.CancelledError):
        return Unavailable("authentication was cancelled")
    _log.failure("authentication failed unexpectedly", failure)
    return Unavailable("authentication is not available")


def _raise_gateway_error(failure: Failure) -> Identity:
    raise as_gateway_error(failure)


def authenticate_request(gateway: Gateway, request: Request, transport: str, jsonp: bool = False) -> defer.Deferred[Identity]:
    """Authenticate ``request`` through ``gateway.auth``.

    Returns:
        a Deferred of the :class:`~gateway.core.auth.Identity`
        (:data:`~gateway.core.auth.OPEN` when no authentication is configured),
        failing only with a :class:`GatewayError`: ``Unauthorized``, ``Forbidden``,
        ``Unavailable``, or ``BadRequest`` for an unreadable ``token``.
    """
    try:
        credentials = credentials_from_request(request, transport, jsonp)
    except GatewayError as e:
        return defer.fail(e)
    d = defer.maybeDeferred(gateway.auth.authenticate, credentials)
    d.addErrback(_raise_gateway_error)
    return d


def api_keys_configured(gateway: Gateway) -> bool:
    """True when the node has API keys (``--api-key``, ``--api-key-file``, ``GATEWAY_API_KEYS``)."""
    from gateway.auth.apikey import APIKeyAuthenticator

    return any(isinstance(a, APIKeyAuthenticator) for a in gateway.auth.authenticators)


def _api_key_of(gateway: Gateway, credentials: Credentials) -> str | None:
    """Which presented credential is the API key (the bearer header or ``token=``)."""
    from gateway.auth.apikey import APIKeyAuthenticator

    candidates = [c for c in (credentials.bearer, credentials.token) if c]
    checkers = [a for a in gateway.auth.authenticators if isinstance(a, APIKeyAuthenticator)]
    if len(candidates) > 1:
        # A wrong one beside the right one must not pick the bucket (a client could
        # vary it to get a fresh bucket per request).
        for candidate in candidates:
            if any(a.authenticate(Credentials(transport=credentials.transport, token=candidate)) for a in checkers):
                return candidate
    return candidates[0] if candidates else None


def publish_rate_key(gateway: Gateway, request: Request, identity: Identity) -> str:
    """The ``--publish-rate`` bucket of an HTTP publish
    (:func:`~gateway.core.ratelimit.http_rate_key`), with the API key that really
    authenticated it."""
    api_key = None
    if identity.kind == "api-key":
        api_key = _api_key_of(gateway, credentials_from_request(request, "publish"))
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return http_rate_key(identity, host if host is not None else str(address), api_key)


def respond(request: Request, status: int, body: bytes, callback: str | None = None) -> None:
    """Write a JSON answer (JSONP when ``callback`` is set: status 200, ``NAME(<json>);``)
    and finish; nothing when the client is gone."""
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


def respond_error(request: Request, error: GatewayError, callback: str | None = None, extra: dict[str, Any] | None = None) -> None:
    """Answer ``error`` as ``{"error":{...}}`` (plus ``extra`` fields), JSON or JSONP;
    a ``429`` carries ``Retry-After``."""
    if not is_gone(request):
        set_retry_after(request, error)
    body = error_body(error)
    if extra:
        body.update(extra)
    respond(request, error.http_status, dumps(body), callback)
