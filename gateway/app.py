"""The :class:`Gateway`: one node's bus, configuration, connections and counters.

Transports and resources hold a reference to it; it holds no sockets of its own
(:class:`~gateway.service.GatewayService` does the listening).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.auth import auth_chain_from_config
from gateway.auth.revocation import Revoker, revocations_for
from gateway.broker import broker_from_config
from gateway.bus import Bus
from gateway.config import Config, ConfigError
from gateway.core.model import Publication
from gateway.core.ratelimit import BucketSet
from gateway.errors import RateLimited, Unavailable
from gateway.hooks import load_hooks
from gateway.interfaces import IBroker, IPublishHook
from gateway.metrics import Stats
from gateway.metrics_limits import LimitStats
from gateway.presence import Presence
from gateway.transports._compact import LaterSlimming
from gateway.transports._deadlines import Deadlines

__all__ = ["Gateway"]


def _cancel_then_pass(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


@implementer(IPublishHook)
class _CountPublications:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def before_publish(self, channel: str, data: Any, sender: str | None) -> None:
        pass

    def after_publish(self, publication: Publication) -> None:
        self.stats.publications += 1


class Gateway:
    """A gateway node: what every transport shares.

    Args:
        config: the node's configuration.
        reactor: the reactor (defaults to the global one, imported late).
        broker: a broker to use instead of the one ``config`` selects.
    """

    _log = Logger()

    def __init__(self, config: Config | None = None, reactor: Any = None, broker: IBroker | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config = config or Config()
        self.reactor = reactor
        try:
            self.auth = auth_chain_from_config(config, reactor)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # Open sessions by identity (sub), for revocation.
        self._by_sub: dict[str, set[Any]] = {}
        # Upgrades accepted but still authenticating (they count against --max-connections).
        self._pending_connections = 0
        self.stats = Stats()
        self.limit_stats = LimitStats()
        # --publish-rate: WebSocket connections and HTTP publishers in separate sets,
        # so a flood of HTTP client addresses cannot evict a connection's bucket.
        rate = config.publish_rate
        self._ws_buckets = BucketSet(rate) if rate else None
        self._http_buckets = BucketSet(rate) if rate else None
        try:
            hooks = load_hooks(config.hook)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.bus = Bus(
            broker or broker_from_config(config, reactor),
            reactor,
            # Never more than history keeps: the node resumes no one history would reset.
            recent=min(config.recent_publications, config.history_size),
            linger=config.channel_linger,
            history_ttl=config.history_ttl,
        )
        self.bus.hooks.extend([_CountPublications(self.stats), *hooks])
        # Revocation (POST /disconnect): the store the auth chain asks, and the bus' control messages.
        self.revoker = Revoker(self, revocations_for(self.bus.broker, reactor))
        self.auth.revocations = self.revoker.store
        self.bus.on_control = self.revoker.control_received
        self.bus.on_reconnected = self._broker_reconnected
        # Presence (section 11): this node's clients in the cluster's presence store.
        self.presence = Presence(self.bus, config.node_id, config.presence_ttl, reactor)
        self.bus.on_presence = self.presence.events_received
        self.draining = False
        # Held polls and SSE streams are slimmed (memory) only once held a while (see LaterSlimming).
        self.slimming = LaterSlimming(reactor, 0.25)
        # Their heartbeats and timeouts, on one reactor call (memory: see Deadlines).
        self.deadlines = Deadlines(reactor)
        self._connections: dict[str, set[Any]] = {"websocket": set(), "sse": set(), "poll": set()}
        self._drained: list[defer.Deferred[None]] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Start the bus (and its broker) and the presence refresh."""
        self.presence.start()
        return self.bus.start()

    def stop(self) -> defer.Deferred[None]:
        """Stop the bus and the authenticators (their connections); call after :meth:`drain`."""

        async def stop() -> None:
            await self.presence.stop()
            try:
                await self.bus.stop()
            finally:
                await self.auth.stop()

        return defer.ensureDeferred(stop())

    def drain(self, timeout: float | None = None) -> defer.Deferred[None]:
        """Refuse new clients and tell every connected one to go (WebSocket 1001,
        SSE streams ended, held polls answered); fires when all are gone or after
        ``timeout`` seconds (default ``config.drain_timeout``)."""
        self.draining = True
        for transport in ("websocket", "sse", "poll"):
            for conn in list(self._connections[transport]):
                try:
                    conn.going_away()
                except Exception:
                    self._log.failure("closing a {transport} connection during drain failed", transport=transport)
        if not self.connection_count():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        wait = self.config.drain_timeout if timeout is None else timeout
        timer = self.reactor.callLater(wait, self._drain_timed_out, d)
        d.addBoth(_cancel_then_pass, timer)
        return d

    def _drain_timed_out(self, d: defer.Deferred[None]) -> None:
        if d in self._drained:
            self._drained.remove(d)
            self._log.warn("drain timeout: {count} connection(s) still open", count=self.connection_count())
            d.callback(None)

    # -- connections -------------------------------------------------------

    def connection_opened(self, transport: str, conn: Any) -> None:
        self._connections[transport].add(conn)
        self.stats.connections[transport] += 1

    def connection_closed(self, transport: str, conn: Any) -> None:
        if conn in self._connections[transport]:
            self._connections[transport].discard(conn)
            self.stats.connections[transport] -= 1
        if self._drained and not self.connection_count():
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def connection_count(self, transport: str | None = None) -> int:
        if transport is not None:
            return len(self._connections[transport])
        return sum(len(c) for c in self._connections.values())

    # -- limits (--publish-rate, --max-connections) ----------------------------

    def check_publish_rate(self, key: str) -> None:
        """Take one publication from ``key``'s token bucket (``ws:<conn id>``,
        ``sub:<sub>``, ``key:<api key digest>``, ``addr:<client address>``; see
        :func:`gateway.core.ratelimit.http_rate_key`).  ``--publish-rate N`` allows
        N a second with bursts of N (docs/protocol.md section 8); a WebSocket calls
        :meth:`forget_publish_rate` when it closes.  A ``ws:`` key counts as a
        WebSocket publication in ``/metrics``, any other as ``POST /publish``.

        Raises:
            RateLimited: over ``--publish-rate`` (its ``retry_after`` says when to retry).
        """
        websocket = key.startswith("ws:")
        buckets = self._ws_buckets if websocket else self._http_buckets
        if buckets is None:
            return
        wait = buckets.take(key, self.reactor.seconds())
        if wait:
            self.limit_stats.rate_limited["websocket" if websocket else "publish"] += 1
            raise RateLimited(
                f"over the publish rate limit of {self.config.publish_rate:g} per second: retry in {wait:.3g} s",
                retry_after=wait,
            )

    def forget_publish_rate(self, key: str) -> None:
        """Drop ``key``'s bucket (a WebSocket that closed: ``ws:<conn id>``)."""
        for buckets in (self._ws_buckets, self._http_buckets):
            if buckets is not None:
                buckets.forget(key)

    def check_connection_limit(self) -> None:
        """Before accepting a WebSocket, SSE stream or held poll (not a publish):
        ``--max-connections`` counts what is open on this node.

        Raises:
            Unavailable: the node holds ``--max-connections`` already.
        """
        limit = self.config.max_connections
        if limit is not None and self.connection_count() + self._pending_connections >= limit:
            self.limit_stats.connections_refused["max_connections"] += 1
            raise Unavailable("too many connections")

    def connection_pending(self, delta: int) -> None:
        """A connection accepted by :meth:`check_connection_limit` but not open yet (a
        WebSocket upgrade waiting for its authenticator) starts (+1) or stops (-1)
        counting against ``--max-connections``."""
        self._pending_connections += delta

    # -- identities (revocation) ---------------------------------------------

    def identity_opened(self, sub: str, session: Any) -> None:
        """A :class:`~gateway.transports._session.ClientSession` of ``sub`` opened."""
        self._by_sub.setdefault(sub, set()).add(session)

    def identity_closed(self, sub: str, session: Any) -> None:
        sessions = self._by_sub.get(sub)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_sub[sub]

    def sessions_by_sub(self) -> list[tuple[str, list[Any]]]:
        """Every identity with open sessions on this node, with those sessions."""
        return [(sub, list(sessions)) for sub, sessions in self._by_sub.items()]

    def _broker_reconnected(self) -> None:
        self._recheck_revocations()
        # Redis may have come back empty: register this node's live clients again.
        self.presence.refresh()

    def _recheck_revocations(self) -> None:
        d = defer.ensureDeferred(self.revoker.recheck())
        d.addErrback(lambda f: self._log.failure("re-checking revocations failed", f))

    def revoke_local(self, sub: str) -> int:
        """Close every session of ``sub`` on this node; returns how many."""
        sessions = list(self._by_sub.get(sub, ()))
        for session in sessions:
            try:
                session.revoke()
            except Exception:
                self._log.failure("revoking a session of {sub} failed", sub=sub)
        return len(sessions)

    def delivered(self, transport: str, count: int = 1) -> None:
        self.stats.counted[transport] += count

    # -- policy ------------------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        """docs/protocol.md section 8: every origin when none are configured."""
        allowed = self.config.allowed_origin
        return not allowed or origin in allowed

    def publish(
        self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None
    ) -> defer.Deferred[Publication]:
        """Publish through the bus, refusing while draining.

        ``idempotency_key`` (1-64 characters): a repeat on the channel within 5
        minutes, on any node, publishes nothing and fires with the first
        publication's seq and epoch (``Publication.duplicate`` set); see
        :meth:`gateway.bus.Bus.publish`.
        """
        if self.draining:
            return defer.fail(Unavailable("node is draining"))
        if idempotency_key is None:
            return self.bus.publish(channel, data, sender)
        return self.bus.publish(channel, data, sender, idempotency_key=idempotency_key)
