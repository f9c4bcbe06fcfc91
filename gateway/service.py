"""``GatewayService``: a MultiService that runs a gateway node inside any Twisted application."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from gateway.app import Gateway
from gateway.config import Config
from gateway.interfaces import IBroker
from gateway.resource import GatewayResource
from gateway.transports._drain import OpenConnections
from gateway.transports._http import LineLimitHTTPChannel

__all__ = ["GatewayService"]

_LOOPBACK = ("127.", "::1", "localhost")


class GatewayService(service.MultiService):
    """Runs one gateway node: starts its bus, listens on ``config.listen``, drains on stop.

    Add it to an existing application (``svc.setServiceParent(app)``); to serve the
    endpoints from your own Site instead, give ``Config(listen=())`` and mount
    :attr:`resource` wherever you like.

    Attributes:
        gateway: the :class:`~gateway.app.Gateway` (its ``bus`` publishes from Python).
        resource: the :class:`~gateway.resource.GatewayResource` tree.
        site: the Site serving :attr:`resource` on ``config.listen``.
        ports: the listening ports, once started.
    """

    _log = Logger()

    def __init__(self, config: Config | None = None, reactor: Any = None, broker: IBroker | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config or Config()
        self.gateway = Gateway(self.config, reactor, broker)
        self.resource = GatewayResource(self.gateway)
        self.site = server.Site(self.resource)
        # Answer an over-long request line with a 400 JSON error instead of a silent
        # close (this Site speaks HTTP/1.1 only; WebSocket needs it anyway).
        self.site.protocol = LineLimitHTTPChannel  # type: ignore[method-assign,assignment]
        # The Site's open HTTP connections, closed once their last answer is written
        # at the end of a drain (see gateway.transports._drain).
        self.site.connections = OpenConnections()  # type: ignore[attr-defined]
        self.ports: list[Any] = []
        self._listened = False

    @property
    def bus(self) -> Any:
        """The node's :class:`~gateway.bus.Bus`: publish and subscribe from Python."""
        return self.gateway.bus

    def privilegedStartService(self) -> None:
        # Bind before privileges are dropped, and fail loudly (twistd exits) when a
        # listener cannot be bound.
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        if not self._listened:
            self._listen()
        super().startService()
        d = self.gateway.start()
        d.addCallback(
            lambda _: self._log.info(
                "gateway node {node} using the {bus} bus", node=self.config.node_id, bus=self.gateway.bus.broker.name
            )
        )
        d.addErrback(lambda f: self._log.failure("the message bus failed to start", f))

    def _listen(self) -> None:
        self._listened = True
        for description in self.config.listen:
            endpoint = endpoints.serverFromString(self.reactor, description)
            outcome: list[Any] = []
            endpoint.listen(self.site).addBoth(outcome.append)
            if not outcome:
                raise RuntimeError(f"endpoint {description!r} did not listen synchronously")
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
            port = outcome[0]
            self.ports.append(port)
            address = port.getHost()
            self._log.info("gateway listening on {address}", address=address)
            self._warn_if_open(address)

    def _warn_if_open(self, address: Any) -> None:
        if self.config.jwt_secret or self.config.jwt_public_key or self.config.api_key:
            return
        host = getattr(address, "host", None)
        if host is not None and not str(host).startswith(_LOOPBACK):
            self._log.warn(
                "listening on non-loopback {host} without authentication: anyone who can reach it may publish and subscribe",
                host=host,
            )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop listening, drain every client (WebSocket 1001, SSE ended, polls answered), stop the bus."""
        # Readiness goes 503 and new clients are refused from this moment on.
        self.gateway.draining = True
        started = self.reactor.seconds()
        connections: OpenConnections = self.site.connections  # type: ignore[attr-defined]
        # Every HTTP connection closes after its current answer from now on.
        connections.stop_keepalive()
        yield service.MultiService.stopService(self)
        ports, self.ports = self.ports, []
        self._listened = False
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        if self.gateway.connection_count():
            self._log.info("gateway draining {count} connection(s)", count=self.gateway.connection_count())
        yield self.gateway.drain()
        # The answers are written, perhaps not sent: wait until every connection has
        # flushed and closed (within what is left of the drain timeout), or the
        # process could exit with them still in the socket buffers.
        left = max(0.0, self.config.drain_timeout - (self.reactor.seconds() - started))
        yield connections.close_and_wait(self.reactor, left)
        yield self.gateway.stop()
