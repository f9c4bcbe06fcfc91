"""Keep credentials out of the access log (docs/protocol.md section 8: secrets are never logged).

A token may travel in the query string (``token=``, the only way for JSONP and for an
``EventSource``), and twisted.web's combined access log writes the whole request URI
(and the ``Referer``).  :func:`access_log_formatter` is that format with the value of
every ``token`` query parameter replaced by ``[redacted]``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

__all__ = ["REDACTED", "SECRET_PARAMETERS", "access_log_formatter", "redact_uri"]

REDACTED = b"[redacted]"
SECRET_PARAMETERS = frozenset({b"token"})


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of each secret query parameter replaced (names are
    compared percent-decoded, as the query parser reads them)."""
    path, question, query = uri.partition(b"?")
    if not question:
        return uri
    query, hash_, fragment = query.partition(b"#")
    items = []
    for item in query.split(b"&"):
        name, eq, _ = item.partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")) in SECRET_PARAMETERS:
            item = name + b"=" + REDACTED
        items.append(item)
    return path + b"?" + b"&".join(items) + hash_ + fragment


class _Redacted:
    """The request as the formatter sees it: URI and Referer redacted, the rest as is."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact_uri(value)
        return value  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


@provider(IAccessLogFormatter)
def access_log_formatter(timestamp: str, request: Any) -> str:
    """twisted.web's combined log line, without the tokens of the query string."""
    return combinedLogFormatter(timestamp, _Redacted(request))  # type: ignore[no-any-return]
