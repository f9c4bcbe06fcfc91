"""Embedding: the gateway mounted under /realtime in someone else's twisted.web Site,
run by a MultiService, publishing and subscribing from Python; the README's example as
written; whenReady(); listen failures named."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.web import resource, server, static

from gateway import Config, GatewayService
from gateway.service import ListenError
from gateway.testing import RecordingSubscriber, WSClient, http
from tests.e2e.support import client_ssl

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_FACTOR = float(os.environ.get("GATEWAY_TESTS_TIMEOUT_FACTOR", "1"))


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


def readme_embedding_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding in a Twisted application", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


def test_readme_embedding_example_runs_as_written(tmp_path):
    """The README's embedding example, run with `twistd -ny app.tac` (only its port swapped for
    a free one): it serves under /realtime, publishes from Python once ready, and logs no
    unhandled error (it used to publish before the bus started: "Unhandled error in Deferred")."""
    code = readme_embedding_example()
    assert code.count("tcp:8000:") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "app.tac").write_text(code.replace("tcp:8000:", f"tcp:{port}:"))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "-y", "app.tac"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/realtime/healthz", timeout=1, verify=client_ssl()).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the example did not serve"
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/realtime/publish", json={"channel": "room:1", "data": 2}, timeout=5)
        assert (r.status_code, r.json()["seq"]) == (200, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15 * TIMEOUT_FACTOR)
    assert "published seq 1 on room:1" in out
    assert "Unhandled error" not in out and "Traceback" not in out, out


async def test_when_ready_then_publish_in_a_running_service():
    """whenReady() on a started in-process service fires; a publish made then succeeds."""
    svc = GatewayService(Config(listen=()))
    ready = svc.whenReady()
    svc.startService()
    try:
        assert await ready is None
        pub = await svc.bus.publish("r", 1)
        assert pub.seq == 1
    finally:
        await defer.ensureDeferred(svc.stopService())


def test_port_in_use_is_a_listen_error_and_nothing_stays_open():
    """A second endpoint that cannot listen raises ListenError naming it, and the first
    endpoint's port, already open, is closed again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = GatewayService(Config(listen=("tcp:0:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1")))
        with pytest.raises(ListenError) as info:
            svc.privilegedStartService()
    assert str(info.value) == f"listen tcp:{port}:interface=127.0.0.1: Address already in use"
    assert svc.ports == []
