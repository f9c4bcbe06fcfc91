"""The bus: the node's single fan-out point between one broker and many connections.

Theory of operation
-------------------
Every transport (WebSocket, SSE, long-poll, Python code) subscribes through
:meth:`Bus.subscribe`.  The bus keeps, per channel, the set of local
:class:`Subscription` objects and takes exactly one broker subscription for the
channel while it has any (first subscriber in, last subscriber out).

Publications come back from the broker through :meth:`Bus.publication_received`,
once per node.  The bus keeps the channel's *node position* (epoch and the last seq
it delivered) and checks each publication against it:

* the next seq: encode it once (:class:`PreparedPublication`) and hand it to every
  subscription;
* a seq already seen: drop it (a repeat);
* a seq further ahead: a gap (a lost pub/sub message, a reconnect).  The bus holds
  back everything later, fetches the missing publications from the broker's history
  and delivers them first.  When history cannot fill the gap, every subscription gets
  a ``reset`` instead of a silent skip;
* another epoch: the stream restarted; every subscription gets a ``reset``.

A subscription starts *pending*: while the broker subscription and the history read
for its ``since`` are in flight, live publications are buffered on it.  When the
history answer arrives the bus merges both (history first, then buffered
publications after it, without repeats) and the subscription goes live.  Each
subscription also checks seq continuity itself, so a subscriber never sees a gap
without a ``reset``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.core.channels import validate_channel
from gateway.core.events import PreparedPublication
from gateway.core.model import HistoryResult, Position, Publication
from gateway.errors import GatewayError, Internal, Unavailable
from gateway.interfaces import IBroker, IBrokerListener

__all__ = ["Bus", "Subscriber", "Subscription", "SubscribeResult"]

GAP_RETRY_SECONDS = 1.0


class Subscriber(Protocol):
    """What a subscription delivers to, in order."""

    def on_publication(self, prepared: PreparedPublication) -> None:
        """The next publication of the channel."""

    def on_reset(self, channel: str, position: Position) -> None:
        """The position could not be continued; live delivery goes on after ``position``."""


@attrs.frozen
class SubscribeResult:
    """What a subscription starts with, before live delivery.

    Attributes:
        top: the channel's epoch and latest seq when the subscription took effect.
        recovered: True when every publication after ``since`` follows in
            ``publications``; False when the client must be reset to ``top``;
            None when no ``since`` was given.
        publications: publications to deliver before anything live, in order
            (recovered history, then what arrived while subscribing).
    """

    top: Position
    recovered: bool | None
    publications: tuple[PreparedPublication, ...]


class Subscription:
    """One subscriber's subscription to one channel on this node.

    Attributes:
        ready: fires with a :class:`SubscribeResult` when the subscription goes
            live; fails with a :class:`GatewayError`, or with ``CancelledError``
            when cancelled before that.
        position: the last position delivered to the subscriber (None while pending).
    """

    def __init__(self, bus: Bus, channel: str, subscriber: Subscriber, since: Position | None) -> None:
        self.bus = bus
        self.channel = channel
        self.subscriber = subscriber
        self.since = since
        self.position: Position | None = None
        self.active = True
        self._pending: list[PreparedPublication] | None = []
        self.ready: defer.Deferred[SubscribeResult] = defer.Deferred()

    def cancel(self) -> None:
        """End this subscription (idempotent)."""
        if not self.active:
            return
        self.active = False
        self.bus._remove(self)
        if self._pending is not None:
            self._pending = None
            self.ready.errback(Failure(defer.CancelledError()))

    # -- called by the bus --------------------------------------------------

    def _offer(self, prepared: PreparedPublication) -> None:
        if not self.active:
            return
        if self._pending is not None:
            self._pending.append(prepared)
            return
        self._deliver_in_order(prepared, self.subscriber.on_publication, self.subscriber.on_reset)

    def _deliver_in_order(
        self,
        prepared: PreparedPublication,
        deliver: Callable[[PreparedPublication], None],
        reset: Callable[[str, Position], None],
    ) -> None:
        pub = prepared.publication
        pos = self.position
        assert pos is not None
        if pub.epoch == pos.epoch and pub.seq <= pos.seq:
            return
        if pub.epoch != pos.epoch or pub.seq != pos.seq + 1:
            # Never skip silently: whatever is missing could not be filled.
            self.position = Position(pub.epoch, pub.seq - 1)
            reset(self.channel, self.position)
        self.position = pub.position
        deliver(prepared)

    def _reset(self, position: Position) -> None:
        if not self.active:
            return
        if self._pending is not None:
            # Still subscribing: its history answer decides how it starts.
            self._pending = [
                p for p in self._pending if p.publication.epoch == position.epoch and p.publication.seq > position.seq
            ]
            return
        if self.position != position:
            self.position = position
            self.subscriber.on_reset(self.channel, position)

    def _start(self, history: HistoryResult) -> None:
        assert self._pending is not None
        pending, self._pending = self._pending, None
        top = history.top
        self.position = top
        recovered: bool | None
        if history.publications is None:
            recovered, out = False, []
        else:
            recovered = None if self.since is None else True
            out = [PreparedPublication(p) for p in history.publications]
        resets: list[Position] = []
        for prepared in pending:
            self._deliver_in_order(prepared, out.append, lambda _c, p: resets.append(p))
        if resets:
            # A buffered publication did not follow on from history: start from a
            # reset to the last such position and deliver what came after it.
            last = resets[-1]
            out = [p for p in out if p.publication.epoch == last.epoch and p.publication.seq > last.seq]
            recovered, top = False, last
        self.ready.callback(SubscribeResult(top, recovered, tuple(out)))

    def _fail(self, failure: Failure) -> None:
        if self._pending is not None:
            self._pending = None
            self.active = False
            self.ready.errback(failure)


class _Channel:
    """Node-level state of one channel with local subscribers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscriptions: dict[int, Subscription] = {}
        self.broker_subscribed = False
        # The last position delivered at node level; None until the first history
        # answer tells the bus where the stream is.
        self.position: Position | None = None
        # Publications held back while not yet positioned or while filling a gap.
        self.held: list[Publication] | None = None
        self.retry: Any = None


@implementer(IBrokerListener)
class Bus:
    """Channels, publish and subscribe for one node, over one :class:`IBroker`.

    Args:
        broker: the broker ordering and storing publications.
        clock: the reactor's time, for gap-fill retries.
    """

    _log = Logger()

    def __init__(self, broker: IBroker, clock: IReactorTime) -> None:
        self.broker = broker
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        # IPublishHook providers, run around every publish in order.
        self.hooks: list[Any] = []

    # -- lifecycle --------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Start the broker, delivering to this bus."""
        return self.broker.start(self)

    def stop(self) -> defer.Deferred[None]:
        """Cancel timers and stop the broker."""
        for ch in self._channels.values():
            self._cancel_retry(ch)
        return self.broker.stop()

    def is_ready(self) -> bool:
        """True while the broker can take publications."""
        return bool(self.broker.is_ready())

    # -- public API ---------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """Channels with local subscribers."""
        return list(self._channels)

    @property
    def pending_timers(self) -> int:
        """Gap-fill retry timers outstanding (for leak checks)."""
        return sum(1 for ch in self._channels.values() if ch.retry is not None and ch.retry.active())

    def subscriber_count(self, channel: str | None = None) -> int:
        """Local subscriptions on ``channel``, or on every channel."""
        if channel is not None:
            ch = self._channels.get(channel)
            return len(ch.subscriptions) if ch else 0
        return sum(len(ch.subscriptions) for ch in self._channels.values())

    def publish(self, channel: str, data: Any, sender: str | None = None) -> defer.Deferred[Publication]:
        """Publish ``data`` on ``channel``; fires with the ordered publication.

        Local subscribers receive it through the broker, like every other node's.
        Publish hooks (:attr:`hooks`) run before (and may refuse it) and after.
        Fails with :class:`~gateway.errors.BadRequest` for an invalid channel and
        :class:`~gateway.errors.Unavailable` when the broker cannot take it.
        """
        try:
            validate_channel(channel)
            for hook in self.hooks:
                hook.before_publish(channel, data, sender)
        except GatewayError:
            return defer.fail()
        except Exception:
            self._log.failure("a publish hook failed before publishing to {channel}", channel=channel)
            return defer.fail(Internal("a publish hook failed"))
        if not self.broker.is_ready():
            return defer.fail(Unavailable("the message bus is not available"))
        d = self.broker.publish(channel, data, sender)
        d.addCallbacks(self._published, self._as_gateway_error, errbackArgs=("publish",))
        return d

    def _published(self, pub: Publication) -> Publication:
        for hook in self.hooks:
            try:
                hook.after_publish(pub)
            except Exception:
                self._log.failure("publish hook {hook!r} failed after publishing", hook=hook)
        return pub

    def subscribe(self, channel: str, subscriber: Subscriber, since: Position | None = None) -> Subscription:
        """Subscribe ``subscriber`` to ``channel``, continuing from ``since`` when given.

        Returns a :class:`Subscription` at once; its ``ready`` Deferred fires with a
        :class:`SubscribeResult`, after which live publications flow to the
        subscriber in order, or fails with a :class:`GatewayError`.

        Raises:
            BadRequest: for an invalid channel name.
        """
        validate_channel(channel)
        sub = Subscription(self, channel, subscriber, since)
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(channel)
            ch.subscriptions[id(sub)] = sub
            d = self.broker.subscribe(channel)
            d.addCallbacks(self._broker_subscribed, self._broker_subscribe_failed, (ch,), errbackArgs=(ch,))
        else:
            ch.subscriptions[id(sub)] = sub
            if ch.broker_subscribed:
                self._read_history(sub)
        return sub

    def _broker_subscribed(self, _: object, ch: _Channel) -> None:
        if self._channels.get(ch.name) is not ch:
            return
        ch.broker_subscribed = True
        for sub in list(ch.subscriptions.values()):
            self._read_history(sub)

    def _broker_subscribe_failed(self, failure: Failure, ch: _Channel) -> None:
        failure = self._as_gateway_error(failure, "subscribe")
        if self._channels.get(ch.name) is not ch:
            return
        for sub in list(ch.subscriptions.values()):
            sub._fail(failure)
        ch.subscriptions.clear()
        self._drop_channel(ch)

    def _read_history(self, sub: Subscription) -> None:
        d = self.broker.history(sub.channel, sub.since)
        d.addCallbacks(self._history_for, self._history_failed, (sub,), errbackArgs=(sub,))

    def _history_for(self, history: HistoryResult, sub: Subscription) -> None:
        ch = self._channels.get(sub.channel)
        if not sub.active or ch is None or ch.subscriptions.get(id(sub)) is not sub:
            return
        if ch.position is None:
            ch.position = history.top
            self._release(ch)
        sub._start(history)

    def _history_failed(self, failure: Failure, sub: Subscription) -> None:
        failure = self._as_gateway_error(failure, "subscribe")
        sub._fail(failure)
        self._remove(sub)

    def _as_gateway_error(self, failure: Failure, what: str) -> Failure:
        if failure.check(GatewayError):
            return failure
        self._log.failure("{what} failed", failure, what=what)
        return Failure(Unavailable(f"{what} failed: the message bus is not available"))

    def _remove(self, sub: Subscription) -> None:
        ch = self._channels.get(sub.channel)
        if ch is None or ch.subscriptions.pop(id(sub), None) is None:
            return
        if not ch.subscriptions:
            self._drop_channel(ch)

    def _drop_channel(self, ch: _Channel) -> None:
        if self._channels.get(ch.name) is ch:
            del self._channels[ch.name]
        self._cancel_retry(ch)
        d = self.broker.unsubscribe(ch.name)
        d.addErrback(self._log_unsubscribe_failure, ch.name)

    def _log_unsubscribe_failure(self, failure: Failure, channel: str) -> None:
        self._log.warn("unsubscribe from {channel} failed: {error}", channel=channel, error=failure.getErrorMessage())

    @staticmethod
    def _cancel_retry(ch: _Channel) -> None:
        if ch.retry is not None and ch.retry.active():
            ch.retry.cancel()
        ch.retry = None

    # -- IBrokerListener ----------------------------------------------------

    def publication_received(self, publication: Publication) -> None:
        ch = self._channels.get(publication.channel)
        if ch is None:
            return
        if ch.position is None or ch.held is not None:
            if ch.held is None:
                ch.held = []
            ch.held.append(publication)
            return
        self._accept(ch, publication)

    def broker_reconnected(self) -> None:
        for ch in list(self._channels.values()):
            if ch.position is not None and ch.held is None:
                ch.held = []
                self._fill(ch)

    # -- node-level sequencing ------------------------------------------------

    def _accept(self, ch: _Channel, pub: Publication) -> None:
        pos = ch.position
        assert pos is not None
        if pub.epoch != pos.epoch:
            self._reset_all(ch, Position(pub.epoch, pub.seq - 1))
            self._fan_out(ch, pub)
        elif pub.seq <= pos.seq:
            return
        elif pub.seq == pos.seq + 1:
            self._fan_out(ch, pub)
        else:
            ch.held = [pub]
            self._fill(ch)

    def _fill(self, ch: _Channel) -> None:
        ch.retry = None
        if self._channels.get(ch.name) is not ch:
            return
        assert ch.position is not None
        d = self.broker.history(ch.name, ch.position)
        d.addCallbacks(self._filled, self._fill_failed, (ch,), errbackArgs=(ch,))

    def _filled(self, history: HistoryResult, ch: _Channel) -> None:
        if self._channels.get(ch.name) is not ch:
            return
        if history.publications is None:
            top, pos = history.top, ch.position
            if pos is not None and top.epoch != pos.epoch and top.seq > 0:
                # The stream restarted (Redis flushed or replaced) and already has
                # publications in its new epoch, accepted while this node was not
                # receiving: they are all in history unless it was trimmed.  Reset
                # to the start of the new epoch and fill from there, instead of
                # skipping to its top.
                self._reset_all(ch, Position(top.epoch, 0))
                self._fill(ch)
                return
            self._log.warn(
                "gap on {channel} after seq {seq} cannot be filled from history; resetting its subscribers",
                channel=ch.name,
                seq=ch.position.seq if ch.position else None,
            )
            self._reset_all(ch, history.top)
        else:
            for pub in history.publications:
                self._fan_out(ch, pub)
        self._release(ch)

    def _release(self, ch: _Channel) -> None:
        held, ch.held = ch.held or [], None
        for i, pub in enumerate(held):
            if ch.held is not None:
                # A new gap is being filled: keep the rest behind it.
                ch.held.extend(held[i:])
                return
            self._accept(ch, pub)

    def _fill_failed(self, failure: Failure, ch: _Channel) -> None:
        if self._channels.get(ch.name) is not ch:
            return
        self._log.warn(
            "filling a gap on {channel} failed ({error}); retrying in {delay}s",
            channel=ch.name,
            error=failure.getErrorMessage(),
            delay=GAP_RETRY_SECONDS,
        )
        ch.retry = self._clock.callLater(GAP_RETRY_SECONDS, self._fill, ch)

    def _reset_all(self, ch: _Channel, position: Position) -> None:
        ch.position = position
        for sub in list(ch.subscriptions.values()):
            sub._reset(position)

    def _fan_out(self, ch: _Channel, pub: Publication) -> None:
        ch.position = pub.position
        prepared = PreparedPublication(pub)
        for sub in list(ch.subscriptions.values()):
            try:
                sub._offer(prepared)
            except Exception:
                self._log.failure("delivering to a subscriber of {channel} failed", channel=ch.name)
