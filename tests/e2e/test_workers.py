"""`twistd -n gateway --workers 2 --redis URL` as a real process with a real redis-server:
the workers share the port and the channels, a killed worker is restarted and its
clients resume, SIGTERM drains every worker and leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from tests.e2e.support import TIMEOUT_FACTOR, client_ssl, free_port

pytestmark = pytest.mark.redis

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
NODES = ("wk-1", "wk-2")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Supervised:
    """``twistd -n gateway --workers N`` on a free port; log in a file."""

    def __init__(self, tmp_path: Path, redis_url: str, workers: int = 2, drain_timeout: float = 3.0) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.drain_timeout = drain_timeout
        self.log_path = tmp_path / "twistd.log"
        self.pids_seen: set[int] = set()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    TWISTD, "-n", "--pidfile=", "gateway",
                    "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                    "--redis", redis_url, "--workers", str(workers), "--node-id", "wk",
                    "--drain-timeout", str(drain_timeout),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.clients: list[httpx.Client] = []

    def log(self) -> str:
        return self.log_path.read_text()

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker, from the supervisor's log."""
        pids = {int(i): int(p) for i, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log())}
        self.pids_seen.update(pids.values())
        return pids

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while len(re.findall(pattern, self.log())) < count:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {pattern!r} x{count} in:\n{self.log()}"
            time.sleep(0.02)

    def client_on(self, node: str, timeout: float = 20.0) -> httpx.Client:
        """A keep-alive HTTP client whose connection was accepted by worker ``node`` (and is ready)."""
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while True:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no connection landed on {node}:\n{self.log()}"
            client = httpx.Client(base_url=self.base, timeout=10 * TIMEOUT_FACTOR, verify=client_ssl())
            try:
                if client.get("/readyz").json().get("node") == node:
                    self.clients.append(client)
                    return client
            except (httpx.HTTPError, ValueError):
                time.sleep(0.05)
            client.close()

    def connections(self, client: httpx.Client, transport: str) -> float:
        text = client.get("/metrics").text
        return float(re.search(rf'^gateway_connections{{transport="{transport}"}} (\S+)$', text, re.MULTILINE).group(1))

    def wait_connections(self, client: httpx.Client, transport: str, at_least: int) -> None:
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while self.connections(client, transport) < at_least:
            assert time.monotonic() < deadline, f"{transport} connections never reached {at_least}"
            time.sleep(0.02)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.worker_pids()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids_seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path: Path, redis_server: Any) -> Any:
    started: list[Supervised] = []

    def make(**kwargs: Any) -> Supervised:
        s = Supervised(tmp_path, redis_server.url, **kwargs)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


class SSE:
    """An SSE stream read on a thread: events as dicts, with the id that followed each."""

    def __init__(self, client: httpx.Client, channel: str, since: str | None = None) -> None:
        params = {"channel": channel, **({"since": since} if since else {})}
        self._cm = client.stream("GET", "/sse", params=params, timeout=httpx.Timeout(10 * TIMEOUT_FACTOR, read=None))
        self.response = self._cm.__enter__()
        assert 200 == self.response.status_code
        self.events: list[dict] = []
        self.last_id: str | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event_id = None
        try:
            for line in self.response.iter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    self.last_id = event_id
                    self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def datas(self) -> list[Any]:
        return [e["data"] for e in self.events if e["type"] == "message"]

    def wait(self, count: int) -> list[Any]:
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while len(self.datas()) < count:
            assert time.monotonic() < deadline, f"got {self.events}"
            time.sleep(0.01)
        return self.datas()

    def close(self) -> None:
        # Shut the socket down so the reading thread's blocked recv returns at once
        # (closing it from this thread would not wake that one).
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.response.close()


def connect_ws(stack: contextlib.ExitStack, port: int) -> Any:
    return stack.enter_context(websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10 * TIMEOUT_FACTOR))


def publish(base: str, channel: str, data: Any) -> dict:
    r = httpx.post(base + "/publish", json={"channel": channel, "data": data}, timeout=10 * TIMEOUT_FACTOR)
    assert 200 == r.status_code, r.text
    return r.json()


def test_workers_share_the_port_and_the_channels(supervised):
    """Connections to the one port land on both workers (told apart by node id), and a
    publication accepted by one worker reaches a live subscriber on the other, both ways."""
    gw = supervised()
    clients = {node: gw.client_on(node) for node in NODES}
    assert {"wk-1", "wk-2"} == {c.get("/healthz").json()["node"] for c in clients.values()}
    for subscriber, publisher in (("wk-1", "wk-2"), ("wk-2", "wk-1")):
        channel = f"room:{subscriber}"
        stream = SSE(clients[subscriber], channel)  # headers come once it is subscribed
        try:
            r = clients[publisher].post("/publish", json={"channel": channel, "data": f"from {publisher}"})
            assert 200 == r.status_code
            assert [f"from {publisher}"] == stream.wait(1)
        finally:
            stream.close()
        clients[subscriber] = gw.client_on(subscriber)
    assert sorted(gw.worker_pids()) == [1, 2]


def test_a_killed_worker_is_restarted_and_its_clients_resume(supervised):
    """kill -9 of a worker: the supervisor logs its exit status and starts it again; an
    SSE client of the dead worker resumes from its last id on whichever worker takes
    the new connection, and WebSocket clients, wherever they were, end up with every
    message once, in order."""
    gw = supervised()
    on_1 = gw.client_on("wk-1")
    on_2 = gw.client_on("wk-2")
    victim = gw.worker_pids()[1]
    doomed, survivor = SSE(on_1, "x"), SSE(on_2, "x")
    stack = contextlib.ExitStack()
    sockets = []
    for _ in range(4):
        ws = connect_ws(stack, gw.port)
        ws.send(json.dumps({"type": "subscribe", "channel": "x", "id": 1}))
        reply = json.loads(ws.recv(10 * TIMEOUT_FACTOR))
        assert "subscribed" == reply["type"]
        sockets.append([ws, {"epoch": reply["epoch"], "seq": reply["seq"]}, []])
    try:
        publish(gw.base, "x", "m1")
        assert ["m1"] == doomed.wait(1) == survivor.wait(1)

        os.kill(victim, signal.SIGKILL)
        assert doomed.ended.wait(10 * TIMEOUT_FACTOR)
        gw.wait_log(r"worker 1 exited unexpectedly \(killed by SIGKILL\); restarting it in 0.5 s")
        publish(gw.base, "x", "m2")
        assert ["m1", "m2"] == survivor.wait(2)

        gw.wait_log(r"worker 1 \(pid \d+\) is up", count=2)
        assert gw.worker_pids()[1] != victim
        assert not alive(victim)
        resumed = SSE(gw.client_on("wk-1"), "x", since=doomed.last_id)
        assert ["m2"] == resumed.wait(1)
        publish(gw.base, "x", "m3")
        assert ["m2", "m3"] == resumed.wait(2)
        assert ["m1", "m2", "m3"] == survivor.wait(3)
        resumed.close()

        for entry in sockets:
            ws, position, got = entry
            while len(got) < 3:
                try:
                    event = json.loads(ws.recv(10 * TIMEOUT_FACTOR))
                except ConnectionClosed:
                    # Its worker was killed: reconnect (any worker) and resume.
                    ws = entry[0] = connect_ws(stack, gw.port)
                    ws.send(json.dumps({"type": "subscribe", "channel": "x", "id": 2, "since": position}))
                    continue
                if event["type"] == "message":
                    assert event["seq"] == position["seq"] + 1, (event, position)
                    position.update(epoch=event["epoch"], seq=event["seq"])
                    got.append(event["data"])
                else:
                    assert event["type"] == "subscribed" and event.get("recovered"), event
            assert ["m1", "m2", "m3"] == got
    finally:
        stack.close()
        doomed.close()
        survivor.close()
    assert 2 == len(re.findall(r"worker 1 started", gw.log()))
    assert 1 == len(re.findall(r"worker 2 started", gw.log()))


def test_sigterm_drains_every_worker_and_exits_0(supervised):
    """SIGTERM to the supervisor: WebSockets on both workers close with 1001, held polls
    on both are answered, SSE streams end; the supervisor exits 0 within the drain
    timeout and no worker process is left."""
    gw = supervised(drain_timeout=3.0)
    watchers = {node: gw.client_on(node) for node in NODES}
    pollers = {node: gw.client_on(node) for node in NODES}
    streams = [SSE(gw.client_on(node), "d") for node in NODES]
    stack = contextlib.ExitStack()
    sockets = []
    deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
    while not all(gw.connections(w, "websocket") >= 1 for w in watchers.values()):
        assert time.monotonic() < deadline, "WebSockets never landed on both workers"
        sockets.append(connect_ws(stack, gw.port))
    answers: dict[str, Any] = {}

    def poll(node: str) -> None:
        answers[node] = pollers[node].get("/poll", params={"channel": "d", "timeout": 30}, timeout=60)

    threads = [threading.Thread(target=poll, args=(node,)) for node in NODES]
    for t in threads:
        t.start()
    for node in NODES:
        gw.wait_connections(watchers[node], "poll", 1)
    pids = gw.worker_pids()
    try:
        gw.proc.send_signal(signal.SIGTERM)
        assert 0 == gw.proc.wait(gw.drain_timeout + 5 * TIMEOUT_FACTOR), gw.log()
        for t in threads:
            t.join(10)
        for node in NODES:
            assert 200 == answers[node].status_code
            assert [] == answers[node].json()["messages"]
        for ws in sockets:
            with pytest.raises(ConnectionClosed):
                ws.recv(10 * TIMEOUT_FACTOR)
            assert 1001 == ws.close_code
        for stream in streams:
            assert stream.ended.wait(10 * TIMEOUT_FACTOR)
    finally:
        stack.close()
        for stream in streams:
            stream.close()
    assert sorted(pids) == [1, 2]
    assert not [pid for pid in pids.values() if alive(pid)]
    assert "every worker has exited" in gw.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(gw.base + "/healthz", timeout=2)


def test_workers_die_with_a_killed_supervisor(supervised):
    """kill -9 of the supervisor itself: the kernel tells each worker (SIGTERM), which
    drains and exits; nothing is left running."""
    gw = supervised(drain_timeout=1.0)
    for node in NODES:
        gw.client_on(node)
    pids = gw.worker_pids()
    gw.proc.kill()
    gw.proc.wait(10)
    deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
    while any(alive(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids.values() if alive(p)]}"
        time.sleep(0.05)


def test_sigint_drains_like_sigterm(supervised):
    """Ctrl-C (SIGINT to the supervisor) drains the workers too, and the exit status is 0."""
    gw = supervised(drain_timeout=1.0)
    for node in NODES:
        gw.client_on(node)
    pids = gw.worker_pids()
    gw.proc.send_signal(signal.SIGINT)
    assert 0 == gw.proc.wait(gw.drain_timeout + 5 * TIMEOUT_FACTOR), gw.log()
    assert "SIGINT: draining the workers" in gw.log()
    assert not [pid for pid in pids.values() if alive(pid)]


def test_a_worker_that_does_not_drain_is_killed_and_the_status_is_1(supervised):
    """A worker that cannot drain (stopped with SIGSTOP) is killed drain timeout + 5 s after
    the SIGTERM; the other drains normally; the supervisor exits 1 and nothing is left."""
    gw = supervised(drain_timeout=1.0)
    for node in NODES:
        gw.client_on(node)
    pids = gw.worker_pids()
    os.kill(pids[2], signal.SIGSTOP)
    try:
        gw.proc.send_signal(signal.SIGTERM)
        assert 1 == gw.proc.wait(gw.drain_timeout + 15 * TIMEOUT_FACTOR), gw.log()
    finally:
        if alive(pids[2]):
            os.kill(pids[2], signal.SIGCONT)
    assert "worker 2 did not exit within 6 s of the drain; killing it" in gw.log()
    assert not [pid for pid in pids.values() if alive(pid)]
