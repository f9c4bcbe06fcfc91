"""Prometheus metrics, read at scrape time from plain counters (no cost per delivery)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from gateway.core.auth import Identity
from gateway.errors import Forbidden
from gateway.metrics_limits import limit_metrics
from gateway.presence import presence_metrics
from gateway.transports._auth import (
    api_keys_configured,
    as_gateway_error,
    authenticate_request,
)
from gateway.transports._http import JSONResource, is_gone, send_error

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["Stats", "MetricsResource", "TRANSPORTS"]

TRANSPORTS = ("websocket", "sse", "poll")


class Stats:
    """Plain counters the gateway bumps on its hot paths."""

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        # Deliveries counted by transport name (Gateway.delivered).
        self.counted: Counter[str] = Counter()
        # (transport, object with an int ``delivered``) counted where the writes happen.
        self._delivery_sources: list[tuple[str, Any]] = []
        self.publications = 0

    def add_delivery_source(self, transport: str, source: Any) -> None:
        """Count ``source.delivered`` (an int the source keeps adding to) under ``transport``."""
        self._delivery_sources.append((transport, source))

    @property
    def deliveries(self) -> Counter[str]:
        """Events delivered so far, by transport (a snapshot)."""
        counts = Counter(self.counted)
        for transport, source in self._delivery_sources:
            counts[transport] += source.delivered
        return counts


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        stats = self.gateway.stats
        conns = GaugeMetricFamily("gateway_connections", "Open client connections.", labels=["transport"])
        for t in TRANSPORTS:
            conns.add_metric([t], stats.connections[t])
        yield conns
        yield CounterMetricFamily("gateway_publications", "Publications accepted by this node.", value=stats.publications)
        yield CounterMetricFamily(
            "gateway_publications_deduplicated",
            "Publishes answered with an earlier publication of their idempotency key (nothing published).",
            value=self.gateway.bus.deduplicated,
        )
        deliveries = CounterMetricFamily("gateway_deliveries", "Events delivered to clients.", labels=["transport"])
        delivered = stats.deliveries
        for t in TRANSPORTS:
            deliveries.add_metric([t], delivered[t])
        yield deliveries
        yield GaugeMetricFamily("gateway_broker_up", "1 while the message bus can take publications on every channel (0 while any Redis shard is down: gateway_redis_shard_up says which).", value=1 if self.gateway.bus.is_ready() else 0)
        yield GaugeMetricFamily("gateway_channels", "Channels with local subscribers.", value=len(self.gateway.bus.channels))
        yield GaugeMetricFamily("gateway_subscriptions", "Local subscriptions.", value=self.gateway.bus.subscriber_count())
        yield from _shard_metrics(self.gateway)
        yield from limit_metrics(self.gateway)
        yield from presence_metrics(self.gateway)


def _shard_metrics(gateway: Gateway) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
    """Per Redis shard (gateway.broker.shards): nothing for the in-memory broker."""
    shards = getattr(gateway.bus.broker, "shards", None)
    if shards is None:
        return
    stats = shards()
    up = GaugeMetricFamily("gateway_redis_shard_up", "1 while this node can run commands on the Redis shard.", labels=["shard"])
    latency = HistogramMetricFamily("gateway_redis_command_seconds", "Redis command and script round trips, per shard.", labels=["shard"])
    reconnects = CounterMetricFamily(
        "gateway_redis_pubsub_reconnects", "Times the pub/sub connection to the shard was re-established and resubscribed.", labels=["shard"]
    )
    for shard in stats:
        up.add_metric([shard.name], 1 if shard.up else 0)
        latency.add_metric([shard.name], shard.buckets(), shard.total)
        reconnects.add_metric([shard.name], shard.pubsub_reconnects)
    yield up
    yield latency
    yield reconnects


def make_registry(gateway: Gateway) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(gateway))
    return registry


class MetricsResource(JSONResource):
    """``GET /metrics``: Prometheus text exposition.

    When the node has any API key configured, a scrape must present one
    (docs/protocol.md section 8): no or invalid credentials are a JSON 401, any other
    identity (a user's token) a 403.  Without API keys it is open, as on a private
    network.

    Args:
        registry: what to expose.
        gateway: the node whose authentication guards it; None for no guard.
    """

    def __init__(self, registry: CollectorRegistry, gateway: Gateway | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.gateway = gateway

    def render_GET(self, request: Request) -> bytes | int:
        gateway = self.gateway
        if gateway is None or not api_keys_configured(gateway):
            return self._exposition(request)
        d = authenticate_request(gateway, request, "metrics")
        d.addCallback(self._authorised, request)
        d.addErrback(self._refused, request)
        return NOT_DONE_YET

    def _exposition(self, request: Request) -> bytes:
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return body

    def _authorised(self, identity: Identity, request: Request) -> None:
        if identity.kind != "api-key":
            raise Forbidden("/metrics needs an API key")
        if is_gone(request):
            return
        body = self._exposition(request)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    def _refused(self, failure: Failure, request: Request) -> None:
        if not is_gone(request):
            request.write(send_error(request, as_gateway_error(failure)))
            request.finish()
