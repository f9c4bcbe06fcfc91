"""gateway/transports/_deadlines.py: many one-shot timers on one reactor call fire
when their own callLater would have, in the same order, and hold nothing once done."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.task import Clock

from gateway.transports._deadlines import Deadlines


class Owner:
    def __init__(self, name: str, log: list, clock: Clock) -> None:
        self.name = name
        self.log = log
        self.clock = clock

    def on_deadline(self) -> None:
        self.log.append((self.name, self.clock.seconds()))


@pytest.fixture
def clock():
    return Clock()


def test_timers_fire_at_their_time_in_order_on_one_reactor_call(clock):
    log: list = []
    deadlines = Deadlines(clock)
    clock.advance(100)
    for name, delay in (("b", 2.0), ("a", 1.0), ("c", 2.0), ("d", 3.5)):
        deadlines.call_later(delay, Owner(name, log, clock))
    assert len(clock.getDelayedCalls()) == 1 and deadlines.pending == 4
    clock.advance(0.999)
    assert log == []
    clock.advance(0.001)
    assert log == [("a", 101.0)]
    clock.advance(1.0)
    assert log == [("a", 101.0), ("b", 102.0), ("c", 102.0)]  # equal times: in the order set
    clock.advance(10)
    assert log[-1] == ("d", 112.0)  # late, as a callLater is when the reactor is late
    assert deadlines.pending == 0 and clock.getDelayedCalls() == []


def test_an_earlier_timer_set_later_moves_the_reactor_call(clock):
    log: list = []
    deadlines = Deadlines(clock)
    deadlines.call_later(25.0, Owner("long", log, clock))
    deadlines.call_later(1.0, Owner("short", log, clock))
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == 1.0
    clock.advance(1.0)
    assert log == [("short", 1.0)]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [25.0]
    clock.advance(24.0)
    assert log == [("short", 1.0), ("long", 25.0)]


def test_a_cancelled_timer_never_fires_and_lets_go_of_its_owner(clock):
    log: list = []
    deadlines = Deadlines(clock)
    owner = Owner("gone", log, clock)
    ref = weakref.ref(owner)
    entry = deadlines.call_later(5.0, owner)
    kept = deadlines.call_later(6.0, Owner("kept", log, clock))
    assert deadlines.active(entry)
    deadlines.cancel(entry)
    deadlines.cancel(entry)  # idempotent
    assert not deadlines.active(entry) and deadlines.pending == 1
    del owner
    gc.collect()
    assert ref() is None
    clock.advance(10)
    assert log == [("kept", 10.0)]  # (the time it ran: advance() moved to 10 at once)
    assert not deadlines.active(kept)
    deadlines.cancel(kept)  # fired already: nothing happens
    assert deadlines.pending == 0


def test_no_reactor_call_while_no_timer_is_set(clock):
    deadlines = Deadlines(clock)
    entries = [deadlines.call_later(float(i + 1), Owner(str(i), [], clock)) for i in range(3)]
    for entry in entries:
        deadlines.cancel(entry)
    assert clock.getDelayedCalls() == [] and deadlines.pending == 0
    log: list = []
    deadlines.call_later(1.0, Owner("again", log, clock))
    clock.advance(1.0)
    assert log == [("again", 1.0)] and clock.getDelayedCalls() == []


def test_a_timer_set_while_timers_fire_waits_for_its_own_time(clock):
    """A heartbeat sets the next one as it fires: that one fires a period later, and
    one set with no delay fires on the next reactor call, not in the same run (a
    loop of those would otherwise never give the reactor back)."""
    deadlines = Deadlines(clock)
    log: list = []

    class Beat(Owner):
        def on_deadline(self) -> None:
            super().on_deadline()
            if len(self.log) < 3:
                deadlines.call_later(2.0, self)

    class Now(Owner):
        def on_deadline(self) -> None:
            super().on_deadline()
            if len(self.log) == 1:
                deadlines.call_later(0, self)

    deadlines.call_later(2.0, Beat("beat", log, clock))
    clock.advance(2.0)
    clock.advance(2.0)
    clock.advance(2.0)
    assert log == [("beat", 2.0), ("beat", 4.0), ("beat", 6.0)]
    assert deadlines.pending == 0
    log.clear()
    deadlines.call_later(1.0, Now("now", log, clock))
    calls = []
    real = clock.callLater
    clock.callLater = lambda *a, **kw: calls.append(a[0]) or real(*a, **kw)  # type: ignore[method-assign]
    clock.advance(1.0)
    # Twice at 7.0, the second time on a reactor call of its own (Clock runs that
    # one within the same advance(), as it would a callLater(0)).
    assert log == [("now", 7.0), ("now", 7.0)] and calls == [0.0]
    assert deadlines.pending == 0


def test_an_owner_that_fails_is_logged_and_the_others_still_fire(clock, caplog):
    from twisted.logger import globalLogPublisher

    deadlines = Deadlines(clock)
    log: list = []
    failures: list = []

    class Broken(Owner):
        def on_deadline(self) -> None:
            raise RuntimeError("boom")

    def observer(event):
        if event.get("log_failure") is not None:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    try:
        deadlines.call_later(1.0, Broken("broken", log, clock))
        deadlines.call_later(1.0, Owner("fine", log, clock))
        deadlines.call_later(2.0, Owner("later", log, clock))
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [f.value.args for f in failures] == [("boom",)]
    assert log == [("fine", 1.0)]
    clock.advance(1.0)
    assert log == [("fine", 1.0), ("later", 2.0)]


def test_cancelled_timers_are_dropped_once_they_are_most_of_the_heap(clock):
    deadlines = Deadlines(clock)
    kept = deadlines.call_later(100.0, Owner("kept", [], clock))
    entries = [deadlines.call_later(50.0, Owner(str(i), [], clock)) for i in range(200)]
    for entry in entries:
        deadlines.cancel(entry)
    assert len(deadlines._heap) < 60 and deadlines.pending == 1
    assert deadlines.active(kept)
    clock.advance(100.0)
    assert deadlines.pending == 0 and clock.getDelayedCalls() == []
