"""The ``/metrics`` families of the limits (docs/protocol.md section 8): publications
refused by ``--publish-rate``, connections refused by ``--max-connections``, and
both limits as gauges (``+Inf`` when unlimited).

:class:`LimitStats` holds the counters (the :class:`~gateway.app.Gateway` bumps them
as ``gateway.limit_stats``); :func:`limit_metrics` is called from the collector in
:mod:`gateway.metrics` at scrape time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["RATE_LIMITED_TRANSPORTS", "LimitStats", "limit_metrics"]

# Where a publication can be refused for its rate: a WebSocket publish command, or
# POST /publish (the name the --auth-url request gives that transport).
RATE_LIMITED_TRANSPORTS = ("websocket", "publish")


class LimitStats:
    """Counters of refusals by the limits.

    Attributes:
        rate_limited: publications refused by ``--publish-rate``, by transport.
        connections_refused: connections refused, by reason (``max_connections``).
    """

    def __init__(self) -> None:
        self.rate_limited: Counter[str] = Counter()
        self.connections_refused: Counter[str] = Counter()


def limit_metrics(gateway: Gateway) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The limits' metric families for ``gateway``."""
    stats = gateway.limit_stats
    limited = CounterMetricFamily(
        "gateway_publish_rate_limited", "Publications refused by --publish-rate.", labels=["transport"]
    )
    for transport in RATE_LIMITED_TRANSPORTS:
        limited.add_metric([transport], stats.rate_limited[transport])
    yield limited
    refused = CounterMetricFamily("gateway_connections_refused", "Connections refused by a limit.", labels=["reason"])
    refused.add_metric(["max_connections"], stats.connections_refused["max_connections"])
    yield refused
    config = gateway.config
    yield GaugeMetricFamily(
        "gateway_max_connections",
        "--max-connections: open WebSockets, SSE streams and held polls allowed on this node (+Inf: unlimited).",
        value=math.inf if config.max_connections is None else config.max_connections,
    )
    yield GaugeMetricFamily(
        "gateway_publish_rate",
        "--publish-rate: publications per second per bucket (+Inf: unlimited).",
        value=math.inf if config.publish_rate is None else config.publish_rate,
    )
