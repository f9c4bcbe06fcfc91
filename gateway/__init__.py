"""gateway: a real-time messaging gateway on Twisted.

Public API::

    from gateway import Config, GatewayService, GatewayResource, Gateway, Bus

``GatewayService`` runs a node inside any Twisted application, ``GatewayResource``
mounts its endpoints under any path of a twisted.web Site, and ``Gateway.bus``
(a :class:`Bus`) publishes and subscribes from Python.

Names are imported on first use, so that ``import gateway.core`` stays free of the
reactor, twisted.web and Autobahn.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Bus": "gateway.bus",
    "Config": "gateway.config",
    "ConfigError": "gateway.config",
    "Gateway": "gateway.app",
    "GatewayResource": "gateway.resource",
    "GatewayService": "gateway.service",
    "Position": "gateway.core.model",
    "Publication": "gateway.core.model",
    "SubscribeResult": "gateway.bus",
    "Subscription": "gateway.bus",
    "errors": "gateway.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"gateway.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
