"""End-to-end fixtures: a real ``redis-server`` per test, started on a free port in a
temporary directory (never the machine's own Redis), that tests can SIGKILL and
restart on the same port, and gateway nodes that share it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted

from gateway.config import Config
from gateway.testing import RunningGateway, sleep, start_gateway

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TIMEOUT_FACTOR = float(os.environ.get("GATEWAY_TESTS_TIMEOUT_FACTOR", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on 127.0.0.1:``port``."""

    def __init__(self, directory: str) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.fail(f"redis-server not found at {REDIS_SERVER}: install it (apt-get install redis-server)")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

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


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A running redis-server of this test's own; killed afterwards."""
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.kill()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms on the reactor until it holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


@pytest_twisted.async_yield_fixture
async def nodes(redis_server: RedisServer) -> Any:
    """Start gateway nodes sharing ``redis_server``: ``await nodes(3)`` -> list of ready nodes."""
    started: list[RunningGateway] = []

    async def make(count: int = 1, **overrides: Any) -> list[RunningGateway]:
        out = []
        url = overrides.pop("redis", redis_server.url)
        for _ in range(count):
            config = Config(redis=url, node_id=f"node{len(started)}", drain_timeout=2.0, **overrides)
            running = start_gateway(config)
            started.append(running)
            out.append(running)
        await wait_for(lambda: all(n.bus.is_ready() for n in out), what="nodes ready")
        return out

    yield make
    for running in started:
        await running.stop()
