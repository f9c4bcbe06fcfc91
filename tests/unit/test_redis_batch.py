"""RedisBroker hands the publications of one read of its pub/sub connection to the listener
together (publications_received), in order, and everything else in arrival order around them."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from gateway.broker.redis import RedisBroker, _protocols


class Listener:
    def __init__(self, batches: bool = True) -> None:
        self.calls: list = []
        if batches:
            self.publications_received = lambda pubs: self.calls.append(("many", [p.seq for p in pubs]))

    def publication_received(self, pub):
        self.calls.append(("one", pub.seq))

    def presence_received(self, channel, events):
        self.calls.append(("presence", [e.type for e in events]))

    def control_received(self, message):
        self.calls.append(("control", message["type"]))


def message(broker, channel: str, payload: bytes) -> bytes:
    name = broker.pubsub_channel(channel).encode()
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(payload), payload)


def entry(seq: int) -> bytes:
    return b"%d:1000:e1:%s" % (seq, json.dumps({"c": "c", "d": seq, "f": None}).encode())


def connection(listener):
    broker = RedisBroker("redis://127.0.0.1:1/0", reactor=Clock())
    broker._listener = listener
    broker._channels.add("c")

    class Factory:
        pass

    proto = _protocols()["subscriber"]()
    proto.factory = Factory()
    proto.factory.broker = broker
    return broker, proto


def test_one_read_is_one_batch_in_order():
    listener = Listener()
    broker, proto = connection(listener)
    proto.dataReceived(b"".join(message(broker, "c", entry(i)) for i in (1, 2, 3)))
    proto.dataReceived(message(broker, "c", entry(4)))
    assert listener.calls == [("many", [1, 2, 3]), ("one", 4)]
    assert broker._batch is None


def test_presence_and_control_keep_their_place_between_publications():
    listener = Listener()
    broker, proto = connection(listener)
    presence = b"P" + json.dumps(["join", "alice"]).encode()
    control = json.dumps({"type": "revoke", "sub": "x"}).encode()
    control_msg = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(broker.control_channel), broker.control_channel.encode(), len(control), control)
    proto.dataReceived(
        message(broker, "c", entry(1)) + message(broker, "c", entry(2)) + message(broker, "c", presence)
        + message(broker, "c", entry(3)) + control_msg + message(broker, "c", entry(4)) + message(broker, "c", entry(5))
    )
    assert listener.calls == [
        ("many", [1, 2]), ("presence", ["join"]), ("one", 3), ("control", "revoke"), ("many", [4, 5]),
    ]


def test_a_listener_without_publications_received_gets_them_one_by_one():
    listener = Listener(batches=False)
    broker, proto = connection(listener)
    proto.dataReceived(b"".join(message(broker, "c", entry(i)) for i in (1, 2, 3)))
    assert listener.calls == [("one", 1), ("one", 2), ("one", 3)]
