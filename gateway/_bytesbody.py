"""A request body for twisted.web's ``Agent`` that is known in advance.

``twisted.web.client.FileBodyProducer`` would do, but it writes through a
cooperator (a timer per chunk); a body this small is written at once, with no
timers left behind.  Used by the ``--auth-url`` authenticator and the Python
client's HTTP requests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["BytesBody"]


@implementer(IBodyProducer)
class BytesBody:
    """A request body known in advance, written at once (no cooperator, no timers)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
