"""The in-process broker: the default, one node, history in memory.

It delivers through the same :class:`~gateway.interfaces.IBrokerListener` path as the
Redis broker, so the bus cannot tell them apart.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.core.events import encode_json
from gateway.core.idempotency import IDEMPOTENCY_TTL, FirstPublication, IdempotencyCache
from gateway.core.model import HistoryResult, Position, Publication
from gateway.core.presence import PresenceChange, PresencePage, PresenceTable
from gateway.core.stream import Stream
from gateway.errors import BadRequest, Unavailable
from gateway.interfaces import IBroker, IBrokerListener

__all__ = ["InMemoryBroker", "new_epoch"]

# A channel nobody subscribes to and nobody published on for this long is
# forgotten (its next publication starts a new epoch).
STREAM_IDLE_SECONDS = 24 * 3600
SWEEP_INTERVAL = 60.0


def new_epoch() -> str:
    """A fresh random epoch: 8 URL-safe characters (48 bits)."""
    return secrets.token_urlsafe(6)


@implementer(IBroker)
class InMemoryBroker:
    """Single-node broker keeping each channel's :class:`Stream` in memory.

    Args:
        history_size: most publications kept per channel.
        history_ttl: oldest publication kept, in seconds.
        clock: an ``IReactorTime`` for the periodic sweep of idle channels;
            None means no sweep (unit tests).
        now: the wall clock (seconds since the Unix epoch) used for timestamps
            and history age.
        idempotency_ttl: seconds an ``idempotency_key`` is remembered per channel,
            on ``clock`` (on ``now`` without one); expired keys are removed on the
            next keyed publish and by the periodic sweep.
    """

    name = "memory"

    def __init__(
        self,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        clock: IReactorTime | None = None,
        now: Callable[[], float] = time.time,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._clock = clock
        self._now = now
        self._streams: dict[str, Stream] = {}
        self._subscribed: set[str] = set()
        self._listener: IBrokerListener | None = None
        self._sweeper: Any = None
        self._idempotency = IdempotencyCache(idempotency_ttl)
        self._presence = PresenceTable()

    # -- lifecycle --------------------------------------------------------

    def start(self, listener: IBrokerListener) -> defer.Deferred[None]:
        self._listener = listener
        if self._clock is not None:
            self._sweeper = self._clock.callLater(SWEEP_INTERVAL, self._sweep)
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        return defer.succeed(None)

    def is_ready(self) -> bool:
        return self._listener is not None

    # -- IBroker ----------------------------------------------------------

    def _stream(self, channel: str) -> Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream(channel, new_epoch(), self.history_size, self.history_ttl)
            stream.last_publish = self._now()
        return stream

    def _seconds(self) -> float:
        """The clock of idempotency keys: the reactor's, or the wall clock without one."""
        return self._clock.seconds() if self._clock is not None else self._now()

    def publish(
        self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None
    ) -> defer.Deferred[Publication]:
        try:
            # Refuse what could not be delivered before it takes a seq.
            encode_json(data)
        except BadRequest:
            return defer.fail()
        stream = self._stream(channel)
        if idempotency_key is not None:
            # Synchronous, so the lookup and the append below are one atomic step.
            seconds = self._seconds()
            first = self._idempotency.lookup(channel, idempotency_key, seconds)
            if first is not None and first.epoch == stream.epoch:
                return defer.succeed(Publication(channel, first.seq, first.epoch, data, first.ts, sender, duplicate=True))
        pub = stream.append(data, self._now(), sender)
        if idempotency_key is not None:
            self._idempotency.remember(channel, idempotency_key, FirstPublication(pub.seq, pub.epoch, pub.ts), seconds)
        if channel in self._subscribed and self._listener is not None:
            self._listener.publication_received(pub)
        return defer.succeed(pub)

    @property
    def idempotency_keys(self) -> int:
        """How many idempotency keys are remembered now (for tests and metrics)."""
        return len(self._idempotency)

    def history(self, channel: str, since: Position | None) -> defer.Deferred[HistoryResult]:
        return defer.succeed(self._stream(channel).recover(since, self._now()))

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        self._subscribed.add(channel)
        return defer.succeed(None)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        self._subscribed.discard(channel)
        return defer.succeed(None)

    def publish_control(self, message: dict[str, Any]) -> defer.Deferred[None]:
        """Deliver ``message`` to this node's listener (the only node), as a fresh
        copy decoded from its JSON, exactly as the Redis broker would."""
        try:
            encoded = encode_json(message)
        except BadRequest:
            return defer.fail()
        if self._listener is None:
            return defer.fail(Unavailable("control: the broker is not running"))
        self._listener.control_received(json.loads(encoded))
        return defer.succeed(None)

    def presence_update(self, changes: list[PresenceChange]) -> defer.Deferred[None]:
        if self._listener is None:
            return defer.fail(Unavailable("presence: the broker is not running"))
        self._presence_events(self._presence.update(changes, self._now()))
        return defer.succeed(None)

    def presence_query(self, channel: str, limit: int, after: str | None) -> defer.Deferred[PresencePage]:
        if self._listener is None:
            return defer.fail(Unavailable("presence: the broker is not running"))
        page, events = self._presence.query(channel, limit, after, self._now())
        if events:
            self._presence_events({channel: events})
        return defer.succeed(page)

    def _presence_events(self, events: dict[str, Any]) -> None:
        for channel, evs in events.items():
            if channel in self._subscribed and self._listener is not None:
                self._listener.presence_received(channel, list(evs))

    # -- housekeeping -----------------------------------------------------

    def _sweep(self) -> None:
        self.sweep()
        assert self._clock is not None
        self._sweeper = self._clock.callLater(SWEEP_INTERVAL, self._sweep)

    def sweep(self) -> None:
        """Trim every history by age, forget long-idle unsubscribed channels and
        expired idempotency keys."""
        self._idempotency.expire(self._seconds())
        now = self._now()
        for channel, stream in list(self._streams.items()):
            stream.trim(now)
            if channel not in self._subscribed and now - stream.last_publish > max(STREAM_IDLE_SECONDS, self.history_ttl):
                del self._streams[channel]
