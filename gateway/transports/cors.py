"""CORS for the browser-facing HTTP endpoints (docs/protocol.md section 8).

``GET /sse``, ``GET /poll`` and ``POST /publish`` answer CORS following
``config.allowed_origin``:

* no list configured: every origin may read, ``Access-Control-Allow-Origin: *``;
* a listed origin: it is echoed back, with ``Vary: Origin`` (the answer depends on
  the request's origin, so caches must key on it) and
  ``Access-Control-Allow-Credentials: true`` (listing an origin is what lets it send
  the ``gateway_token`` cookie);
* any other origin: no CORS headers at all, so the browser keeps the response from
  the page.  The request itself is still served, as the protocol asks; only the
  WebSocket upgrade refuses unlisted origins.

Preflight (``OPTIONS``) is answered with ``204`` for allowed origins and a JSON
``403`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.web.server import Request

from gateway.errors import Forbidden
from gateway.transports._http import JSONResource, send_error

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["ALLOWED_REQUEST_HEADERS", "PREFLIGHT_MAX_AGE", "apply_cors", "preflight"]

# Headers a page may send: tokens, JSON bodies, and the SSE resume header (set by
# polyfills; browsers' own EventSource sends it without a preflight).
ALLOWED_REQUEST_HEADERS = b"Authorization, Content-Type, Last-Event-ID"
PREFLIGHT_MAX_AGE = b"600"


def apply_cors(gateway: Gateway, request: Request) -> bool:
    """Set the CORS response headers for ``request``'s ``Origin``.

    Returns:
        False when the request came from a browser origin that is not allowed
        (no CORS headers were set); True otherwise.
    """
    if not gateway.config.allowed_origin:
        request.setHeader(b"access-control-allow-origin", b"*")
        return True
    origin = request.getHeader(b"origin")
    if origin is None:
        # Not a browser: CORS does not apply.
        return True
    request.setHeader(b"vary", b"Origin")
    if not gateway.origin_allowed(origin.decode("latin-1")):
        return False
    request.setHeader(b"access-control-allow-origin", origin)
    request.setHeader(b"access-control-allow-credentials", b"true")
    return True


def preflight(gateway: Gateway, request: Request, methods: Sequence[str]) -> bytes:
    """Answer an ``OPTIONS`` preflight for a resource that serves ``methods``."""
    if not apply_cors(gateway, request):
        return send_error(request, Forbidden("origin not allowed"))
    allow = ", ".join([*methods, "OPTIONS"]).encode("ascii")
    request.setHeader(b"allow", allow)
    request.setHeader(b"access-control-allow-methods", allow)
    request.setHeader(b"access-control-allow-headers", ALLOWED_REQUEST_HEADERS)
    request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
    request.setResponseCode(204)
    return b""


class CORSResource(JSONResource):
    """A gateway endpoint that browsers call cross-origin: JSON errors, CORS preflight.

    Subclasses set :attr:`cors_methods` (what ``OPTIONS`` advertises) and implement
    their ``render_*`` methods; :attr:`gateway` is the node they serve.
    """

    cors_methods: Sequence[str] = ("GET",)
    # These endpoints are streams, held polls and a POST: a HEAD would hold a
    # stream or a poll open for headers alone, so it is a 405.
    serves_head = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_OPTIONS(self, request: Request) -> bytes:
        return preflight(self.gateway, request, self.cors_methods)


__all__ += ["CORSResource"]
