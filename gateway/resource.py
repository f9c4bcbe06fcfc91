"""``GatewayResource``: every endpoint of docs/protocol.md section 2 as one twisted.web tree.

Mount it at the root of a Site or under any path of an existing one::

    root.putChild(b"realtime", GatewayResource(gateway))
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import Request

from gateway.app import Gateway
from gateway.metrics import MetricsResource, make_registry
from gateway.transports._http import JSONResource, NotFoundResource, send_json
from gateway.transports.disconnect import DisconnectResource
from gateway.transports.poll import PollResource
from gateway.transports.presence import PresenceResource
from gateway.transports.publish import PublishResource
from gateway.transports.sse import SSEResource
from gateway.transports.websocket import websocket_resource
from gateway.webclient import JAVASCRIPT, DemoResource, StaticFile

__all__ = ["GatewayResource", "HealthResource", "ReadyResource"]


class HealthResource(JSONResource):
    """``GET /healthz``: 200 while the reactor runs."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Request) -> bytes:
        return send_json(request, 200, {"status": "ok", "node": self.gateway.config.node_id, "bus": self.gateway.bus.broker.name})


class ReadyResource(JSONResource):
    """``GET /readyz``: 200 when this node can serve and publish, else 503."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Request) -> bytes:
        gw = self.gateway
        if gw.draining:
            return send_json(request, 503, {"status": "unavailable", "reason": "draining"})
        if not gw.bus.is_ready():
            body: dict[str, object] = {"status": "unavailable", "reason": "message bus not reachable"}
            shards = getattr(gw.bus.broker, "shards", None)
            if shards is not None:
                # Which Redis shards (by host:port, or Sentinel master name) are down.
                body["shards_down"] = [s.name for s in shards() if not s.up]
            return send_json(request, 503, body)
        return send_json(request, 200, {"status": "ready", "node": gw.config.node_id})


class GatewayResource(resource.Resource):
    """The gateway's resource tree: ``ws``, ``sse``, ``poll``, ``publish``, ``healthz``, ``readyz``,
    ``metrics``, ``disconnect``, ``gateway.js``, ``gateway.d.ts`` and, with ``--demo``, ``demo/``.

    Every method on every path gets a JSON answer (docs/protocol.md section 7): an
    endpoint's own, a ``405`` with ``Allow`` for a method it does not serve, or a
    ``404``.  These hold in any Site; the defences of the gateway's own Site (request
    deadline, bodies refused before they are read, ``Server: gateway``) are
    described in :func:`gateway.transports._http.make_site`.

    Args:
        gateway: the node these endpoints serve.
    """

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway
        self.registry = make_registry(gateway)
        self.putChild(b"ws", websocket_resource(gateway))
        self.putChild(b"sse", SSEResource(gateway))
        self.putChild(b"poll", PollResource(gateway))
        self.putChild(b"publish", PublishResource(gateway))
        self.putChild(b"healthz", HealthResource(gateway))
        self.putChild(b"readyz", ReadyResource(gateway))
        self.putChild(b"metrics", MetricsResource(self.registry, gateway))
        self.putChild(b"disconnect", DisconnectResource(gateway))
        self.putChild(b"presence", PresenceResource(gateway))
        self.putChild(b"gateway.js", StaticFile.named("gateway.js", JAVASCRIPT))
        self.putChild(b"gateway.d.ts", StaticFile.named("gateway.d.ts", b"application/typescript; charset=utf-8"))
        if gateway.config.demo:
            self.putChild(b"demo", DemoResource())
        self._not_found = NotFoundResource()

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return self._not_found

    def render(self, request: Request) -> bytes | int:
        # The bare root (``/realtime`` when mounted there) is no endpoint: a 404
        # like ``/`` and every unknown path, whatever the method.
        return self._not_found.render(request)
