"""``POST /disconnect`` (docs/protocol.md section 8): revoke an identity on every node.

Body ``{"sub": "alice"}``; answers ``{"disconnected": <connections closed on this
node>}``.  It always needs an API key in ``Authorization: Bearer``: 403 when no
API key is configured, 401 without valid credentials, 403 for any other identity
(a token, even a valid one).  See :mod:`gateway.auth.revocation` for what a
revocation does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from gateway.auth.apikey import APIKeyAuthenticator
from gateway.core.auth import MAX_SUB_LENGTH, Credentials
from gateway.core.commands import loads_json_object
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Internal,
    TooLarge,
    Unauthorized,
)
from gateway.transports._http import JSONResource, error_body, finish_json

__all__ = ["DisconnectResource", "parse_disconnect_body"]


def parse_disconnect_body(body: bytes) -> str:
    """The ``sub`` of a ``POST /disconnect`` body.

    Raises:
        BadRequest: unless the body is a JSON object whose ``sub`` is a string of
            1-256 characters.
    """
    obj = loads_json_object(body, 'a JSON object: {"sub": "<identity>"}')
    sub = obj.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        raise BadRequest(f"sub must be a string of 1-{MAX_SUB_LENGTH} characters")
    return sub


class DisconnectResource(JSONResource):
    """``POST /disconnect``."""

    _log = Logger()

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Request) -> bytes | int:
        limit = self.gateway.config.max_message_size
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read(limit + 1)
        header = request.getHeader(b"authorization")
        authorization = header.decode("latin-1") if header is not None else None
        d = defer.ensureDeferred(self._disconnect(authorization, body, limit))
        d.addCallbacks(self._done, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    async def _disconnect(self, authorization: str | None, body: bytes, limit: int) -> int:
        chain = self.gateway.auth
        if not any(isinstance(a, APIKeyAuthenticator) for a in chain.authenticators):
            raise Forbidden("POST /disconnect needs an API key, and none is configured")
        # Only the header: a key in a query string ends up in logs.
        credentials = Credentials("disconnect", authorization=authorization)
        if credentials.bearer is None:
            raise Unauthorized("POST /disconnect needs an API key (Authorization: Bearer <key>)")
        identity = await chain.authenticate(credentials)
        if identity.kind != "api-key":
            raise Forbidden("POST /disconnect needs an API key")
        if len(body) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
        sub = parse_disconnect_body(body)
        return int(await self.gateway.revoker.revoke(sub))

    def _done(self, count: int, request: Request) -> None:
        finish_json(request, 200, {"disconnected": count})

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(GatewayError):
            error: GatewayError = failure.value
        else:
            self._log.failure("disconnect failed", failure)
            error = Internal("internal error")
        finish_json(request, error.http_status, error_body(error))
