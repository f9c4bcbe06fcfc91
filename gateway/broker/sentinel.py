"""Redis Sentinel for the Redis broker: an endpoint that connects to the current master.

:class:`SentinelEndpoint` is an ``IStreamClientEndpoint``: every connection attempt
(the first one and every reconnection of txredisapi's ClientService-based factories)
first asks the Sentinels which address serves as master of ``MASTER_NAME``, then
connects there.  A failover therefore needs nothing from the broker beyond what a
Redis restart needs: its connections drop (or, for a demoted master that stayed up,
are dropped: see :meth:`gateway.broker.redis.RedisBroker`), the factories reconnect,
the endpoint finds the promoted replica, the subscriber resubscribes and the bus fills
the gaps from history.

Discovery is txredisapi's: a :class:`txredisapi.Sentinel` holds one lazy connection
per Sentinel and ``SENTINEL MASTERS`` is asked of all of them at once; the first
answer naming a master that no Sentinel flags as down (``is_sdown``/``is_odown``,
:meth:`txredisapi.Sentinel.check_master_state`) wins.  Unlike
:meth:`txredisapi.Sentinel.discover_master`, the deadline runs on the broker's
reactor and is cancelled when the endpoint is closed, so a stopped broker leaves no
timer behind.  Sentinels are asked without a password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from gateway.errors import Unavailable

__all__ = ["MasterNotFound", "SentinelEndpoint", "parse_info", "parse_role"]


class MasterNotFound(Unavailable):
    """No Sentinel named a master that is up (failover in progress, or no Sentinel answers)."""


def parse_info(reply: bytes | str) -> dict[str, str]:
    """The ``field:value`` lines of an ``INFO`` reply as a dict (sections and blanks skipped)."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value
    return out


def parse_role(reply: Any) -> str:
    """The role (``master``, ``slave``, ``sentinel``) from a ``ROLE`` reply; "" if unreadable."""
    if isinstance(reply, (list, tuple)) and reply:
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)
    return ""


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master the Sentinels name ``master_name`` (see the module docstring).

    Args:
        reactor: the reactor (``IReactorTCP`` + ``IReactorTime``).
        sentinels: ``(host, port)`` of each Sentinel.
        master_name: the monitored master's name.
        timeout: deadline of one discovery and of one TCP connection, in seconds.
        on_master: called with ``(host, port)`` whenever discovery names a master
            other than the previous one (the broker drops connections to the old one).
        manager: the :class:`txredisapi.Sentinel` to ask (tests pass a stand-in);
            by default one connecting to ``sentinels``.
    """

    def __init__(
        self,
        reactor: Any,
        sentinels: tuple[tuple[str, int], ...],
        master_name: str,
        timeout: float,
        on_master: Callable[[tuple[str, int]], None] | None = None,
        manager: Any = None,
    ) -> None:
        self._reactor = reactor
        self.master_name = master_name
        self.timeout = timeout
        self._on_master = on_master
        self.master: tuple[str, int] | None = None
        if manager is None:
            import txredisapi

            manager = txredisapi.Sentinel(list(sentinels), replyTimeout=timeout, connectTimeout=timeout, convertNumbers=False)
        self._manager = manager
        self._pending: set[defer.Deferred[tuple[str, int]]] = set()
        self._closed = False

    def discover(self) -> defer.Deferred[tuple[str, int]]:
        """The current master's address, or :class:`MasterNotFound` after ``timeout``."""
        if self._closed:
            return defer.fail(MasterNotFound(f"{self.master_name}: stopped"))
        result: defer.Deferred[tuple[str, int]] = defer.Deferred()
        self._pending.add(result)

        waiting = [len(self._manager.sentinels)]

        def answered(masters: Any) -> None:
            state = masters.get(self.master_name) if isinstance(masters, dict) else None
            if result.called or not state or not self._manager.check_master_state(state):
                return
            result.callback((str(state["ip"]), int(state["port"])))

        def one_less(_: Any) -> None:
            # Every Sentinel answered and none names a master that is up (a failover
            # is under way): fail now, the connection's backoff paces the retries.
            waiting[0] -= 1
            if waiting[0] == 0:
                self._give_up(result)

        for conn in self._manager.sentinels:
            d = defer.maybeDeferred(conn.sentinel_masters)
            d.addCallbacks(answered, lambda _: None)
            d.addBoth(one_less)
        timer = self._reactor.callLater(self.timeout, self._give_up, result)

        def done(value: Any) -> Any:
            self._pending.discard(result)
            if timer.active():
                timer.cancel()
            return value

        return result.addBoth(done).addCallback(self._found)

    def _give_up(self, result: defer.Deferred[tuple[str, int]]) -> None:
        if not result.called:
            result.errback(MasterNotFound(f"no Sentinel names an available master {self.master_name!r}"))

    def _found(self, address: tuple[str, int]) -> tuple[str, int]:
        previous, self.master = self.master, address
        if previous is not None and previous != address and self._on_master is not None:
            self._on_master(address)
        return address

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        def connect_to(address: tuple[str, int]) -> defer.Deferred[Any]:
            host, port = address
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self.timeout)
            return endpoint.connect(protocolFactory)

        return self.discover().addCallback(connect_to)

    def close(self) -> defer.Deferred[Any]:
        """Fail pending discoveries and disconnect from the Sentinels."""
        self._closed = True
        for d in list(self._pending):
            if not d.called:
                d.errback(MasterNotFound(f"{self.master_name}: stopped"))
        return self._manager.disconnect()
