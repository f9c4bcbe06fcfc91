"""The bus: node-level fan-out, recovery, gap filling and resets, with a hand-driven broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.broker.memory import InMemoryBroker
from gateway.bus import GAP_RETRY_SECONDS, Bus
from gateway.core.model import Position
from gateway.errors import BadRequest, Unavailable
from gateway.testing import ManualBroker, RecordingSubscriber


def make(broker=None, recent=0, linger=0.0):
    broker = broker or ManualBroker()
    clock = Clock()
    bus = Bus(broker, clock, recent=recent, linger=linger)
    bus.start()
    return bus, broker, clock


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def publish_and_deliver(bus, broker, channel, data=None, deliver=True):
    pub = result_of(bus.publish(channel, data))
    if deliver:
        broker.deliver(pub)
    return pub


def test_subscribe_from_now_then_live_delivery():
    """Without `since` a subscription starts at the top and receives what follows."""
    bus, broker, _ = make()
    publish_and_deliver(bus, broker, "c")
    rec = RecordingSubscriber()
    sub = bus.subscribe("c", rec)
    res = result_of(sub.ready)
    assert (res.top.seq, res.recovered, res.publications) == (1, None, ())
    publish_and_deliver(bus, broker, "c")
    assert rec.events == [("message", "c", res.top.epoch, 2)]


def test_publication_is_encoded_once_for_all_subscribers():
    """Every subscriber receives the very same prepared object (one JSON encoding per publication)."""
    bus = Bus(InMemoryBroker(), Clock())
    bus.start()
    seen = []

    class Sub:
        def on_publication(self, prepared):
            seen.append(prepared)

        def on_reset(self, channel, position):
            raise AssertionError("no reset expected")

    for _ in range(3):
        bus.subscribe("c", Sub())
    result_of(bus.publish("c", {"x": 1}))
    assert len(seen) == 3
    assert seen[0] is seen[1] is seen[2]
    assert seen[0].payload.startswith(b'{"type":"message","channel":"c","seq":1')


def test_one_broker_subscription_per_channel():
    """The first local subscriber takes the broker subscription and the last one drops it."""
    bus, broker, _ = make()
    a = bus.subscribe("c", RecordingSubscriber())
    b = bus.subscribe("c", RecordingSubscriber())
    assert broker.subscribed == {"c"}
    a.cancel()
    assert broker.subscribed == {"c"}
    b.cancel()
    assert broker.subscribed == set()
    assert bus.channels == []
    assert bus.subscriber_count() == 0


def test_last_subscriber_leaving_keeps_the_broker_subscription_for_the_linger_time():
    """With linger, the broker subscription outlives the last subscriber by `linger` seconds on the
    clock; a subscriber coming back meanwhile keeps it, and it is released once all are gone again."""
    bus, broker, clock = make(recent=8, linger=5.0)
    bus.subscribe("c", RecordingSubscriber()).cancel()
    assert (broker.subscribed, bus.channels, bus.lingering, bus.linger_timers) == ({"c"}, [], ["c"], 1)
    clock.advance(4.9)
    back = bus.subscribe("c", RecordingSubscriber())
    clock.advance(1.0)
    assert (broker.subscribed, bus.channels, bus.lingering) == ({"c"}, ["c"], [])
    back.cancel()
    clock.advance(4.9)
    assert broker.subscribed == {"c"}
    clock.advance(0.1)
    assert (broker.subscribed, bus.lingering, bus.linger_timers) == (set(), [], 0)


def test_stop_cancels_linger_timers():
    """Stopping the bus leaves no linger timer behind."""
    bus, _, clock = make(recent=8, linger=5.0)
    bus.subscribe("c", RecordingSubscriber()).cancel()
    bus.stop()
    assert (bus.linger_timers, clock.getDelayedCalls()) == (0, [])


def test_subscription_continuing_from_the_node_reads_no_history_and_shares_encodings():
    """A subscriber coming back with the position it was given (a long poll's next request) starts
    from the node's recent publications: no history read, the same encoded objects as the live
    delivery, then live publications."""
    bus, broker, _ = make(recent=8, linger=5.0)
    seen = []

    class Sub(RecordingSubscriber):
        def on_publication(self, prepared):
            seen.append(prepared)
            super().on_publication(prepared)

    first = bus.subscribe("c", Sub())
    start = result_of(first.ready).top
    publish_and_deliver(bus, broker, "c", 1)
    first.cancel()
    publish_and_deliver(bus, broker, "c", 2)
    reads = len(broker.history_calls)
    rec = RecordingSubscriber()
    res = result_of(bus.subscribe("c", rec, start).ready)
    assert len(broker.history_calls) == reads
    assert (res.recovered, res.top.seq, [p.publication.seq for p in res.publications]) == (True, 2, [1, 2])
    assert res.publications[0] is seen[0]
    assert res.publications[1] is result_of(bus.subscribe("c", RecordingSubscriber(), Position(start.epoch, 1)).ready).publications[0]
    publish_and_deliver(bus, broker, "c", 3)
    assert rec.seqs == [3]


def test_recovery_from_position_returns_missed_publications():
    """A subscription with `since` inside history recovers every later publication, in order."""
    bus, broker, _ = make()
    pubs = [publish_and_deliver(bus, broker, "c", i) for i in range(3)]
    res = result_of(bus.subscribe("c", RecordingSubscriber(), Position(pubs[0].epoch, 1)).ready)
    assert res.recovered is True
    assert [p.publication.seq for p in res.publications] == [2, 3]


def test_recovery_impossible_reports_not_recovered():
    """A position ahead of the top cannot be continued: recovered is False, reset to the top."""
    bus, broker, _ = make()
    publish_and_deliver(bus, broker, "c")
    res = result_of(bus.subscribe("c", RecordingSubscriber(), Position("e1", 9)).ready)
    assert res.recovered is False
    assert res.top == Position("e1", 1)
    assert res.publications == ()


def test_position_in_another_epoch_resets_to_the_epoch_start_and_delivers_it():
    """A position in another (older) epoch: recovered is False with a reset to (epoch, 0), and the
    current epoch's publications follow from seq 1 when history still holds them."""
    bus, broker, _ = make()
    publish_and_deliver(bus, broker, "c", "x")
    publish_and_deliver(bus, broker, "c", "y")
    res = result_of(bus.subscribe("c", RecordingSubscriber(), Position("other-epoch", 1)).ready)
    assert (res.recovered, res.top) == (False, Position("e1", 0))
    assert [(p.publication.seq, p.publication.data) for p in res.publications] == [(1, "x"), (2, "y")]


def test_recovery_older_than_history_is_not_recovered():
    """A position whose successors were trimmed from history gets recovered False."""
    bus, broker, _ = make(ManualBroker(history_size=2))
    for i in range(5):
        publish_and_deliver(bus, broker, "c", i)
    res = result_of(bus.subscribe("c", RecordingSubscriber(), Position("e1", 1)).ready)
    assert (res.recovered, res.top) == (False, Position("e1", 5))


def test_live_publications_during_subscribe_are_merged_after_history():
    """Publications arriving while the history read is in flight follow it, without repeats."""
    bus, broker, _ = make()
    broker.hold_history = True
    rec = RecordingSubscriber()
    sub = bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c")
    broker.release_history()
    res = result_of(sub.ready)
    assert res.top.seq == 0
    assert [p.publication.seq for p in res.publications] == [1, 2]
    broker.hold_history = False
    publish_and_deliver(bus, broker, "c")
    assert rec.seqs == [3]


def test_gap_is_filled_from_history_before_later_publications():
    """A lost pub/sub delivery is fetched from history and delivered in order."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c", deliver=False)  # lost
    publish_and_deliver(bus, broker, "c")
    assert rec.seqs == [1, 2, 3]
    assert [e[0] for e in rec.events] == ["message"] * 3


def test_publications_arriving_during_a_gap_fill_wait_behind_it():
    """While a gap is being filled, later live publications are held and then delivered in order."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c", deliver=False)
    broker.hold_history = True
    publish_and_deliver(bus, broker, "c")  # seq 3 reveals the gap
    publish_and_deliver(bus, broker, "c")  # seq 4 arrives while filling
    assert rec.seqs == [1]
    broker.release_history()
    assert rec.seqs == [1, 2, 3, 4]


def test_repeated_delivery_is_dropped():
    """A publication delivered twice reaches subscribers once."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    pub = publish_and_deliver(bus, broker, "c")
    broker.deliver(pub)
    assert rec.seqs == [1]


def test_unfillable_gap_resets_instead_of_skipping():
    """When history no longer holds the gap, subscribers get a reset to the top, never a silent skip."""
    bus, broker, _ = make(ManualBroker(history_size=2))
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    for _ in range(3):
        publish_and_deliver(bus, broker, "c", deliver=False)
    publish_and_deliver(bus, broker, "c")  # seq 5; history holds 4, 5
    assert rec.events == [("message", "c", "e1", 1), ("reset", "c", "e1", 5)]


def test_new_epoch_resets_subscribers():
    """A publication from a new epoch (stream lost) resets subscribers, then is delivered."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    broker.restart_stream("c")
    publish_and_deliver(bus, broker, "c")
    assert rec.events == [("message", "c", "e1", 1), ("reset", "c", "e2", 0), ("message", "c", "e2", 1)]


def test_broker_reconnect_fills_what_was_missed():
    """After the broker reconnects, publications lost meanwhile are fetched and delivered."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c", deliver=False)
    bus.broker_reconnected()
    assert rec.seqs == [1, 2]


def test_failed_gap_fill_is_retried_on_the_clock():
    """A history read that fails while filling a gap is retried after GAP_RETRY_SECONDS."""
    bus, broker, clock = make()
    rec = RecordingSubscriber()
    sub = bus.subscribe("c", rec)
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c", deliver=False)
    broker.hold_history = True
    publish_and_deliver(bus, broker, "c")
    broker.release_history(Unavailable("down"))
    assert rec.seqs == [1]
    assert bus.pending_timers == 1
    broker.hold_history = False
    clock.advance(GAP_RETRY_SECONDS)
    assert rec.seqs == [1, 2, 3]
    assert bus.pending_timers == 0
    sub.cancel()


def test_cancel_during_gap_fill_retry_leaves_no_timer():
    """Dropping the last subscriber cancels a pending gap-fill retry."""
    bus, broker, clock = make()
    sub = bus.subscribe("c", RecordingSubscriber())
    publish_and_deliver(bus, broker, "c")
    publish_and_deliver(bus, broker, "c", deliver=False)
    broker.hold_history = True
    publish_and_deliver(bus, broker, "c")
    broker.release_history(Unavailable("down"))
    sub.cancel()
    assert clock.getDelayedCalls() == []


def test_cancel_while_subscribing_fails_ready_and_releases_channel():
    """Cancelling a pending subscription fails `ready` with CancelledError and drops the channel."""
    bus, broker, _ = make()
    broker.hold_history = True
    sub = bus.subscribe("c", RecordingSubscriber())
    sub.cancel()
    failure = result_of(sub.ready)
    assert failure.check(defer.CancelledError)
    broker.release_history()
    assert bus.channels == [] and broker.subscribed == set()


def test_history_failure_fails_subscribe_with_unavailable():
    """When the broker cannot read history, subscribe fails with `unavailable` and leaves nothing behind."""
    bus, broker, _ = make()
    broker.hold_history = True
    sub = bus.subscribe("c", RecordingSubscriber())
    broker.release_history(RuntimeError("connection lost"))
    failure = result_of(sub.ready)
    assert failure.check(Unavailable)
    assert bus.channels == []


def test_broker_subscribe_failure_fails_every_pending_subscription():
    """A failed broker subscription fails all waiting subscribers; the next subscribe tries again."""
    broker = ManualBroker()
    attempts = []

    def failing_subscribe(channel):
        attempts.append(channel)
        return defer.fail(Unavailable("down"))

    broker.subscribe = failing_subscribe
    bus, _, _ = make(broker)
    sub = bus.subscribe("c", RecordingSubscriber())
    assert result_of(sub.ready).check(Unavailable)
    assert bus.channels == []
    bus.subscribe("c", RecordingSubscriber()).ready.addErrback(lambda f: None)
    assert attempts == ["c", "c"]


def test_broker_raising_instead_of_failing_fails_the_subscription():
    """A broker whose history() raises instead of returning a failed Deferred fails the
    subscription with `unavailable`; it does not leave it waiting forever."""
    broker = ManualBroker()

    def raising_history(channel, since):
        raise RuntimeError("broker bug")

    broker.history = raising_history
    bus, _, _ = make(broker)
    sub = bus.subscribe("c", RecordingSubscriber())
    assert result_of(sub.ready).check(Unavailable)
    assert bus.channels == []


def test_publish_when_broker_down_fails_fast():
    """Publishing while the broker is not ready fails at once with Unavailable."""
    bus, broker, _ = make()
    broker.ready = False
    assert result_of(bus.publish("c", 1)).check(Unavailable)
    assert not bus.is_ready()


def test_publish_rejects_invalid_channel():
    """An invalid channel name is a BadRequest, from publish and from subscribe."""
    bus, _, _ = make()
    assert result_of(bus.publish("bad channel", 1)).check(BadRequest)
    with pytest.raises(BadRequest):
        bus.subscribe("*", RecordingSubscriber())


class Hook:
    def __init__(self, refuse=None, fail_after=False):
        self.before, self.after = [], []
        self.refuse, self.fail_after = refuse, fail_after

    def before_publish(self, channel, data, sender):
        self.before.append(channel)
        if self.refuse is not None:
            raise self.refuse

    def after_publish(self, publication):
        self.after.append(publication.seq)
        if self.fail_after:
            raise RuntimeError("hook bug")


def test_publish_hooks_run_before_and_after_each_publication():
    """Hooks see every publish before and after; a hook failing afterwards does not fail the publish."""
    bus, _, _ = make()
    first, second = Hook(), Hook(fail_after=True)
    bus.hooks.extend([first, second])
    assert result_of(bus.publish("c", 1)).seq == 1
    assert (first.before, first.after, second.after) == (["c"], [1], [1])


def test_publish_hook_can_refuse_a_publication():
    """A hook raising a GatewayError before publishing refuses it: nothing is published."""
    from gateway.errors import Forbidden

    bus, broker, _ = make()
    bus.hooks.append(Hook(refuse=Forbidden("no")))
    assert result_of(bus.publish("c", 1)).check(Forbidden)
    assert "c" not in broker.streams


def test_publish_hook_crashing_before_is_internal_error():
    """A hook that crashes before publishing yields `internal`, not an unhandled exception."""
    from gateway.errors import Internal

    bus, _, _ = make()
    bus.hooks.append(Hook(refuse=RuntimeError("bug")))
    assert result_of(bus.publish("c", 1)).check(Internal)



def test_subscriber_publishing_from_its_callback_keeps_everyone_in_order():
    """A subscriber that publishes while receiving (the in-memory broker delivers at once) does not
    make other subscribers see the new publication before the one being delivered."""
    bus = Bus(InMemoryBroker(), Clock())
    bus.start()

    class Echo(RecordingSubscriber):
        def on_publication(self, prepared):
            super().on_publication(prepared)
            if prepared.publication.seq == 1:
                bus.publish("c", "echo")

    echo, other = Echo(), RecordingSubscriber()
    bus.subscribe("c", echo)
    bus.subscribe("c", other)
    result_of(bus.publish("c", "first"))
    assert [e[0] for e in other.events] == ["message", "message"]
    assert (echo.seqs, other.seqs) == ([1, 2], [1, 2])


def test_publication_buffered_while_subscribing_is_encoded_once():
    """A publication that reaches live subscribers and, buffered, subscriptions still starting is
    the very same prepared object for all of them."""
    bus, broker, _ = make()
    seen = []

    class Sub(RecordingSubscriber):
        def on_publication(self, prepared):
            seen.append(prepared)

    bus.subscribe("c", Sub())
    broker.hold_history = True
    starting = [bus.subscribe("c", RecordingSubscriber()) for _ in range(2)]
    publish_and_deliver(bus, broker, "c")
    broker.release_history()
    results = [result_of(sub.ready) for sub in starting]
    assert [p.publication.seq for r in results for p in r.publications] == [1, 1]
    assert seen[0] is results[0].publications[0] is results[1].publications[0]


def _no_silent_gap(events):
    """Every message follows the previous position by exactly one, or a reset said where to go on from."""
    pos = None
    for kind, _channel, epoch, seq in events:
        if kind == "reset":
            pos = (epoch, seq)
            continue
        if pos is not None:
            assert (epoch, seq) == (pos[0], pos[1] + 1), events
        pos = (epoch, seq)
    return pos


def _lossy_cases(test):
    """Hypothesis cases for the lossy-delivery tests: what pub/sub does with each publication."""
    return settings(max_examples=200, deadline=None)(
        given(
            deliveries=st.lists(st.sampled_from(["deliver", "lose", "repeat"]), min_size=1, max_size=40),
            history_size=st.integers(min_value=1, max_value=50),
        )(test)
    )


@_lossy_cases
def test_lossy_delivery_never_produces_a_silent_gap(deliveries, history_size):
    """Whatever pub/sub loses or repeats, a subscriber sees every seq once in order, or a reset; never a silent gap."""
    _lossy_delivery(deliveries, history_size, recent=0)


@_lossy_cases
def test_lossy_delivery_never_produces_a_silent_gap_with_recent_publications(deliveries, history_size):
    """The same with the node keeping recent publications (a bus of a Gateway)."""
    _lossy_delivery(deliveries, history_size, recent=3)


def _lossy_delivery(deliveries, history_size, recent):
    bus, broker, _ = make(ManualBroker(history_size=history_size), recent=recent)
    rec = RecordingSubscriber()
    bus.subscribe("c", rec)
    last = None
    for action in deliveries:
        pub = publish_and_deliver(bus, broker, "c", deliver=False)
        if action != "lose":
            broker.deliver(pub)
        if action == "repeat":
            broker.deliver(pub)
        last = pub
    bus.broker_reconnected()  # what the Redis broker does after a reconnect
    final = _no_silent_gap(rec.events)
    assert final == ("e1", last.seq)
    if history_size >= len(deliveries):
        assert rec.seqs == list(range(1, len(deliveries) + 1))


# -- never backwards (docs/protocol.md section 3), under random interleavings ------------------

_STEPS = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(["deliver", "deliver", "lose", "repeat", "late"])),
    st.tuples(st.just("deliver_late"), st.just(None)),
    st.tuples(st.just("flush"), st.just(None)),
    st.tuples(st.just("reconnect"), st.just(None)),
    st.tuples(st.just("hold_history"), st.just(None)),
    st.tuples(st.just("release_history"), st.sampled_from([None, "fail"])),
    st.tuples(st.just("release_one"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("retry_due"), st.just(None)),
    st.tuples(st.just("subscribe"), st.one_of(st.none(), st.integers(min_value=0, max_value=60), st.just("ahead"))),
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("linger_due"), st.just(None)),
    st.tuples(st.just("answer"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("repoll"), st.just(None)),
)


# Long polls: clients answered and coming back later from the position they were given, while
# publications flow (mostly delivered), with the same failures now and then.
_POLL_STEPS = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(["deliver"] * 6 + ["lose", "repeat", "late"])),
    st.tuples(st.just("subscribe"), st.none()),
    st.tuples(st.just("subscribe"), st.none()),
    st.tuples(st.just("answer"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("answer"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("answer"), st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("repoll"), st.just(None)),
    st.tuples(st.just("repoll"), st.just(None)),
    st.tuples(st.just("repoll"), st.just(None)),
    st.tuples(st.just("deliver_late"), st.just(None)),
    st.tuples(st.just("flush"), st.just(None)),
    st.tuples(st.just("reconnect"), st.just(None)),
    st.tuples(st.just("hold_history"), st.just(None)),
    st.tuples(st.just("release_history"), st.sampled_from([None, "fail"])),
    st.tuples(st.just("retry_due"), st.just(None)),
    st.tuples(st.just("linger_due"), st.just(None)),
)


class _Client:
    """One subscription seen from its client: the SubscribeResult, then live events."""

    def __init__(self, bus, since):
        self.since = since
        self.rec = RecordingSubscriber()
        self.result = None
        self.failed = False
        self.sub = bus.subscribe("c", self.rec, since)
        self.sub.ready.addCallbacks(self._ready, self._failed)

    def _ready(self, result):
        assert not self.rec.events, "live delivery before the subscription went live"
        self.result = result

    def _failed(self, failure):
        self.failed = True

    def stream(self):
        """The start position and the events after `subscribed`, as ("message"|"reset", epoch, seq)."""
        res = self.result
        start = self.since if res.recovered else res.top
        events = []
        if res.recovered is False:
            events.append(("reset", res.top.epoch, res.top.seq))
        events += [("message", p.publication.epoch, p.publication.seq) for p in res.publications]
        events += [(kind, epoch, seq) for kind, _channel, epoch, seq in self.rec.events]
        return (start.epoch, start.seq), events


def _check_never_backwards(start, events):
    """Never a reset below what was given in the same epoch, never a publication twice, never a
    silent gap, never back to an epoch that was left; returns the final position."""
    pos = start
    given = {start[0]: start[1]}
    seen, left = set(), set()
    for kind, epoch, seq in events:
        assert epoch not in left, f"back to the old epoch {epoch}: {events}"
        if kind == "reset":
            assert seq >= given.get(epoch, 0), f"reset to {epoch}:{seq} after {given[epoch]}: {start} {events}"
        else:
            assert (epoch, seq) not in seen, f"{epoch}:{seq} delivered twice: {start} {events}"
            assert (epoch, seq - 1) == pos, f"{epoch}:{seq} does not follow {pos}: {start} {events}"
            seen.add((epoch, seq))
        if epoch != pos[0]:
            left.add(pos[0])
        pos = (epoch, seq)
        given[epoch] = max(given.get(epoch, 0), seq)
    return pos


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(_STEPS, min_size=1, max_size=40), history_size=st.integers(min_value=1, max_value=20))
def test_random_interleavings_never_go_backwards(steps, history_size):
    """Random interleavings of publications (delivered, lost, repeated, handed over late), Redis
    losing its data (a new epoch), broker reconnects, history reads held back, answered out of
    order, failing and retried, and subscriptions joining (with or without `since`) and leaving:
    every subscription is never reset backwards within an epoch, never gets a publication
    twice, never skips silently, never returns to an epoch it left, and ends at the channel's
    top."""
    _random_interleavings(steps, history_size, recent=0, linger=0.0)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(_STEPS, min_size=1, max_size=40), history_size=st.integers(min_value=1, max_value=20))
def test_random_interleavings_never_go_backwards_with_recent_publications_and_linger(steps, history_size):
    """The same with subscriptions started from the node's recent publications and channels
    lingering after their last subscription (and subscribed again meanwhile)."""
    _random_interleavings(steps, history_size, recent=3, linger=5.0)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(_POLL_STEPS, min_size=10, max_size=60), history_size=st.integers(min_value=1, max_value=20))
def test_long_polls_started_from_the_node_never_go_backwards(steps, history_size):
    """Long polls coming back from the position they were given, answered from the node's recent
    publications when it has them, under the same failures: never backwards, never twice, never a
    silent gap, and every live one ends at the top."""
    _random_interleavings(steps, history_size, recent=3, linger=5.0)


def _random_interleavings(steps, history_size, recent, linger):
    bus, broker, clock = make(ManualBroker(history_size=history_size), recent=recent, linger=linger)
    clients, published, late, returning = [], [], [], []
    for step, arg in steps:
        if step == "publish":
            pub = publish_and_deliver(bus, broker, "c", deliver=False)
            published.append(pub)
            if arg in ("deliver", "repeat"):
                broker.deliver(pub)
            if arg == "repeat":
                broker.deliver(pub)
            if arg == "late":
                late.append(pub)
        elif step == "deliver_late":
            for pub in late:
                broker.deliver(pub)
            late.clear()
        elif step == "flush":
            broker.restart_stream("c")
        elif step == "reconnect":
            bus.broker_reconnected()
        elif step == "hold_history":
            broker.hold_history = True
        elif step == "release_history":
            broker.hold_history = False
            broker.release_history(Unavailable("down") if arg == "fail" else None)
        elif step == "release_one" and broker.held:
            # One answer out of order (Redis answers on several connections).
            _channel, answer, d = broker.held.pop(arg % len(broker.held))
            d.callback(answer)
        elif step == "retry_due":
            clock.advance(GAP_RETRY_SECONDS)
        elif step == "subscribe":
            since = None
            if arg == "ahead":
                top = broker.stream("c").top
                since = Position(top.epoch, top.seq + 2)
            elif arg is not None and published:
                since = published[arg % len(published)].position
            clients.append(_Client(bus, since))
        elif step == "cancel" and clients:
            clients[arg % len(clients)].sub.cancel()
        elif step == "linger_due":
            clock.advance(linger)
        elif step == "answer" and clients:
            # A long poll answered: its client comes back later from the position it was given.
            client = clients[arg % len(clients)]
            if client.sub.active and client.result is not None:
                client.sub.cancel()
                returning.append(Position(*_check_never_backwards(*client.stream())))
        elif step == "repoll" and returning:
            clients.append(_Client(bus, returning.pop(0)))
    # Settle: hand over everything, let the node catch up with history.
    broker.hold_history = False
    for _ in range(3):
        broker.release_history()
        for pub in late:
            broker.deliver(pub)
        late.clear()
        bus.broker_reconnected()
        clock.advance(GAP_RETRY_SECONDS)
    top = broker.stream("c").top
    for client in clients:
        if client.failed or (not client.sub.active and client.result is None):
            continue
        assert client.result is not None, "a subscription never went live"
        final = _check_never_backwards(*client.stream())
        if client.sub.active:
            assert final == (top.epoch, top.seq), client.stream()
    assert bus.pending_timers == 0
    clock.advance(linger)
    assert bus.linger_timers == 0
    assert broker.subscribed == set(bus.channels)


# -- publications that arrive together (one read of the broker's connection) ---------------


class BatchRecorder(RecordingSubscriber):
    """A subscriber that takes several publications at once, recording each call's size."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_publications(self, prepared):
        self.calls.append(len(prepared))
        for p in prepared:
            self.on_publication(p)


def published(bus, broker, channel, n):
    return [publish_and_deliver(bus, broker, channel, deliver=False) for _ in range(n)]


def test_publications_arriving_together_are_fanned_out_in_one_pass():
    """publications_received: each subscriber gets every publication in order, in one
    on_publications call when it has one, one by one otherwise; encoded once."""
    bus, broker, _ = make()
    batch, plain = BatchRecorder(), RecordingSubscriber()
    bus.subscribe("c", batch)
    bus.subscribe("c", plain)
    bus.publications_received(published(bus, broker, "c", 3))
    assert batch.seqs == plain.seqs == [1, 2, 3]
    assert batch.calls == [3]


def test_a_batch_keeps_order_across_gaps_repeats_channels_and_epochs():
    """Batches with a lost publication (filled from history), a repeat, another channel
    and a new epoch give every subscriber what one-by-one delivery gives, in order."""

    def run(together):
        bus, broker, _ = make()
        recs = {"c": BatchRecorder(), "d": BatchRecorder()}
        for ch, rec in recs.items():
            bus.subscribe(ch, rec)
        c1, _c2, c3, c4 = published(bus, broker, "c", 4)
        (d1,) = published(bus, broker, "d", 1)
        first = [c1, c3, d1, c3, c4]  # c2 lost, c3 repeated
        c5, c6 = published(bus, broker, "c", 2)
        broker.restart_stream("c")
        (e1,) = published(bus, broker, "c", 1)
        second = [c5, c6, e1]
        for batch in (first, second):
            if together:
                bus.publications_received(batch)
            else:
                for p in batch:
                    bus.publication_received(p)
        return {ch: rec.events for ch, rec in recs.items()}, recs["c"].calls

    (together, _), (one_by_one, _) = run(True), run(False)
    assert together == one_by_one
    assert [e[3] for e in together["d"]] == [1]
    kinds = [(e[0], e[3]) for e in together["c"]]
    assert kinds[0] == ("message", 1) and kinds[-2:] == [("reset", 0), ("message", 1)]


def test_a_subscriber_cancelled_during_a_batch_gets_nothing_more():
    """A subscriber whose delivery cancels its own subscription gets no later publication of the batch."""
    bus, broker, _ = make()
    rec = RecordingSubscriber()
    sub = bus.subscribe("c", rec)
    original = rec.on_publication

    def once(prepared):
        original(prepared)
        sub.cancel()

    rec.on_publication = once
    bus.publications_received(published(bus, broker, "c", 3))
    assert rec.seqs == [1]


def test_a_ready_deferred_that_is_done_with_is_let_go():
    """Memory per subscription: once ``ready`` has fired and its callbacks left
    nothing, the subscription drops it (as it fires, or when the subscriber says it
    has added its callbacks); ``ready`` then reads as fired with None.  A result
    nobody took yet, or a failure nobody handled, is kept."""
    bus, broker, _ = make()
    broker.hold_history = True
    later = bus.subscribe("c", RecordingSubscriber())
    seen: list = []
    later.ready.addCallback(seen.append)
    later.settle()
    assert later._ready is not None  # not fired yet
    broker.release_history()
    assert len(seen) == 1 and later._ready is None
    assert result_of(later.ready) is None
    broker.hold_history = False
    at_once = bus.subscribe("c", RecordingSubscriber())  # (ready at once: from the node)
    untaken = bus.subscribe("c", RecordingSubscriber())
    at_once.ready.addCallback(seen.append)
    assert at_once._ready is not None
    at_once.settle()
    assert at_once._ready is None and len(seen) == 2
    untaken.settle()
    assert result_of(untaken.ready).top == seen[1].top  # kept: nobody took it
    for sub in (later, at_once, untaken):
        sub.cancel()
    assert bus.subscriber_count() == 0
    broker.hold_history = True
    cancelled = bus.subscribe("d", RecordingSubscriber())
    cancelled.cancel()
    assert cancelled._ready is not None  # a CancelledError nobody handled yet
    assert result_of(cancelled.ready).check(defer.CancelledError)
