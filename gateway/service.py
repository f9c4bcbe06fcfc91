"""``GatewayService``: a MultiService that runs a gateway node inside any Twisted application."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, error
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.app import Gateway
from gateway.config import Config, ConfigError
from gateway.errors import Unavailable
from gateway.interfaces import IBroker
from gateway.resource import GatewayResource
from gateway.transports._drain import OpenConnections
from gateway.transports._http import make_site
from gateway.transports._tickwrite import tick_writer

__all__ = ["GatewayService", "ListenError"]

_LOOPBACK = ("127.", "::1", "localhost")

# How often whenReady() looks again while the bus runs but cannot publish yet
# (Redis not reachable): readiness has no event of its own.
READY_POLL_SECONDS = 0.1


class ListenError(Exception):
    """A ``listen`` endpoint parsed but could not listen (port in use, no permission).

    The message names the endpoint: ``listen tcp:8080: Address already in use``.
    """


def _problem(e: BaseException) -> str:
    """One line saying what went wrong, without the exception's class or a traceback."""
    if isinstance(e, error.CannotListenError) and isinstance(e.socketError, OSError) and e.socketError.strerror:
        return str(e.socketError.strerror)
    if isinstance(e, OSError) and e.strerror:
        # filename2 is the path that mattered for two-path calls (the lock symlink of unix:).
        name = e.filename2 or e.filename
        return f"{e.strerror}: {os.fsdecode(name)}" if name else str(e.strerror)
    text = " ".join(str(e).split()) or type(e).__name__
    if type(e).__module__.startswith("OpenSSL"):
        return f"cannot load the TLS key or certificate: {text}"
    return text


def parse_endpoint(reactor: Any, description: str) -> Any:
    """``serverFromString``, with every parse problem (syntax, unknown type, a missing
    TLS key or certificate file) as a :class:`~gateway.config.ConfigError` naming it."""
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:  # noqa: BLE001 - endpoint parsers raise anything; all of it is a bad --listen
        raise ConfigError(f"listen {description}: {_problem(e)}") from None


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

    def __init__(
        self, config: Config | None = None, reactor: Any = None, broker: IBroker | None = None, endpoints: Any = None
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config or Config()
        self.gateway = Gateway(self.config, reactor, broker)
        self.resource = GatewayResource(self.gateway)
        self.site = make_site(self.resource, self.config, reactor, writer=tick_writer(self.gateway))
        # The Site's open HTTP connections, closed once their last answer is written
        # at the end of a drain (see gateway.transports._drain).
        self.site.connections = OpenConnections()  # type: ignore[attr-defined]
        self.ports: list[Any] = []
        self._listened = False
        # Parsed now, so a bad description or a missing TLS file is a ConfigError
        # before anything starts (and before twistd daemonizes).
        # ``endpoints`` ((description, IStreamServerEndpoint) pairs) replaces them: a
        # --workers worker listens on the sockets its supervisor hands it.
        self._endpoints = list(endpoints) if endpoints is not None else [(d, parse_endpoint(reactor, d)) for d in self.config.listen]
        self._ready_waiters: list[defer.Deferred[None]] = []
        self._bus_started = False
        self._bus_failure: Failure | None = None
        self._ready_poll: LoopingCall | None = None

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
        self._bus_started = False
        self._bus_failure = None
        self.gateway.start().addCallbacks(self._bus_start_done, self._bus_start_failed)

    def _bus_start_done(self, _: Any) -> None:
        self._log.info("gateway node {node} using the {bus} bus", node=self.config.node_id, bus=self.gateway.bus.broker.name)
        self._bus_started = True
        self._check_ready()

    def _bus_start_failed(self, failure: Failure) -> None:
        self._log.failure("the message bus failed to start", failure)
        self._bus_failure = failure
        self._stop_ready_poll()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(failure)

    def whenReady(self) -> defer.Deferred[None]:
        """A Deferred that fires (with None) once the bus can publish.

        It fires at once when the service runs and its bus is ready; otherwise when
        the service has started its bus and the bus is ready (with ``--redis``: once
        Redis answers).  It fails with the bus's error if the bus fails to start,
        and with :class:`~gateway.errors.Unavailable` if the service stops first.
        Publish from Python after it::

            service.whenReady().addCallback(lambda _: service.bus.publish("room:1", {"text": "hi"}))
        """
        if self._bus_failure is not None:
            return defer.fail(self._bus_failure)
        if self.running and self._bus_started and self.gateway.bus.is_ready():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._ready_waiters.append(d)
        self._check_ready()
        return d

    def _check_ready(self) -> None:
        if not (self._ready_waiters and self.running and self._bus_started):
            return
        if self.gateway.bus.is_ready():
            self._stop_ready_poll()
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(None)
        elif self._ready_poll is None:
            self._ready_poll = LoopingCall(self._check_ready)
            self._ready_poll.clock = self.reactor
            self._ready_poll.start(READY_POLL_SECONDS, now=False)

    def _stop_ready_poll(self) -> None:
        poll, self._ready_poll = self._ready_poll, None
        if poll is not None and poll.running:
            poll.stop()

    def _listen(self) -> None:
        """Listen on every endpoint, synchronously; on failure close what was opened
        and raise :class:`ListenError` naming the endpoint."""
        self._listened = True
        for description, endpoint in self._endpoints:
            outcome: list[Any] = []
            endpoint.listen(self.site).addBoth(outcome.append)
            problem = None
            if not outcome:
                problem = "did not listen synchronously"
            elif isinstance(outcome[0], Failure):
                problem = _problem(outcome[0].value)
            if problem is not None:
                ports, self.ports = self.ports, []
                for port in ports:
                    port.stopListening()
                self._listened = False
                message = f"listen {description}: {problem}"
                self._log.critical("cannot start: {message}", message=message)
                raise ListenError(message)
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
        self._stop_ready_poll()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(Unavailable("the gateway stopped before its message bus was ready"))
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
