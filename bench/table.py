#!/usr/bin/env python
"""Run the README's benchmark configurations and print a Markdown table.

Each configuration runs ``--repeat`` times (default 3), one after the other;
the table shows the median run (by p50 latency) and, for latency, the range
over the runs.  Raw JSON lines go to ``bench/results/`` (not committed).

    python bench/table.py                      # every configuration, 3 runs each
    python bench/table.py --only ws-1000 --repeat 1
    python bench/table.py -- --snapshot HEAD   # extra arguments for every fanout.py run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS: dict[str, list[str]] = {
    "ws-1000": ["--transport", "ws", "--subscribers", "1000", "--rate", "20"],
    "ws-1000-r40": ["--transport", "ws", "--subscribers", "1000", "--rate", "40"],
    "ws-1000-r60": ["--transport", "ws", "--subscribers", "1000", "--rate", "60"],
    "sse-1000": ["--transport", "sse", "--subscribers", "1000", "--rate", "20"],
    "poll-100": ["--transport", "poll", "--subscribers", "100", "--rate", "20"],
    "poll-200": ["--transport", "poll", "--subscribers", "200", "--rate", "20"],
    "poll-1000": ["--transport", "poll", "--subscribers", "1000", "--rate", "20"],
    "redis-ws-1000": [
        "--redis",
        "--transport",
        "ws",
        "--subscribers",
        "1000",
        "--rate",
        "20",
    ],
    "redis-ws-10-r200": [
        "--redis",
        "--transport",
        "ws",
        "--subscribers",
        "10",
        "--rate",
        "200",
    ],
}


def run(name: str, extra: list[str], out: str) -> dict | None:
    argv = [
        sys.executable,
        os.path.join(HERE, "fanout.py"),
        *CONFIGS[name],
        *extra,
        "--json",
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        print(
            f"{name}: failed ({proc.returncode}):\n{proc.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["config"] = name
    result["command"] = "python bench/fanout.py " + " ".join(CONFIGS[name] + extra)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def row(name: str, runs: list[dict]) -> str:
    runs = sorted(runs, key=lambda r: r["latency_ms"]["p50"])
    med = runs[len(runs) // 2]
    p50s = [r["latency_ms"]["p50"] for r in runs]
    p99s = [r["latency_ms"]["p99"] for r in runs]
    server = med["server"]
    sub_node = list(server)[-1]
    clients = [c["cpu_pct_of_core"] for r in runs for c in r["clients"]]
    extra = ""
    if "redis" in med:
        rd = med["redis"]
        extra = (
            f"{rd['commands_per_publication_excl_idle']} cmds/pub ({rd['scripts_per_publication']:g} EVALSHA); node A {rd['publisher_node_cpu_us_per_publication']:.0f} us/pub; "
            f"redis {rd['redis_cpu_us_per_publication']:.0f} us/pub"
        )
    if "polls" in med:
        extra = f"{med['checks']['client_received_total_incl_warmup'] / max(1, med['polls'] - med['subscribers']):.2f} deliveries/poll"
    return (
        f"| {name} | {med['subscribers']} | {med['rate_per_s']:g} | {med['deliveries_per_s']:.0f} "
        f"| {med['deliveries_missing']} "
        f"| {med['latency_ms']['p50']:.1f} ({min(p50s):.1f}-{max(p50s):.1f}) "
        f"| {med['latency_ms']['p99']:.1f} ({min(p99s):.1f}-{max(p99s):.1f}) "
        f"| {server[sub_node]['cpu_pct_of_core']:.0f}% | {med['server_cpu_us_per_delivery']:.1f} "
        f"| {max(clients):.0f}% | {statistics.median(r['machine']['others_cpu_s'] for r in runs):.1f} | {extra} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(CONFIGS),
        help="run only these configurations",
    )
    p.add_argument("extra", nargs="*", help="extra fanout.py arguments (after --)")
    args = p.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(
        HERE, "results", time.strftime("table-%Y%m%dT%H%M%SZ.jsonl", time.gmtime())
    )
    names = args.only or list(CONFIGS)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(args.repeat):
        for name in names:
            r = run(name, args.extra, out)
            if r is not None:
                results[name].append(r)
                print(f"[{time.strftime('%H:%M:%S')}] {name} run {i + 1}: p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
                      f"{r['deliveries_per_s']:.0f} deliveries/s, warnings {r['warnings']}", file=sys.stderr, flush=True)  # fmt: skip
    print(
        "| config | subscribers | pub/s | deliveries/s | missing | p50 ms (range) | p99 ms (range) "
        "| server CPU (sub node) | server us/delivery | max client CPU | other procs CPU-s | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        if results[name]:
            print(row(name, results[name]))
        else:
            print(f"| {name} | failed |")
    print(f"\nraw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
