"""OpenConnections (gateway/transports/_drain.py) on a Clock with stand-in channels:
keep-alive off, idle connections closed, busy ones waited for, the deadline kept."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.transports._drain import OpenConnections


class Transport:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class Channel:
    def __init__(self, busy: bool = False) -> None:
        self.transport: Transport | None = Transport()
        self.requests = ["request"] if busy else []
        self.persistent = True


def fired(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_idle_connections_are_closed_and_busy_ones_waited_for():
    conns, clock = OpenConnections(), Clock()
    idle, busy = Channel(), Channel(busy=True)
    conns.opened(idle)
    conns.opened(busy)

    done = fired(conns.close_and_wait(clock, 10))

    assert (idle.transport.lost, busy.transport.lost) == (True, False)
    assert (idle.persistent, busy.persistent) == (False, False)
    conns.closed(idle)
    assert done == []
    conns.closed(busy)
    assert done == [None]
    assert clock.getDelayedCalls() == []


def test_the_wait_ends_at_the_deadline():
    conns, clock = OpenConnections(), Clock()
    conns.opened(Channel(busy=True))

    done = fired(conns.close_and_wait(clock, 3))
    clock.advance(2.9)
    assert done == []
    clock.advance(0.2)
    assert done == [None]
    assert clock.getDelayedCalls() == []


def test_upgraded_connections_are_not_waited_for():
    """A connection Autobahn took over (channel.transport is None) is the gateway's WebSocket
    to close, not an HTTP connection to wait for."""
    conns, clock = OpenConnections(), Clock()
    upgraded = Channel(busy=True)
    upgraded.transport = None
    conns.opened(upgraded)

    assert fired(conns.close_and_wait(clock, 3)) == [None]
    assert len(conns) == 0


def test_connections_opened_while_draining_are_not_kept_alive():
    conns = OpenConnections()
    conns.stop_keepalive()
    late = Channel()
    conns.opened(late)
    assert late.persistent is False
