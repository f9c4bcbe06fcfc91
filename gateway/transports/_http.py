"""Shared HTTP plumbing: JSON bodies, JSON errors, method dispatch without HTML pages."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Request

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
    if request.finished or getattr(request, "_disconnected", False):
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


__all__ += ["finish_json", "NOT_DONE_YET"]
