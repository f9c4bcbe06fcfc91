"""The browser client and the demo page as resources: ``GET /gateway.js``,
``GET /gateway.d.ts`` and (with ``--demo``) ``GET /demo/`` (docs/protocol.md sections 2 and 9).

The files live in ``gateway/static/`` (package data, so an installed wheel serves
them too) and are read once, when the resource tree is built.  Each answer carries a
strong ``ETag`` (a hash of the bytes) and a short public cache lifetime; a matching
``If-None-Match`` is a ``304``.  Every path is relative to where the gateway is
mounted: the demo page loads ``../gateway.js`` and connects to ``../``, so it works
under a prefix as well as at the root.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from twisted.web import resource
from twisted.web.server import Request

from gateway.transports._http import JSONResource, NotFoundResource, send_json

__all__ = ["JAVASCRIPT", "DemoResource", "StaticFile", "static_bytes"]

CACHE_CONTROL = b"public, max-age=300"
"""Five minutes: long enough to spare a reload, short enough that an upgrade shows soon."""

JAVASCRIPT = b"application/javascript; charset=utf-8"


def static_bytes(name: str) -> bytes:
    """The file ``name`` shipped in ``gateway/static/``."""
    return resources.files("gateway").joinpath("static", name).read_bytes()


def _etag_matches(header: bytes | None, etag: bytes) -> bool:
    """``If-None-Match``: ``*`` or a list holding ``etag`` (weak comparison, RFC 9110 13.1.2)."""
    if header is None:
        return False
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == etag:
            return True
    return False


class StaticFile(JSONResource):
    """One file with its content type, a strong ETag and ``Cache-Control``; ``GET`` and ``HEAD``.

    Args:
        body: the file's bytes.
        content_type: its ``Content-Type`` header value.
    """

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'

    @classmethod
    def named(cls, name: str, content_type: bytes) -> StaticFile:
        return cls(static_bytes(name), content_type)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"cache-control", CACHE_CONTROL)
        # Any page may load the client with a plain <script src>; CORS lets a
        # bundler or a fetch() read it too.
        request.setHeader(b"access-control-allow-origin", b"*")
        if _etag_matches(request.getHeader(b"if-none-match"), self.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", b"%d" % len(self.body))
        return self.body


class DemoResource(resource.Resource):
    """``/demo/``: the chat page, its script and style sheet; ``/demo`` redirects to ``/demo/``
    (relative, so it works under any prefix); anything else below is a JSON ``404``."""

    def __init__(self) -> None:
        super().__init__()
        self._index = StaticFile.named("demo.html", b"text/html; charset=utf-8")
        self.putChild(b"", self._index)
        self.putChild(b"demo.js", StaticFile.named("demo.js", JAVASCRIPT))
        self.putChild(b"demo.css", StaticFile.named("demo.css", b"text/css; charset=utf-8"))
        self._not_found = NotFoundResource()

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return self._not_found

    def render(self, request: Request) -> bytes:
        # ``/demo`` without its slash: relative URLs in the page need the slash.
        request.setHeader(b"location", b"demo/")
        body = send_json(request, 301, {"location": "demo/"})
        return b"" if request.method == b"HEAD" else body
