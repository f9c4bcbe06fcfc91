"""Prometheus metrics, read at scrape time from plain counters (no cost per delivery)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.server import Request

from gateway.metrics_limits import limit_metrics
from gateway.transports._http import JSONResource

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["Stats", "MetricsResource", "TRANSPORTS"]

TRANSPORTS = ("websocket", "sse", "poll")


class Stats:
    """Plain counters the gateway bumps on its hot paths."""

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()
        self.publications = 0


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.gateway.stats
        conns = GaugeMetricFamily("gateway_connections", "Open client connections.", labels=["transport"])
        for t in TRANSPORTS:
            conns.add_metric([t], stats.connections[t])
        yield conns
        yield CounterMetricFamily("gateway_publications", "Publications accepted by this node.", value=stats.publications)
        deliveries = CounterMetricFamily("gateway_deliveries", "Events delivered to clients.", labels=["transport"])
        for t in TRANSPORTS:
            deliveries.add_metric([t], stats.deliveries[t])
        yield deliveries
        yield GaugeMetricFamily("gateway_broker_up", "1 while the message bus can take publications.", value=1 if self.gateway.bus.is_ready() else 0)
        yield GaugeMetricFamily("gateway_channels", "Channels with local subscribers.", value=len(self.gateway.bus.channels))
        yield GaugeMetricFamily("gateway_subscriptions", "Local subscriptions.", value=self.gateway.bus.subscriber_count())
        yield from limit_metrics(self.gateway)


def make_registry(gateway: Gateway) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(gateway))
    return registry


class MetricsResource(JSONResource):
    """``GET /metrics``: Prometheus text exposition."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return body
