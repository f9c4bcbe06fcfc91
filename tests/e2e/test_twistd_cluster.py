"""Two real `twistd -n gateway --redis ...` processes sharing one redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import websockets.sync.client

from tests.e2e.support import TIMEOUT_FACTOR, client_ssl, free_port

pytestmark = pytest.mark.redis


def twistd(port: int, redis_url: str, node_id: str) -> subprocess.Popen:
    twistd_bin = os.path.join(os.path.dirname(sys.executable), "twistd")
    return subprocess.Popen(
        [twistd_bin, "-n", "--pidfile=", "gateway", "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_url, "--node-id", node_id, "--drain-timeout", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_status(url: str, status: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited early with {proc.returncode}: {proc.stdout.read()}")
        try:
            last = httpx.get(url, timeout=1, verify=client_ssl()).status_code
            if last == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} (last: {last})")


def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout * TIMEOUT_FACTOR))


def test_two_twistd_nodes_share_redis(redis_server):
    """A node started before Redis is live but not ready; once Redis is up, a publication on one
    node reaches a WebSocket subscriber on the other; a Redis outage makes both unready and
    refuses publishes with 503 while the WebSocket stays open; after it the subscriber gets a
    reset to the new epoch and live messages again; SIGTERM stops both."""
    redis_server.kill()
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    procs = [twistd(ports[0], redis_server.url, "n1")]
    try:
        wait_status(bases[0] + "/healthz", 200, procs[0])
        assert 503 == httpx.get(bases[0] + "/readyz", timeout=2).status_code
        redis_server.start()
        procs.append(twistd(ports[1], redis_server.url, "n2"))
        for base, proc in zip(bases, procs):
            wait_status(base + "/readyz", 200, proc)
        health = httpx.get(bases[1] + "/healthz", timeout=2).json()
        assert redis_server.url == health["bus"]

        with websockets.sync.client.connect(f"ws://127.0.0.1:{ports[0]}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"type": "subscribe", "channel": "x", "id": 1}))
            subscribed = recv_json(ws)
            assert ("subscribed", 0) == (subscribed["type"], subscribed["seq"])
            r = httpx.post(bases[1] + "/publish", json={"channel": "x", "data": "across"}, timeout=5)
            assert 200 == r.status_code
            message = recv_json(ws)
            assert ("message", 1, "across", subscribed["epoch"]) == (message["type"], message["seq"], message["data"], message["epoch"])

            redis_server.kill()
            for base, proc in zip(bases, procs):
                wait_status(base + "/readyz", 503, proc, timeout=5)
            refused = httpx.post(bases[1] + "/publish", json={"channel": "x", "data": "lost"}, timeout=5)
            assert 503 == refused.status_code
            assert "unavailable" == refused.json()["error"]["code"]
            ws.send(json.dumps({"type": "publish", "channel": "x", "data": "lost too", "id": 2}))
            error = recv_json(ws)
            assert ("error", "unavailable") == (error["type"], error["code"])

            redis_server.start()
            for base, proc in zip(bases, procs):
                wait_status(base + "/readyz", 200, proc, timeout=10)
            r = httpx.post(bases[1] + "/publish", json={"channel": "x", "data": "back"}, timeout=5)
            assert 200 == r.status_code
            new_epoch = r.json()["epoch"]
            assert new_epoch != subscribed["epoch"]
            assert {"type": "reset", "channel": "x", "epoch": new_epoch, "seq": 0} == recv_json(ws)
            message = recv_json(ws)
            assert ("message", 1, "back", new_epoch) == (message["type"], message["seq"], message["data"], message["epoch"])

        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=15)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, output in zip(procs, outputs):
        assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), output
        assert f"using the {redis_server.url} bus" in output
    assert "is back after" in outputs[0]
