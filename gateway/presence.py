"""One node's presence I/O (docs/protocol.md section 11) around the sans-I/O
:class:`~gateway.core.presence.NodePresence`.

* Transports report what they hold: :meth:`Presence.connection_added` /
  ``connection_removed`` for each WebSocket or SSE subscription (from the moment
  it is live until it ends), :meth:`Presence.poll_started` / ``poll_ended`` for
  each held poll.
* Changes go to the broker in batches: the first change arms a timer of
  :data:`BATCH_SECONDS`; when it fires, everything changed meanwhile is one
  :meth:`~gateway.interfaces.IBroker.presence_update` (one script call per
  channel).  At most one update is in flight; what changes meanwhile waits for
  the next.  A join/leave storm of any size therefore costs about one round trip
  per touched channel per window.
* Every ``--presence-ttl``/4 seconds, and at once when the broker comes back
  (Redis restarted empty, or this node's connection was down), every entry this
  node holds is sent again: a refresh, and the re-registration of its live clients.
  Changes that could not be sent are kept and go with the next update.
* ``join``/``leave`` events from the broker go to the subscriptions that asked for
  them on this node (:meth:`Presence.listen`).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.core.presence import (
    NodePresence,
    PresenceChange,
    PresenceEvent,
    PresencePage,
)
from gateway.errors import GatewayError, Unavailable

__all__ = ["BATCH_SECONDS", "Presence", "PresenceListener", "presence_metrics"]

BATCH_SECONDS = 0.05
# After a failed update (a timeout while Redis still looks reachable), try again this soon.
RETRY_SECONDS = 1.0


class PresenceListener(Protocol):
    def on_presence(self, event: PresenceEvent) -> None:
        """A ``join`` or ``leave`` on a channel this listener asked for."""


class Presence:
    """Presence of one node.

    Args:
        bus: the node's bus (its broker stores presence).
        node: this node's id.
        ttl: ``--presence-ttl`` in seconds.
        clock: the reactor's time.
        batch: seconds changes are gathered before an update is sent.
    """

    _log = Logger()

    def __init__(self, bus: Any, node: str, ttl: float, clock: Any, batch: float = BATCH_SECONDS) -> None:
        self.bus = bus
        self.clock = clock
        self.batch = batch
        self.state = NodePresence(node, ttl)
        self._timer: Any = None
        self._inflight = False
        self._refresh_due = False
        self._stopped = False
        self._loop: LoopingCall | None = None
        self._listeners: dict[str, set[Any]] = {}
        # Store calls made (one per channel per batch) and entries sent (/metrics).
        self.updates = 0
        self.changes_sent = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._stopped = False
        self._loop.start(self.state.refresh_interval, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop the timers and send what changed (the leaves of a drained node's
        clients); fires once the broker answered or failed."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._stopped = True
        changes = self.state.take_changes()
        broker = self.bus.broker
        if not changes or not broker.is_ready():
            return defer.succeed(None)
        d = defer.maybeDeferred(broker.presence_update, changes)
        return d.addErrback(lambda f: None)

    # -- what transports hold -------------------------------------------------------

    def connection_added(self, channel: str, sub: str | None) -> None:
        self.state.connection_added(channel, sub)
        self._schedule()

    def connection_removed(self, channel: str, sub: str | None) -> None:
        self.state.connection_removed(channel, sub)
        self._schedule()

    def poll_started(self, channel: str, sub: str | None, client: str | None) -> bool:
        counted = self.state.poll_started(channel, sub, client)
        if counted:
            self._schedule()
        return counted

    def poll_ended(self, channel: str, sub: str | None, client: str | None) -> None:
        self.state.poll_ended(channel, sub, client)
        self._schedule()

    # -- join/leave ------------------------------------------------------------------

    def listen(self, channel: str, listener: PresenceListener) -> None:
        self._listeners.setdefault(channel, set()).add(listener)

    def unlisten(self, channel: str, listener: PresenceListener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]

    def events_received(self, channel: str, events: list[PresenceEvent]) -> None:
        """From the broker: hand each event to this node's listeners of ``channel``."""
        for event in events:
            for listener in list(self._listeners.get(channel, ())):
                try:
                    listener.on_presence(event)
                except Exception:
                    self._log.failure("delivering a presence event on {channel} failed", channel=channel)

    # -- queries ------------------------------------------------------------------------

    def query(self, channel: str, limit: int, after: str | None) -> defer.Deferred[PresencePage]:
        """The presence of ``channel``; fails with :class:`Unavailable` while the store is unreachable."""
        broker = self.bus.broker
        if not broker.is_ready():
            return defer.fail(Unavailable("presence is not available: the message bus is down"))
        d = defer.maybeDeferred(broker.presence_query, channel, limit, after)

        def failed(failure: Failure) -> Failure:
            if failure.check(GatewayError):
                return failure
            self._log.failure("presence query failed", failure)
            return Failure(Unavailable("presence is not available"))

        return d.addErrback(failed)

    # -- sending changes ------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._timer is None and not self._inflight and not self._stopped:
            self._timer = self.clock.callLater(self.batch, self.flush)

    def flush(self) -> None:
        """Send what changed since the last update (the batch timer's call)."""
        self._timer = None
        if self._inflight:
            return
        self._send(self.state.take_changes())

    def refresh(self) -> None:
        """Send every entry this node holds (periodically, and when the broker is back)."""
        if self._stopped:
            return
        if self._inflight:
            self._refresh_due = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._send(self.state.refresh_changes())

    def _send(self, changes: list[PresenceChange]) -> None:
        if not changes:
            return
        broker = self.bus.broker
        if not broker.is_ready():
            # Kept for the next refresh, which also runs as soon as the broker is back.
            self.state.put_back(changes)
            return
        self._inflight = True
        self.updates += len({c.channel for c in changes})
        self.changes_sent += len(changes)
        d = defer.maybeDeferred(broker.presence_update, changes)
        d.addCallbacks(self._sent, self._not_sent, errbackArgs=(changes,))

    def _sent(self, _: object) -> None:
        self._done()

    def _not_sent(self, failure: Failure, changes: list[PresenceChange]) -> None:
        if not failure.check(GatewayError):
            self._log.failure("presence update failed", failure)
        self.state.put_back(changes)
        self._inflight = False
        self._refresh_due = False
        # While the broker is down the refresh that runs when it is back sends them;
        # otherwise (one update timed out) they go again shortly.
        if self.bus.broker.is_ready() and self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(RETRY_SECONDS, self.flush)

    def _done(self) -> None:
        self._inflight = False
        if self._refresh_due:
            self._refresh_due = False
            self.refresh()
        elif self.state.pending:
            self._schedule()


def presence_metrics(gateway: Any) -> Any:
    """The presence metric families of ``gateway`` (called at scrape time by :mod:`gateway.metrics`)."""
    from prometheus_client.core import CounterMetricFamily

    presence = gateway.presence
    yield CounterMetricFamily(
        "gateway_presence_updates",
        "Presence store calls this node made (one script call per channel per batch or refresh).",
        value=presence.updates,
    )
    yield CounterMetricFamily(
        "gateway_presence_changes",
        "Presence entries those updates carried (changes and refreshes).",
        value=presence.changes_sent,
    )
