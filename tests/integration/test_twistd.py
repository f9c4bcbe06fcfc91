"""The real `twistd -n gateway` as a subprocess: it serves, and SIGTERM drains and stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import websockets.sync.client

from tests.e2e.support import client_ssl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited early with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(base + "/readyz", timeout=1, verify=client_ssl()).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("twistd did not become ready")


def twistd(*args: str) -> subprocess.Popen:
    twistd_bin = os.path.join(os.path.dirname(sys.executable), "twistd")
    return subprocess.Popen(
        [twistd_bin, "-n", "--pidfile=", "gateway", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_twistd_gateway_serves_and_stops_on_sigterm(tmp_path):
    """twistd -n gateway listens where told, delivers a publication, logs its address and bus, and exits on SIGTERM."""
    port = free_port()
    proc = twistd("--listen", f"tcp:{port}:interface=127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"type": "subscribe", "channel": "t", "id": 1}))
            assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
            r = httpx.post(base + "/publish", json={"channel": "t", "data": "hello"}, timeout=5)
            assert r.status_code == 200
            msg = json.loads(ws.recv(timeout=5))
            assert (msg["type"], msg["seq"], msg["data"]) == ("message", 1, "hello")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert f"gateway listening on IPv4Address(type='TCP', host='127.0.0.1', port={port})" in out
    assert "using the memory bus" in out


def test_twistd_config_file_and_command_line_precedence(tmp_path):
    """Options come from --config TOML; the command line wins over the file."""
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('listen = ["tcp:1:interface=127.0.0.1"]\nmax-message-size = 300\nnode-id = "from-file"\n')
    proc = twistd("--config", str(cfg), "--listen", f"tcp:{port}:interface=127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        assert httpx.get(base + "/healthz", timeout=5).json()["node"] == "from-file"
        r = httpx.post(base + "/publish", json={"channel": "c", "data": "x" * 400}, timeout=5)
        assert r.status_code == 413
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_twistd_rejects_bad_options_with_a_clear_message():
    """A bad option value makes twistd exit non-zero naming the option."""
    proc = twistd("--history-size", "zero")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "history-size" in out


def test_twistd_lists_the_plugin_and_its_options():
    """`twistd --help` lists gateway; `twistd -n gateway --help` prints the options of docs/protocol.md section 10."""
    twistd_bin = os.path.join(os.path.dirname(sys.executable), "twistd")
    listing = subprocess.run([twistd_bin, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert any(line.split()[:1] == ["gateway"] for line in listing.splitlines())
    usage_text = subprocess.run([twistd_bin, "-n", "gateway", "--help"], capture_output=True, text=True, timeout=60).stdout
    for option in (
        "--listen",
        "--redis",
        "--config",
        "--jwt-secret",
        "--jwt-public-key",
        "--api-key",
        "--allowed-origin",
        "--history-size",
        "--history-ttl",
        "--heartbeat",
        "--max-message-size",
        "--node-id",
        "--drain-timeout",
    ):
        assert option + "=" in usage_text, option


def test_twistd_listens_on_every_listen_endpoint():
    """--listen may be repeated: the node serves on each endpoint, one log line per address."""
    ports = [free_port(), free_port()]
    proc = twistd(*[arg for p in ports for arg in ("--listen", f"tcp:{p}:interface=127.0.0.1")])
    try:
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    for port in ports:
        assert f"port={port})" in out
