#!/usr/bin/env python
"""Run the README's benchmark configurations and print a Markdown table.

Each configuration runs ``--repeat`` times (default 3), one after the other;
the table shows the median run (by p50 latency) and, for latency, the range
over the runs.  Raw JSON lines go to ``bench/results/`` (not committed).

    python bench/table.py                      # every configuration, 3 runs each
    python bench/table.py --only ws-1000 --repeat 1
    python bench/table.py -- --snapshot HEAD   # extra arguments for every fanout.py run
    python bench/table.py --suite issue11 --repeat 1 -- --snapshot HEAD
        # issue 11's scenarios: ordinary load, saturation, SSE, long-poll, cross-node,
        # then bench/hotpath.py (CPU per delivery, repeatable) and bench/memory.py
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

# Issue 11's scenarios (bench/README.md, "Issue 11 suite").
ISSUE11: dict[str, list[str]] = {
    "ws-1000-r100": ["--transport", "ws", "--subscribers", "1000", "--rate", "100"],
    "ws-1000-r300": ["--transport", "ws", "--subscribers", "1000", "--rate", "300"],
    "sse-1000-r100": ["--transport", "sse", "--subscribers", "1000", "--rate", "100"],
    "poll-1000": ["--transport", "poll", "--subscribers", "1000", "--rate", "20"],
    "redis-ws-1000-r100": ["--redis", "--transport", "ws", "--subscribers", "1000", "--rate", "100"],
    "redis-ws-500-r500": ["--redis", "--transport", "ws", "--subscribers", "500", "--rate", "500"],
}
CONFIGS.update(ISSUE11)
SUITES = {"readme": [n for n in CONFIGS if n not in ISSUE11], "issue11": list(ISSUE11)}


def gateway_src(extra: list[str]) -> tuple[str | None, str | None]:
    """The source tree the fanout.py arguments name (--gateway-src, or a git archive of
    --snapshot REF, made here), and a temp dir to remove afterwards."""
    if "--gateway-src" in extra:
        return extra[extra.index("--gateway-src") + 1], None
    if "--snapshot" in extra:
        import tempfile

        ref = extra[extra.index("--snapshot") + 1]
        tmp = tempfile.mkdtemp(prefix="table-src-")
        archive = subprocess.run(["git", "archive", ref, "gateway"], capture_output=True, check=True, cwd=os.path.dirname(HERE)).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        return tmp, tmp
    return None, None


def in_process_rows(extra: list[str], repeat: int) -> list[str]:
    """bench/hotpath.py (CPU per delivery) and bench/memory.py (RSS per idle connection) rows."""
    import shutil

    src, tmp = gateway_src(extra)
    where = ["--gateway-src", src] if src else []
    rows = []
    try:
        for transport, subs in (("ws", 1000), ("sse", 1000), ("poll", 1000)):
            figures = []
            for _ in range(repeat):
                argv = [sys.executable, os.path.join(HERE, "hotpath.py"), "--transport", transport, "--subscribers", str(subs), "--json", *where]
                if transport == "poll":
                    argv += ["--rounds", "40"]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
                if proc.returncode == 0:
                    figures.append(json.loads(proc.stdout.strip().splitlines()[-1])["server_cpu_us_per_delivery"])
                else:
                    print(f"hotpath {transport} failed: {proc.stderr[-1000:]}", file=sys.stderr)
            if figures:
                rows.append(f"| hotpath {transport} | {subs} | server CPU per delivery | {statistics.median(figures):.1f} us ({min(figures):.1f}-{max(figures):.1f}) |")
        argv = [sys.executable, os.path.join(HERE, "memory.py"), "--json", "--connections", "10000", *where]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode == 0:
            for r in json.loads(proc.stdout.strip().splitlines()[-1]):
                rows.append(f"| memory {r['transport']} | 10000 | RSS per idle connection | {r['kib_per_conn']:.2f} KiB |")
        else:
            print(f"memory failed: {proc.stderr[-1000:]}", file=sys.stderr)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


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
    p.add_argument("--suite", choices=sorted(SUITES), default="readme", help="readme (default): the README's table; issue11: issue 11's scenarios plus hotpath.py and memory.py")
    p.add_argument("extra", nargs="*", help="extra fanout.py arguments (after --)")
    args = p.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(
        HERE, "results", time.strftime("table-%Y%m%dT%H%M%SZ.jsonl", time.gmtime())
    )
    names = args.only or SUITES[args.suite]
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
    if args.suite == "issue11" and not args.only:
        print()
        print("| scenario | connections | figure | value |")
        print("|---|---|---|---|")
        for line in in_process_rows(args.extra, args.repeat):
            print(line, flush=True)
    print(f"\nraw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
