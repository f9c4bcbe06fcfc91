"""The sequencer's answers from the node (recent publications) and lingering channels,
with plain values (gateway/core/sequencer.py, "Answers from the node")."""

from __future__ import annotations

from gateway.core.model import Position
from gateway.core.sequencer import (
    Deliver,
    GapNotFilled,
    Reset,
    ScheduleLinger,
    Sequencer,
    SubscribeChannel,
    SubscriptionReady,
    UnsubscribeChannel,
)
from tests.unit.test_sequencer import E1, E2, P, answer, fetch, live, pub, stream


def node(recent=4, linger=0.0):
    """A sequencer with subscription "a" live on "c" at (E1, 3)."""
    s = Sequencer(recent=recent, linger=linger)
    live(s, "a", P(E1, 3))
    return s


def publish(s, *seqs, epoch=E1):
    actions = []
    for seq in seqs:
        actions += s.publication_received(pub(seq, epoch))
    return actions


# -- answers from the node ------------------------------------------------------------


def test_since_at_the_node_position_starts_at_once_without_reading_history():
    """A subscription continuing from the node position goes live at once, recovered, with nothing to deliver."""
    s = node()
    assert [SubscriptionReady("b", P(E1, 3), True, ())] == s.subscribe("b", "c", P(E1, 3))
    assert (s.position("b"), s.is_pending("b"), s.has_pending("c")) == (P(E1, 3), False, False)
    assert [Deliver(pub(4), ("a", "b"))] == publish(s, 4)


def test_since_inside_the_ring_gets_what_follows_it_from_the_node():
    """A subscription a few publications behind gets them from the node's ring, in order, then live ones."""
    s = node()
    publish(s, 4, 5, 6)
    assert [SubscriptionReady("b", P(E1, 6), True, (pub(5), pub(6)))] == s.subscribe("b", "c", P(E1, 4))
    # The ring's first publication follows the position the node had before it.
    assert [SubscriptionReady("x", P(E1, 6), True, (pub(4), pub(5), pub(6)))] == s.subscribe("x", "c", P(E1, 3))
    assert [Deliver(pub(7), ("a", "b", "x"))] == publish(s, 7)


def test_ring_is_bounded_and_older_positions_read_history():
    """The ring keeps the last `recent` publications; a `since` before them reads history."""
    s = node(recent=2)
    publish(s, 4, 5, 6)
    assert [SubscriptionReady("b", P(E1, 6), True, (pub(5), pub(6)))] == s.subscribe("b", "c", P(E1, 4))
    read = fetch(s.subscribe("x", "c", P(E1, 3)))
    assert (read.since, read.subscription) == (P(E1, 3), "x")


def test_since_ahead_of_the_node_or_without_since_reads_history():
    """A position the node has not reached (another node is ahead), or none, is read from history."""
    s = node()
    assert fetch(s.subscribe("b", "c", P(E1, 5))).since == P(E1, 5)
    assert fetch(s.subscribe("x", "c")).since is None


def test_since_in_another_epoch_reads_history():
    """A position of another epoch is never answered from the node."""
    s = node()
    publish(s, 4)
    assert fetch(s.subscribe("b", "c", P(E2, 4))).since == P(E2, 4)


def test_without_a_ring_every_subscription_reads_history():
    """recent=0 (the default): the node answers nothing itself."""
    s = node(recent=0)
    assert fetch(s.subscribe("b", "c", P(E1, 3))).since == P(E1, 3)


def test_no_answer_from_the_node_while_a_gap_is_being_filled():
    """While the node position is not settled (a gap fill in flight), history is read; afterwards the
    ring holds the filled publications, in order."""
    s = node()
    fill = fetch(publish(s, 5))
    assert fill.subscription is None
    read = fetch(s.subscribe("b", "c", P(E1, 3)))
    assert read.subscription == "b"
    s.history_received(fill.request, answer(P(E1, 5), [4, 5]))
    assert stream(s.history_received(read.request, answer(P(E1, 5), [4, 5])), "b") == [
        ("subscribed", E1, 5),
        ("message", E1, 4),
        ("message", E1, 5),
    ]
    assert [SubscriptionReady("x", P(E1, 5), True, (pub(4), pub(5)))] == s.subscribe("x", "c", P(E1, 3))


def test_no_answer_from_the_node_after_a_broker_reconnect_until_history_confirms_it():
    """Publications may have been lost while the broker was away: until the fill's answer, history is read."""
    s = node()
    publish(s, 4)
    fill = fetch(s.broker_reconnected())
    assert fetch(s.subscribe("b", "c", P(E1, 4))).subscription == "b"
    s.history_received(fill.request, answer(P(E1, 6), [5, 6]))
    assert [SubscriptionReady("x", P(E1, 6), True, (pub(5), pub(6)))] == s.subscribe("x", "c", P(E1, 4))


def test_ring_is_emptied_when_the_node_is_reset_past_a_gap():
    """After an unfillable gap the node continues at the top: positions before it are not in the ring."""
    s = node()
    publish(s, 4)
    fill = fetch(publish(s, 9))
    actions = s.history_received(fill.request, answer(P(E1, 9), None))
    assert GapNotFilled("c", P(E1, 4), P(E1, 9)) in actions
    assert fetch(s.subscribe("b", "c", P(E1, 4))).since == P(E1, 4)
    assert [SubscriptionReady("x", P(E1, 9), True, ())] == s.subscribe("x", "c", P(E1, 9))
    publish(s, 10)
    assert [SubscriptionReady("y", P(E1, 10), True, (pub(10),))] == s.subscribe("y", "c", P(E1, 9))


def test_ring_starts_again_in_a_new_epoch():
    """A new epoch read from its start: the old epoch's positions read history, the new one's are answered."""
    s = node()
    publish(s, 4)
    fill = fetch(publish(s, 1, epoch=E2))
    again = fetch(s.history_received(fill.request, answer(P(E2, 2), None)))
    assert again.since == P(E2, 0)
    actions = s.history_received(again.request, answer(P(E2, 2), [1, 2]))
    assert stream(actions, "a") == [("reset", E2, 0), ("message", E2, 1), ("message", E2, 2)]
    assert fetch(s.subscribe("b", "c", P(E1, 3))).since == P(E1, 3)
    assert [SubscriptionReady("x", P(E2, 2), True, (pub(1, E2), pub(2, E2)))] == s.subscribe("x", "c", P(E2, 0))


def test_subscription_started_from_the_node_follows_a_later_epoch_change():
    """A subscription answered from the node learned its epoch from the node's confirmed read:
    a later, newer epoch moves it on with a reset, never back."""
    s = node()
    assert s.subscribe("b", "c", P(E1, 3))
    fill = fetch(publish(s, 1, epoch=E2))
    again = fetch(s.history_received(fill.request, answer(P(E2, 1), None)))
    actions = s.history_received(again.request, answer(P(E2, 1), [1]))
    assert stream(actions, "b") == [("reset", E2, 0), ("message", E2, 1)]


# -- lingering channels ------------------------------------------------------------------


def test_last_subscription_leaving_lingers_then_releases():
    """With linger, the last subscription's end keeps the broker subscription until linger_due."""
    s = node(linger=5.0)
    assert [ScheduleLinger("c", 5.0)] == s.remove("a")
    assert (s.channels, s.lingering, s.subscriber_count()) == ([], ["c"], 0)
    assert [UnsubscribeChannel("c")] == s.linger_due("c")
    assert (s.channels, s.lingering) == ([], [])
    assert [] == s.linger_due("c")
    assert isinstance(s.subscribe("b", "c")[0], SubscribeChannel)


def test_lingering_channel_keeps_following_and_answers_a_returning_subscription():
    """Publications while lingering move the node and its ring: a client coming back with its position
    gets what it missed from the node, without a broker subscription or history read."""
    s = node(linger=5.0)
    s.remove("a")
    assert [] == publish(s, 4, 5)
    assert [SubscriptionReady("b", P(E1, 5), True, (pub(4), pub(5)))] == s.subscribe("b", "c", P(E1, 3))
    assert ([], ["c"], []) == (s.linger_due("c"), s.channels, s.lingering)
    assert [Deliver(pub(6), ("b",))] == publish(s, 6)


def test_lingering_channel_notices_a_gap_and_fills_it():
    """A gap that opens while lingering is filled as usual; a returning subscription waits for it."""
    s = node(linger=5.0)
    s.remove("a")
    fill = fetch(publish(s, 5))
    read = fetch(s.subscribe("b", "c", P(E1, 3)))
    s.history_received(fill.request, answer(P(E1, 5), [4, 5]))
    assert stream(s.history_received(read.request, answer(P(E1, 5), [4, 5])), "b") == [
        ("subscribed", E1, 5),
        ("message", E1, 4),
        ("message", E1, 5),
    ]


def test_channel_not_yet_subscribed_is_released_at_once():
    """Lingering needs a broker subscription in effect and a node position; otherwise release at once."""
    s = Sequencer(recent=4, linger=5.0)
    (take,) = s.subscribe("a", "c")
    assert [UnsubscribeChannel("c")] == s.remove("a")
    s = Sequencer(recent=4, linger=5.0)
    (take,) = s.subscribe("a", "c")
    s.broker_subscribed(take.request)
    assert [UnsubscribeChannel("c")] == s.remove("a")


def test_reconnect_while_lingering_fills_the_channel():
    """A lingering channel is still subscribed: a broker reconnect reads what it may have lost."""
    s = node(linger=5.0)
    s.remove("a")
    fill = fetch(s.broker_reconnected())
    assert (fill.since, fill.subscription) == (P(E1, 3), None)
    assert [] == s.history_received(fill.request, answer(P(E1, 4), [4]))
    assert [SubscriptionReady("b", P(E1, 4), True, (pub(4),))] == s.subscribe("b", "c", P(E1, 3))


def test_resets_are_per_subscription_for_subscriptions_started_from_the_node():
    """A subscription started from the node is never given a reset below its position."""
    s = node()
    publish(s, 4, 5)
    s.subscribe("b", "c", P(E1, 5))
    fill = fetch(publish(s, 7))
    actions = s.history_received(fill.request, answer(P(E1, 7), [6, 7]))
    assert not [a for a in actions if isinstance(a, Reset)]
    assert stream(actions, "b") == [("message", E1, 6), ("message", E1, 7)]
    assert s.node_position("c") == Position(E1, 7)


def test_publications_older_than_history_keeps_are_read_from_history():
    """A subscription that would get a publication older than max_age from the ring reads history
    (which may have let it expire) instead."""
    s = Sequencer(recent=4, max_age=300.0)
    live(s, "a", P(E1, 3))
    publish(s, 4, 5)  # ts 1004 and 1005 ms
    read = fetch(s.subscribe("b", "c", P(E1, 3), now=300 + 1.0045))
    assert (read.since, read.subscription) == (P(E1, 3), "b")
    assert [SubscriptionReady("x", P(E1, 5), True, (pub(5),))] == s.subscribe("x", "c", P(E1, 4), now=300 + 1.0045)
    assert [SubscriptionReady("y", P(E1, 5), True, ())] == s.subscribe("y", "c", P(E1, 5), now=1e9)
