"""The WebSocket handshake checks that do not depend on the resource in front
(issue 7 item 9): GatewayWebSocketProtocol.onConnect and the factory's options."""

from __future__ import annotations

import pytest
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.testing import MemoryReactorClock

from gateway.app import Gateway
from gateway.config import Config
from gateway.transports.websocket import GatewayWebSocketFactory
from gateway.transports.ws_resource import header_tokens, origin_well_formed

APP = "https://app.example"
EVIL = "https://evil.example"


def protocol(**config):
    factory = GatewayWebSocketFactory(Gateway(Config(**config), MemoryReactorClock()))
    return factory, factory.buildProtocol(None)


def connection_request(version: int = 13, origin: str = "", headers: dict[str, str] | None = None) -> ConnectionRequest:
    """What Autobahn hands onConnect (``origin``: the origin it read; ``headers``: lower-cased)."""
    return ConnectionRequest("tcp4:127.0.0.1:1", dict(headers or {}), "127.0.0.1", "/ws", {}, version, origin, [], [])


def test_hybi_8_origin_header_cannot_bypass_the_origin_check():
    """A version-8 handshake whose origin came in Sec-WebSocket-Origin is refused."""
    _, proto = protocol(allowed_origin=(APP,))
    with pytest.raises(ConnectionDeny):
        proto.onConnect(connection_request(8, EVIL, {"sec-websocket-origin": EVIL}))


def test_sec_websocket_origin_is_checked_beside_origin():
    """An allowed Origin does not excuse an unlisted Sec-WebSocket-Origin."""
    _, proto = protocol(allowed_origin=(APP,))
    with pytest.raises(ConnectionDeny) as e:
        proto.onConnect(connection_request(13, APP, {"origin": APP, "sec-websocket-origin": EVIL}))
    assert e.value.code == 403


def test_only_version_13_is_accepted():
    _, proto = protocol()
    with pytest.raises(ConnectionDeny) as e:
        proto.onConnect(connection_request(8))
    assert e.value.code == 426


def test_listed_origin_and_no_origin_are_accepted():
    _, proto = protocol(allowed_origin=(APP,))
    assert proto.onConnect(connection_request(13, APP, {"origin": APP})) is None
    assert proto.onConnect(connection_request(13)) is None


def test_factory_speaks_rfc_6455_only_without_status_page_or_version_banner():
    """versions=[13], no status page (so no ?redirect=), and Server: gateway on the 101."""
    factory, _ = protocol()
    assert list(factory.versions) == [13]
    assert factory.webStatus is False
    assert factory.server == "gateway"


def test_origin_well_formed():
    assert origin_well_formed("https://app.example")
    assert origin_well_formed("http://app.example:8080")
    assert origin_well_formed("null")
    assert not origin_well_formed("https://")
    assert not origin_well_formed("https://a.example:99999")
    assert not origin_well_formed("https://a.example:x")


def test_header_tokens_spans_lines_and_case():
    class Req:
        from twisted.web.http_headers import Headers

        requestHeaders = Headers({b"connection": [b"keep-alive, Upgrade", b"x"]})

    assert header_tokens(Req(), b"connection") == {b"keep-alive", b"upgrade", b"x"}
