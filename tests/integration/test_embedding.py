"""Embedding: the gateway mounted under /realtime in someone else's twisted.web Site,
run by a MultiService, publishing and subscribing from Python."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.web import resource, server, static

from gateway import Config, GatewayService
from gateway.testing import RecordingSubscriber, WSClient, http


async def test_gateway_mounted_under_realtime_in_a_foreign_site():
    """Under /realtime of an existing Site: WebSocket, HTTP publish and Python publish all work."""
    app = MultiService()
    svc = GatewayService(Config(listen=()))
    svc.setServiceParent(app)
    root = resource.Resource()
    root.putChild(b"", static.Data(b"the host application", "text/plain"))
    root.putChild(b"realtime", svc.resource)
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    app.startService()
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        home = await http("GET", base + "/")
        assert home.text == "the host application"
        ws = await WSClient.connect(base.replace("http", "ws") + "/realtime/ws")
        sub = await ws.request({"type": "subscribe", "channel": "embedded", "id": 1})
        r = await http("POST", base + "/realtime/publish", json={"channel": "embedded", "data": "from http"})
        assert r.status_code == 200
        assert (await ws.recv())["data"] == "from http"
        pub = await svc.bus.publish("embedded", {"from": "python"})
        assert (pub.seq, pub.epoch) == (2, sub["epoch"])
        assert (await ws.recv())["data"] == {"from": "python"}
        health = await http("GET", base + "/realtime/healthz")
        assert health.json()["status"] == "ok"
        await ws.close()
    finally:
        await app.stopService()
        await port.stopListening()


async def test_python_subscriber_receives_publications():
    """A Python object subscribed through the bus receives publications in seq order."""
    svc = GatewayService(Config(listen=()))
    svc.startService()
    try:
        rec = RecordingSubscriber()
        sub = svc.bus.subscribe("py", rec)
        result = await sub.ready
        for i in range(3):
            await svc.gateway.publish("py", i)
        assert rec.seqs == [1, 2, 3]
        assert result.top.seq == 0
        sub.cancel()
        assert svc.bus.subscriber_count() == 0
    finally:
        await defer.ensureDeferred(svc.stopService())
