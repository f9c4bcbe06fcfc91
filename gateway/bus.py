"""The bus: the node's single fan-out point between one broker and many connections.

Theory of operation
-------------------
Every transport (WebSocket, SSE, long-poll, Python code) subscribes through
:meth:`Bus.subscribe`.  The bus takes exactly one broker subscription per channel
while the channel has local subscriptions (first subscriber in, last subscriber
out), and publications come back from the broker through
:meth:`Bus.publication_received`, once per node.

The decisions are not made here.  All sequencing lives in the sans-I/O
:class:`~gateway.core.sequencer.Sequencer` (see its module for the rules): the
node position of each channel, holding back publications behind a gap or an
unconfirmed epoch, gap fills from history and their retries, the merge of
history and live publications while a subscription starts, and each
subscription's own position, so that no client is ever reset backwards or
given a publication twice (docs/protocol.md section 3, "Never backwards").

The bus only does I/O.  It feeds every event into the sequencer (a subscription
asked for or cancelled, a broker subscription, history answer or failure, a
publication, a broker reconnect, a retry timer) and carries out the actions
that come back, in order:

* :class:`~gateway.core.sequencer.SubscribeChannel` / ``UnsubscribeChannel``:
  the broker's ``subscribe`` / ``unsubscribe`` (and cancelling a retry timer);
* ``FetchHistory``: the broker's ``history``, its answer or failure fed back;
* ``ScheduleRetry`` / ``ScheduleLinger``: a ``callLater`` on the clock, whose firing
  is fed back (a channel's broker subscription outlives its last subscriber by
  ``linger`` seconds, so that a long poll's next request, or a reconnect, starts
  from the node's recent publications instead of the broker);
* ``Deliver``: the publication is encoded once (:class:`PreparedPublication`)
  and handed to each listed subscriber's ``on_publication``;
* ``Reset``: the subscriber's ``on_reset``;
* ``SubscriptionReady`` / ``SubscriptionFailed``: the subscription's ``ready``
  Deferred fires with a :class:`SubscribeResult` or fails.

Actions are run one at a time from a queue: an event fed in while actions are
running (a subscriber that publishes or subscribes from a callback, a broker
answering synchronously) has its actions queued behind the current ones, so
every subscriber sees events in the order the sequencer decided them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.core import sequencer as sq
from gateway.core.channels import validate_channel
from gateway.core.events import PreparedPublication
from gateway.core.idempotency import validate_idempotency_key
from gateway.core.model import HistoryResult, Position, Publication
from gateway.errors import GatewayError, Internal, Unavailable
from gateway.interfaces import IBroker, IBrokerListener

__all__ = ["Bus", "SubscribeResult", "Subscriber", "Subscription"]

GAP_RETRY_SECONDS = 1.0


class Subscriber(Protocol):
    """What a subscription delivers to, in order.

    A subscriber may also have ``on_publications(prepared_list)``: several
    publications of the channel at once, in order, as when they arrive together
    from the broker (the bus then calls it instead of ``on_publication`` for each).
    """

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

    Memory (one per subscriber and channel, held as long as the subscription):
    slots, and once ``ready`` has fired, its callbacks have run and left nothing
    (None), it is let go; reading ``ready`` after that gives a Deferred that has
    fired with None, as the dropped one would have.
    """

    __slots__ = ("_ready", "active", "bus", "channel", "deliver", "since", "subscriber")

    def __init__(self, bus: Bus, channel: str, subscriber: Subscriber, since: Position | None) -> None:
        self.bus = bus
        self.channel = channel
        self.subscriber = subscriber
        # Looked up once: the fan-out calls it for every publication.
        self.deliver = subscriber.on_publication
        self.since = since
        self.active = True
        self._ready: defer.Deferred[SubscribeResult] | None = defer.Deferred()

    @property
    def ready(self) -> defer.Deferred[SubscribeResult]:
        ready = self._ready
        if ready is None:
            return defer.succeed(None)  # type: ignore[arg-type]
        return ready

    @property
    def _ready_called(self) -> bool:
        return self._ready is None or bool(self._ready.called)

    def _fire_ready(self, result: SubscribeResult | Failure) -> None:
        ready = self._ready
        assert ready is not None
        if isinstance(result, Failure):
            ready.errback(result)
        else:
            ready.callback(result)
        self.settle()

    def settle(self) -> None:
        """Let ``ready`` go if it has fired and its callbacks are done with it
        (memory; a subscriber calls this once it has added its callbacks, which
        run at once when the subscription was ready already)."""
        ready = self._ready
        # (Not paused: every callback added so far has run.)
        if ready is not None and ready.called and not ready.paused and ready.result is None:
            self._ready = None

    @property
    def position(self) -> Position | None:
        """The last position given to the subscriber (None while pending or after cancel)."""
        return self.bus._sequencer.position(self)

    def cancel(self) -> None:
        """End this subscription (idempotent)."""
        if not self.active:
            return
        self.active = False
        pending = not self._ready_called
        self.bus._remove(self)
        if pending and not self._ready_called:
            self._fire_ready(Failure(defer.CancelledError()))


@implementer(IBrokerListener)
class Bus:
    """Channels, publish and subscribe for one node, over one :class:`IBroker`.

    Args:
        broker: the broker ordering and storing publications.
        clock: the reactor's time, for gap-fill retries and lingering channels.
        recent: publications kept per channel, so that a subscription continuing
            from the node position or just behind it starts without reading the
            broker's history (0: every subscription reads history).
        linger: seconds a channel's broker subscription is kept after its last
            local subscriber leaves (0: released at once).
        history_ttl: seconds the broker keeps a publication for resume: a
            subscription that would be given an older one from the node reads
            history instead (``recent`` should not exceed the history's size either).
        now: the wall clock of publications' ``ts``.
    """

    _log = Logger()

    def __init__(
        self,
        broker: IBroker,
        clock: IReactorTime,
        recent: int = 0,
        linger: float = 0.0,
        history_ttl: float | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self._clock = clock
        self._now = now
        self._sequencer = sq.Sequencer(retry_delay=GAP_RETRY_SECONDS, recent=recent, linger=linger, max_age=history_ttl)
        self._retries: dict[str, IDelayedCall] = {}
        self._lingers: dict[str, IDelayedCall] = {}
        # The encodings of each channel's recent publications (at most `recent`), for
        # subscriptions started from the node.
        self._recent_size = recent
        self._recent: dict[str, dict[tuple[str, int], PreparedPublication]] = {}
        self._queue: deque[tuple[sq.Action, Failure | None]] = deque()
        self._running = False
        # Encodings of publications that a starting subscription may still need,
        # per channel, so that each publication is encoded once.
        self._prepared: dict[str, dict[tuple[str, int], PreparedPublication]] = {}
        # IPublishHook providers, run around every publish in order.
        self.hooks: list[Any] = []
        # Publishes answered as duplicates of an idempotency key (nothing published).
        self.deduplicated = 0
        # Called with each control message from the broker (set by the Gateway).
        self.on_control: Any = None
        # Called after the broker reconnected (control messages may have been lost).
        self.on_reconnected: Any = None
        # Called with (channel, [PresenceEvent]) from the broker (set by the Gateway).
        self.on_presence: Any = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Start the broker, delivering to this bus."""
        return self.broker.start(self)

    def stop(self) -> defer.Deferred[None]:
        """Cancel timers and stop the broker."""
        for channel in list(self._retries):
            self._cancel_retry(channel)
        for channel in list(self._lingers):
            self._cancel_linger(channel)
        return self.broker.stop()

    def is_ready(self) -> bool:
        """True while the broker can take publications on every channel."""
        return bool(self.broker.is_ready())

    def channel_ready(self, channel: str) -> bool:
        """True while the broker can take publications on ``channel`` (with Redis
        Cluster: while the master of its slot is reachable, whatever the others do)."""
        return bool(self.broker.channel_ready(channel))

    def readiness(self) -> tuple[str, list[str]]:
        """``("ready", [])`` while every channel can be published; ``("degraded",
        down)`` while some Redis shards are down (``down``: their names) and others
        serve their channels (Redis Cluster); ``("down", down)`` while none can."""
        if self.broker.is_ready():
            return "ready", []
        shards = getattr(self.broker, "shards", None)
        if shards is None:
            return "down", []
        stats = shards()
        down = [s.name for s in stats if not s.up]
        # One shard (one Redis, Sentinel) is all or nothing, whatever its figures say.
        return ("degraded" if len(stats) > 1 and len(down) < len(stats) else "down"), down

    def unavailable(self, channels: Iterable[str]) -> Unavailable | None:
        """The :class:`Unavailable` error for the first of ``channels`` the broker
        cannot take publications on now, or None when it can take all of them."""
        for channel in channels:
            if not self.broker.channel_ready(channel):
                if self.readiness()[0] == "down":
                    return Unavailable("the message bus is not available")
                return Unavailable(f"the message bus is not available for channel {channel!r} (its Redis shard is down)")
        return None

    # -- public API ---------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """Channels with local subscribers."""
        return self._sequencer.channels

    @property
    def lingering(self) -> list[str]:
        """Channels without local subscribers whose broker subscription is kept for now."""
        return self._sequencer.lingering

    @property
    def pending_timers(self) -> int:
        """Gap-fill retry timers outstanding (for leak checks; lingering channels' timers
        are :attr:`linger_timers`)."""
        return sum(1 for call in self._retries.values() if call.active())

    @property
    def linger_timers(self) -> int:
        """Timers of lingering channels outstanding."""
        return sum(1 for call in self._lingers.values() if call.active())

    def subscriber_count(self, channel: str | None = None) -> int:
        """Local subscriptions on ``channel``, or on every channel."""
        return self._sequencer.subscriber_count(channel)

    def publish(
        self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None
    ) -> defer.Deferred[Publication]:
        """Publish ``data`` on ``channel``; fires with the ordered publication.

        Local subscribers receive it through the broker, like every other node's.
        Publish hooks (:attr:`hooks`) run before (and may refuse it) and after.
        With an ``idempotency_key`` (1-64 characters), a repeat of the key on the
        channel within 5 minutes, on any node, publishes nothing and fires with
        the first publication's seq and epoch (``duplicate`` set); the ``after``
        hooks do not run for it (docs/protocol.md section 7).
        Fails with :class:`~gateway.errors.BadRequest` for an invalid channel or
        key and :class:`~gateway.errors.Unavailable` when the broker cannot take it.
        """
        try:
            validate_channel(channel)
            if idempotency_key is not None:
                validate_idempotency_key(idempotency_key)
            for hook in self.hooks:
                hook.before_publish(channel, data, sender)
        except GatewayError:
            return defer.fail()
        except Exception:
            self._log.failure("a publish hook failed before publishing to {channel}", channel=channel)
            return defer.fail(Internal("a publish hook failed"))
        unavailable = self.unavailable((channel,))
        if unavailable is not None:
            return defer.fail(unavailable)
        if idempotency_key is None:
            d = self.broker.publish(channel, data, sender)
        else:
            d = self.broker.publish(channel, data, sender, idempotency_key=idempotency_key)
        d.addCallbacks(self._published, self._as_gateway_error, errbackArgs=("publish",))
        return d

    def _published(self, pub: Publication) -> Publication:
        if pub.duplicate:
            # Nothing was published: no hook sees it a second time.
            self.deduplicated += 1
            return pub
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
        self._run(self._sequencer.subscribe(sub, channel, since, self._now() if since is not None else None))
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._run(self._sequencer.remove(sub))

    def _as_gateway_error(self, failure: Failure, what: str) -> Failure:
        if failure.check(GatewayError):
            return failure
        self._log.failure("{what} failed", failure, what=what)
        return Failure(Unavailable(f"{what} failed: the message bus is not available"))

    # -- IBrokerListener ----------------------------------------------------

    def publication_received(self, publication: Publication) -> None:
        self._run(self._sequencer.publication_received(publication))

    def publications_received(self, publications: list[Publication]) -> None:
        """Several publications that arrived together, in order: sequenced one by one,
        and consecutive deliveries to the same subscribers fanned out in one pass."""
        for publication in publications:
            self._queue.extend((action, None) for action in self._sequencer.publication_received(publication))
        self._run(())

    def broker_reconnected(self) -> None:
        self._run(self._sequencer.broker_reconnected())
        if self.on_reconnected is not None:
            try:
                self.on_reconnected()
            except Exception:
                self._log.failure("handling a broker reconnect failed")

    def control_received(self, message: dict[str, Any]) -> None:
        if self.on_control is None:
            return
        try:
            self.on_control(message)
        except Exception:
            self._log.failure("handling a control message failed: {message!r}", message=message)

    def presence_received(self, channel: str, events: list[Any]) -> None:
        if self.on_presence is None:
            return
        try:
            self.on_presence(channel, events)
        except Exception:
            self._log.failure("handling presence events on {channel} failed", channel=channel)

    # -- carrying out the sequencer's actions ---------------------------------

    def _run(self, actions: Iterable[sq.Action], failure: Failure | None = None) -> None:
        """Queue ``actions`` and, unless already doing so, carry out the queue in order."""
        self._queue.extend((action, failure) for action in actions)
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                action, why = self._queue.popleft()
                try:
                    if self._queue and type(action) is sq.Deliver and type(self._queue[0][0]) is sq.Deliver:
                        self._deliver_run(action)
                    else:
                        self._do(action, why)
                except Exception:
                    self._log.failure("carrying out {action!r} failed", action=action)
        finally:
            self._running = False
            if self._prepared:
                for channel in [c for c in self._prepared if not self._sequencer.has_pending(c)]:
                    del self._prepared[channel]

    def _do(self, action: sq.Action, failure: Failure | None) -> None:
        if isinstance(action, sq.Deliver):
            self._deliver(action.publication, action.subscriptions)
        elif isinstance(action, sq.Reset):
            sub = self._live(action.subscription)
            if sub is not None:
                self._call(sub, sub.subscriber.on_reset, action.channel, action.position)
        elif isinstance(action, sq.FetchHistory):
            d = defer.maybeDeferred(self.broker.history, action.channel, action.since)
            d.addCallbacks(self._history_received, self._history_failed, (action.request,), errbackArgs=(action.request,))
        elif isinstance(action, sq.SubscriptionReady):
            sub = self._live(action.subscription)
            if sub is not None and not sub._ready_called:
                prepared = tuple(self._prepare(p) for p in action.publications)
                sub._fire_ready(SubscribeResult(action.top, action.recovered, prepared))
        elif isinstance(action, sq.SubscriptionFailed):
            sub = self._subscription(action.subscription)
            sub.active = False
            if not sub._ready_called:
                assert failure is not None
                sub._fire_ready(failure)
        elif isinstance(action, sq.SubscribeChannel):
            d = defer.maybeDeferred(self.broker.subscribe, action.channel)
            d.addCallbacks(self._broker_subscribed, self._broker_subscribe_failed, (action.request,), errbackArgs=(action.request,))
        elif isinstance(action, sq.UnsubscribeChannel):
            self._cancel_retry(action.channel)
            self._cancel_linger(action.channel)
            self._prepared.pop(action.channel, None)
            self._recent.pop(action.channel, None)
            d = defer.maybeDeferred(self.broker.unsubscribe, action.channel)
            d.addErrback(self._log_unsubscribe_failure, action.channel)
        elif isinstance(action, sq.ScheduleRetry):
            self._log.warn(
                "filling a gap on {channel} failed ({error}); retrying in {delay}s",
                channel=action.channel,
                error=failure.getErrorMessage() if failure is not None else None,
                delay=action.delay,
            )
            self._cancel_retry(action.channel)
            self._retries[action.channel] = self._clock.callLater(action.delay, self._retry_due, action.channel)
        elif isinstance(action, sq.ScheduleLinger):
            self._cancel_linger(action.channel)
            self._lingers[action.channel] = self._clock.callLater(action.delay, self._linger_due, action.channel)
        elif isinstance(action, sq.GapNotFilled):
            self._log.warn(
                "gap on {channel} after seq {seq} cannot be filled from history; resetting its subscribers to {top}",
                channel=action.channel,
                seq=action.after.seq,
                top=action.top.seq,
            )

    @staticmethod
    def _subscription(key: Hashable) -> Subscription:
        assert isinstance(key, Subscription)
        return key

    def _live(self, key: Hashable) -> Subscription | None:
        sub = self._subscription(key)
        return sub if sub.active else None

    def _call(self, sub: Subscription, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self._log.failure("delivering to a subscriber of {channel} failed", channel=sub.channel)

    def _prepare(self, pub: Publication) -> PreparedPublication:
        key = (pub.epoch, pub.seq)
        recent = None
        if self._recent_size:
            # Subscriptions started from the node get the recent publications again.
            recent = self._recent.get(pub.channel)
            if recent is None:
                recent = self._recent[pub.channel] = {}
            else:
                prepared = recent.get(key)
                if prepared is not None:
                    return prepared
        cache = self._prepared.get(pub.channel)
        if cache is None:
            if self._sequencer.has_pending(pub.channel):
                # A starting subscription has it buffered or in its history: keep it.
                cache = self._prepared[pub.channel] = {}
        else:
            prepared = cache.get(key)
            if prepared is not None:
                return prepared
        prepared = PreparedPublication(pub)
        if cache is not None:
            cache[key] = prepared
        if recent is not None:
            recent[key] = prepared
            if len(recent) > self._recent_size:
                del recent[next(iter(recent))]
        return prepared

    def _deliver(self, pub: Publication, to: tuple[Hashable, ...]) -> None:
        # The per-subscriber loop of every fan-out: _live() and _call() inlined.
        prepared = self._prepare(pub)
        for sub in to:
            if sub.active:  # type: ignore[attr-defined]
                try:
                    sub.deliver(prepared)  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - a subscriber's failure must not stop the fan-out
                    self._log.failure("delivering to a subscriber of {channel} failed", channel=sub.channel)

    def _deliver_run(self, first: sq.Deliver) -> None:
        """``first`` and the Delivers right behind it in the queue that go to the same
        subscribers: one pass over them, each subscriber given every publication in
        order (``on_publications`` when it has one: a WebSocket writes them at once)."""
        to = first.subscriptions
        pubs = [first.publication]
        queue = self._queue
        while queue:
            following = queue[0][0]
            if not isinstance(following, sq.Deliver) or following.subscriptions != to:
                break
            queue.popleft()
            pubs.append(following.publication)
        if len(pubs) == 1:
            self._deliver(first.publication, to)
            return
        prepared = [self._prepare(p) for p in pubs]
        for sub in to:
            assert isinstance(sub, Subscription)
            if not sub.active:
                continue
            subscriber = sub.subscriber
            many = getattr(subscriber, "on_publications", None)
            if many is not None:
                try:
                    many(prepared)
                except Exception:  # noqa: BLE001 - as in _deliver
                    self._log.failure("delivering to a subscriber of {channel} failed", channel=sub.channel)
                continue
            for p in prepared:
                if not sub.active:
                    break
                try:
                    subscriber.on_publication(p)
                except Exception:  # noqa: BLE001 - as in _deliver
                    self._log.failure("delivering to a subscriber of {channel} failed", channel=sub.channel)

    # -- broker outcomes ----------------------------------------------------

    def _broker_subscribed(self, _: object, request: int) -> None:
        self._run(self._sequencer.broker_subscribed(request))

    def _broker_subscribe_failed(self, failure: Failure, request: int) -> None:
        failure = self._as_gateway_error(failure, "subscribe")
        self._run(self._sequencer.broker_subscribe_failed(request), failure)

    def _history_received(self, history: HistoryResult, request: int) -> None:
        self._run(self._sequencer.history_received(request, history))

    def _history_failed(self, failure: Failure, request: int) -> None:
        actions = self._sequencer.history_failed(request)
        if any(isinstance(a, sq.SubscriptionFailed) for a in actions):
            failure = self._as_gateway_error(failure, "subscribe")
        self._run(actions, failure)

    def _retry_due(self, channel: str) -> None:
        self._retries.pop(channel, None)
        self._run(self._sequencer.retry_due(channel))

    def _linger_due(self, channel: str) -> None:
        self._lingers.pop(channel, None)
        self._run(self._sequencer.linger_due(channel))

    def _cancel_linger(self, channel: str) -> None:
        call = self._lingers.pop(channel, None)
        if call is not None and call.active():
            call.cancel()

    def _cancel_retry(self, channel: str) -> None:
        call = self._retries.pop(channel, None)
        if call is not None and call.active():
            call.cancel()

    def _log_unsubscribe_failure(self, failure: Failure, channel: str) -> None:
        self._log.warn("unsubscribe from {channel} failed: {error}", channel=channel, error=failure.getErrorMessage())
