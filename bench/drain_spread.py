"""The reconnect spread after a drain: how gateway.js clients told 1001 (node shutting
down) arrive at the surviving node, per 100 ms.

It starts its own redis-server and two gateway nodes on it (``twistd -n gateway
--redis``), and the switchable proxy of the browser tests
(tests/browser/_middlebox.py) in front of them as the load balancer: each new
connection goes to the first node that accepts it, so everything goes to node A while
it listens, and to node B once A has stopped listening. ``--clients`` browser clients
(``new Gateway(...)`` on WebSocket, ``--contexts`` browser contexts with one page each,
so no Chromium profile holds more than a few hundred WebSockets) connect through the
proxy to node A; then node A gets SIGTERM. Each client gets 1001, waits the random
delay it draws (up to 2 s) and connects again, to node B.

Arrival time at node B is the time the proxy opened the connection to B
(``time.time()`` in the proxy, on the same machine), counted from the SIGTERM; the
page's own times (the client's "connected" state, ``Date.now()``) and the delays the
clients drew are printed too, and when each client started its new connection.
Chromium opens WebSockets to one host one at a time per browser context (RFC 6455
section 4.1), so with many clients per context the handshakes queue up behind each
other: ``--contexts`` (default 25, 20 clients each) sets how many share one. Not part of the pytest suite; no assertions.

    python bench/drain_spread.py [--clients 500] [--contexts 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from procs import CHROMIUM_ARGS, Children, free_port, twistd_path

from tests.browser._many import count_connected, start_many, summary
from tests.browser._middlebox import Arrival

BUCKET = 0.1  # seconds


class ProxyProcess:
    """The middlebox (tests/browser/_middlebox.py) in a process of its own, driven over its stdin/stdout."""

    def __init__(self, children: Children, upstreams: list[int]) -> None:
        self.proc = children.popen(
            "proxy",
            [sys.executable, "-m", "tests.browser._middlebox", *map(str, upstreams)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}/"

    def arrivals_at(self, upstream: int, websocket: bool, since: float = 0.0) -> list[Arrival]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("arrivals\n")
        self.proc.stdin.flush()
        every = [Arrival(*row) for row in json.loads(self.proc.stdout.readline())]
        return [a for a in every if a.upstream == upstream and a.websocket == websocket and a.at >= since]

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(10)


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_node(children: Children, tmp: str, name: str, redis_url: str) -> tuple[Any, int]:
    port = free_port()
    log = open(os.path.join(tmp, f"gateway-{name}.log"), "wb")  # noqa: SIM115 - the child holds it
    proc = children.popen(
        f"gateway-{name}",
        [twistd_path(), "-n", "--pidfile=", "gateway", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--redis", redis_url, "--node-id", name],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    wait(lambda: _ready(port) or proc.poll() is not None, 30, f"node {name}")
    if proc.poll() is not None:
        raise SystemExit(f"node {name} exited: see {log.name}")
    return proc, port


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def per_bucket(offsets: list[float]) -> list[int]:
    buckets = [0] * (int(max(offsets) / BUCKET) + 1 if offsets else 0)
    for t in offsets:
        buckets[int(t / BUCKET)] += 1
    return buckets


def histogram(attempts: list[float], arrivals: list[float], width: int = 40) -> list[str]:
    a, b = per_bucket(attempts), per_bucket(arrivals)
    rows = max(len(a), len(b))
    a += [0] * (rows - len(a))
    b += [0] * (rows - len(b))
    top = max(a + b + [1])
    lines = [f"  {'ms after SIGTERM':>15s} {'start':>5s} {'at B':>5s}"]
    for i in range(rows):
        bar = "#" * round(b[i] * width / top)
        lines.append(f"  {i * BUCKET * 1000:6.0f}-{(i + 1) * BUCKET * 1000:6.0f} {a[i]:5d} {b[i]:5d} {bar}")
    return lines


def quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}

    def q(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))]

    return {"min": values[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": values[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument(
        "--contexts", type=int, default=25,
        help="browser contexts (one page each) sharing the clients; Chromium opens one WebSocket at a time per "
        "host in a context, so few contexts serialise the reconnections",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line with the figures")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium not found: apt-get install -y chromium")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")

    tmp = tempfile.mkdtemp(prefix="drain-spread-")
    children = Children()
    box = None
    try:
        redis_port = free_port()
        children.popen("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=open(os.devnull, "wb"))  # noqa: SIM115
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        node_a, port_a = start_node(children, tmp, "a", redis_url)
        _node_b, port_b = start_node(children, tmp, "b", redis_url)
        box = ProxyProcess(children, [port_a, port_b])

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            pages = []
            per = [args.clients // args.contexts + (1 if i < args.clients % args.contexts else 0) for i in range(args.contexts)]
            html = f'<!doctype html><meta charset="utf-8"><title>drain</title><script src="{box.base}gateway.js"></script>'
            for n in per:
                context = browser.new_context()
                page = context.new_page()
                page.route(box.base + "drain.html", lambda route: route.fulfill(status=200, content_type="text/html", body=html))
                page.goto(box.base + "drain.html")
                start_many(page, box.base, n, transports=["websocket"])
                pages.append(page)
            wait(lambda: sum(count_connected(pg) for pg in pages) == args.clients, 120, f"{args.clients} clients connected")
            on_a = len(box.arrivals_at(0, websocket=True))

            t0 = time.time()
            node_a.send_signal(signal.SIGTERM)
            wait(lambda: len(box.arrivals_at(1, websocket=True, since=t0)) >= args.clients, 60, "every client at node B")
            wait(lambda: sum(count_connected(pg) for pg in pages) == args.clients, 60, "every client connected again")
            exit_status = node_a.wait(30)
            t_exit = time.time() - t0

            at_b = box.arrivals_at(1, websocket=True, since=t0)
            arrivals = sorted(a.at - t0 for a in at_b)
            accepted = sorted(a.accepted - t0 for a in at_b)
            told, attempts, connected, drawn, transports = [], [], [], [], set()
            for page in pages:
                for c in summary(page):
                    gone = [s for s in c["states"] if s["state"] == "reconnecting" and s["at"] / 1000 >= t0]
                    again = [s for s in c["states"] if s["state"] == "connecting" and s["at"] / 1000 >= t0]
                    back = [s for s in c["states"] if s["state"] == "connected" and s["at"] / 1000 >= t0]
                    if again:
                        attempts.append(again[0]["at"] / 1000 - t0)
                    if gone:
                        told.append(gone[0]["at"] / 1000 - t0)
                        drawn.append(gone[0]["delay"] / 1000)
                    if back:
                        connected.append(back[-1]["at"] / 1000 - t0)
                    transports.add(c["state"]["transport"])
            browser.close()
    finally:
        if box is not None:
            box.stop()
        children.stop_all()

    result = {
        "clients": args.clients,
        "contexts": args.contexts,
        "connected_to_a": on_a,
        "arrivals_at_b": len(arrivals),
        "node_a_exit": exit_status,
        "node_a_exit_s": round(t_exit, 3),
        "told_1001_s": {k: round(v, 3) for k, v in quantiles(told).items()},
        "drawn_delay_s": {k: round(v, 3) for k, v in quantiles(drawn).items()},
        "attempt_s": {k: round(v, 3) for k, v in quantiles(attempts).items()},
        "proxy_accepted_s": {k: round(v, 3) for k, v in quantiles(accepted).items()},
        "arrival_at_b_s": {k: round(v, 3) for k, v in quantiles(arrivals).items()},
        "page_connected_s": {k: round(v, 3) for k, v in quantiles(connected).items()},
        "attempts_per_100ms": per_bucket(attempts),
        "arrivals_per_100ms": per_bucket(arrivals),
        "transports_after": sorted(transports),
    }
    out = sys.stderr if args.json else sys.stdout
    print(f"{args.clients} clients in {args.contexts} contexts on node A ({on_a} upgrades there); SIGTERM at t=0", file=out)
    print(f"node A exited {exit_status} after {t_exit:.2f} s; clients now on {sorted(transports)}", file=out)
    for name in ("told_1001_s", "drawn_delay_s", "attempt_s", "proxy_accepted_s", "arrival_at_b_s", "page_connected_s"):
        q = result[name]
        print(f"{name:18s} " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in q.items()), file=out)
    print("per 100 ms after the SIGTERM: clients starting their new connection (page), and arrivals at node B (proxy-side connect times):", file=out)
    for line in histogram(attempts, arrivals):
        print(line, file=out)
    if args.json:
        print(json.dumps(result))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
