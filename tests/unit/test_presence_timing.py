"""gateway/presence.py on a Clock: batching window, one update in flight, periodic
refresh, changes kept while the broker is down and re-registered when it is back, and
long-poll leases expiring --presence-ttl after the poll (through the in-memory broker's
table on the same clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.broker.memory import InMemoryBroker
from gateway.core.presence import PresenceEvent
from gateway.errors import Unavailable
from gateway.presence import BATCH_SECONDS, Presence


class FakeBroker:
    """Records presence updates; answers them when the test says."""

    def __init__(self) -> None:
        self.ready = True
        self.calls: list[tuple[list[Any], defer.Deferred[None]]] = []

    def is_ready(self) -> bool:
        return self.ready

    def presence_update(self, changes: list[Any]) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.calls.append((changes, d))
        return d

    def answer(self, i: int = -1, error: Exception | None = None) -> None:
        d = self.calls[i][1]
        if error is None:
            d.callback(None)
        else:
            d.errback(error)


class FakeBus:
    def __init__(self, broker: Any) -> None:
        self.broker = broker


def make(ttl: float = 8.0, broker: Any = None) -> tuple[Presence, Any, Clock]:
    clock = Clock()
    broker = broker or FakeBroker()
    p = Presence(FakeBus(broker), "n1", ttl, clock)
    p.start()
    return p, broker, clock


def counts(changes):
    return sorted((c.channel, c.id, c.count) for c in changes)


def test_changes_within_the_window_are_one_update():
    p, broker, clock = make()
    for i in range(1000):
        p.connection_added("room", f"user{i}")
    clock.advance(BATCH_SECONDS - 0.001)
    assert [] == broker.calls
    clock.advance(0.001)
    assert 1 == len(broker.calls)
    assert 1000 == len(broker.calls[0][0])


def test_one_update_in_flight_the_rest_waits_for_it():
    p, broker, clock = make()
    p.connection_added("room", "alice")
    clock.advance(BATCH_SECONDS)
    p.connection_added("room", "bob")
    p.connection_removed("room", "alice")
    clock.advance(10 * BATCH_SECONDS)
    assert 1 == len(broker.calls)

    broker.answer()
    assert 1 == len(broker.calls)
    clock.advance(BATCH_SECONDS)
    assert [("room", "alice", 0), ("room", "bob", 1)] == counts(broker.calls[1][0])


def test_refresh_every_quarter_ttl_with_entries_living_half():
    p, broker, clock = make(ttl=8.0)
    p.connection_added("room", "alice")
    clock.advance(BATCH_SECONDS)
    broker.answer()
    clock.advance(2.0 - BATCH_SECONDS - 0.001)
    assert 1 == len(broker.calls)
    clock.advance(0.001)
    assert 2 == len(broker.calls)
    (refreshed,) = broker.calls[1][0]
    assert (1, 4.0, "n1") == (refreshed.count, refreshed.ttl, refreshed.owner)


def test_broker_down_keeps_changes_and_refresh_resends_them():
    p, broker, clock = make(ttl=8.0)
    p.connection_added("room", "alice")
    clock.advance(BATCH_SECONDS)
    broker.answer(error=Unavailable("down"))
    p.connection_added("room", "bob")
    broker.ready = False
    clock.advance(BATCH_SECONDS)
    assert 1 == len(broker.calls)  # nothing sent while down

    broker.ready = True
    p.refresh()  # what the gateway does when the broker is back
    assert [("room", "alice", 1), ("room", "bob", 1)] == counts(broker.calls[1][0])


def test_a_failed_update_is_retried_while_the_broker_looks_up():
    """An update that timed out (the broker still reports ready) goes again a second later."""
    from gateway.presence import RETRY_SECONDS

    p, broker, clock = make(ttl=60.0)
    p.connection_added("room", "alice")
    clock.advance(BATCH_SECONDS)
    broker.answer(error=Unavailable("timed out"))
    clock.advance(RETRY_SECONDS - 0.01)
    assert 1 == len(broker.calls)
    clock.advance(0.01)
    assert [("room", "alice", 1)] == counts(broker.calls[1][0])


def test_stop_cancels_timers_and_sends_the_last_changes():
    p, broker, clock = make()
    p.connection_added("room", "alice")
    d = p.stop()
    assert [] == clock.getDelayedCalls()
    assert [("room", "alice", 1)] == counts(broker.calls[0][0])
    assert not d.called
    broker.answer()
    assert d.called
    p.connection_removed("room", "alice")
    assert [] == clock.getDelayedCalls()


def test_poll_client_leaves_ttl_after_its_last_poll_on_the_clock():
    """Through the in-memory broker on the same clock: a poll client is a member while
    held, still for --presence-ttl after the poll ends, and its leave comes from the
    sweep of the next refresh after that."""
    clock = Clock()
    broker = InMemoryBroker(clock=None, now=clock.seconds)
    events: list[PresenceEvent] = []

    class Listener:
        def publication_received(self, pub): ...
        def broker_reconnected(self): ...
        def control_received(self, m): ...
        def presence_received(self, channel, evs):
            events.extend(evs)

    broker.start(Listener())
    broker.subscribe("room")
    p = Presence(FakeBus(broker), "n1", 8.0, clock)
    p.start()
    p.connection_added("room", "watcher")  # keeps the channel refreshed
    p.poll_started("room", "bob", None)
    clock.advance(BATCH_SECONDS)
    for _ in range(60):  # held for 30 s: refreshed all along
        clock.advance(0.5)
    assert ["bob", "watcher"] == [m for m, _ in broker.presence_query("room", 10, None).result.members]

    p.poll_ended("room", "bob", None)
    ended = clock.seconds()
    clock.advance(BATCH_SECONDS)
    while not any(e.type == "leave" for e in events):
        clock.advance(0.5)
        assert clock.seconds() - ended < 8 + 2 + 1
    assert clock.seconds() - ended >= 8
    assert [PresenceEvent("join", "room", "bob"), PresenceEvent("join", "room", "watcher"), PresenceEvent("leave", "room", "bob")] == events
    p.stop()
