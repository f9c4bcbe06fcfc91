"""The gateway's error vocabulary: one table of codes, HTTP statuses and close codes.

Every error a client can see is a :class:`GatewayError` subclass.  The core raises
them; transports only map them to their wire form (a JSON ``error`` event on a
WebSocket, an HTTP status with a JSON body on SSE, poll and publish)::

    GatewayError
    ├── BadRequest        bad_request   400
    ├── Unauthorized      unauthorized  401
    ├── Forbidden         forbidden     403
    ├── NotFound          not_found     404
    ├── TooLarge          too_large     413
    ├── RateLimited       rate_limited  429
    ├── Internal          internal      500
    └── Unavailable       unavailable   503
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_POLICY",
    "CLOSE_TOO_LARGE",
    "CLOSE_NOT_AUTHENTICATED",
    "CLOSE_FORBIDDEN",
    "GatewayError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "TooLarge",
    "RateLimited",
    "Internal",
    "Unavailable",
]

# WebSocket close codes of docs/protocol.md section 4.
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_NOT_AUTHENTICATED = 4001
CLOSE_FORBIDDEN = 4003


class GatewayError(Exception):
    """An error with a protocol code, an HTTP status and a human message."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def to_json(self) -> dict[str, Any]:
        """The ``{"code": .., "message": ..}`` object used in HTTP error bodies."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(GatewayError):
    code = "bad_request"
    http_status = 400


class Unauthorized(GatewayError):
    code = "unauthorized"
    http_status = 401


class Forbidden(GatewayError):
    code = "forbidden"
    http_status = 403


class NotFound(GatewayError):
    code = "not_found"
    http_status = 404


class TooLarge(GatewayError):
    code = "too_large"
    http_status = 413


class RateLimited(GatewayError):
    """Over a rate limit; ``retry_after`` is the seconds until a retry can succeed
    (HTTP answers carry it as ``Retry-After``, rounded up to whole seconds)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Internal(GatewayError):
    code = "internal"
    http_status = 500


class Unavailable(GatewayError):
    code = "unavailable"
    http_status = 503

