"""Revocation (docs/protocol.md section 8): ``POST /disconnect {"sub": "alice"}``.

Two things happen when an identity is revoked:

* its tokens issued (``iat``) at or before the revocation's second, and those
  without ``iat``, are refused with ``forbidden`` for ``--revocation-ttl`` seconds:
  a *store* remembers the revocation second per ``sub``, and
  :class:`~gateway.auth.AuthChain` asks it (:meth:`is_revoked`) on every
  authentication and refresh;
* every connection of that identity is closed on every node: the node that took
  the request closes its own (:meth:`~gateway.app.Gateway.revoke_local`) and sends
  ``{"type": "revoke", "sub": ..}`` on the bus' control channel
  (:meth:`~gateway.interfaces.IBroker.publish_control`), on which every other node
  closes its own.

Stores: :class:`MemoryRevocations` for a single node, :class:`RedisRevocations` for
a cluster (one key per ``sub``, ``{prefix}:{rev:<sub>}``, holding the revocation
second and expiring after the TTL; the hash tag keeps each identity's key in one
Redis Cluster slot).  The Redis store fails closed: when Redis cannot answer,
:meth:`RedisRevocations.is_revoked` fails with
:class:`~gateway.errors.Unavailable`, never "not revoked".

A control message sent while a node's pub/sub connection is down is lost for that
node: its open connections of the identity stay open (their tokens are refused
when they reconnect or refresh).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway.core.auth import Identity
from gateway.errors import GatewayError, Unavailable

__all__ = [
    "MemoryRevocations",
    "RedisRevocations",
    "Revoker",
    "is_revoked_at",
    "revocations_for",
]

# How long the Redis store trusts an answer it read (see RedisRevocations).
CACHE_SECONDS = 1.0
CACHE_SIZE = 10000

# SET the revocation second, keeping a later one already stored (two nodes whose
# clocks disagree must not move a revocation backwards), with the TTL in ms.
_REVOKE_SCRIPT = b"""
local at = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) and tonumber(cur) > tonumber(at) then at = cur end
redis.call('SET', KEYS[1], at, 'PX', ARGV[2])
return at
"""


def is_revoked_at(revoked: int | None, iat: float | None) -> bool:
    """True when a token issued at ``iat`` is refused by a revocation in second ``revoked``.

    Tokens issued in that second or before, and tokens without ``iat``, are refused.
    """
    if revoked is None:
        return False
    return iat is None or math.floor(iat) <= revoked


class MemoryRevocations:
    """The revocations of a single node, in memory.

    Args:
        now: the clock of the TTL (seconds; ``time.time`` by default).
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._entries: dict[str, tuple[int, float]] = {}  # sub -> (second, expires)

    def revoke(self, sub: str, at: int, ttl: float) -> defer.Deferred[None]:
        """Refuse ``sub``'s tokens issued at or before second ``at``, for ``ttl`` seconds."""
        now = self.now()
        for key, (_, expires) in list(self._entries.items()):
            if expires <= now:
                del self._entries[key]
        old = self._entries.get(sub)
        if old is not None:
            at = max(at, old[0])
        self._entries[sub] = (at, now + ttl)
        return defer.succeed(None)

    def revoked_at(self, sub: str) -> int | None:
        """The second ``sub`` was revoked, or None."""
        entry = self._entries.get(sub)
        if entry is None:
            return None
        if self.now() >= entry[1]:
            del self._entries[sub]
            return None
        return entry[0]

    def is_revoked(self, identity: Identity) -> bool:
        if identity.sub is None:
            return False
        return is_revoked_at(self.revoked_at(identity.sub), identity.iat)

    def forget(self, sub: str) -> None:
        """Nothing cached here (a control message about ``sub`` arrived)."""


class RedisRevocations:
    """The cluster's revocations, in Redis, read through the broker's command connections.

    Answers read from Redis (revoked or not) are kept for ``cache_seconds``: a
    node authenticating many requests of one identity (held polls come back
    every few seconds, SSE reconnects, WebSocket refreshes) then costs Redis one
    ``GET`` per identity per second instead of one per request, and the
    authentication hot path no round trip at all.  A cached answer cannot hide a
    revocation for long: the node that stores a revocation updates its own cache,
    and every other node drops the identity's entry when the control message
    arrives (:meth:`forget`), before it closes the connections; an answer read
    before that and arriving after it is not kept.  Only a node that misses the
    control message (its pub/sub connection down) may use an answer up to
    ``cache_seconds`` old.  While Redis is unreachable nothing is answered from
    the cache: :meth:`is_revoked` fails with Unavailable (fail closed).

    Args:
        broker: the node's :class:`~gateway.broker.redis.RedisBroker`.
        clock: an ``IReactorTime`` for the cache's age.
        cache_seconds: how long an answer is kept (0: never).
    """

    _log = Logger()

    def __init__(self, broker: Any, clock: Any, cache_seconds: float = CACHE_SECONDS, cache_size: int = CACHE_SIZE) -> None:
        self.broker = broker
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._cache: dict[str, tuple[int | None, float]] = {}  # sub -> (second, valid until)
        self._generation = 0

    def revoke(self, sub: str, at: int, ttl: float) -> defer.Deferred[None]:
        """Store the revocation (fails with Unavailable when Redis cannot take it)."""
        self.forget(sub)
        d = self.broker.eval("revoke", _REVOKE_SCRIPT, [self.broker.revocation_key(sub)], [str(at), str(math.ceil(ttl * 1000))])

        def stored(value: Any) -> None:
            self._remember(sub, _second(value))

        return d.addCallback(stored)

    def is_revoked(self, identity: Identity) -> bool | defer.Deferred[bool]:
        sub = identity.sub
        if sub is None:
            return False
        if not self.broker.is_ready():
            return defer.fail(Unavailable("revocations cannot be checked: Redis is not reachable"))
        hit = self._cache.get(sub)
        if hit is not None:
            if hit[1] > self.clock.seconds():
                return is_revoked_at(hit[0], identity.iat)
            del self._cache[sub]
        generation = self._generation
        d = self.broker.execute("revocation check", "GET", self.broker.revocation_key(sub))

        def answer(value: Any) -> bool:
            at = _second(value)
            if generation == self._generation:
                self._remember(sub, at)
            return is_revoked_at(at, identity.iat)

        return d.addCallback(answer)

    def _remember(self, sub: str, at: int | None) -> None:
        if self.cache_seconds <= 0:
            return
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[sub] = (at, self.clock.seconds() + self.cache_seconds)

    def forget(self, sub: str) -> None:
        """Drop what is cached about ``sub`` (it was just revoked somewhere)."""
        self._generation += 1
        self._cache.pop(sub, None)


def _second(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        # Not ours to guess: refuse rather than let the identity in.
        raise Unavailable("revocations cannot be checked: unreadable entry in Redis") from None


def revocations_for(broker: Any, reactor: Any) -> MemoryRevocations | RedisRevocations:
    """The store for ``broker``: in Redis with the Redis broker, else in memory."""
    try:
        from gateway.broker.redis import RedisBroker
    except ImportError:  # pragma: no cover - a build without the Redis broker
        return MemoryRevocations()
    from gateway.broker.cluster import ClusterBroker

    if isinstance(broker, (RedisBroker, ClusterBroker)):
        return RedisRevocations(broker, reactor)
    return MemoryRevocations()


class Revoker:
    """Revokes identities for one node: the store, this node's sessions, the other nodes.

    Args:
        gateway: the node (its config, broker and :meth:`~gateway.app.Gateway.revoke_local`).
        store: :class:`MemoryRevocations` or :class:`RedisRevocations`.
        now: the wall clock (the revocation second is compared with tokens' ``iat``).
    """

    _log = Logger()

    def __init__(self, gateway: Any, store: Any, now: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.store = store
        self.now = now
        # Tells this node's own control messages apart from other nodes'.
        self.origin = secrets.token_hex(8)

    async def revoke(self, sub: str) -> int:
        """Revoke ``sub`` everywhere; returns how many connections this node closed.

        This node's connections are closed even when the store or the bus fails
        (and the request fails with Unavailable, to be retried: a revocation may
        be repeated).
        """
        at = int(self.now())
        error: GatewayError | None = None
        try:
            await self.store.revoke(sub, at, self.gateway.config.revocation_ttl)
        except GatewayError as e:
            error = e
        count = int(self.gateway.revoke_local(sub))
        if error is None:
            try:
                await self.gateway.bus.broker.publish_control({"type": "revoke", "sub": sub, "origin": self.origin})
            except GatewayError as e:
                error = e
        if error is not None:
            self._log.warn(
                "revoking {sub}: closed {count} connection(s) here, but not everywhere: {error}",
                sub=sub,
                count=count,
                error=error.message,
            )
            raise error
        self._log.info("revoked {sub} at {at}: closed {count} connection(s) here", sub=sub, at=at, count=count)
        return count

    async def recheck(self) -> int:
        """Close this node's sessions whose identity was revoked while this node could
        not hear the control channel (called after the broker reconnects: a control
        message sent meanwhile is lost, like any pub/sub message).  Returns how many
        sessions were closed; stops quietly when the store is unreachable again (the
        identities are checked again at their next authentication or refresh)."""
        closed = 0
        for sub, sessions in self.gateway.sessions_by_sub():
            self.store.forget(sub)
            for session in sessions:
                identity = getattr(session, "identity", None)
                if identity is None:
                    continue
                try:
                    revoked = await defer.maybeDeferred(self.store.is_revoked, identity)
                except GatewayError as e:
                    self._log.warn("re-checking revocations after a reconnect failed: {error}", error=e.message)
                    return closed
                if revoked:
                    session.revoke()
                    closed += 1
        if closed:
            self._log.info("closed {count} connection(s) revoked while the control channel was down", count=closed)
        return closed

    def control_received(self, message: dict[str, Any]) -> None:
        """A control message from the bus: on ``revoke``, close this node's sessions of ``sub``."""
        if message.get("type") != "revoke":
            return
        sub = message.get("sub")
        if not isinstance(sub, str) or not sub:
            return
        self.store.forget(sub)
        if message.get("origin") == self.origin:
            return
        count = self.gateway.revoke_local(sub)
        self._log.info("{sub} was revoked on another node: closed {count} connection(s) here", sub=sub, count=count)
