"""Gateway memory per idle connection: RSS of a real ``twistd -n gateway`` before and
after opening N connections that each subscribe to one channel and then sit idle.

    python bench/memory.py                              # ws, sse and poll; 10,000 connections each
    python bench/memory.py --transport ws --connections 2000
    python bench/memory.py --gateway-src DIR            # another source tree (e.g. a git archive)

RSS is ``VmRSS`` from ``/proc/<pid>/status``, read after 100 warm-up connections
(opened and closed, so first-use allocations are not counted) and again once all N
are open and subscribed (``/metrics`` shows them).  The figure is (after - before) /
N.  Polls are held (``timeout=60``) on a channel nothing publishes to.  For where the
bytes go, run ``python bench/connobjects.py --transport sse --all`` (every object one
idle connection holds, by attribute path) or ``python bench/hotpath.py --tracemalloc``
(Python allocations by source line, in one process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fanout import start_gateway
from loadclient import WSConnection
from procs import LOOPBACK, Children, http_get


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class WSIdle(WSConnection):
    def __init__(self, port: int, done: asyncio.Future[str]) -> None:
        super().__init__(LOOPBACK, port)
        self.done = done

    def on_open(self) -> None:
        self.send_text(b'{"type":"subscribe","channel":"idle"}')

    def on_text(self, payload: bytes, now: int) -> None:
        if not self.done.done():
            self.done.set_result("subscribed" if b'"subscribed"' in payload else payload.decode(errors="replace"))

    def on_failed(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


class HTTPIdle(asyncio.Protocol):
    """An SSE stream or a held poll: done once the response head (SSE) arrived, or at once (poll)."""

    def __init__(self, port: int, path: str, done: asyncio.Future[str], wait_head: bool) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode()
        self.done = done
        self.wait_head = wait_head
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        if not self.wait_head:
            self.done.set_result("subscribed")

    def data_received(self, data: bytes) -> None:
        self.head += data
        if self.wait_head and b"\r\n\r\n" in self.head and not self.done.done():
            self.done.set_result("subscribed" if self.head.startswith(b"HTTP/1.1 200") else self.head[:80].decode())


async def open_many(transport: str, port: int, count: int, concurrency: int) -> list[asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    opened: list[asyncio.BaseTransport] = []

    async def one() -> str:
        async with sem:
            done: asyncio.Future[str] = loop.create_future()
            if transport == "ws":
                factory = lambda: WSIdle(port, done)
            elif transport == "sse":
                factory = lambda: HTTPIdle(port, "/sse?channel=idle", done, True)
            else:
                factory = lambda: HTTPIdle(port, "/poll?channel=idle&timeout=60", done, False)
            t, _ = await loop.create_connection(factory, LOOPBACK, port)
            opened.append(t)
            return await asyncio.wait_for(done, 30)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    bad = [r for r in results if r != "subscribed"]
    if bad:
        raise SystemExit(f"{len(bad)} of {count} {transport} connections failed, e.g. {bad[0]!r}")
    return opened


def connections(port: int, transport: str) -> int:
    _, body = http_get(port, "/metrics")
    key = {"ws": "websocket", "sse": "sse", "poll": "poll"}[transport]
    for line in body.decode().splitlines():
        if line.startswith("gateway_connections") and f'transport="{key}"' in line:
            return int(float(line.split()[-1]))
    return -1


async def measure(transport: str, port: int, pid: int, count: int) -> dict[str, float]:
    warm = await open_many(transport, port, 100, 50)
    for t in warm:
        t.close()
    deadline = time.monotonic() + 30
    while connections(port, transport) != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    opened = await open_many(transport, port, count, 100)
    deadline = time.monotonic() + 60
    while connections(port, transport) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    held = connections(port, transport)
    for t in opened:
        t.close()
    return {"before_kib": before, "after_kib": after, "held": held, "kib_per_conn": (after - before) / count}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transport", nargs="+", choices=["ws", "sse", "poll"], default=["ws", "sse", "poll"])
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--gateway-src", help="run the gateway from this source tree (PYTHONPATH)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    env = None
    if args.gateway_src:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.gateway_src))
    rows = []
    for transport in args.transport:
        children = Children()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                node = start_gateway(children, tmp, transport, None, env, ["--no-access-log"] if _has_flag(env) else [])
                r = asyncio.run(measure(transport, node["port"], node["pid"], args.connections))
            finally:
                children.stop_all()
        r["transport"] = transport
        rows.append(r)
        if not args.json:
            print(
                f"{transport}: {r['kib_per_conn']:.2f} KiB RSS per idle connection "
                f"({args.connections} open, {r['held']} counted by /metrics; RSS {r['before_kib']} -> {r['after_kib']} KiB)",
                flush=True,
            )
    if args.json:
        import json

        print(json.dumps(rows))
    return 0


def _has_flag(env: dict[str, str] | None) -> bool:
    """Whether the gateway measured has --no-access-log (older trees do not)."""
    import subprocess

    from procs import twistd_path

    out = subprocess.run([twistd_path(), "gateway", "--help"], capture_output=True, text=True, env=env, check=False).stdout
    return "--no-access-log" in out


if __name__ == "__main__":
    sys.exit(main())
