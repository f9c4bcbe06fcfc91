"""Brokers: where publications are ordered, stored and fanned out between nodes.

:func:`broker_from_config` picks the implementation: in-process (the default) or
Redis when ``--redis redis://...`` is given.
"""

from __future__ import annotations

from typing import Any

from gateway.broker.memory import InMemoryBroker
from gateway.config import Config, ConfigError
from gateway.interfaces import IBroker

__all__ = ["InMemoryBroker", "broker_from_config"]


def broker_from_config(config: Config, reactor: Any) -> IBroker:
    """The broker ``config`` asks for."""
    if config.redis is None:
        return InMemoryBroker(config.history_size, config.history_ttl, clock=reactor)
    from gateway.broker.redisurl import parse_redis_url

    url = parse_redis_url(config.redis)  # ConfigError naming what is wrong
    try:
        from gateway.broker.redis import RedisBroker
    except ImportError:
        raise ConfigError("redis: the Redis broker is not available in this build") from None
    if url.scheme == "redis+cluster":
        from gateway.broker.cluster import ClusterBroker

        return ClusterBroker.from_config(config, reactor)
    return RedisBroker.from_config(config, reactor)  # type: ignore[no-any-return]
