"""Idempotency keys (docs/protocol.md sections 4 and 7) in the sans-I/O core, the
in-memory broker on a fake clock, and the bus (hooks, counters), with plain values."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from gateway.broker.memory import SWEEP_INTERVAL, InMemoryBroker
from gateway.bus import Bus
from gateway.core.idempotency import (
    IDEMPOTENCY_TTL,
    FirstPublication,
    IdempotencyCache,
    validate_idempotency_key,
)
from gateway.core.model import Position
from gateway.errors import BadRequest
from gateway.interfaces import IPublishHook
from gateway.testing import ManualBroker, RecordingSubscriber


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


# -- keys ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "x" * 64, "ключ-1", "\U0001f600" * 64, "{room:1}:idem:*", " ", "a\x00b"])
def test_valid_keys(key):
    """1-64 characters (code points) of any kind UTF-8 can encode."""
    assert key == validate_idempotency_key(key)


@pytest.mark.parametrize(
    "key",
    [None, 1, 1.5, True, [], {}, ["k"], "", "x" * 65, "\ud800", "ab\udfffcd", "\U0001f600" * 65],
    ids=["null", "int", "float", "bool", "list", "object", "list-of-key", "empty", "65-chars", "lone-high", "lone-low", "65-astral"],
)
def test_invalid_keys_are_bad_request(key):
    with pytest.raises(BadRequest):
        validate_idempotency_key(key)


# -- the cache -------------------------------------------------------------------


def test_cache_remembers_for_exactly_the_ttl():
    cache = IdempotencyCache(300.0)
    first = FirstPublication(1, "e", 1000)
    cache.remember("c", "k", first, now=10.0)
    assert first == cache.lookup("c", "k", 10.0)
    assert first == cache.lookup("c", "k", 309.999)
    assert None is cache.lookup("c", "k", 310.0)
    assert 1 == cache.expire(310.0)
    assert 0 == len(cache)


def test_cache_keys_are_per_channel():
    cache = IdempotencyCache()
    cache.remember("a", "k", FirstPublication(1, "e", 0), 0.0)
    assert None is cache.lookup("b", "k", 1.0)
    assert None is cache.lookup("a", "K", 1.0)
    cache.remember("b", "k", FirstPublication(7, "f", 0), 1.0)
    assert (1, 7) == (cache.lookup("a", "k", 2.0).seq, cache.lookup("b", "k", 2.0).seq)


def test_cache_expires_oldest_first_and_stops_at_the_first_live_key():
    cache = IdempotencyCache(10.0)
    for i in range(5):
        cache.remember("c", f"k{i}", FirstPublication(i + 1, "e", 0), float(i))
    assert 2 == cache.expire(11.5)
    assert [None, None, 3, 4, 5] == [getattr(cache.lookup("c", f"k{i}", 11.5), "seq", None) for i in range(5)]
    assert 3 == len(cache)


def test_cache_memory_stays_bounded_under_endless_distinct_keys():
    """One channel, a new key every 10 ms for 2,000 s (200,000 keys): the cache never
    holds more than the keys of the last ttl (plus the one being added)."""
    cache = IdempotencyCache(300.0)
    most = 0
    for i in range(200_000):
        cache.remember("busy", f"key-{i}", FirstPublication(i + 1, "e", 0), i * 0.01)
        most = max(most, len(cache))
    assert 30_000 <= most <= 30_001
    cache.expire(2299.0)  # the last key came at 1999.99
    assert 0 < len(cache) <= 101
    cache.expire(2300.0)
    assert 0 == len(cache)


def test_remember_again_replaces_and_moves_the_key_to_the_young_end():
    cache = IdempotencyCache(10.0)
    cache.remember("c", "old", FirstPublication(1, "e1", 0), 0.0)
    cache.remember("c", "other", FirstPublication(2, "e1", 0), 1.0)
    cache.remember("c", "old", FirstPublication(1, "e2", 0), 2.0)  # its epoch was gone
    assert 1 == cache.expire(11.0)  # "other" only
    assert "e2" == cache.lookup("c", "old", 11.0).epoch


# -- the in-memory broker on a Clock ---------------------------------------------------


class Listener:
    def __init__(self):
        self.publications = []

    def publication_received(self, pub):
        self.publications.append(pub)

    def broker_reconnected(self):
        pass

    def control_received(self, message):
        pass


def memory_broker():
    clock = Clock()
    clock.advance(1_000_000)
    broker = InMemoryBroker(clock=clock, now=lambda: clock.seconds())
    listener = Listener()
    broker.start(listener)
    broker.subscribe("c")
    return broker, listener, clock


def test_memory_broker_repeat_within_ttl_is_the_first_publication_and_publishes_nothing():
    broker, listener, clock = memory_broker()
    first = result_of(broker.publish("c", {"n": 1}, "alice", idempotency_key="k"))
    clock.advance(IDEMPOTENCY_TTL - 0.001)
    again = result_of(broker.publish("c", {"n": 2}, "bob", idempotency_key="k"))
    assert (1, False) == (first.seq, first.duplicate)
    assert (first.seq, first.epoch, first.ts, True) == (again.seq, again.epoch, again.ts, again.duplicate)
    assert [first] == listener.publications
    history = result_of(broker.history("c", Position(first.epoch, 0)))
    assert (1, (first,)) == (history.top.seq, history.publications)
    assert 2 == result_of(broker.publish("c", "no key")).seq


def test_memory_broker_key_expires_after_300_seconds_on_the_clock():
    broker, listener, clock = memory_broker()
    result_of(broker.publish("c", 1, idempotency_key="k"))
    clock.advance(IDEMPOTENCY_TTL)
    later = result_of(broker.publish("c", 1, idempotency_key="k"))
    assert (2, False) == (later.seq, later.duplicate)
    assert [1, 2] == [p.seq for p in listener.publications]
    # ... and the new publication is what the key now answers with.
    repeat = result_of(broker.publish("c", 1, idempotency_key="k"))
    assert (2, True) == (repeat.seq, repeat.duplicate)


def test_memory_broker_sweep_removes_expired_keys_without_further_publishes():
    broker, _, clock = memory_broker()
    for i in range(100):
        result_of(broker.publish("c", i, idempotency_key=f"k{i}"))
    assert 100 == broker.idempotency_keys
    clock.advance(IDEMPOTENCY_TTL - 1)
    assert 100 == broker.idempotency_keys
    clock.advance(SWEEP_INTERVAL + 1)  # the periodic sweep ran past the ttl
    assert 0 == broker.idempotency_keys
    broker.stop()


def test_memory_broker_refused_data_does_not_use_up_the_key():
    broker, _, _ = memory_broker()
    assert isinstance(result_of(broker.publish("c", "\ud800", idempotency_key="k")).value, BadRequest)
    pub = result_of(broker.publish("c", "fine", idempotency_key="k"))
    assert (1, False) == (pub.seq, pub.duplicate)


def test_memory_broker_key_of_a_lost_epoch_publishes_anew():
    """A channel forgotten (idle past the sweep) starts a new epoch: an old key no
    longer answers (it cannot outlive its epoch here, but the check is the same as
    Redis')."""
    broker, _, _ = memory_broker()
    first = result_of(broker.publish("c", 1, idempotency_key="k"))
    broker._streams.pop("c")  # as the idle sweep does, 24 h later
    again = result_of(broker.publish("c", 1, idempotency_key="k"))
    assert (1, False) == (again.seq, again.duplicate)
    assert first.epoch != again.epoch


# -- the bus: validation, hooks, counter ------------------------------------------------


@implementer(IPublishHook)
class CountingHook:
    def __init__(self):
        self.before = []
        self.after = []

    def before_publish(self, channel, data, sender):
        self.before.append((channel, data))

    def after_publish(self, publication):
        self.after.append(publication.seq)


def make_bus():
    broker = ManualBroker()
    bus = Bus(broker, Clock())
    bus.start()
    hook = CountingHook()
    bus.hooks.append(hook)
    return bus, broker, hook


def test_bus_runs_after_hooks_once_per_publication_not_for_a_duplicate():
    bus, _, hook = make_bus()
    first = result_of(bus.publish("c", "a", idempotency_key="k"))
    again = result_of(bus.publish("c", "b", idempotency_key="k"))
    assert (first.seq, first.epoch) == (again.seq, again.epoch)
    assert again.duplicate
    assert [("c", "a"), ("c", "b")] == hook.before  # before: every attempt
    assert [1] == hook.after  # after: every publication, once
    assert 1 == bus.deduplicated


def test_bus_duplicate_is_not_delivered():
    bus, broker, _ = make_bus()
    rec = RecordingSubscriber()
    result_of(bus.subscribe("c", rec).ready)
    for data in ("a", "b"):
        pub = result_of(bus.publish("c", data, idempotency_key="k"))
        if not pub.duplicate:
            broker.deliver(pub)
    assert 1 == len(rec.events)


@pytest.mark.parametrize("key", ["", "x" * 65, 5, [], "\udc00"])
def test_bus_refuses_a_bad_key_before_hooks_and_broker(key):
    bus, broker, hook = make_bus()
    failure = result_of(bus.publish("c", 1, idempotency_key=key))
    assert isinstance(failure.value, BadRequest)
    assert ([], {}) == (hook.before, broker.streams)


def test_bus_without_a_key_calls_brokers_that_do_not_know_keys():
    """A broker written before idempotency keys (no such parameter) still works for
    publishes without one."""

    class OldBroker(ManualBroker):
        def publish(self, channel, data, sender=None):
            return super().publish(channel, data, sender)

    bus = Bus(OldBroker(), Clock())
    bus.start()
    assert 1 == result_of(bus.publish("c", 1)).seq
