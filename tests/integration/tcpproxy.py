"""A switchable raw TCP proxy in front of a real gateway, to play the middleboxes and
failures a client must survive: refusing WebSocket upgrades with 403, holding them
silently, swallowing what the server sends (a lost ack), and cutting every connection."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

__all__ = ["Proxy"]

_FORBIDDEN = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nForbidden"
)


class _Downstream(protocol.Protocol):
    """The client's side."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.upstream: _Upstream | None = None
        self.buffer = b""
        self.decided = False
        self.held = False

    def connectionMade(self) -> None:
        self.proxy.downstreams.add(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.decided:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            self.decided = True
            upgrade = b"upgrade: websocket" in self.buffer.lower()
            if upgrade and self.proxy.refuse_upgrades:
                self.proxy.refused += 1
                self.transport.write(_FORBIDDEN)
                self.transport.loseConnection()
                return
            if upgrade and self.proxy.hold_upgrades:
                self.proxy.held += 1
                self.held = True
                return
            data, self.buffer = self.buffer, b""
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target_port)
            d = endpoint.connect(_UpstreamFactory(self))
            d.addErrback(lambda _: self.transport.loseConnection())
        if self.held:
            return
        if self.upstream is None:
            self.buffer += data
        else:
            self.upstream.transport.write(data)

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        if self.buffer:
            upstream.transport.write(self.buffer)
            self.buffer = b""

    def connectionLost(self, reason: Any = None) -> None:
        self.proxy.downstreams.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _Upstream(protocol.Protocol):
    """The gateway's side."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.proxy.upstreams.add(self)
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        if self.downstream.proxy.swallow:
            self.downstream.proxy.swallowed += len(data)
            return
        self.downstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.downstream.proxy.upstreams.discard(self)
        self.downstream.transport.loseConnection()


class _UpstreamFactory(protocol.ClientFactory):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.downstream)


class _DownstreamFactory(protocol.Factory):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Downstream:
        return _Downstream(self.proxy)


class Proxy:
    """Listen on a free loopback port and forward to ``target_port``.

    Switches (flip them at any time): ``refuse_upgrades`` (answer 403),
    ``hold_upgrades`` (accept the socket, never answer), ``swallow`` (drop what the
    server sends). :meth:`cut` aborts every proxied connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refuse_upgrades = False
        self.hold_upgrades = False
        self.swallow = False
        self.refused = 0
        self.held = 0
        self.swallowed = 0
        self.downstreams: set[_Downstream] = set()
        self.upstreams: set[_Upstream] = set()
        self.port = reactor.listenTCP(0, _DownstreamFactory(self), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}/"

    def cut(self) -> None:
        for conn in list(self.downstreams) + list(self.upstreams):
            conn.transport.abortConnection()

    def stop(self) -> Any:
        self.cut()
        return self.port.stopListening()
