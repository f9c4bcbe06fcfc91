"""ClusterBroker's routing with stand-in links (no Redis, a Clock): which link a call goes
to, MOVED/ASK retries, links opened and closed as the slot map changes, subscriptions
moved with a gap fill, control messages taken from one link, readiness.  The sharded
pub/sub replies of the subscriber protocol are read here too.  Real clusters:
tests/e2e/test_cluster.py and tests/e2e/test_cluster_routing.py."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.broker.cluster import ClusterBroker
from gateway.broker.redis import Redirected
from gateway.broker.shards import ShardStats
from gateway.broker.slots import Redirect, key_slot
from gateway.errors import Unavailable

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)


class FakeLink:
    """Stands in for one RedisBroker link: records calls, answers as told."""

    def __init__(self, address):
        self.address = address
        self.ready = True
        self.calls: list[tuple] = []
        self.answers: list = []  # Failures or values for publish, in order
        self.stopped = False
        self.shard = ShardStats(f"{address[0]}:{address[1]}")

    def is_ready(self):
        return self.ready

    def publish(self, channel, data, sender=None, idempotency_key=None, asking=False):
        self.calls.append(("publish", channel, asking))
        answer = self.answers.pop(0) if self.answers else ("published", self.address)
        return defer.fail(answer) if isinstance(answer, Failure) else defer.succeed(answer)

    def history(self, channel, since):
        self.calls.append(("history", channel))
        return defer.succeed("history")

    def subscribe(self, channel):
        self.calls.append(("subscribe", channel))
        return defer.succeed(None)

    def unsubscribe(self, channel):
        self.calls.append(("unsubscribe", channel))
        return defer.succeed(None)

    def execute(self, what, command, *args):
        self.calls.append(("execute", command, *args))
        return defer.succeed("OK")

    def eval(self, what, script, keys, args):
        self.calls.append(("eval", *keys))
        return defer.succeed(1)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)


class Listener:
    def __init__(self):
        self.reconnects = 0
        self.control = []

    def broker_reconnected(self):
        self.reconnects += 1

    def control_received(self, message):
        self.control.append(message)


def cluster(ranges):
    broker = ClusterBroker("redis+cluster://10.0.0.1:7000", reactor=Clock())
    broker._listener = Listener()

    def open_link(address):
        link = broker.links[address] = FakeLink(address)
        return link

    broker._open = open_link  # the real one starts a RedisBroker
    broker._apply(ranges)
    return broker


THIRDS = [(0, 5460, A), (5461, 10922, B), (10923, 16383, C)]


def channel_in(broker, address):
    return next(f"c{i}" for i in range(10000) if broker.slot_map.owner(key_slot(f"c{i}")) == address)


def result(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_calls_go_to_the_master_of_the_channels_slot():
    broker = cluster(THIRDS)
    assert {A, B, C} == set(broker.links)
    for address in (A, B, C):
        channel = channel_in(broker, address)
        assert ("published", address) == result(broker.publish(channel, 1))
        assert "history" == result(broker.history(channel, None))
    rev = broker.revocation_key("alice")
    owner = broker.slot_map.owner(key_slot(rev))
    result(broker.execute("check", "GET", rev))
    result(broker.eval("revoke", b"script", [rev], []))
    assert [("execute", "GET", rev), ("eval", rev)] == [c for c in broker.links[owner].calls if c[0] in ("execute", "eval")]


def test_a_script_over_two_slots_or_without_keys_is_refused():
    broker = cluster(THIRDS)
    assert result(broker.eval("x", b"s", ["{a}1", "{b}2"], [])).check(Unavailable)
    assert result(broker.execute("x", "PING")).check(Unavailable)


def test_moved_updates_the_map_and_retries_once_on_the_new_owner():
    broker = cluster(THIRDS)
    channel = channel_in(broker, A)
    slot = key_slot(channel)
    broker.refresh = lambda: defer.succeed(None)
    broker.links[A].answers = [Failure(Redirected(Redirect("MOVED", slot, B), "moved"))]
    assert ("published", B) == result(broker.publish(channel, 1))
    assert B == broker.slot_map.owner(slot)
    assert [("publish", channel, False)] == broker.links[B].calls
    # The next publish goes straight to B.
    result(broker.publish(channel, 2))
    assert 1 == len(broker.links[A].calls) and 2 == len(broker.links[B].calls)


def test_ask_retries_with_asking_and_leaves_the_map():
    broker = cluster(THIRDS)
    channel = channel_in(broker, A)
    slot = key_slot(channel)
    broker.links[A].answers = [Failure(Redirected(Redirect("ASK", slot, C), "ask"))]
    assert ("published", C) == result(broker.publish(channel, 1))
    assert [("publish", channel, True)] == broker.links[C].calls
    assert A == broker.slot_map.owner(slot)


def test_a_second_redirect_is_unavailable_not_a_loop():
    broker = cluster(THIRDS)
    channel = channel_in(broker, A)
    slot = key_slot(channel)
    broker.refresh = lambda: defer.succeed(None)
    broker.links[A].answers = [Failure(Redirected(Redirect("MOVED", slot, B), "moved"))]
    broker.links[B].answers = [Failure(Redirected(Redirect("MOVED", slot, C), "moved again"))]
    failure = result(broker.publish(channel, 1))
    assert failure.check(Unavailable) and [] == broker.links[C].calls


def test_a_redirect_to_a_node_not_yet_connected_is_unavailable():
    broker = cluster(THIRDS)
    channel = channel_in(broker, A)
    broker.refresh = lambda: defer.succeed(None)
    D = ("10.0.0.4", 7003)
    broker.links[A].answers = [Failure(Redirected(Redirect("ASK", key_slot(channel), D), "ask"))]
    opened = {}

    def open_link(address):
        link = opened[address] = broker.links[address] = FakeLink(address)
        link.ready = False
        return link

    broker._open = open_link
    assert result(broker.publish(channel, 1)).check(Unavailable)
    assert [D] == list(opened)


def test_slot_map_changes_open_and_close_links_and_move_subscriptions():
    broker = cluster(THIRDS)
    on_a, on_c = channel_in(broker, A), channel_in(broker, C)
    result(broker.subscribe(on_a))
    result(broker.subscribe(on_c))
    # A failover: D replaces A for A's slots.
    D = ("10.0.0.4", 7003)
    broker._apply([(0, 5460, D), (5461, 10922, B), (10923, 16383, C)])
    assert {B, C, D} == set(broker.links)
    assert [("subscribe", on_a)] == broker.links[D].calls
    assert {on_a: D, on_c: C} == broker._channels
    assert 1 == broker._listener.reconnects  # gap fill once the subscription is in place
    # Nothing changed: nothing moves, no gap fill.
    broker._apply([(0, 5460, D), (5461, 10922, B), (10923, 16383, C)])
    assert 1 == broker._listener.reconnects


def test_a_dropped_subscription_is_made_again_on_the_next_map():
    broker = cluster(THIRDS)
    channel = channel_in(broker, A)
    result(broker.subscribe(channel))
    refreshed = []
    broker.refresh = lambda: refreshed.append(True) or defer.succeed(None)
    broker._dropped(channel)
    assert [True] == refreshed
    slot = key_slot(channel)
    broker._apply([(0, slot - 1, A), (slot, slot, B), (slot + 1, 5460, A), (5461, 10922, B), (10923, 16383, C)])
    assert B == broker._channels[channel] and ("subscribe", channel) in broker.links[B].calls


def test_readiness_needs_every_slot_served_by_a_ready_link():
    broker = cluster(THIRDS)
    assert broker.is_ready()
    broker.links[B].ready = False
    assert not broker.is_ready()
    assert ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"] == [s.name for s in broker.shards()]
    broker.links[B].ready = True
    broker._apply([(0, 5460, A), (10923, 16383, C)])  # slots without an owner
    assert not broker.is_ready()


def test_control_messages_come_from_one_link():
    from gateway.broker.cluster import _LinkListener

    broker = cluster(THIRDS)
    for address in (A, B, C):
        _LinkListener(broker, address).control_received({"from": address})
    assert [{"from": A}] == broker._listener.control
    broker.links[A].ready = False
    for address in (A, B, C):
        _LinkListener(broker, address).control_received({"from": address})
    assert [{"from": A}, {"from": B}] == broker._listener.control


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"smessage", b"gw:{c}:pub", b"1:2:e:{}"], ("message", b"gw:{c}:pub", b"1:2:e:{}")),
        ([b"ssubscribe", b"gw:{c}:pub", 1], ("queued", [b"ssubscribe", b"gw:{c}:pub", 1])),
        ([b"sunsubscribe", b"gw:{c}:pub", 0], ("dropped", b"gw:{c}:pub")),
    ],
)
def test_sharded_pubsub_replies(reply, expected):
    """The subscriber protocol reads smessage as a message, ssubscribe as the reply to
    SSUBSCRIBE, and a sunsubscribe nobody asked for as the server dropping the channel."""
    from gateway.broker.redis import _protocols

    seen = []

    class Broker:
        def _message_received(self, channel, message):
            seen.append(("message", channel, message))

        def _shard_channel_dropped(self, channel):
            seen.append(("dropped", channel))

    class Factory:
        broker = Broker()

    proto = _protocols()["subscriber"]()
    proto.factory = Factory()

    class Queue:
        def put(self, value):
            seen.append(("queued", value))

    proto.replyQueue = Queue()
    proto.replyReceived(reply)
    assert [expected] == seen


def test_an_asked_sunsubscribe_is_a_reply():
    from gateway.broker.redis import _protocols

    proto = _protocols()["subscriber"]()
    seen = []

    class Queue:
        def put(self, value):
            seen.append(value)

    proto.replyQueue = Queue()
    proto.execute_command = lambda *a, **k: defer.succeed(None)
    proto.sunsubscribe("gw:{c}:pub")
    proto.replyReceived([b"sunsubscribe", b"gw:{c}:pub", 0])
    assert [[b"sunsubscribe", b"gw:{c}:pub", 0]] == seen
