"""gateway.js figures: its size (raw and gzipped) and, in the system's Chromium, the time
from page load (navigation start) to the client being connected and to its first
message, on each transport forced on its own.

It starts its own gateway (``twistd -n gateway`` on a free port). A publisher publishes
on the page's channel every ``--interval`` ms (default 10) from before the page loads,
so "first message" is the first publication accepted after the client's subscription
took effect (a client starts at "now"), to within one interval. Each transport is
measured ``--repeat`` times in a fresh browser context (no cache); the median and the
extremes are printed. Not part of the pytest suite; no assertions.

    python bench/browser_client.py [--repeat 5] [--interval 10] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from procs import CHROMIUM_ARGS, Children, free_port, twistd_path

ROOT = pathlib.Path(__file__).resolve().parents[1]
GATEWAY_JS = ROOT / "gateway" / "static" / "gateway.js"

PAGE = """<!doctype html><meta charset="utf-8"><title>bench</title>
<script src="{base}gateway.js"></script>
<script>
  window.result = {{}};
  const gw = new Gateway("{base}", {{transports: ["{transport}"]}});
  gw.on("state", s => {{ if (s.state === "connected" && !result.connected) result.connected = performance.now(); }});
  gw.subscribe("bench", e => {{ if (!result.first) result.first = performance.now(); }});
</script>"""


def sizes() -> dict[str, int]:
    raw = GATEWAY_JS.read_bytes()
    return {"raw": len(raw), "gzip": len(gzip.compress(raw, 9))}


def publisher(base: str, stop: threading.Event, interval: float) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            client.post(base + "publish", json={"channel": "bench", "data": {"t": time.time()}})
            stop.wait(interval)


def measure(browser, base: str, transport: str) -> dict[str, float]:
    context = browser.new_context()
    try:
        page = context.new_page()
        url = base + "bench.html"
        html = PAGE.format(base=base, transport=transport)
        page.route(url, lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html))
        page.goto(url)
        page.wait_for_function("window.result && window.result.first", timeout=30000, polling=10)
        result = page.evaluate("window.result")
        page.evaluate("gw.close()")
        return {"connected_ms": result["connected"], "first_message_ms": result["first"]}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0, help="ms between publications")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    children = Children()
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    children.popen("gateway", [twistd_path(), "-n", "--pidfile=", "gateway", "--listen", f"tcp:{port}:interface=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, object] = {"size": sizes()}
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not start")
            time.sleep(0.05)
        pub = threading.Thread(target=publisher, args=(base, stop, args.interval / 1000), daemon=True)
        pub.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            measure(browser, base, "websocket")  # warm-up: Chromium and the gateway's first connection
            for transport in ("websocket", "sse", "poll"):
                runs = [measure(browser, base, transport) for _ in range(args.repeat)]
                out[transport] = {
                    key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs), "max": max(r[key] for r in runs)}
                    for key in ("connected_ms", "first_message_ms")
                }
            browser.close()
    finally:
        stop.set()
        children.stop_all()
    if args.json:
        print(json.dumps(out))
    size = out["size"]
    print(f"gateway.js: {size['raw']} bytes, {size['gzip']} gzipped (gzip -9)", file=sys.stderr)
    print("| transport | page load to connected (ms, median [min-max]) | page load to first message (ms) |", file=sys.stderr)
    print("|---|---|---|", file=sys.stderr)
    for transport in ("websocket", "sse", "poll"):
        r = out[transport]
        c, f = r["connected_ms"], r["first_message_ms"]
        print(
            f"| {transport} | {c['median']:.0f} [{c['min']:.0f}-{c['max']:.0f}] | {f['median']:.0f} [{f['min']:.0f}-{f['max']:.0f}] |",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
