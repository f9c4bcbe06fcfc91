"""Keep credentials out of the access log (docs/protocol.md section 8: secrets are never logged).

A token may travel in the query string (``token=``, the only way for JSONP and for an
``EventSource``), and twisted.web's combined access log writes the whole request URI
(and the ``Referer``).  :func:`access_log_formatter` is that format with the value of
every ``token`` query parameter replaced by ``[redacted]``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import address
from twisted.web.http import _escape, combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

__all__ = ["REDACTED", "SECRET_PARAMETERS", "access_log_formatter", "redact_uri"]

REDACTED = b"[redacted]"
SECRET_PARAMETERS = frozenset({b"token"})


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of each secret query parameter replaced (names are
    compared percent-decoded, as the query parser reads them)."""
    path, question, query = uri.partition(b"?")
    if not question or (b"token" not in query and b"%" not in query):
        return uri  # no parameter name can read as a secret one
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


# Escaped forms of the values that repeat from line to line (methods, protocols,
# addresses, user agents, referrers), bounded.
_ESCAPED: dict[Any, str] = {}
_ESCAPED_MAX = 1024


def _escaped(value: Any) -> str:
    out = _ESCAPED.get(value)
    if out is None:
        out = _escape(value)
        if len(_ESCAPED) >= _ESCAPED_MAX:
            _ESCAPED.clear()
        _ESCAPED[value] = out
    return out


_ADDRESSES = (address.IPv4Address, address.IPv6Address)


@provider(IAccessLogFormatter)
def access_log_formatter(timestamp: str, request: Any) -> str:
    """twisted.web's combined log line (:func:`~twisted.web.http.combinedLogFormatter`,
    the same text), without the tokens of the query string."""
    client = request.getClientAddress()
    if not isinstance(client, _ADDRESSES):
        # Whatever twisted.web makes of other addresses (X-Forwarded-For, UNIX).
        return combinedLogFormatter(timestamp, _Redacted(request))  # type: ignore[no-any-return]
    referrer = request.getHeader(b"referer")
    referrer = _escaped(redact_uri(referrer) if referrer else b"-")
    agent = _escaped(request.getHeader(b"user-agent") or b"-")
    ip = _escaped(client.host)
    method = _escaped(request.method)
    uri = _escape(redact_uri(request.uri))
    protocol = _escaped(request.clientproto)
    length = request.sentLength or "-"
    return f'"{ip}" - - {timestamp} "{method} {uri} {protocol}" {request.code:d} {length} "{referrer}" "{agent}"'
