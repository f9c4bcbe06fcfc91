"""WebSocket connection setup cost with and without authentication.

Starts a gateway (``twistd -n gateway`` on a free port) for each ``--auth`` kind,
opens ``--connections`` WebSockets from this process (``--concurrency`` at a time),
each authenticating with a JWT in ``token=`` on the upgrade (or anonymously for
``none``) and subscribing to one channel, and reports connections per second and
the gateway's CPU per connection (from /proc, so the load generator's own speed
does not count).  The JWT verification is the difference between the rows.

    python bench/connect.py                              # none, hs256, rs256, es256; 2,000 connections each
    python bench/connect.py --auth none rs256 --connections 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fanout import auth_setup, start_gateway  # noqa: E402
from loadclient import WSConnection  # noqa: E402
from procs import LOOPBACK, Children, cpu_seconds  # noqa: E402


class Client(WSConnection):
    def __init__(self, port: int, token: str | None, done: asyncio.Future[str]) -> None:
        super().__init__(LOOPBACK, port, "/ws" if token is None else f"/ws?token={token}")
        self.done = done

    def on_open(self) -> None:
        self.send_text(json.dumps({"type": "subscribe", "channel": "bench:connect", "id": 1}).encode())

    def on_text(self, payload: bytes, now: int) -> None:
        if not self.done.done():
            kind = json.loads(payload).get("type")
            self.done.set_result(kind)

    def on_failed(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(reason))


async def measure(port: int, pid: int, token: str | None, count: int, concurrency: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    clients: list[Client] = []

    async def one() -> str:
        async with sem:
            done: asyncio.Future[str] = loop.create_future()
            _, proto = await loop.create_connection(lambda: Client(port, token, done), LOOPBACK, port)
            clients.append(proto)
            return await asyncio.wait_for(done, 30)

    cpu0, t0 = cpu_seconds(pid) or 0.0, time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    elapsed, cpu1 = time.perf_counter() - t0, cpu_seconds(pid) or 0.0
    ok = sum(1 for r in results if r == "subscribed")
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    return {"ok": ok, "per_s": ok / elapsed, "cpu_us": (cpu1 - cpu0) / max(ok, 1) * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--auth", nargs="+", choices=["none", "hs256", "rs256", "es256"], default=["none", "hs256", "rs256", "es256"])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    print(f"{args.connections} WebSocket connections ({args.concurrency} at a time), upgrade + subscribe each")
    print("| auth | connections/s | gateway CPU µs per connection | subscribed |")
    print("|---|---|---|---|")
    for kind in args.auth:
        children = Children()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                gateway_args, sub_token, _ = auth_setup(kind, tmp)
                node = start_gateway(children, tmp, kind, None, None, gateway_args)
                # Warm up (imports, first-use caches) before measuring.
                asyncio.run(measure(node["port"], node["pid"], sub_token, 50, 10))
                r = asyncio.run(measure(node["port"], node["pid"], sub_token, args.connections, args.concurrency))
            finally:
                children.stop_all()
        print(f"| {kind} | {r['per_s']:,.0f} | {r['cpu_us']:,.0f} | {r['ok']}/{args.connections} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
