"""Bus.readiness and Bus.unavailable: ready, degraded (some shards of several down) or
down, and the error a gate answers, from plain stand-in brokers."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.broker.shards import ShardStats
from gateway.bus import Bus


class Broker:
    def __init__(self, shards: dict[str, bool] | None, down_channels: set[str], ready: bool) -> None:
        self._shards = shards
        self.down_channels = down_channels
        self.ready = ready
        if shards is not None:
            self.shards = self._stats

    def _stats(self) -> list[ShardStats]:
        out = []
        for name, up in (self._shards or {}).items():
            s = ShardStats(name)
            s.up = up
            out.append(s)
        return out

    def is_ready(self) -> bool:
        return self.ready

    def channel_ready(self, channel: str) -> bool:
        return channel not in self.down_channels


def test_ready_degraded_and_down():
    assert ("ready", []) == Bus(Broker({"a": True, "b": True}, set(), True), Clock()).readiness()
    assert ("degraded", ["b"]) == Bus(Broker({"a": True, "b": False}, {"x"}, False), Clock()).readiness()
    assert ("down", ["a", "b"]) == Bus(Broker({"a": False, "b": False}, {"x"}, False), Clock()).readiness()
    # No shards (the in-memory broker) or one shard: never degraded, even with a stale figure.
    assert ("down", []) == Bus(Broker(None, {"x"}, False), Clock()).readiness()
    assert ("down", []) == Bus(Broker({"a": True}, {"x"}, False), Clock()).readiness()


def test_unavailable_names_the_channel_only_in_a_partial_outage():
    partial = Bus(Broker({"a": True, "b": False}, {"x"}, False), Clock())
    assert partial.unavailable(["ok", "fine"]) is None
    error = partial.unavailable(["ok", "x"])
    assert error is not None and "'x'" in error.message and error.code == "unavailable"
    total = Bus(Broker({"a": False}, {"ok", "x"}, False), Clock())
    error = total.unavailable(["ok"])
    assert error is not None and "the message bus is not available" == error.message
