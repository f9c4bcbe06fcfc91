"""The ``Date`` header of a twistd node's responses, formatted once a second.

twisted.web's ``Request.process`` sets ``Date`` on every response with
``datetimeToString()`` (``time.gmtime`` and a %-format), about 5% of a long poll's
CPU.  The text only changes once a second.  :func:`install` puts a per-second cache
in the name ``twisted.web.server.Request.process`` reads; the text is the same as
before for every second.

It changes a name in twisted.web's module, so it is done only where the gateway owns
the process: ``twistd gateway`` (:mod:`gateway.tap`).  tests/unit/test_httpdate.py
pins what it relies on.
"""

from __future__ import annotations

import time

from twisted.web import http, server

__all__ = ["CachedHTTPDate", "install"]


class CachedHTTPDate:
    """``datetimeToString`` that formats the current second once; any other time as before."""

    def __init__(self, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._clock = clock
        self._second = -1
        self._text = b""

    def __call__(self, msSinceEpoch: float | None = None) -> bytes:
        if msSinceEpoch is not None:
            return http.datetimeToString(msSinceEpoch)  # type: ignore[no-any-return]
        second = int(self._clock())
        if second != self._second:
            self._text = http.datetimeToString(second)
            self._second = second
        return self._text


def install() -> None:
    """Use a :class:`CachedHTTPDate` for the ``Date`` header of twisted.web's responses (idempotent)."""
    if not isinstance(server.datetimeToString, CachedHTTPDate):
        server.datetimeToString = CachedHTTPDate()  # type: ignore[attr-defined]
