"""The README's "Several nodes with Redis" commands, run as typed in a fresh folder.

Only the port numbers are swapped for free ones (6390, 8081, 8082 and 8083 may be
taken on a test machine); everything else is the README's text, run by bash from a
folder whose ``.venv`` is this test run's virtualenv, as after the README's install.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import TIMEOUT_FACTOR, client_ssl, free_port

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
README_PORTS = ("6390", "8081", "8082", "8083")


def cluster_blocks() -> dict[str, str]:
    """The section's shell blocks: start, check, stop and foreground."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Several nodes with Redis\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    named = {
        "start": next(b for b in blocks if "redis-server" in b),
        "check": next(b for b in blocks if "/poll" in b),
        "stop": next(b for b in blocks if "shutdown" in b),
        "foreground": next(b for b in blocks if " -n " in b),
    }
    for port in README_PORTS:
        assert any(port in b for b in named.values()), f"the README no longer uses port {port}: update this test"
    return named


def bash(script: str, cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout * TIMEOUT_FACTOR, check=False
    )


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=1, verify=client_ssl()).status_code
            if last == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready (last: {last!r})")


def test_readme_cluster_commands_run_as_typed(tmp_path):
    """From a folder with only the README's .venv: the start block brings up a throwaway
    Redis and two background nodes (own pid and log files), which share channels; a third
    node in the foreground with --pidfile= starts beside them from the same folder; the
    stop block stops the background nodes and Redis."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    ports = {p: str(free_port()) for p in README_PORTS}

    def local(script: str) -> str:
        for readme_port, port in ports.items():
            script = script.replace(readme_port, port)
        return script

    blocks = {name: local(block) for name, block in cluster_blocks().items()}
    redis_port, node1, node2, node3 = (ports[p] for p in README_PORTS)
    foreground = None
    try:
        started = bash(blocks["start"], tmp_path)
        assert started.returncode == 0, started.stderr
        assert {"node1.pid", "node2.pid", "node1.log", "node2.log"} <= {p.name for p in tmp_path.iterdir()}
        for port in (node1, node2):
            wait_ready(f"http://127.0.0.1:{port}/readyz")

        # What the README's check block shows, with httpx instead of curl: a poll held on
        # node 2 is answered by a publication made on node 1.
        first = httpx.get(f"http://127.0.0.1:{node2}/poll?channel=room:1&timeout=0", timeout=5).json()
        published = httpx.post(f"http://127.0.0.1:{node1}/publish", json={"channel": "room:1", "data": "via node 1"}, timeout=5)
        assert published.status_code == 200
        answer = httpx.get(f"http://127.0.0.1:{node2}/poll?channel=room:1&timeout=10&cursor={first['cursor']}", timeout=15).json()
        assert [m["data"] for m in answer["messages"]] == ["via node 1"]

        foreground = subprocess.Popen(
            ["bash", "-c", "exec " + blocks["foreground"]], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wait_ready(f"http://127.0.0.1:{node3}/readyz")
        assert not (tmp_path / "twistd.pid").exists()
        foreground.send_signal(signal.SIGTERM)
        assert foreground.wait(20 * TIMEOUT_FACTOR) in (0, -signal.SIGTERM), foreground.stdout.read() if foreground.stdout else ""

        stopped = bash(blocks["stop"], tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        while (tmp_path / "node1.pid").exists() or (tmp_path / "node2.pid").exists():
            assert time.monotonic() < deadline, "the nodes did not stop"
            time.sleep(0.05)
    finally:
        if foreground is not None and foreground.poll() is None:
            foreground.kill()
            foreground.wait(10)
        for name in ("node1.pid", "node2.pid"):
            try:
                os.kill(int((tmp_path / name).read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        subprocess.run(["redis-cli", "-p", redis_port, "shutdown", "nosave"], capture_output=True, timeout=10, check=False)
