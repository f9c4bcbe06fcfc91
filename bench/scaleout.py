#!/usr/bin/env python
"""Cross-node fan-out, one Redis against a 3-master Redis Cluster, at rising publish rates.

Each run is ``fanout.py --redis [--cluster] --sub-nodes 2``: 1,000 WebSocket subscribers
spread over gateway nodes B and C, the publisher on node A.  For every topology and rate
(one after the other, ``--repeat`` times) it prints one Markdown row: deliveries per
second against offered, latency, and the CPU of every process (the three gateway nodes,
the Redis server holding the channel, the load generators together; percentages of one
core over the measured window, drain included), so that what saturates is visible.  Raw JSON lines go to ``bench/results/scaleout-*.jsonl`` (not
committed).

    python bench/scaleout.py                                 # rates 20 50 100 200, once each
    python bench/scaleout.py --rates 20 100 --repeat 3
    python bench/scaleout.py -- --snapshot HEAD              # extra fanout.py arguments
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOPOLOGIES = {"one Redis": ["--redis"], "3-master cluster": ["--redis", "--cluster"]}


def run(topology: str, rate: float, args: argparse.Namespace, out: str) -> dict | None:
    argv = [
        sys.executable, os.path.join(HERE, "fanout.py"), *TOPOLOGIES[topology],
        "--sub-nodes", "2", "--subscribers", str(args.subscribers), "--rate", f"{rate:g}",
        "--duration", f"{args.duration:g}", "--json", *args.extra,
    ]  # fmt: skip
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["topology"] = topology
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def row(r: dict) -> str:
    servers = r["server"]
    clients = sum(c["cpu_pct_of_core"] for c in r["clients"])
    m = r["machine"]
    return (
        f"| {r['topology']} | {r['rate_per_s']:g} | {r['deliveries_per_s'] / 1000:.1f}k / {r['offered_deliveries_per_s'] / 1000:.0f}k "
        f"| {r['deliveries_missing']} | {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f} "
        f"| {servers['gateway-a']['cpu_pct_of_core']:.0f}% | {servers['gateway-b']['cpu_pct_of_core']:.0f}% "
        f"| {servers['gateway-c']['cpu_pct_of_core']:.0f}% | {r['server_cpu_us_per_delivery']:.1f} | {r['redis']['redis_cpu_pct_of_core']:.1f}% "
        f"| {clients:.0f}% | {m['busy_pct_of_all_cores']:.0f}% | {m['others_cpu_s']:.1f} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[20, 50, 100, 200])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("extra", nargs="*", help="more fanout.py arguments (after --)")
    args = p.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", f"scaleout-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    rows = []
    for _ in range(args.repeat):
        for rate in args.rates:
            for topology in TOPOLOGIES:
                r = run(topology, rate, args, out)
                rows.append(row(r) if r else f"| {topology} | {rate:g} | failed | | | | | | | | | | |")
                print(rows[-1], flush=True)
    print()
    print("| topology | pub/s | deliveries/s (got / offered) | missing | latency p50 / p99 ms | node A (pub) CPU | node B CPU | node C CPU | B+C CPU µs/delivery | Redis CPU | load generators CPU | machine busy (2 cores) | other processes CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
