"""The ``http`` authenticator: ask the application's own backend (docs/protocol.md section 8).

Theory of operation
-------------------
A site whose users already have a session cookie lets the gateway ask it who a
request is.  For every request to authenticate, the gateway POSTs what it presented
as JSON to ``--auth-url``::

    {"transport": "websocket", "cookies": {"session": "..."},
     "authorization": "Bearer ..." | null, "token": "..." | null, "origin": "https://..." | null}

and the backend answers:

* ``200`` with claims, ``{"sub": "alice", "subscribe": ["room:*"], "publish": [], "exp": ...}``
  (read like a JWT's by :func:`~gateway.core.auth.identity_from_claims`);
* ``401``: not authenticated (:class:`~gateway.errors.Unauthorized`);
* ``403``: refused (:class:`~gateway.errors.Forbidden`).

Anything else (another status, a body that is not a JSON object of valid claims, a
refused connection, no answer within the deadline) is
:class:`~gateway.errors.Unavailable`: the backend being down is never an open door.

Answers (200, 401 and 403) are cached per credential, a SHA-256 of the cookies, the
``Authorization`` header and the token, for ``cache`` seconds on the reactor's clock
(0: never cached), in a bounded LRU table; an identity whose ``exp`` has passed is
not served from the cache.  Concurrent requests with the same credential share one
backend call.  Connections to the backend are persistent (an
:class:`~twisted.web.client.HTTPConnectionPool`); :meth:`HTTPAuthenticator.stop`
closes them and cancels the calls in flight.

Nothing a client presented is ever logged.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from gateway._bytesbody import BytesBody
from gateway.core.auth import Credentials, Identity, identity_from_claims
from gateway.errors import Forbidden, GatewayError, Unauthorized, Unavailable
from gateway.interfaces import IAuthenticator

__all__ = ["DEFAULT_TIMEOUT", "MAX_ANSWER", "HTTPAuthenticator", "credential_key"]

DEFAULT_TIMEOUT = 5.0  # seconds for one backend call, connection included
MAX_ANSWER = 64 * 1024  # the largest claims body read from the backend
MAX_CACHED = 10_000  # credentials remembered at most


def credential_key(credentials: Credentials) -> str:
    """The cache key of what ``credentials`` present: a digest, so the table holds no secret."""
    material = json.dumps(
        [sorted(credentials.cookies.items()), credentials.authorization, credentials.token],
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def request_body(credentials: Credentials) -> bytes:
    """The JSON document POSTed to the backend (docs/protocol.md section 8)."""
    return json.dumps(
        {
            "transport": credentials.transport,
            "cookies": dict(credentials.cookies),
            "authorization": credentials.authorization,
            "token": credentials.token,
            "origin": credentials.origin,
        },
        separators=(",", ":"),
    ).encode("utf-8")


class _LimitedBody(Protocol):
    """Collect a response body of at most ``limit`` bytes; a longer one is cut off."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()  # type: ignore[union-attr]
            self.finished.errback(Unavailable("the authentication backend's answer is too large"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_limited(response: Any, limit: int) -> defer.Deferred[bytes]:
    protocol: _LimitedBody

    def cancel(d: defer.Deferred[bytes]) -> None:
        protocol.transport.stopProducing()  # type: ignore[union-attr]

    finished: defer.Deferred[bytes] = defer.Deferred(cancel)
    protocol = _LimitedBody(finished, limit)
    response.deliverBody(protocol)
    return finished


def _where(url: str) -> str:
    """The URL without user info or query, for logs."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


@implementer(IAuthenticator)
class HTTPAuthenticator:
    """Authenticate by asking the application's backend at ``url`` (see the module docstring).

    Args:
        url: the backend's ``http://`` or ``https://`` URL.
        reactor: the reactor (its clock also times the cache).
        cache: seconds an answer is reused for the same credential (0: never).
        timeout: seconds one backend call may take, connecting included.
        max_cached: the most credentials the cache holds (least recently used go first).
        agent: an ``IAgent`` to use instead of a pooled :class:`~twisted.web.client.Agent`.
        now: the wall clock, for claims' ``exp``.

    Raises:
        ValueError: for a URL that is not http(s) or a negative cache or timeout.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        reactor: Any,
        cache: float = 30.0,
        timeout: float = DEFAULT_TIMEOUT,
        max_cached: int = MAX_CACHED,
        agent: Any = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if cache < 0:
            raise ValueError("the cache time must be >= 0")
        if timeout <= 0:
            raise ValueError("the timeout must be > 0")
        self.url = url
        self.reactor = reactor
        self.cache_seconds = cache
        self.timeout = timeout
        self.max_cached = max_cached
        self.now = now
        self.pool: HTTPConnectionPool | None = None
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = 8
            self.pool.retryAutomatically = False
            agent = Agent(reactor, connectTimeout=timeout, pool=self.pool)
        self.agent = agent
        # key -> (reactor time until which it holds, Identity or GatewayError)
        self._cache: OrderedDict[str, tuple[float, Identity | GatewayError]] = OrderedDict()
        # key -> the Deferreds waiting for the one call in flight
        self._waiting: dict[str, list[defer.Deferred[Identity]]] = {}
        self._calls: set[defer.Deferred[Any]] = set()
        self._stopping = False
        self.backend_calls = 0

    # -- IAuthenticator --------------------------------------------------------

    def authenticate(self, credentials: Credentials) -> defer.Deferred[Identity]:
        key = credential_key(credentials)
        cached = self._cached(key)
        if cached is not None:
            if isinstance(cached, Identity):
                return defer.succeed(cached)
            return defer.fail(type(cached)(cached.message))
        d: defer.Deferred[Identity] = defer.Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        self._waiting[key] = [d]
        call = defer.ensureDeferred(self._ask(credentials))
        call.addTimeout(self.timeout, self.reactor)
        self._calls.add(call)
        call.addBoth(self._answered, key, call)
        return d

    # -- the cache -------------------------------------------------------------

    def _cached(self, key: str) -> Identity | GatewayError | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        until, answer = entry
        if self.reactor.seconds() >= until or (isinstance(answer, Identity) and answer.expired(self.now())):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _remember(self, key: str, answer: Identity | GatewayError) -> None:
        if self.cache_seconds <= 0:
            return
        self._cache[key] = (self.reactor.seconds() + self.cache_seconds, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def _answered(self, result: Any, key: str, call: defer.Deferred[Any]) -> None:
        self._calls.discard(call)
        waiting = self._waiting.pop(key, [])
        if isinstance(result, Failure):
            if result.check(Unauthorized, Forbidden):
                self._remember(key, result.value)
            elif self._stopping and result.check(defer.CancelledError):
                result = Failure(Unavailable("the node is stopping"))
            elif result.check(defer.TimeoutError, defer.CancelledError):
                self._log.warn("authentication backend {url} did not answer in time", url=_where(self.url))
                result = Failure(Unavailable("the authentication backend did not answer in time"))
            elif not result.check(Unavailable):
                self._log.warn(
                    "authentication backend {url} failed: {error}", url=_where(self.url), error=result.getErrorMessage()
                )
                result = Failure(Unavailable("the authentication backend is not available"))
        else:
            self._remember(key, result)
        for d in waiting:
            if d.called:  # its caller gave up (cancelled)
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    # -- the backend -------------------------------------------------------------

    async def _ask(self, credentials: Credentials) -> Identity:
        self.backend_calls += 1
        headers = Headers({b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]})
        body = request_body(credentials)
        try:
            response = await self.agent.request(b"POST", self.url.encode("ascii"), headers, BytesBody(body))
        except (ResponseNeverReceived, RequestNotSent) as e:
            # A kept-alive connection the backend closed meanwhile: Twisted retries only
            # idempotent methods by itself.  This POST only asks a question; ask it
            # once more, on a new connection (not when the call itself was cancelled:
            # the deadline passed, or the node is stopping).
            if any(reason.check(defer.CancelledError) for reason in getattr(e, "reasons", ())):
                raise
            response = await self.agent.request(b"POST", self.url.encode("ascii"), headers, BytesBody(body))
        answer = await _read_limited(response, MAX_ANSWER)
        status = response.code
        if status == 401:
            raise Unauthorized("not authenticated by the application")
        if status == 403:
            raise Forbidden("refused by the application")
        if status != 200:
            self._log.warn("authentication backend {url} answered {status}", url=_where(self.url), status=status)
            raise Unavailable("the authentication backend is not available")
        reason = "not a JSON object"
        try:
            claims = json.loads(answer)
            if isinstance(claims, dict):
                return identity_from_claims(claims)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError included
            pass
        except GatewayError as e:  # claims of the wrong shape
            reason = e.message
        self._log.warn(
            "authentication backend {url} answered 200 without usable claims: {reason}", url=_where(self.url), reason=reason
        )
        raise Unavailable("the authentication backend's answer is unusable")

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> defer.Deferred[None]:
        """Cancel the calls in flight (their waiters get ``unavailable``) and close
        the pooled connections."""
        self._stopping = True
        for call in list(self._calls):
            call.cancel()
        if self.pool is None:
            return defer.succeed(None)
        return self.pool.closeCachedConnections()
