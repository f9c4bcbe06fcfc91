"""Helpers for tests that need a real ``redis-server``: started on a free port in a
temporary directory with no persistence (never the machine's own Redis on 6379),
killable with SIGKILL and restartable on the same port."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import websockets

from gateway.testing import sleep

__all__ = ["TIMEOUT_FACTOR", "RedisCluster", "RedisServer", "SentinelSet", "Subscriber", "client_ssl", "free_port", "until", "wait_for", "ws_publish_many"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TIMEOUT_FACTOR = float(os.environ.get("GATEWAY_TESTS_TIMEOUT_FACTOR", "1"))


@functools.cache
def client_ssl() -> ssl.SSLContext:
    """httpx's default SSL context, built once.  Give it (``verify=client_ssl()``) to httpx
    clients made in loops or for every test: a client builds its own otherwise, some 40 ms
    of CPU each time, even for plain-HTTP requests."""
    return httpx.create_ssl_context()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on 127.0.0.1:``port``."""

    def __init__(self, directory: str, *extra: str) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.fail(f"redis-server not found at {REDIS_SERVER}: install it (apt-get install redis-server)")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = list(extra)  # more redis-server arguments (--replicaof ...)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on the same port; returns once it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory,
                "--daemonize", "no",
                "--loglevel", "warning",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the server: its connections stay open and nothing answers (a hung master)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """Send one command, return the first reply line (enough for PING, FLUSHALL, DBSIZE, ...)."""
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against the server (for multi-line replies)."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True, text=True, timeout=10
        )
        return out.stdout


def wait_replicas_in_sync(nodes: list[RedisServer], deadline: float) -> None:
    """Until every replica among ``nodes`` has finished its first sync."""
    while True:
        infos = [n.cli("INFO", "replication") for n in nodes]
        if all("role:master" in i or "master_link_status:up" in i for i in infos):
            return
        if time.monotonic() > deadline:
            raise AssertionError("a replica did not sync with its master")
        time.sleep(0.05)


class SentinelSet:
    """A master, one replica and three Sentinels (quorum 2, down after 1 s), each its own
    process on a free port, for failover tests.  The replica copies the master; the
    Sentinels promote it once the master has been unreachable for a second."""

    def __init__(self, directory: str, name: str = "mymaster") -> None:
        self.name = name
        self.directory = directory
        self.master = RedisServer(self._dir("master"), "--repl-diskless-sync-delay", "0")
        self.replica = RedisServer(self._dir("replica"), "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _dir(self, name: str) -> str:
        path = os.path.join(self.directory, name)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for i, port in enumerate(self.sentinel_ports):
            conf = os.path.join(self._dir(f"sentinel{i}"), "sentinel.conf")
            with open(conf, "w") as f:
                f.write(
                    f"port {port}\nbind 127.0.0.1\ndaemonize no\nloglevel warning\n"
                    f"dir {os.path.dirname(conf)}\n"
                    f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {self.name} 1000\n"
                    f"sentinel failover-timeout {self.name} 5000\n"
                    f"sentinel parallel-syncs {self.name} 1\n"
                )
            self.sentinels.append(
                subprocess.Popen([REDIS_SERVER, conf, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        # Ready for a failover once the replica is in sync and every Sentinel knows it
        # and the two others.
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        wait_replicas_in_sync([self.replica], deadline)
        while not all(self._sentinel_ready(p) for p in self.sentinel_ports):
            if time.monotonic() > deadline:
                raise AssertionError("the Sentinels did not discover the replica and each other")
            time.sleep(0.05)

    def sentinel(self, port: int, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout

    def _sentinel_ready(self, port: int) -> bool:
        lines = self.sentinel(port, "SENTINEL", "MASTER", self.name).split("\n")
        fields = dict(zip(lines[::2], lines[1::2]))
        return fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel names it."""
        lines = self.sentinel(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name).split()
        return int(lines[1]) if len(lines) == 2 else None

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.replica.kill()
        self.master.kill()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters (each with ``replicas`` replicas), every node its
    own ``redis-server --cluster-enabled yes`` on a free port, built with
    ``redis-cli --cluster create``; ready once every node reports ``cluster_state:ok``.
    ``extra``: more redis-server arguments for every node."""

    def __init__(self, directory: str, masters: int = 3, replicas: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.replicas = replicas
        self.nodes = []
        for i in range(masters * (1 + replicas)):
            path = os.path.join(directory, f"node{i}")
            os.makedirs(path, exist_ok=True)
            self.nodes.append(
                # The cluster bus port defaults to port + 10000, which may be past 65535.
                RedisServer(path, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "1000", "--cluster-port", str(free_port()),
                            # Replicas in sync at once (a never-synced replica is not promoted).
                            "--repl-diskless-sync-delay", "0", *extra)
            )

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60 * TIMEOUT_FACTOR,
        )
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes):
            if time.monotonic() > deadline:
                raise AssertionError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        wait_replicas_in_sync(self.nodes, deadline)

    def node_id(self, port: int) -> str:
        return next(n for n in self.nodes if n.port == port).cli("CLUSTER", "MYID").strip()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms on the reactor until it holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


# -- asyncio-side clients (run them with gateway.testing.aio) ---------------------


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """asyncio twin of :func:`wait_for`."""
    import asyncio

    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Subscriber:
    """A WebSocket client subscribed to one channel that records every event it gets.

    ``events`` holds the ``subscribed`` reply first, then ``message``/``reset`` events.
    """

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.events: list[dict] = []
        self.conn = None
        self._task = None
        self.close_code: int | None = None
        self.since: dict | None = None

    async def start(self, since: dict | None = None) -> dict:
        """Connect, subscribe (from ``since`` when given) and start recording; returns the reply."""
        import asyncio
        import json

        import websockets

        self.conn = await websockets.connect(self.url, open_timeout=5)
        command: dict = {"type": "subscribe", "channel": self.channel, "id": "sub"}
        self.since = since
        if since is not None:
            command["since"] = since
        await self.conn.send(json.dumps(command))
        reply = json.loads(await asyncio.wait_for(self.conn.recv(), 5))
        assert reply["type"] == "subscribed", reply
        self.events.append(reply)
        self._task = asyncio.ensure_future(self._read())
        return reply

    async def _read(self) -> None:
        import json

        import websockets

        try:
            async for raw in self.conn:
                self.events.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.close_code = self.conn.close_code

    @property
    def messages(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "message"]

    @property
    def position(self) -> dict:
        """The last position seen (from the subscribe reply, a reset or a message)."""
        last = [e for e in self.events if e["type"] in ("subscribed", "reset", "message")][-1]
        return {"epoch": last["epoch"], "seq": last["seq"]}

    def check_order(self) -> list[dict]:
        """Assert the events continue each other (each message is the next seq of its epoch,
        a reset moves the position) and return the messages."""
        position = None
        for e in self.events:
            if e["type"] == "subscribed":
                # Recovered: the missed messages follow, from the position it asked for.
                start = self.since if e.get("recovered") else e
                position = (start["epoch"], start["seq"])
            elif e["type"] == "reset":
                position = (e["epoch"], e["seq"])
            elif e["type"] == "message":
                assert position is not None
                assert (e["epoch"], e["seq"]) == (position[0], position[1] + 1), f"{e} does not follow {position}"
                position = (e["epoch"], e["seq"])
            else:
                raise AssertionError(f"unexpected event {e}")
        return self.messages

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self._task is not None:
            await self._task


async def ws_publish_many(url: str, channel: str, datas: list) -> list[dict]:
    """Send every publish on one WebSocket without waiting, then return the replies in order."""
    import asyncio
    import json

    import websockets

    async with websockets.connect(url, open_timeout=5) as conn:
        for i, data in enumerate(datas):
            await conn.send(json.dumps({"type": "publish", "channel": channel, "data": data, "id": i}))
        replies: dict = {}
        while len(replies) < len(datas):
            event = json.loads(await asyncio.wait_for(conn.recv(), 10))
            replies[event["id"]] = event
    return [replies[i] for i in range(len(datas))]


async def publish_until_stopped_http(
    base: str, channel: str, stop: asyncio.Event, outcomes: list[tuple], pause: float, prefix: str = "h"
) -> None:
    """Publish ``prefix0``, ``prefix1``, ... with ``POST /publish`` until ``stop`` is set,
    recording ``(data, "ok", epoch, seq)`` or ``(data, "unavailable", None, None)`` in
    ``outcomes``; any other answer fails the test."""
    async with httpx.AsyncClient(timeout=10) as client:
        k = 0
        while not stop.is_set():
            r = await client.post(base + "/publish", json={"channel": channel, "data": f"{prefix}{k}"})
            if r.status_code == 200:
                outcomes.append((f"{prefix}{k}", "ok", r.json()["epoch"], r.json()["seq"]))
            else:
                assert 503 == r.status_code, r.text
                assert "unavailable" == r.json()["error"]["code"]
                outcomes.append((f"{prefix}{k}", "unavailable", None, None))
            k += 1
            await asyncio.sleep(pause)


async def publish_until_stopped_ws(
    url: str, channel: str, stop: asyncio.Event, outcomes: list[tuple], pause: float, reply_timeout: float, prefix: str = "w"
) -> None:
    """The same over one WebSocket (``publish`` commands, each awaited): ack or
    ``unavailable`` recorded, anything else fails the test."""
    async with websockets.connect(url) as conn:
        k = 0
        while not stop.is_set():
            await conn.send(json.dumps({"type": "publish", "channel": channel, "data": f"{prefix}{k}", "id": k}))
            reply = json.loads(await asyncio.wait_for(conn.recv(), reply_timeout))
            if reply["type"] == "ack":
                outcomes.append((f"{prefix}{k}", "ok", reply["epoch"], reply["seq"]))
            else:
                assert ("error", "unavailable") == (reply["type"], reply["code"]), reply
                outcomes.append((f"{prefix}{k}", "unavailable", None, None))
            k += 1
            await asyncio.sleep(pause)


def running_cluster(tmp_path: object, replicas: int) -> Iterator[RedisCluster]:
    """A 3-master :class:`RedisCluster` with ``replicas`` per master and
    ``cluster-require-full-coverage no`` (as docs/protocol.md recommends: the healthy
    masters go on serving while one is down), stopped when the generator ends."""
    c = RedisCluster(str(tmp_path), masters=3, replicas=replicas, extra=("--cluster-require-full-coverage", "no"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
