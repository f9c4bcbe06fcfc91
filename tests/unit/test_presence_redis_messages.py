"""The Redis broker's reading of join/leave messages on a channel's pub/sub channel
(``"P" + JSON``, written by presence.lua), without a server: good ones reach the
listener, undecodable ones are logged and dropped, publications still parse."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.broker.redis import RedisBroker
from gateway.core.presence import PresenceEvent


class Listener:
    def __init__(self):
        self.presence = []
        self.publications = []

    def presence_received(self, channel, events):
        self.presence.append((channel, events))

    def publication_received(self, pub):
        self.publications.append(pub)


def broker_with(listener):
    broker = RedisBroker("redis://127.0.0.1:1/0", reactor=Clock())
    broker._listener = listener
    broker._channels.add("room")
    return broker


def test_join_leave_message_reaches_the_listener():
    listener = Listener()
    broker = broker_with(listener)

    broker._message_received(broker.pubsub_channel("room").encode(), 'P["join","ünï","leave","b\\/c"]'.encode())

    assert [("room", [PresenceEvent("join", "room", "ünï"), PresenceEvent("leave", "room", "b/c")])] == listener.presence


def test_undecodable_presence_messages_are_dropped():
    listener = Listener()
    broker = broker_with(listener)
    for bad in [b"P", b"P{", b'P["join"]', b"P42", b"P\xff", b"P[1,2]", b'P["kick","x"]']:
        broker._message_received(broker.pubsub_channel("room").encode(), bad)
    broker._message_received(broker.pubsub_channel("room").encode(), b'1:1764180000123:e1:{"c":"room","d":5,"f":null}')

    assert [] == listener.presence
    assert [5] == [p.data for p in listener.publications]


def test_presence_keys_share_the_channel_hash_tag():
    broker = RedisBroker("redis://127.0.0.1:1/0?prefix=gw", reactor=Clock())
    keys = broker.presence_keys("room:1")
    assert ["gw:{room:1}:pe", "gw:{room:1}:pc", "gw:{room:1}:pt", "gw:{room:1}:ps", "gw:{room:1}:pa"] == keys
    assert broker.meta_key("room:1").startswith("gw:{room:1}:")
