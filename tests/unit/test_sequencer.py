"""The sans-I/O sequencer, with plain values: events in, actions out."""

from __future__ import annotations

import pytest

from gateway.core.model import HistoryResult, Position, Publication
from gateway.core.sequencer import (
    MAX_READS,
    Deliver,
    FetchHistory,
    GapNotFilled,
    Reset,
    ScheduleRetry,
    Sequencer,
    SubscribeChannel,
    SubscriptionFailed,
    SubscriptionReady,
    UnsubscribeChannel,
)

E1, E2 = "e1", "e2"


def P(epoch, seq):
    return Position(epoch, seq)


def pub(seq, epoch=E1, channel="c"):
    return Publication(channel, seq, epoch, {"n": seq}, 1000 + seq)


def answer(top, seqs=()):
    """A history answer: ``seqs`` of ``top``'s epoch after the asked position, or None (cannot continue)."""
    return HistoryResult(top, None if seqs is None else tuple(pub(s, top.epoch) for s in seqs))


def fetch(actions):
    """The one FetchHistory among ``actions``."""
    found = [a for a in actions if isinstance(a, FetchHistory)]
    assert len(found) == 1, actions
    return found[0]


def stream(actions, key):
    """What ``actions`` give subscription ``key``, as ("message"|"reset", epoch, seq)."""
    out = []
    for a in actions:
        if isinstance(a, Deliver) and key in a.subscriptions:
            out.append(("message", a.publication.epoch, a.publication.seq))
        elif isinstance(a, Reset) and a.subscription == key:
            out.append(("reset", a.position.epoch, a.position.seq))
        elif isinstance(a, SubscriptionReady) and a.subscription == key:
            out.append(("subscribed", a.top.epoch, a.top.seq))
            if a.recovered is False:
                out.append(("reset", a.top.epoch, a.top.seq))
            out.extend(("message", p.epoch, p.seq) for p in a.publications)
    return out


def live(s, key, top, since=None, seqs=(), channel="c"):
    """Subscribe ``key`` and answer its reads; returns the actions of its start."""
    actions = s.subscribe(key, channel, since)
    if actions and isinstance(actions[0], SubscribeChannel):
        actions = s.broker_subscribed(actions[0].request)
    return s.history_received(fetch(actions).request, answer(top, seqs))


# -- subscribing ---------------------------------------------------------------------


def test_first_subscription_takes_the_broker_subscription_then_reads_history():
    """The first subscription asks for the broker subscription; once it is effective its history is read."""
    s = Sequencer()
    assert [SubscribeChannel("c", 1)] == s.subscribe("a", "c")
    assert [FetchHistory("c", None, 2, "a")] == s.broker_subscribed(1)
    assert s.is_pending("a") and s.position("a") is None
    assert [SubscriptionReady("a", P(E1, 3), None, ())] == s.history_received(2, answer(P(E1, 3)))
    assert (s.position("a"), s.node_position("c"), s.is_pending("a")) == (P(E1, 3), P(E1, 3), False)


def test_later_subscriptions_read_history_at_once_and_recover_from_since():
    """With the broker subscription in place a new subscription reads history at once; `since` recovers."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    read = fetch(s.subscribe("b", "c", P(E1, 1)))
    assert (read.since, read.subscription) == (P(E1, 1), "b")
    ready = s.history_received(read.request, answer(P(E1, 3), [2, 3]))
    assert [SubscriptionReady("b", P(E1, 3), True, (pub(2), pub(3)))] == ready


def test_subscriptions_waiting_for_the_broker_read_history_when_it_is_effective():
    """Subscriptions asked for before the broker subscription took effect all read history then."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    assert [] == s.subscribe("b", "c", P(E1, 2))
    reads = s.broker_subscribed(take.request)
    assert [("a", None), ("b", P(E1, 2))] == [(r.subscription, r.since) for r in reads]


def test_position_that_cannot_continue_is_not_recovered():
    """History that cannot continue `since` in its own epoch starts the subscription with a reset to the top."""
    s = Sequencer()
    assert [SubscriptionReady("a", P(E2, 4), False, ())] == live(s, "a", P(E2, 4), since=P(E2, 9), seqs=None)


def across_epochs(s, key, top, since, channel="c"):
    """Subscribe ``key`` from ``since`` in an older epoch than ``top``'s, where history of the new
    epoch no longer starts at 1: both reads cannot continue; returns the actions of its start."""
    actions = s.subscribe(key, channel, since)
    if actions and isinstance(actions[0], SubscribeChannel):
        actions = s.broker_subscribed(actions[0].request)
    again = fetch(s.history_received(fetch(actions).request, answer(top, None)))
    assert again.since == Position(top.epoch, 0)
    return s.history_received(again.request, answer(top, None))


def test_live_publications_while_subscribing_follow_history_without_repeats():
    """What arrives while the history read is in flight is merged after history, without repeats."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    read = fetch(s.subscribe("b", "c", P(E1, 0)))
    assert [Deliver(pub(2), ("a",))] == s.publication_received(pub(2))
    assert [Deliver(pub(3), ("a",))] == s.publication_received(pub(3))
    ready = s.history_received(read.request, answer(P(E1, 2), [1, 2]))
    assert [SubscriptionReady("b", P(E1, 2), True, (pub(1), pub(2), pub(3)))] == ready
    assert [Deliver(pub(4), ("a", "b"))] == s.publication_received(pub(4))


def test_history_answer_older_than_the_node_is_read_again():
    """A history answer older than what the node had passed on when the subscription was asked
    for (overlapping reads) leaves a hole no buffer covers: the subscription reads again."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    read = fetch(s.subscribe("b", "c"))
    s.publication_received(pub(2))
    s.publication_received(pub(3))
    again = fetch(s.history_received(read.request, answer(P(E1, 0))))
    assert (again.subscription, again.since) == ("b", None)
    assert s.is_pending("b")
    s.publication_received(pub(4))
    assert [SubscriptionReady("b", P(E1, 3), None, (pub(4),))] == s.history_received(again.request, answer(P(E1, 3)))


def test_answer_behind_the_node_without_buffered_publications_is_read_again():
    """A first answer behind the node position (another subscription's newer read positioned the
    node and the publication in between was dropped as seen) is read again, not left behind."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    read_a = fetch(s.broker_subscribed(take.request))
    read_b = fetch(s.subscribe("b", "c"))
    assert [] == s.publication_received(pub(1))
    assert [SubscriptionReady("b", P(E1, 1), None, ())] == s.history_received(read_b.request, answer(P(E1, 1)))
    again = fetch(s.history_received(read_a.request, answer(P(E1, 0))))
    assert again.subscription == "a"
    assert [SubscriptionReady("a", P(E1, 1), None, ())] == s.history_received(again.request, answer(P(E1, 1)))


def test_subscription_whose_reads_stay_behind_starts_with_a_reset():
    """After MAX_READS answers that stay behind, the subscription starts from a reset to the position
    before the buffered publications, with them, never with a silent gap."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    request = fetch(s.subscribe("b", "c")).request
    s.publication_received(pub(2))
    s.publication_received(pub(3))
    for _ in range(MAX_READS - 1):
        request = fetch(s.history_received(request, answer(P(E1, 0)))).request
    ready = s.history_received(request, answer(P(E1, 0)))
    assert [SubscriptionReady("b", P(E1, 1), False, (pub(2), pub(3)))] == ready


def test_cancel_of_the_last_subscription_releases_the_channel_and_ignores_late_answers():
    """Removing the last subscription releases the broker subscription; answers for it are ignored,
    also after the channel was subscribed again."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    read = fetch(s.broker_subscribed(take.request))
    assert [UnsubscribeChannel("c")] == s.remove("a")
    assert [] == s.remove("a")
    assert [SubscribeChannel("c", 3)] == s.subscribe("b", "c")
    assert [] == s.history_received(read.request, answer(P(E1, 1)))
    assert [] == s.broker_subscribed(take.request)
    assert (s.channels, s.subscriber_count(), s.subscriber_count("c")) == (["c"], 1, 1)


def test_history_failure_fails_the_subscription():
    """A failed history read fails its subscription and, when it was the last, releases the channel."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    read = fetch(s.broker_subscribed(take.request))
    assert [SubscriptionFailed("a"), UnsubscribeChannel("c")] == s.history_failed(read.request)
    assert s.channels == []


def test_broker_subscribe_failure_fails_every_waiting_subscription():
    """When the broker subscription fails, every subscription waiting for it fails."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    s.subscribe("b", "c")
    actions = s.broker_subscribe_failed(take.request)
    assert [SubscriptionFailed("a"), SubscriptionFailed("b"), UnsubscribeChannel("c")] == actions


def test_subscription_keys_are_unique():
    """A key already subscribed cannot be used again."""
    s = Sequencer()
    s.subscribe("a", "c")
    with pytest.raises(ValueError):
        s.subscribe("a", "d")


# -- node level ------------------------------------------------------------------------


def test_next_seq_is_delivered_once_to_every_live_subscription_and_repeats_are_dropped():
    """The next seq goes to every live subscription in one Deliver; a repeat is dropped."""
    s = Sequencer()
    live(s, "a", P(E1, 0))
    live(s, "b", P(E1, 0))
    assert [Deliver(pub(1), ("a", "b"))] == s.publication_received(pub(1))
    assert [] == s.publication_received(pub(1))
    assert [] == s.publication_received(pub(1, channel="other"))


def test_gap_is_filled_from_history_and_later_publications_wait_behind_it():
    """A gap holds everything back, asks history, delivers what was missing and then what waited."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    fill = fetch(s.publication_received(pub(3)))
    assert (fill.since, fill.subscription) == (P(E1, 1), None)
    assert [] == s.publication_received(pub(4))
    actions = s.history_received(fill.request, answer(P(E1, 3), [2, 3]))
    assert [("message", E1, 2), ("message", E1, 3), ("message", E1, 4)] == stream(actions, "a")


def test_failed_fill_is_retried_when_due():
    """A failed gap fill schedules a retry; when it is due history is read again."""
    s = Sequencer(retry_delay=2.5)
    live(s, "a", P(E1, 1))
    fill = fetch(s.publication_received(pub(3)))
    assert [ScheduleRetry("c", 2.5)] == s.history_failed(fill.request)
    assert [] == s.publication_received(pub(4))
    again = fetch(s.retry_due("c"))
    assert [] == s.retry_due("c")
    actions = s.history_received(again.request, answer(P(E1, 4), [2, 3, 4]))
    assert [2, 3, 4] == [seq for _, _, seq in stream(actions, "a")]


def test_unfillable_gap_resets_to_the_top():
    """When history no longer holds the gap, subscriptions are reset to the top, never skipped silently."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    fill = fetch(s.publication_received(pub(5)))
    actions = s.history_received(fill.request, answer(P(E1, 5), None))
    assert [GapNotFilled("c", P(E1, 1), P(E1, 5)), Reset("a", "c", P(E1, 5))] == actions


def test_another_epoch_is_confirmed_by_history_and_read_from_its_start():
    """A publication of another epoch is not trusted on its own: history is asked; a new epoch with
    publications is read from its start, and subscriptions get a reset to (epoch, 0) and all of it."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    first = fetch(s.publication_received(pub(2, E2)))
    assert first.since == P(E1, 3)
    second = fetch(s.history_received(first.request, answer(P(E2, 2), None)))
    assert second.since == P(E2, 0)
    actions = s.history_received(second.request, answer(P(E2, 2), [1, 2]))
    assert [("reset", E2, 0), ("message", E2, 1), ("message", E2, 2)] == stream(actions, "a")


def test_new_empty_epoch_resets_to_seq_0():
    """A new epoch without publications resets subscriptions to (epoch, 0)."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    fill = fetch(s.broker_reconnected())
    assert [Reset("a", "c", P(E2, 0))] == s.history_received(fill.request, answer(P(E2, 0), None))


def test_flushall_then_pubsub_reconnect_does_not_reset_a_client_backwards():
    """The reported defect: a client told (E2, 3) while the node was still at (E1, 3) must not be
    reset to (E2, 0) nor get seqs 1-3 again when the node's fill finds E2 with publications;
    the older subscription gets its reset to (E2, 0) and 1-3."""
    s = Sequencer()
    live(s, "early", P(E1, 3))
    late = across_epochs(s, "late", P(E2, 3), since=P(E1, 3))
    assert [("subscribed", E2, 3), ("reset", E2, 3)] == stream(late, "late")
    # The late client is in another epoch than the node: the node asks history.
    fill = fetch(late)
    assert fill.since == P(E1, 3)
    assert [] == s.broker_reconnected()  # that read is in flight: a later one must follow it
    refill = fetch(s.history_received(fill.request, answer(P(E2, 3), None)))
    assert refill.since == P(E2, 0)
    actions = s.history_received(refill.request, answer(P(E2, 3), [1, 2, 3]))
    assert [] == stream(actions, "late")
    assert [("reset", E2, 0), ("message", E2, 1), ("message", E2, 2), ("message", E2, 3)] == stream(actions, "early")
    assert [] == [a for a in actions if isinstance(a, FetchHistory)]  # the second read came after the reconnect
    assert [Deliver(pub(4, E2), ("early", "late"))] == s.publication_received(pub(4, E2))


def test_reset_below_a_subscription_position_is_not_sent():
    """A node-level reset to a seq a subscription is already past (same epoch) is not sent to it."""
    s = Sequencer()
    live(s, "behind", P(E1, 1))
    live(s, "ahead", P(E1, 9))  # read later than the node position
    fill = fetch(s.publication_received(pub(8)))
    actions = s.history_received(fill.request, answer(P(E1, 8), None))
    assert [("reset", E1, 8)] == stream(actions, "behind")
    assert [] == stream(actions, "ahead")
    assert [Deliver(pub(9), ("behind",))] == s.publication_received(pub(9))
    assert [Deliver(pub(10), ("behind", "ahead"))] == s.publication_received(pub(10))


def test_subscription_in_a_newer_epoch_is_not_moved_back_by_an_older_read():
    """A node-level read sent before a subscription learned its (newer) epoch does not reset it
    to the old epoch; the node reads again and then moves everyone to the new epoch."""
    s = Sequencer()
    live(s, "early", P(E1, 3))
    fill = fetch(s.publication_received(pub(9)))  # sent before the flush
    late = across_epochs(s, "late", P(E2, 3), since=P(E1, 3))
    assert [] == [a for a in late if isinstance(a, FetchHistory)]  # one is in flight; it follows
    # The older read: E1, trimmed up to 9.
    actions = s.history_received(fill.request, answer(P(E1, 9), None))
    assert [("reset", E1, 9)] == stream(actions, "early")
    assert [] == stream(actions, "late")
    refill = fetch(actions)
    again = fetch(s.history_received(refill.request, answer(P(E2, 3), None)))
    actions = s.history_received(again.request, answer(P(E2, 3), [1, 2, 3]))
    assert [("reset", E2, 0), ("message", E2, 1), ("message", E2, 2), ("message", E2, 3)] == stream(actions, "early")
    assert [] == stream(actions, "late")


def test_subscription_in_an_older_epoch_than_the_node_is_moved_on_by_the_next_read():
    """A subscription whose read saw the epoch before the node's (overlapping reads across a flush)
    is reset to the node position by the node's next read, sent after it started."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    read = fetch(s.subscribe("b", "c"))
    fill = fetch(s.publication_received(pub(1, E2)))
    refill = fetch(s.history_received(fill.request, answer(P(E2, 1), None)))
    s.history_received(refill.request, answer(P(E2, 1), [1]))
    # b's read was answered from before the flush.
    started = s.history_received(read.request, answer(P(E1, 3)))
    assert [("subscribed", E1, 3)] == stream(started, "b")
    check = fetch(started)
    assert [Reset("b", "c", P(E2, 1))] == s.history_received(check.request, answer(P(E2, 1), ()))
    assert [Deliver(pub(2, E2), ("a", "b"))] == s.publication_received(pub(2, E2))


def test_old_epoch_message_handed_over_late_is_dropped():
    """A message of the old epoch buffered across a reconnect and handed over after the fill
    found a new epoch does not move anyone back to the old epoch."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    fill = fetch(s.broker_reconnected())
    assert [] == s.publication_received(pub(4))  # buffered by the broker, handed over now
    refill = fetch(s.history_received(fill.request, answer(P(E2, 1), None)))
    actions = s.history_received(refill.request, answer(P(E2, 1), [1]))
    assert [("reset", E2, 0), ("message", E2, 1)] == stream(actions, "a")
    assert s.node_position("c") == P(E2, 1)


def test_publication_of_another_epoch_arriving_after_the_read_is_checked_again():
    """A publication of another epoch that arrived after the fill's read was sent may be newer
    than its answer: history is asked again instead of dropping it."""
    s = Sequencer()
    live(s, "a", P(E1, 3))
    fill = fetch(s.publication_received(pub(5)))
    assert [] == s.publication_received(pub(1, E2))
    refill = fetch(s.history_received(fill.request, answer(P(E1, 5), [4, 5])))
    assert refill.since == P(E1, 5)
    again = fetch(s.history_received(refill.request, answer(P(E2, 1), None)))
    actions = s.history_received(again.request, answer(P(E2, 1), [1]))
    assert [("reset", E2, 0), ("message", E2, 1)] == stream(actions, "a")


def test_reconnect_during_a_fill_reads_history_again_afterwards():
    """A broker reconnect while a fill is in flight (its answer may predate the loss) reads again after it."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    fill = fetch(s.publication_received(pub(3)))
    assert [] == s.broker_reconnected()
    again = fetch(s.history_received(fill.request, answer(P(E1, 3), [2, 3])))
    assert again.since == P(E1, 3)
    actions = s.history_received(again.request, answer(P(E1, 4), [4]))
    assert [Deliver(pub(4), ("a",))] == actions


def test_reconnect_before_the_node_is_positioned_fills_after_the_first_answer():
    """A broker reconnect while the first history read is in flight is followed by a fill."""
    s = Sequencer()
    (take,) = s.subscribe("a", "c")
    read = fetch(s.broker_subscribed(take.request))
    assert [] == s.broker_reconnected()
    actions = s.history_received(read.request, answer(P(E1, 2)))
    assert FetchHistory("c", P(E1, 2), actions[0].request) == actions[0]
    assert SubscriptionReady("a", P(E1, 2), None, ()) == actions[1]


def test_pending_subscription_sees_node_resets_in_its_merge():
    """A node-level reset while a subscription is pending is part of its merge."""
    s = Sequencer()
    live(s, "a", P(E1, 1))
    read = fetch(s.subscribe("b", "c", P(E1, 1)))
    fill = fetch(s.publication_received(pub(6)))
    s.history_received(fill.request, answer(P(E1, 6), None))
    ready = s.history_received(read.request, answer(P(E1, 1), ()))
    assert [SubscriptionReady("b", P(E1, 6), False, ())] == ready


def test_buffered_publication_of_an_older_epoch_does_not_move_a_starting_subscription_back():
    """A subscription whose history read found the new epoch is not moved back by an old-epoch
    publication the node passed on while it was starting; it gets the new epoch's publications."""
    s = Sequencer()
    live(s, "a", P(E1, 0))
    read = fetch(s.subscribe("b", "c"))
    s.publication_received(pub(1))  # published before the flush, arrives late
    started = s.history_received(read.request, answer(P(E2, 0)))
    assert [("subscribed", E2, 0)] == stream(started, "b")
    check = fetch(started)  # b is in another epoch than the node: the node reads again
    assert [("reset", E2, 0)] == stream(s.history_received(check.request, answer(P(E2, 0), None)), "a")
    assert [Deliver(pub(1, E2), ("a", "b"))] == s.publication_received(pub(1, E2))


# -- resuming from an older epoch ------------------------------------------------------


def test_resume_from_an_older_epoch_reads_the_new_epoch_from_its_start():
    """A `since` in an epoch Redis lost, while the new epoch already has publications 1-3:
    the subscription is read again from (E2, 0) and starts with a reset to (E2, 0) followed
    by 1-3, instead of a reset to (E2, 3) that would skip them."""
    s = Sequencer()
    actions = s.subscribe("a", "c", P(E1, 7))
    first = fetch(s.broker_subscribed(actions[0].request))
    assert first.since == P(E1, 7)
    second = fetch(s.history_received(first.request, answer(P(E2, 3), None)))
    assert second.since == P(E2, 0)
    ready = s.history_received(second.request, answer(P(E2, 3), (1, 2, 3)))
    assert stream(ready, "a") == [("subscribed", E2, 0), ("reset", E2, 0), ("message", E2, 1), ("message", E2, 2), ("message", E2, 3)]
    assert s.position("a") == P(E2, 3)


def test_resume_from_an_older_epoch_resets_to_the_top_when_history_is_incomplete():
    """When history of the new epoch no longer starts at 1 the second read cannot continue
    either: one reset to the top, and no third read."""
    s = Sequencer()
    actions = s.subscribe("a", "c", P(E1, 7))
    first = fetch(s.broker_subscribed(actions[0].request))
    second = fetch(s.history_received(first.request, answer(P(E2, 3000), None)))
    ready = s.history_received(second.request, answer(P(E2, 3000), None))
    assert stream(ready, "a") == [("subscribed", E2, 3000), ("reset", E2, 3000)]


def test_live_publications_while_reading_the_new_epoch_follow_it():
    """Publications of the new epoch that arrive during the second read come after history."""
    s = Sequencer()
    actions = s.subscribe("a", "c", P(E1, 7))
    first = fetch(s.broker_subscribed(actions[0].request))
    second = fetch(s.history_received(first.request, answer(P(E2, 2), None)))
    assert s.publication_received(pub(3, E2)) == []
    ready = s.history_received(second.request, answer(P(E2, 2), (1, 2)))
    assert stream(ready, "a") == [("subscribed", E2, 0), ("reset", E2, 0)] + [("message", E2, n) for n in (1, 2, 3)]
