"""Gateway.check_publish_rate / check_connection_limit on a fake clock, and their metrics."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from twisted.internet.task import Clock

from gateway.app import Gateway
from gateway.config import Config
from gateway.errors import RateLimited, Unavailable
from gateway.metrics import make_registry
from gateway.testing import ManualBroker


def gateway(**options):
    return Gateway(Config(**options), reactor=Clock(), broker=ManualBroker())


def metrics(gw) -> str:
    return generate_latest(make_registry(gw)).decode()


def test_no_limits_by_default():
    """Without the options nothing is ever refused."""
    gw = gateway()
    for _ in range(10_000):
        gw.check_publish_rate("ws:1")
        gw.check_publish_rate("addr:127.0.0.1")
    for i in range(100):
        gw.connection_opened("websocket", object())
        gw.check_connection_limit()


def test_publish_rate_burst_then_refused_with_retry_after():
    """--publish-rate 3: three at once pass, the fourth is RateLimited with the wait."""
    gw = gateway(publish_rate=3)
    for _ in range(3):
        gw.check_publish_rate("ws:1")
    with pytest.raises(RateLimited) as e:
        gw.check_publish_rate("ws:1")
    assert e.value.code == "rate_limited" and e.value.http_status == 429
    assert e.value.retry_after == pytest.approx(1 / 3)


def test_publish_rate_refills_on_the_reactor_clock():
    """Time comes from reactor.seconds(): advancing the Clock refills the bucket."""
    gw = gateway(publish_rate=2)
    gw.check_publish_rate("sub:alice")
    gw.check_publish_rate("sub:alice")
    with pytest.raises(RateLimited) as e:
        gw.check_publish_rate("sub:alice")
    gw.reactor.advance(e.value.retry_after)
    gw.check_publish_rate("sub:alice")
    with pytest.raises(RateLimited):
        gw.check_publish_rate("sub:alice")
    gw.reactor.advance(1.0)
    gw.check_publish_rate("sub:alice")
    gw.check_publish_rate("sub:alice")


def test_websocket_and_http_buckets_are_separate():
    """One bucket per connection, and HTTP keys apart from WebSocket ones."""
    gw = gateway(publish_rate=1)
    gw.check_publish_rate("ws:1")
    gw.check_publish_rate("ws:2")
    gw.check_publish_rate("addr:127.0.0.1")
    gw.check_publish_rate("sub:alice")
    for key in ("ws:1", "ws:2", "addr:127.0.0.1", "sub:alice"):
        with pytest.raises(RateLimited):
            gw.check_publish_rate(key)


def test_forget_publish_rate_drops_a_connection_bucket():
    """A closed WebSocket's bucket is dropped (its id may be reused by a new connection)."""
    gw = gateway(publish_rate=1)
    gw.check_publish_rate("ws:7")
    gw.forget_publish_rate("ws:7")
    gw.check_publish_rate("ws:7")
    gw.forget_publish_rate("ws:unknown")


def test_connection_limit_counts_every_streaming_transport():
    """--max-connections 3 counts WebSockets, SSE streams and held polls together."""
    gw = gateway(max_connections=3)
    conns = [("websocket", object()), ("sse", object()), ("poll", object())]
    for transport, conn in conns[:2]:
        gw.check_connection_limit()
        gw.connection_opened(transport, conn)
    gw.check_connection_limit()
    gw.connection_opened(*conns[2])
    with pytest.raises(Unavailable) as e:
        gw.check_connection_limit()
    assert (e.value.code, e.value.http_status, e.value.message) == ("unavailable", 503, "too many connections")
    gw.connection_closed(*conns[1])
    gw.check_connection_limit()


def test_metrics_show_limits_and_refusals():
    """/metrics: refusals by transport and reason, and both limits as gauges."""
    gw = gateway(publish_rate=1, max_connections=1)
    gw.check_publish_rate("ws:1")
    gw.check_publish_rate("addr:x")
    for key in ("ws:1", "ws:1", "addr:x"):
        with pytest.raises(RateLimited):
            gw.check_publish_rate(key)
    gw.connection_opened("sse", object())
    for _ in range(2):
        with pytest.raises(Unavailable):
            gw.check_connection_limit()
    text = metrics(gw)
    assert 'gateway_publish_rate_limited_total{transport="websocket"} 2.0' in text
    assert 'gateway_publish_rate_limited_total{transport="publish"} 1.0' in text
    assert 'gateway_connections_refused_total{reason="max_connections"} 2.0' in text
    assert "gateway_max_connections 1.0" in text
    assert "gateway_publish_rate 1.0" in text


def test_metrics_without_limits():
    """Unlimited shows as +Inf; the counters are there at zero."""
    text = metrics(gateway())
    assert "gateway_max_connections +Inf" in text
    assert "gateway_publish_rate +Inf" in text
    assert 'gateway_publish_rate_limited_total{transport="websocket"} 0.0' in text
    assert 'gateway_connections_refused_total{reason="max_connections"} 0.0' in text


def test_websocket_factory_without_the_endpoint_refuses_beyond_max_connections():
    """onConnect itself refuses with 503 (a factory mounted without WebSocketEndpoint)."""
    from autobahn.websocket.types import ConnectionDeny, ConnectionRequest

    from gateway.transports.websocket import GatewayWebSocketFactory

    gw = gateway(max_connections=1)
    proto = GatewayWebSocketFactory(gw).buildProtocol(None)
    request = ConnectionRequest("tcp4:127.0.0.1:1", {}, "127.0.0.1", "/ws", {}, 13, "", [], [])
    assert proto.onConnect(request) is None
    gw.connection_opened("websocket", object())
    with pytest.raises(ConnectionDeny) as e:
        proto.onConnect(request)
    assert (e.value.code, e.value.reason) == (503, "too many connections")
