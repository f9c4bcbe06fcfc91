"""GatewayService: endpoints checked when it is built, and whenReady() firing once the
bus can publish (driven by a Clock and a hand-driven broker; no sockets)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.config import Config, ConfigError
from gateway.errors import Unavailable
from gateway.service import READY_POLL_SECONDS, GatewayService
from gateway.testing import ManualBroker


def make(broker=None) -> tuple[GatewayService, Clock, ManualBroker]:
    clock = Clock()
    broker = broker or ManualBroker()
    return GatewayService(Config(listen=()), reactor=clock, broker=broker), clock, broker


def outcome(d: defer.Deferred) -> list:
    result: list = []
    d.addBoth(result.append)
    return result


def test_when_ready_before_start_fires_once_the_bus_started():
    """whenReady() called before the service starts fires (with None) when it starts."""
    svc, clock, _ = make()
    got = outcome(svc.whenReady())
    assert got == []
    svc.startService()
    assert got == [None]
    svc.stopService()
    assert clock.getDelayedCalls() == []


def test_when_ready_fires_at_once_when_ready():
    """A running service whose bus is ready answers whenReady() at once."""
    svc, _, _ = make()
    svc.startService()
    assert outcome(svc.whenReady()) == [None]
    svc.stopService()


def test_when_ready_waits_for_the_broker():
    """While the broker cannot publish (Redis not reachable yet) whenReady() waits, then fires;
    nothing is left scheduled afterwards."""
    svc, clock, broker = make()
    broker.ready = False
    svc.startService()
    got = outcome(svc.whenReady())
    clock.advance(READY_POLL_SECONDS * 5)
    assert got == []
    broker.ready = True
    clock.advance(READY_POLL_SECONDS)
    assert got == [None]
    # Only the node's periodic presence refresh stays scheduled while it runs.
    assert [c for c in clock.getDelayedCalls() if "Presence.refresh" not in repr(c.func)] == []
    svc.stopService()


def test_when_ready_fails_when_the_bus_fails_to_start():
    """A bus that fails to start fails whenReady(), now and later."""

    class FailingBroker(ManualBroker):
        def start(self, listener):
            return defer.fail(RuntimeError("no bus today"))

    svc, _, _ = make(FailingBroker())
    early = outcome(svc.whenReady())
    svc.startService()
    late = outcome(svc.whenReady())
    assert [f.value.args for f in early + late] == [("no bus today",), ("no bus today",)]
    svc.stopService()


def test_when_ready_fails_with_unavailable_when_stopped_first():
    """Stopping the service before the bus is ready fails pending whenReady() with Unavailable."""
    svc, clock, broker = make()
    broker.ready = False
    svc.startService()
    got = outcome(svc.whenReady())
    svc.stopService()
    assert got[0].check(Unavailable)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "description,problem",
    [
        ("tcp:notaport", "notaport"),
        ("nosuchtype:1", "nosuchtype"),
        ("ssl:0:privateKey=/no/such/key.pem", "No such file or directory: /no/such/key.pem"),
    ],
)
def test_bad_listen_is_a_config_error_when_built(description, problem):
    """A listen description that does not parse (or names a missing TLS file) is a ConfigError
    naming it, raised when the service is built, before anything starts."""
    with pytest.raises(ConfigError) as info:
        GatewayService(Config(listen=(description,)), reactor=Clock(), broker=ManualBroker())
    assert str(info.value).startswith(f"listen {description}: ")
    assert problem in str(info.value)
