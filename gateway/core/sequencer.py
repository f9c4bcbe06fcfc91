"""Node-level sequencing of channel streams, without I/O.

The :class:`Sequencer` is the state machine behind :class:`gateway.bus.Bus`: it is
told what happened (a subscription was asked for, the broker subscription took
effect, a history answer or a publication arrived, the broker reconnected, a retry
timer fired) and answers with the actions to carry out, as plain values (fetch
history, take or release the broker subscription, schedule a retry, deliver a
publication, reset a subscriber, complete or fail a subscription).  It never calls
anything; the bus does the I/O and feeds the outcomes back in.

Two levels of position
----------------------
*The channel's node position* is the last publication this node passed on (or the
position it was reset to).  Live publications are checked against it: the next seq
is passed on; a repeat is dropped; a gap *or another epoch* is held back, with
everything after it, while history is asked what happened (:class:`FetchHistory`
with ``subscription=None``; one such read at a time, retried on failure).  A
publication never announces a new epoch on its own: a message of an old epoch handed
over late (buffered across a reconnect) must not move anyone back to it.  The answer
either continues the position (its publications are passed on), or shows a new
epoch that already has publications (history is read again from that epoch's start,
so subscribers get them all, after a reset to (epoch, 0)), or cannot continue it
(history trimmed, or a new empty epoch): then the channel is reset to the top.  Held
publications of another epoch than the answer's that arrived before that read was
sent belong to an epoch that is gone and are dropped.

*Each subscription's position* is what its client was last given: by the start of
the subscription (``subscribed``, a ``reset``), a message or a reset.  It can be
ahead of the node position: a client that subscribes while pub/sub lags behind
history, or after Redis lost its data, is told the newer top by its own history
read at once.  So every node-level event is filtered per subscription
(docs/protocol.md section 3, "Never backwards"):

* a publication at or below the subscription's position in its epoch is not
  delivered again, and a reset to such a position is not sent;
* a publication that does not follow on is preceded by a reset to the position just
  before it, never skipped silently;
* an event of *another* epoch moves the subscription only when the node learned that
  epoch from a read sent after the subscription learned its own.  Epoch names carry
  no order, so the order of the reads decides which one is newer; a logical clock
  (a tick per publication, request and answer) records it.  When a subscription
  starts in another epoch than the node's and neither read is known to be the newer,
  the node reads history once more; that read is newer than both, and moves
  whichever is behind.

Answers from the node
---------------------
With ``recent`` > 0 the channel keeps the node's last ``recent`` publications (a
ring): only publications it passed on in order, each following the one before, so
the ring always ends at the node position and holds no hole.  It is emptied when
the position moves any other way (a reset, another epoch) and is consulted only
while the node position is settled (confirmed, no gap fill or re-read outstanding,
nothing held back).  A subscription whose ``since`` is the node position, or inside
the ring, starts at once from it (:class:`SubscriptionReady` with the ring's
publications after ``since``, no :class:`FetchHistory`): the node has passed on
every publication up to its position, so nothing is skipped, and what comes later
reaches the subscription like every other.  Any other ``since`` (none, ahead of the
node, older than the ring, another epoch) reads history as before.

With ``linger`` > 0 a channel whose last subscription ends keeps its broker
subscription, node position and ring for ``linger`` seconds (:class:`ScheduleLinger`,
then ``linger_due``), so a client that comes straight back (a long poll's next
request, a reconnect) is answered from the node instead of subscribing the broker,
and reading its history, again.

A subscription starts *pending*: from the moment it is asked for until its history
answer arrives, node-level events are buffered on it; then history and the buffer
are merged (:class:`SubscriptionReady`), with the same filter, and it goes live.
An answer older than what the node had already passed on (reads overlap; the node
may have been positioned by a newer one) would leave a hole that no buffer covers:
the subscription then reads again (up to :data:`MAX_READS` reads, then it starts
with a reset rather than a silent gap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import attrs

from gateway.core.model import HistoryResult, Position, Publication

__all__ = [
    "MAX_READS",
    "Action",
    "Deliver",
    "FetchHistory",
    "GapNotFilled",
    "Reset",
    "ScheduleLinger",
    "ScheduleRetry",
    "Sequencer",
    "SubscribeChannel",
    "SubscriptionFailed",
    "SubscriptionReady",
    "UnsubscribeChannel",
]


# A starting subscription whose history answer is older than the node's position
# reads again, at most this many times in all (then it starts with a reset).
MAX_READS = 3


# -- actions -----------------------------------------------------------------------


@attrs.frozen
class SubscribeChannel:
    """Take the broker subscription of ``channel``; report with ``broker_subscribed(request)``
    or ``broker_subscribe_failed(request)``."""

    channel: str
    request: int


@attrs.frozen
class UnsubscribeChannel:
    """Release the broker subscription of ``channel`` and cancel its retry timer."""

    channel: str


@attrs.frozen
class FetchHistory:
    """Read ``channel``'s history after ``since``; report with ``history_received(request,
    result)`` or ``history_failed(request)``.

    Attributes:
        subscription: the subscription this read starts, or None for a node-level
            gap fill.
    """

    channel: str
    since: Position | None
    request: int
    subscription: Hashable | None = None


@attrs.frozen
class ScheduleRetry:
    """A gap fill failed: call ``retry_due(channel)`` after ``delay`` seconds."""

    channel: str
    delay: float


@attrs.frozen
class ScheduleLinger:
    """The last subscription of ``channel`` ended: call ``linger_due(channel)`` after
    ``delay`` seconds (replacing an earlier linger timer of the channel); until then the
    broker subscription stays."""

    channel: str
    delay: float


@attrs.frozen
class Deliver:
    """Hand ``publication`` to each of ``subscriptions``, in that order."""

    publication: Publication
    subscriptions: tuple[Hashable, ...]


@attrs.frozen
class Reset:
    """Tell ``subscription``'s client that delivery continues after ``position``."""

    subscription: Hashable
    channel: str
    position: Position


@attrs.frozen
class GapNotFilled:
    """History could not continue ``channel`` after ``after``; it was reset to ``top`` (for logs)."""

    channel: str
    after: Position
    top: Position


@attrs.frozen
class SubscriptionReady:
    """The subscription goes live.

    Attributes:
        top: the position the client is told (``subscribed``, and a ``reset`` when
            ``recovered`` is False).
        recovered: True when ``publications`` hold every publication after the
            ``since`` asked for; False when the client must be reset to ``top``;
            None when no ``since`` was given (and nothing had to be reset).
        publications: to deliver before anything live, in order.
    """

    subscription: Hashable
    top: Position
    recovered: bool | None
    publications: tuple[Publication, ...]


@attrs.frozen
class SubscriptionFailed:
    """The subscription could not start (its history read or the broker subscription failed)."""

    subscription: Hashable


Action = (
    SubscribeChannel
    | UnsubscribeChannel
    | FetchHistory
    | ScheduleRetry
    | ScheduleLinger
    | Deliver
    | Reset
    | GapNotFilled
    | SubscriptionReady
    | SubscriptionFailed
)


# -- state -------------------------------------------------------------------------


class _Subscription:
    __slots__ = ("buffer", "channel", "epoch_start", "key", "learned", "position", "reads", "since")

    def __init__(self, key: Hashable, channel: _Channel, since: Position | None) -> None:
        self.key = key
        self.channel = channel
        self.since = since
        # What the client was last given; None while pending.
        self.position: Position | None = None
        # When the epoch of the position became known (a tick; see Sequencer._now).
        self.learned = 0
        # Node-level events while pending (publications and reset positions); None once live.
        self.buffer: list[Publication | Position] | None = []
        # History reads sent for its start.
        self.reads = 0
        # Its ``since`` was in an older epoch: it is being read from the start of the
        # channel's current one instead (see Sequencer._start).
        self.epoch_start = False

    def offer(self, pub: Publication, newer: bool) -> tuple[Position | None, bool]:
        """Check ``pub`` against the position: (a reset to send first or None, deliver it?).

        ``newer`` says whether the node learned the publication's epoch after this
        subscription learned its own: only then may it move the subscription to it.
        """
        pos = self.position
        assert pos is not None
        if pub.epoch == pos.epoch:
            if pub.seq <= pos.seq:
                return None, False
            if pub.seq == pos.seq + 1:
                self.position = pub.position
                return None, True
        elif not newer:
            return None, False
        # Another epoch, or a gap: never skip silently.
        reset = Position(pub.epoch, pub.seq - 1)
        self.position = pub.position
        return reset, True

    def reset(self, position: Position, newer: bool) -> bool:
        """Move to ``position`` unless that would go backwards; True when the client must be told."""
        pos = self.position
        assert pos is not None
        if position.epoch == pos.epoch:
            if position.seq <= pos.seq:
                return False
        elif not newer:
            return False
        self.position = position
        return True


class _Channel:
    __slots__ = (
        "confirmed_answer", "confirmed_sent", "fill_request", "filling", "held", "lingering", "name", "pending",
        "position", "recent", "refill", "subscribed", "subscriptions",
    )  # fmt: skip

    def __init__(self, name: str, recent: int) -> None:
        self.name = name
        self.subscriptions: dict[Hashable, _Subscription] = {}
        # How many of them are pending.
        self.pending = 0
        self.subscribed = False
        # The node position; None until the first history answer says where the stream is.
        self.position: Position | None = None
        # When the history read that established the position's epoch was sent and answered.
        self.confirmed_sent = 0
        self.confirmed_answer = 0
        # Publications held back (with their arrival tick) while unpositioned or filling.
        self.held: deque[tuple[int, Publication]] = deque()
        # A gap fill is outstanding: a read in flight or a retry scheduled.
        self.filling = False
        self.fill_request: int | None = None
        # A fresh read is needed once the one in flight is answered (a broker reconnect,
        # or a subscription that started in another epoch than the node's).
        self.refill = False
        # The last publications passed on in order, ending at the node position when
        # not empty (see "Answers from the node"); None when disabled.
        self.recent: deque[Publication] | None = deque(maxlen=recent) if recent > 0 else None
        # No subscriptions left, the broker subscription kept until linger_due().
        self.lingering = False


@attrs.frozen
class _Request:
    kind: str  # "subscribe", "history" or "fill"
    channel: _Channel
    subscription: _Subscription | None = None
    sent: int = 0


class Sequencer:
    """Positions, gap filling and per-subscription delivery of one node's channels.

    Every method takes an event and returns the list of :data:`Action` values to
    carry out, in order.  Subscriptions are identified by any hashable key the
    caller chooses (the bus uses its :class:`~gateway.bus.Subscription` objects).

    Args:
        retry_delay: seconds before a failed gap fill is tried again.
        recent: publications kept per channel to start subscriptions from the node
            (0: every subscription reads history).
        linger: seconds a channel's broker subscription outlives its last
            subscription (0: released at once).
        max_age: seconds a publication is kept for resume (the history's age limit):
            a subscription that would get an older one from the ring reads history
            instead (None: no limit).
    """

    def __init__(self, retry_delay: float = 1.0, recent: int = 0, linger: float = 0.0, max_age: float | None = None) -> None:
        self.retry_delay = retry_delay
        self.recent = recent
        self.linger = linger
        self.max_age = max_age
        self._channels: dict[str, _Channel] = {}
        self._subscriptions: dict[Hashable, _Subscription] = {}
        self._requests: dict[int, _Request] = {}
        self._next_request = 0
        # A logical clock: every publication, request and answer gets the next tick.
        # A read sent after another read was answered saw a later state of the stream.
        self._ticks = 0

    def _now(self) -> int:
        self._ticks += 1
        return self._ticks

    # -- queries -------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """Channels with subscriptions."""
        return [name for name, ch in self._channels.items() if ch.subscriptions]

    @property
    def lingering(self) -> list[str]:
        """Channels without subscriptions whose broker subscription is kept for now."""
        return [name for name, ch in self._channels.items() if ch.lingering]

    def subscriber_count(self, channel: str | None = None) -> int:
        """Subscriptions on ``channel``, or on every channel."""
        if channel is None:
            return len(self._subscriptions)
        ch = self._channels.get(channel)
        return len(ch.subscriptions) if ch is not None else 0

    def position(self, key: Hashable) -> Position | None:
        """What the subscription's client was last given; None while pending or unknown."""
        sub = self._subscriptions.get(key)
        return sub.position if sub is not None else None

    def is_pending(self, key: Hashable) -> bool:
        """True while the subscription waits for its start."""
        sub = self._subscriptions.get(key)
        return sub is not None and sub.buffer is not None

    def has_pending(self, channel: str) -> bool:
        """True while some subscription of ``channel`` waits for its start."""
        ch = self._channels.get(channel)
        return ch is not None and ch.pending > 0

    def node_position(self, channel: str) -> Position | None:
        """The channel's node position (None when unknown)."""
        ch = self._channels.get(channel)
        return ch.position if ch is not None else None

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, key: Hashable, channel: str, since: Position | None = None, now: float | None = None) -> list[Action]:
        """A subscription to ``channel`` is asked for, continuing after ``since`` when given.

        ``now`` (wall-clock seconds, the clock of publications' ``ts``) lets the ring
        tell publications older than ``max_age``."""
        if key in self._subscriptions:
            raise ValueError(f"subscription {key!r} exists already")
        ch = self._channels.get(channel)
        new = ch is None
        if ch is None:
            ch = self._channels[channel] = _Channel(channel, self.recent)
        ch.lingering = False
        sub = _Subscription(key, ch, since)
        ch.subscriptions[key] = sub
        ch.pending += 1
        self._subscriptions[key] = sub
        if new:
            return [SubscribeChannel(channel, self._request(_Request("subscribe", ch)))]
        if ch.subscribed:
            if since is not None and ch.recent is not None:
                ready = self._start_from_node(sub, since, now)
                if ready is not None:
                    return [ready]
            return [self._read_for(sub)]
        return []

    def remove(self, key: Hashable) -> list[Action]:
        """The subscription ended (cancelled, or failed); idempotent."""
        sub = self._subscriptions.pop(key, None)
        if sub is None:
            return []
        ch = sub.channel
        del ch.subscriptions[key]
        if sub.buffer is not None:
            sub.buffer = None
            ch.pending -= 1
        if ch.subscriptions:
            return []
        if self.linger > 0 and ch.subscribed and ch.position is not None:
            ch.lingering = True
            return [ScheduleLinger(ch.name, self.linger)]
        del self._channels[ch.name]
        return [UnsubscribeChannel(ch.name)]

    def linger_due(self, channel: str) -> list[Action]:
        """The linger timer of ``channel`` fired: release it unless subscribed again."""
        ch = self._channels.get(channel)
        if ch is None or not ch.lingering or ch.subscriptions:
            return []
        del self._channels[channel]
        return [UnsubscribeChannel(channel)]

    # -- broker outcomes ---------------------------------------------------------------

    def broker_subscribed(self, request: int) -> list[Action]:
        """The broker subscription asked for with ``request`` took effect."""
        req = self._answer(request)
        if req is None:
            return []
        req.channel.subscribed = True
        return [self._read_for(sub) for sub in list(req.channel.subscriptions.values())]

    def broker_subscribe_failed(self, request: int) -> list[Action]:
        """The broker subscription failed: every subscription of the channel fails."""
        req = self._answer(request)
        if req is None:
            return []
        ch = req.channel
        actions: list[Action] = []
        for key in list(ch.subscriptions):
            actions.append(SubscriptionFailed(key))
            actions.extend(self.remove(key))
        return actions

    def history_received(self, request: int, history: HistoryResult) -> list[Action]:
        """The answer to a :class:`FetchHistory`."""
        req = self._answer(request)
        if req is None:
            return []
        answered = self._now()
        ch = req.channel
        if req.kind == "fill":
            return self._filled(ch, req, answered, history)
        sub = req.subscription
        assert sub is not None
        if self._subscriptions.get(sub.key) is not sub or sub.buffer is None:
            return []
        actions: list[Action] = []
        if ch.position is None:
            self._confirm(ch, history.top, req, answered)
            actions += self._fill(ch) if ch.refill else self._release(ch)
        actions += self._start(sub, history, answered)
        assert ch.position is not None
        if sub.position is not None and sub.position.epoch != ch.position.epoch:
            # Which of the two epochs is the newer is not known (the reads overlapped):
            # a fresh node-level read decides.
            if not ch.filling:
                actions += self._fill(ch)
            elif ch.fill_request is not None:
                ch.refill = True
        return actions

    def history_failed(self, request: int) -> list[Action]:
        """A :class:`FetchHistory` failed: the subscription fails, a gap fill is retried."""
        req = self._answer(request)
        if req is None:
            return []
        if req.kind == "fill":
            req.channel.fill_request = None
            return [ScheduleRetry(req.channel.name, self.retry_delay)]
        sub = req.subscription
        assert sub is not None
        if self._subscriptions.get(sub.key) is not sub or sub.buffer is None:
            return []
        return [SubscriptionFailed(sub.key), *self.remove(sub.key)]

    def retry_due(self, channel: str) -> list[Action]:
        """The retry timer of a failed gap fill fired."""
        ch = self._channels.get(channel)
        if ch is None or not ch.filling or ch.fill_request is not None:
            return []
        return self._fill(ch)

    def publication_received(self, pub: Publication) -> list[Action]:
        """The broker delivered ``pub`` (maybe late, repeated, or after a loss)."""
        ch = self._channels.get(pub.channel)
        if ch is None:
            return []
        arrived = self._now()
        if ch.position is None or ch.filling:
            ch.held.append((arrived, pub))
            return []
        return self._accept(ch, arrived, pub)

    def broker_reconnected(self) -> list[Action]:
        """The broker's delivery connection came back: publications may have been lost."""
        actions: list[Action] = []
        for ch in list(self._channels.values()):
            if not ch.subscribed:
                continue  # its reads are sent once the subscription takes effect
            if ch.position is None or ch.fill_request is not None:
                ch.refill = True  # the read in flight may predate the loss
            elif not ch.filling:
                actions += self._fill(ch)
            # else a retry is scheduled: its read comes after the reconnect.
        return actions

    # -- node level -----------------------------------------------------------------------

    def _request(self, req: _Request) -> int:
        self._next_request += 1
        self._requests[self._next_request] = req
        return self._next_request

    def _answer(self, request: int) -> _Request | None:
        req = self._requests.pop(request, None)
        if req is None or self._channels.get(req.channel.name) is not req.channel:
            return None
        return req

    def _read_for(self, sub: _Subscription) -> FetchHistory:
        ch = sub.channel
        sub.reads += 1
        request = self._request(_Request("history", ch, sub, self._now()))
        return FetchHistory(ch.name, sub.since, request, sub.key)

    def _fill(self, ch: _Channel) -> list[Action]:
        assert ch.position is not None
        ch.filling = True
        ch.refill = False
        ch.fill_request = self._request(_Request("fill", ch, None, self._now()))
        return [FetchHistory(ch.name, ch.position, ch.fill_request)]

    @staticmethod
    def _confirm(ch: _Channel, position: Position, req: _Request, answered: int) -> None:
        ch.position = position
        ch.confirmed_sent, ch.confirmed_answer = req.sent, answered

    def _filled(self, ch: _Channel, req: _Request, answered: int, history: HistoryResult) -> list[Action]:
        ch.fill_request = None
        pos, top = ch.position, history.top
        assert pos is not None
        actions: list[Action] = []
        if history.publications is not None:
            self._confirm(ch, pos, req, answered)
            for pub in history.publications:
                actions += self._fan_out(ch, pub)
        elif top.epoch != pos.epoch and top.seq > 0:
            # The stream restarted (Redis flushed or replaced) and its new epoch already
            # has publications, accepted while this node was not receiving them: read
            # them from the start of the epoch, so nobody skips them.
            ch.position = Position(top.epoch, 0)
            if ch.recent is not None:
                ch.recent.clear()
            return self._fill(ch)
        else:
            self._confirm(ch, pos, req, answered)
            if top.epoch == pos.epoch:
                actions.append(GapNotFilled(ch.name, pos, top))
            actions += self._reset_all(ch, top)
        # A subscription that started in another epoch, from a read older than this one,
        # is behind: it continues after the node position.
        node = ch.position
        assert node is not None
        for sub in ch.subscriptions.values():
            behind = sub.buffer is None and sub.position is not None and sub.position.epoch != node.epoch
            if behind and sub.reset(node, self._newer(ch, sub)):
                actions.append(Reset(sub.key, ch.name, node))
                sub.learned = ch.confirmed_answer
        ch.filling = False
        if ch.refill:
            return actions + self._fill(ch)
        return actions + self._release(ch)

    def _release(self, ch: _Channel) -> list[Action]:
        actions: list[Action] = []
        while ch.held and not ch.filling:
            arrived, pub = ch.held.popleft()
            actions += self._accept(ch, arrived, pub)
        return actions

    def _accept(self, ch: _Channel, arrived: int, pub: Publication) -> list[Action]:
        pos = ch.position
        assert pos is not None
        if pub.epoch == pos.epoch:
            if pub.seq <= pos.seq:
                return []
            if pub.seq == pos.seq + 1:
                return self._fan_out(ch, pub)
        elif arrived < ch.confirmed_sent:
            # Received before the read that found the current epoch: its epoch is gone.
            return []
        # A gap, or another epoch: hold it (and what follows) and ask history.
        ch.held.appendleft((arrived, pub))
        return self._fill(ch)

    @staticmethod
    def _newer(ch: _Channel, sub: _Subscription) -> bool:
        """Whether the node's epoch was confirmed by a read sent after ``sub`` learned its own."""
        return ch.confirmed_sent > sub.learned

    def _reset_all(self, ch: _Channel, position: Position) -> list[Action]:
        if ch.recent is not None and position != ch.position:
            ch.recent.clear()
        ch.position = position
        actions: list[Action] = []
        for sub in ch.subscriptions.values():
            if sub.buffer is not None:
                sub.buffer.append(position)
            elif sub.reset(position, self._newer(ch, sub)):
                sub.learned = max(sub.learned, ch.confirmed_answer)
                actions.append(Reset(sub.key, ch.name, position))
        return actions

    def _fan_out(self, ch: _Channel, pub: Publication) -> list[Action]:
        recent = ch.recent
        if recent is not None:
            if recent:
                last = recent[-1]
                if last.seq != pub.seq - 1 or last.epoch != pub.epoch:
                    recent.clear()  # not contiguous: the ring starts again here
            recent.append(pub)
        ch.position = position = pub.position
        epoch, previous = pub.epoch, pub.seq - 1
        actions: list[Action] = []
        to: list[Hashable] = []
        for sub in ch.subscriptions.values():
            if sub.buffer is not None:
                sub.buffer.append(pub)
                continue
            pos = sub.position
            if pos is not None and pos.seq == previous and pos.epoch == epoch:
                # The common case, what offer() decides for the next seq of the same
                # epoch, without a call or a new Position per subscription.
                sub.position = position
                to.append(sub.key)
                continue
            reset, deliver = sub.offer(pub, self._newer(ch, sub))
            if reset is not None:
                sub.learned = max(sub.learned, ch.confirmed_answer)
                actions.append(Reset(sub.key, ch.name, reset))
            if deliver:
                to.append(sub.key)
        if to:
            actions.append(Deliver(pub, tuple(to)))
        return actions

    # -- subscription level -------------------------------------------------------------

    def _start_from_node(self, sub: _Subscription, since: Position, now: float | None) -> SubscriptionReady | None:
        """Start ``sub`` from the node position and ring when ``since`` is in them (see
        "Answers from the node"); None when history must be read."""
        ch = sub.channel
        node = ch.position
        if node is None or ch.filling or ch.refill or ch.held or since.epoch != node.epoch or since.seq > node.seq:
            return None
        publications: tuple[Publication, ...] = ()
        if since.seq < node.seq:
            recent = ch.recent
            if not recent:
                return None
            last = recent[-1]
            first = last.seq - len(recent) + 1
            if last.seq != node.seq or last.epoch != node.epoch or since.seq < first - 1:
                return None
            publications = tuple(recent)[since.seq - first + 1 :]
            if self.max_age is not None and now is not None and publications[0].ts < (now - self.max_age) * 1000:
                return None  # history may have let it expire: it decides
        sub.position, sub.learned = node, ch.confirmed_answer
        sub.buffer = None
        ch.pending -= 1
        return SubscriptionReady(sub.key, node, True, publications)

    def _start(self, sub: _Subscription, history: HistoryResult, answered: int) -> list[Action]:
        buffer = sub.buffer
        assert buffer is not None
        node = sub.channel.position
        assert node is not None
        top = history.top
        since = sub.since
        if (
            history.publications is None
            and since is not None
            and since.epoch != top.epoch
            and top.seq > 0
            and not sub.epoch_start
            and sub.reads < MAX_READS
        ):
            # Resuming from an older epoch (Redis lost the channel's history) while
            # the new one already has publications: they are likely all in history,
            # so read them from the start of the new epoch and reset the client to
            # (new epoch, 0) before them, rather than skip them with a reset to the top.
            sub.since, sub.epoch_start = Position(top.epoch, 0), True
            return [self._read_for(sub)]
        recovered: bool | None
        out: list[Publication]
        if history.publications is None:
            recovered, out = False, []
        else:
            recovered = None if sub.since is None else True
            out = list(history.publications)
        sub.position, sub.learned = top, answered
        # Everything buffered was passed on by the node before this answer: of another
        # epoch, it is not known to be newer than the answer's and is left out.
        reset_at: tuple[Position, int] | None = None
        behind = False
        for item in buffer:
            if isinstance(item, Position):
                if sub.reset(item, newer=False):
                    reset_at = (item, len(out))
                continue
            if item.epoch == sub.position.epoch and item.seq > sub.position.seq + 1:
                behind = True
            reset, deliver = sub.offer(item, newer=False)
            if reset is not None:
                reset_at = (reset, len(out))
            if deliver:
                out.append(item)
        behind = behind or (sub.position.epoch == node.epoch and sub.position.seq < node.seq)
        if behind and sub.reads < MAX_READS:
            # The read is older than what the node had passed on when the subscription
            # was asked for (reads overlap): what lies between is in no buffer.  Read
            # again; that answer reaches at least the node position, and the buffer
            # continues it.
            sub.position = None
            return [self._read_for(sub)]
        sub.buffer = None
        sub.channel.pending -= 1
        if reset_at is not None:
            # A buffered event did not follow on from history: start from a reset to
            # the last such position and deliver what came after it.
            top, recovered, out = reset_at[0], False, out[reset_at[1] :]
        elif sub.epoch_start and recovered:
            # Read from the start of the new epoch: a reset to (epoch, 0), then all of it.
            assert sub.since is not None
            top, recovered = sub.since, False
        return [SubscriptionReady(sub.key, top, recovered, tuple(out))]
