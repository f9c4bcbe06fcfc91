#!/usr/bin/env python
"""Fan-out benchmark of the gateway: one publisher, N subscribers on one channel.

Starts its own gateway (and, with ``--redis``, its own redis-server and a second
gateway node), spreads the subscribers over ``--clients`` load-generator
processes (``loadclient.py``), publishes at a fixed rate over a WebSocket, and
reports deliveries per second, publish-to-receive latency, the server's CPU time
per delivery and every process's CPU use, including the load generator's own.
Everything it starts is stopped when it ends, also on Ctrl-C and on errors.

    python bench/fanout.py                                  # ws, 1,000 subscribers, 20 pub/s, 10 s
    python bench/fanout.py --transport sse
    python bench/fanout.py --transport poll
    python bench/fanout.py --redis                          # cross-node, through Redis
    python bench/fanout.py --redis --sentinel               # the same, through Redis Sentinel
    python bench/fanout.py --redis --cluster                # the same, through a 3-master Redis Cluster
    python bench/fanout.py --redis --sub-nodes 2            # subscribers spread over nodes B and C, publisher on A
    python bench/fanout.py --workers 2                      # twistd --workers 2 (and its own Redis)
    python bench/fanout.py --subscribers 10 --duration 1    # smoke test, a few seconds
    python bench/fanout.py --json                           # JSON line on stdout, summary on stderr

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadclient import WSConnection, now_us
from procs import (
    LOOPBACK,
    Children,
    commandstats,
    cpu_seconds,
    free_port,
    http_get,
    machine_cpu,
    redis_command,
    twistd_path,
)

# Long-polling costs one HTTP request per delivery (see README): 1,000 pollers at
# 20 pub/s saturate the server on this 2-core machine, so the default is fewer.
DEFAULT_SUBSCRIBERS = {"ws": 1000, "sse": 1000, "poll": 100}
CLIENT_CPU_WARN = 0.80


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- starting the system under test ----------------------------------------------------


def wait_http(
    proc: subprocess.Popen[Any], port: int, path: str, timeout: float, logfile: str
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"gateway on port {port} exited with {proc.returncode}:\n{tail2(logfile)}"
            )
        try:
            status, body = http_get(port, path, timeout=2)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(
        f"gateway on port {port}: {path} not 200 within {timeout}s ({last}):\n{tail(logfile)}"
    )


def tail2(logfile: str) -> str:
    return tail(logfile) + tail(logfile + ".stderr")


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def gateway_env(src: str | None) -> dict[str, str] | None:
    """The environment for gateway processes: with ``src``, that tree's ``gateway``
    package shadows the installed (editable) one."""
    if not src:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def snapshot_source(ref: str, tmp: str) -> tuple[str, str]:
    """Export ``ref``'s gateway, plugins and twisted/plugins to a temp dir (read-only use
    of the repository: ``git archive``); returns (dir, commit)."""
    repo = os.path.dirname(HERE)
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dest = os.path.join(tmp, f"src-{commit[:10]}")
    os.mkdir(dest)
    archive = subprocess.run(
        ["git", "-C", repo, "archive", commit, "gateway", "plugins", "twisted"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest, commit


def source_info(src: str | None, commit: str | None) -> dict[str, Any]:
    repo = os.path.dirname(HERE)
    if commit:
        return {"tree": f"git archive of {commit}", "commit": commit}
    if src:
        return {"tree": src}
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "gateway", "plugins", "twisted"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.split("\n")  # fmt: skip
        return {
            "tree": "working tree (installed editable)",
            "head": head,
            "uncommitted": [d[3:] for d in dirty if d.strip()],
        }
    except (OSError, subprocess.SubprocessError):
        return {"tree": "installed package"}


def start_gateway(
    children: Children,
    tmp: str,
    name: str,
    redis_url: str | None,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    port = free_port()
    logfile = os.path.join(tmp, f"gateway-{name}.log")
    argv = [
        twistd_path(), "-n", "--pidfile=", "--logfile", logfile,
        "gateway", "--listen", f"tcp:{port}:interface={LOOPBACK}", "--node-id", f"bench-{name}", "--drain-timeout", "3",
    ]  # fmt: skip
    if redis_url:
        argv += ["--redis", redis_url]
    argv += extra or []
    proc = children.popen(
        f"gateway-{name}",
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr_path=logfile + ".stderr",
        env=env,
    )
    wait_http(proc, port, "/readyz" if redis_url else "/healthz", 30.0, logfile)
    if redis_url:
        wait_http(proc, port, "/readyz", 30.0, logfile)
    return {
        "name": f"gateway-{name}",
        "port": port,
        "proc": proc,
        "pid": proc.pid,
        "log": logfile,
        "argv": argv,
    }


def start_redis(children: Children, tmp: str, name: str = "redis", extra: tuple[str, ...] = ()) -> dict[str, Any]:
    port = free_port()
    if port == 6379:
        port = free_port()
    rdir = os.path.join(tmp, name)
    os.mkdir(rdir)
    argv = [
        "/usr/bin/redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
        "--dir", rdir, "--daemonize", "no", "--logfile", os.path.join(rdir, "redis.log"), *extra,
    ]  # fmt: skip
    proc = children.popen(
        "redis-server" if name == "redis" else name,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"redis-server exited with {proc.returncode}: {tail(os.path.join(rdir, 'redis.log'))}"
            )
        try:
            if redis_command(port, "PING", timeout=1) == "PONG":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError("redis-server did not answer PING within 10 s")
        time.sleep(0.05)
    return {
        "name": "redis-server",
        "port": port,
        "proc": proc,
        "pid": proc.pid,
        "argv": argv,
    }


def start_cluster(children: Children, tmp: str, channel: str) -> tuple[dict[str, Any], str]:
    """--cluster: three cluster-enabled masters joined with ``redis-cli --cluster create``;
    returns the master serving ``channel``'s slot (whose figures the report shows) and
    the redis+cluster:// URL."""
    masters = [
        start_redis(children, tmp, f"redis-c{i}", ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                   "--cluster-port", str(free_port())))
        for i in range(3)
    ]  # fmt: skip
    subprocess.run(["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{m['port']}" for m in masters), "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not all("cluster_state:ok" in str(redis_command(m["port"], "CLUSTER", "INFO")) for m in masters):
        if time.monotonic() > deadline:
            raise BenchError("the cluster did not reach cluster_state:ok within 30 s")
        time.sleep(0.1)
    owner = None
    for m in masters:
        try:
            redis_command(m["port"], "EXISTS", "gateway:{" + channel + "}:meta")
            owner = m
        except RuntimeError:  # MOVED: another master serves the slot
            pass
    if owner is None:
        raise BenchError("no master serves the channel's slot")
    return owner, "redis+cluster://" + ",".join(f"{LOOPBACK}:{m['port']}" for m in masters)


def start_sentinels(children: Children, tmp: str, master_port: int) -> str:
    """--sentinel: a replica of the master and three Sentinels watching it; returns the
    redis+sentinel:// URL once every Sentinel knows the replica and the two others."""
    start_redis(children, tmp, "redis-replica", ("--replicaof", LOOPBACK, str(master_port)))
    ports = []
    for i in range(3):
        port = free_port()
        sdir = os.path.join(tmp, f"sentinel{i}")
        os.mkdir(sdir)
        conf = os.path.join(sdir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {port}\nbind {LOOPBACK}\ndaemonize no\ndir {sdir}\nlogfile {sdir}/sentinel.log\n"
                f"sentinel monitor bench {LOOPBACK} {master_port} 2\n"
                "sentinel down-after-milliseconds bench 1000\nsentinel failover-timeout bench 5000\n"
            )
        children.popen(f"sentinel{i}", ["/usr/bin/redis-server", conf, "--sentinel"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports.append(port)
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            out = subprocess.run(["redis-cli", "-p", str(port), "SENTINEL", "MASTER", "bench"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout.split("\n")
            fields = dict(zip(out[::2], out[1::2]))
            if fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2":
                break
            if time.monotonic() > deadline:
                raise BenchError("the Sentinels did not discover the replica and each other within 30 s")
            time.sleep(0.1)
    return "redis+sentinel://" + ",".join(f"{LOOPBACK}:{p}" for p in ports) + "/bench/0"


def start_workers_gateway(
    children: Children, tmp: str, redis_url: str, workers: int, env: dict[str, str] | None, extra: list[str]
) -> dict[str, Any]:
    """``twistd gateway --workers N``: one port, N worker processes (found as the
    supervisor's children once each has answered /readyz)."""
    node = start_gateway(children, tmp, "a", redis_url, env, [*extra, "--workers", str(workers)])
    deadline = time.monotonic() + 30.0
    ready: set[str] = set()
    while len(ready) < workers:
        if time.monotonic() > deadline:
            raise BenchError(f"only {sorted(ready)} of {workers} workers answered /readyz:\n{tail(node['log'])}")
        status, body = http_get(node["port"], "/readyz", timeout=2)
        if status == 200:
            ready.add(json.loads(body)["node"])
        time.sleep(0.02)
    pid = node["pid"]
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [int(p) for p in f.read().split()]
    if len(pids) != workers:
        raise BenchError(f"the supervisor has {len(pids)} children, not {workers}")
    node["workers"] = {f"gateway-a-w{i}": p for i, p in enumerate(sorted(pids), 1)}
    return node


def socket_count(pid: int) -> int:
    """Open sockets of a process (its clients, plus a few of its own)."""
    try:
        return sum(1 for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
    except OSError:
        return -1


def metric_deliveries(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("gateway_deliveries_total{"):
            label = line.split('transport="', 1)[1].split('"', 1)[0]
            out[label] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_publications_total "):
            out["publications"] = float(line.rsplit(" ", 1)[1])
    return out


# -- the publisher ---------------------------------------------------------------------


class Publisher(WSConnection):
    """Publishes over its own WebSocket and matches acks to sends."""

    def __init__(self, port: int, token: str | None = None) -> None:
        super().__init__(LOOPBACK, port, "/ws" if token is None else f"/ws?token={token}")
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent: dict[int, int] = {}
        self.ack_us = array("q")
        self.acks = 0
        self.errors: list[str] = []
        self.all_acked: asyncio.Future[None] | None = None
        self.expected = 0

    def on_open(self) -> None:
        self.opened.set_result(None)

    def on_failed(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError(reason))

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError(f"publisher connection lost: {exc}"))
        if self.all_acked is not None and not self.all_acked.done():
            self.all_acked.set_exception(
                BenchError(
                    f"publisher connection lost: {exc} (close code {self.close_code})"
                )
            )

    def publish(self, channel: str, i: int, pad: str) -> None:
        t = now_us()
        self.sent[i] = t
        msg = {
            "type": "publish",
            "id": i,
            "channel": channel,
            "data": {"i": i, "t": t, "pad": pad},
        }
        self.send_text(json.dumps(msg, separators=(",", ":")).encode())

    def on_text(self, payload: bytes, now: int) -> None:
        obj = json.loads(payload)
        kind = obj.get("type")
        if kind == "ack":
            t = self.sent.pop(obj["id"], None)
            if t is not None:
                self.ack_us.append(now - t)
            self.acks += 1
        elif kind == "error":
            self.sent.pop(obj.get("id"), None)
            if len(self.errors) < 5:
                self.errors.append(f"{obj.get('code')}: {obj.get('message')}")
        if self.all_acked is not None and not self.sent and not self.all_acked.done():
            self.all_acked.set_result(None)


# -- load-generator workers ------------------------------------------------------------


class Worker:
    """One load-generator process and the JSON lines it prints.

    A daemon thread reads its stdout into an asyncio queue (a daemon, so that a
    blocked read can never hold up the interpreter's exit)."""

    def __init__(
        self, proc: subprocess.Popen[Any], name: str, count: int, samples: str
    ) -> None:
        self.proc = proc
        self.name = name
        self.count = count
        self.samples = samples
        self.ready: dict[str, Any] = {}
        self.report: dict[str, Any] = {}
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._pump, args=(loop,), name=f"{name}-stdout", daemon=True
        ).start()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            try:
                line = stdout.readline()
            except (OSError, ValueError):
                line = b""
            try:
                loop.call_soon_threadsafe(self.lines.put_nowait, line)
            except RuntimeError:  # the loop is closed: the benchmark is over
                return
            if not line:
                return

    async def read(self, event: str, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no '{event}' within {timeout:.0f}s")
            try:
                line = await asyncio.wait_for(self.lines.get(), remaining)
            except TimeoutError:
                raise BenchError(
                    f"{self.name}: no '{event}' within {timeout:.0f}s"
                ) from None
            if not line:
                raise BenchError(
                    f"{self.name} exited ({self.proc.poll()}) before '{event}'"
                )
            obj = json.loads(line)
            if obj.get("event") == event:
                return obj

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} exited ({self.proc.poll()})") from None


def start_sub_nodes(
    children: Children, tmp: str, args: argparse.Namespace, redis_url: str, env: dict[str, str], auth_args: list[str]
) -> list[dict[str, Any]]:
    """--redis: the ``--sub-nodes`` subscriber nodes B, C, ..."""
    return [start_gateway(children, tmp, chr(ord("b") + i), redis_url, env, auth_args) for i in range(args.sub_nodes)]


def spawn_workers(
    children: Children,
    args: argparse.Namespace,
    tmp: str,
    ports: list[int],
    channel: str,
    warmup_count: int,
    max_time: float,
    sub_token: str | None = None,
) -> list[Worker]:
    """``--clients`` load generators, each on one of ``ports`` in turn (the
    subscriber nodes), the subscribers split evenly between them."""
    n = args.subscribers
    k = max(1, min(args.clients, n))
    workers = []
    for w in range(k):
        count = n // k + (1 if w < n % k else 0)
        port = ports[w % len(ports)]
        samples = os.path.join(tmp, f"latency-{w}.bin")
        argv = [
            sys.executable, os.path.join(HERE, "loadclient.py"),
            "--port", str(port), "--transport", args.transport, "--channel", channel, "--count", str(count),
            "--warmup-count", str(warmup_count), "--samples", samples, "--max-time", str(max_time),
            "--connect-concurrency", str(args.connect_concurrency), "--poll-timeout", str(args.poll_timeout),
        ]  # fmt: skip
        if sub_token is not None:
            argv += ["--token", sub_token]
        proc = children.popen(
            f"client-{w}",
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr_path=os.path.join(tmp, f"client-{w}.stderr"),
        )
        workers.append(Worker(proc, f"client-{w}", count, samples))
    return workers


# -- profiling (optional, py-spy must be installed separately) -------------------------


def start_profilers(
    children: Children, args: argparse.Namespace, nodes: list[dict[str, Any]], tmp: str
) -> list[tuple[str, Any]]:
    py_spy = shutil.which("py-spy")
    if not py_spy:
        raise BenchError(
            "--py-spy needs py-spy on PATH (pip install py-spy; it is not a project dependency)"
        )
    out = []
    for node in dict((n["name"], n) for n in nodes).values():
        path = f"{args.py_spy}-{node['name']}.txt"
        argv = [
            py_spy,
            "record",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            "200",
            "--duration",
            str(max(1, int(args.duration))),
            "--pid",
            str(node["pid"]),
            "--output",
            path,
        ]
        proc = children.popen(
            f"py-spy-{node['name']}",
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr_path=os.path.join(tmp, f"py-spy-{node['name']}.log"),
            die_with_parent=False,  # threads exist by now; py-spy stops after --duration
        )
        out.append((path, proc))
    return out


def finish_profilers(
    profilers: list[tuple[str, Any]], args: argparse.Namespace
) -> None:
    for path, proc in profilers:
        try:
            proc.wait(args.duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if os.path.exists(path):
            log(
                f"py-spy profile (collapsed stacks) in {path}; top functions:\n{top_functions(path)}"
            )


def top_functions(path: str, n: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_s)
            total += count
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                incl[frame] = incl.get(frame, 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{'self%':>6} {'incl%':>6}  function (file:line)   [{total} samples]"]
    for frame, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(
            f"{100 * c / total:6.1f} {100 * incl[frame] / total:6.1f}  {frame}"
        )
    return "\n".join(lines)


# -- measurement -------------------------------------------------------------------------


def snapshot(procs: dict[str, int], redis_port: int | None) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "mono": time.monotonic(),
        "cpu": {name: cpu_seconds(pid) for name, pid in procs.items()},
        "self": sum(os.times()[:2]),
        "machine": machine_cpu(),
    }
    if redis_port is not None:
        snap["cmd"] = commandstats(redis_port)
    return snap


def percentile(sorted_values: Any, q: float) -> float:
    if not len(sorted_values):
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[idx])


async def run_bench(
    args: argparse.Namespace, children: Children, tmp: str
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    redis = None
    redis_url = None
    src, commit = args.gateway_src, None
    if args.snapshot:
        src, commit = snapshot_source(args.snapshot, tmp)
        log(f"gateway code: git archive of {commit} in {src}")
    env = gateway_env(src)
    source = source_info(src, commit)
    if source.get("uncommitted"):
        log(
            f"note: measuring the working tree with uncommitted changes in {source['uncommitted']}"
        )
    auth_args, sub_token, pub_token = auth_setup(args.auth, tmp)
    if args.auth != "none":
        log(f"authentication: {args.auth} JWT on the upgrade (token=)")
    channel = f"bench:fanout:{os.getpid()}:{int(time.time())}"
    if args.workers:
        redis = start_redis(children, tmp)
        redis_url = f"redis://{LOOPBACK}:{redis['port']}/0"
        log(f"redis-server pid {redis['pid']} on port {redis['port']}")
        node_a = start_workers_gateway(children, tmp, redis_url, args.workers, env, auth_args)
        pub_node, sub_nodes = node_a, [node_a]
        log(
            f"gateway supervisor pid {node_a['pid']} on port {node_a['port']}, workers {node_a['workers']}; "
            "publisher and subscribers on that one port"
        )
    elif args.redis and args.cluster:
        redis, redis_url = start_cluster(children, tmp, channel)
        log(f"3-master cluster {redis_url}; the channel's slot is on port {redis['port']} (its figures below)")
        node_a = start_gateway(children, tmp, "a", redis_url, env, auth_args)
        pub_node, sub_nodes = node_a, start_sub_nodes(children, tmp, args, redis_url, env, auth_args)
    elif args.redis:
        redis = start_redis(children, tmp)
        redis_url = f"redis://{LOOPBACK}:{redis['port']}/0"
        log(f"redis-server pid {redis['pid']} on port {redis['port']}")
        if args.sentinel:
            redis_url = start_sentinels(children, tmp, redis["port"])
            log(f"a replica and three Sentinels: {redis_url}")
        node_a = start_gateway(children, tmp, "a", redis_url, env, auth_args)
        pub_node, sub_nodes = node_a, start_sub_nodes(children, tmp, args, redis_url, env, auth_args)
    else:
        node_a = start_gateway(children, tmp, "a", None, env, auth_args)
        pub_node, sub_nodes = node_a, [node_a]
        log(f"gateway pid {node_a['pid']} on port {node_a['port']}")
    if args.redis:
        log(
            f"gateway nodes: {pub_node['name']} (publisher) pid {pub_node['pid']} port {pub_node['port']}; "
            + "; ".join(f"{n['name']} (subscribers) pid {n['pid']} port {n['port']}" for n in sub_nodes)
        )
    # Every gateway node, the publisher's first.
    nodes = list({id(n): n for n in [pub_node, *sub_nodes]}.values())

    warmup_count = int(round(args.warmup * args.rate))
    measured = max(1, int(round(args.duration * args.rate)))
    total = warmup_count + measured
    connect_budget = 30.0 + args.subscribers / 20.0
    max_time = connect_budget + total / args.rate + args.drain + 60.0

    t_connect = time.monotonic()
    workers = spawn_workers(
        children, args, tmp, [n["port"] for n in sub_nodes], channel, warmup_count, max_time, sub_token
    )
    readies = await asyncio.gather(*(w.read("ready", connect_budget) for w in workers))
    for w, r in zip(workers, readies):
        w.ready = r
    subscribed = sum(r["ok"] for r in readies)
    failed = sum(r["failed"] for r in readies)
    connect_s = time.monotonic() - t_connect
    log(
        f"{subscribed} subscribers ready over {len(workers)} client processes in {connect_s:.1f}s ({failed} failed)"
    )
    if failed:
        errs = sorted({e for r in readies for e in r["errors"]})
        log(f"subscribe failures: {errs[:5]}")
    if subscribed == 0:
        raise BenchError("no subscriber could subscribe")

    _, publisher = await loop.create_connection(
        lambda: Publisher(pub_node["port"], pub_token), LOOPBACK, pub_node["port"]
    )
    await asyncio.wait_for(publisher.opened, 10)

    procs = {n["name"]: n["pid"] for n in nodes}
    for n in nodes:
        procs.update(n.get("workers", {}))
    if redis:
        procs["redis-server"] = redis["pid"]
    for w in workers:
        procs[w.name] = w.proc.pid

    # With --workers, /metrics is answered by whichever worker takes the connection.
    metrics0 = {
        n["name"]: metric_deliveries(n["port"])
        for n in nodes
    } if not args.workers else {}
    idle: dict[str, Any] = {}
    if redis:
        # The nodes' own background traffic (health pings...), to compare with.
        s0 = snapshot(procs, redis["port"])
        await asyncio.sleep(args.idle)
        s1 = snapshot(procs, redis["port"])
        idle_calls = {
            k: v - s0["cmd"].get(k, 0)
            for k, v in s1["cmd"].items()
            if k != "info" and v - s0["cmd"].get(k, 0)
        }
        dt = s1["mono"] - s0["mono"]
        idle = {
            "seconds": round(dt, 2),
            "redis_calls_per_s": round(sum(idle_calls.values()) / dt, 1),
            "by_command": idle_calls,
        }

    pad = "x" * args.payload_bytes
    log(
        f"publishing {total} messages at {args.rate:g}/s ({warmup_count} warm-up, then {measured} measured) on node {pub_node['name']}"
    )
    publisher.all_acked = loop.create_future()
    publisher.expected = total
    start = loop.time() + 0.05
    max_late = 0.0
    snap0: dict[str, Any] = {}
    t_first_send_us = 0
    for i in range(total):
        target = start + i / args.rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            max_late = max(max_late, -delay)
            await asyncio.sleep(0)  # let acks in
        if i == warmup_count:
            snap0 = snapshot(procs, redis["port"] if redis else None)
            t_first_send_us = now_us()
            if args.py_spy:
                profilers = start_profilers(
                    children, args, nodes, tmp
                )
        if publisher.transport.is_closing():
            raise BenchError(
                f"publisher connection closed (close code {publisher.close_code})"
            )
        publisher.publish(channel, i, pad)
    if args.py_spy:
        await loop.run_in_executor(None, finish_profilers, profilers, args)
    for w in workers:
        w.send(f"finish {total - 1} {args.drain}")
    completes = await asyncio.gather(
        *(w.read("complete", args.drain + 30) for w in workers)
    )
    snap1 = snapshot(procs, redis["port"] if redis else None)
    try:
        await asyncio.wait_for(asyncio.shield(publisher.all_acked), 5)
    except (TimeoutError, BenchError) as e:
        log(f"not every publish was acknowledged: {e or 'timeout'}")
    for w in workers:
        w.send("report")
    reports = await asyncio.gather(*(w.read("report", 60) for w in workers))
    for w, r in zip(workers, reports):
        w.report = r
    publisher.transport.close()
    metrics1 = {
        n["name"]: metric_deliveries(n["port"])
        for n in nodes
    } if not args.workers else {}
    worker_sockets = {name: socket_count(pid) for name, pid in node_a.get("workers", {}).items()}

    # -- figures ------------------------------------------------------------------
    lat, lat_cb = array("q"), array("q")
    for w in workers:
        with open(w.samples, "rb") as f:
            lat.frombytes(f.read())
        with open(w.samples + ".cb", "rb") as f:
            lat_cb.frombytes(f.read())
    lat_sorted = sorted(lat)
    lat_cb_sorted = sorted(lat_cb)
    del lat, lat_cb
    n_samples = len(lat_sorted)
    live_subs = sum(r["subscribers"] for r in reports)
    expected = measured * live_subs
    last_recv = max(r["last_recv_us"] for r in reports)
    window_s = (
        max(1e-6, (last_recv - t_first_send_us) / 1e6) if n_samples else float("nan")
    )
    cpu_wall = snap1["mono"] - snap0["mono"]

    def cpu_delta(name: str) -> float:
        a, b = snap0["cpu"].get(name), snap1["cpu"].get(name)
        return (b - a) if a is not None and b is not None else float("nan")

    def node_cpu(node: dict[str, Any]) -> float:
        """A node's CPU: with --workers, the supervisor's and every worker's."""
        return cpu_delta(node["name"]) + sum(cpu_delta(w) for w in node.get("workers", {}))

    m0, m1 = snap0["machine"], snap1["machine"]
    mdelta = {k: m1[k] - m0[k] for k in m0}
    ncpu = os.cpu_count() or 1
    ours = sum(cpu_delta(n) for n in procs) + (snap1["self"] - snap0["self"])
    machine_busy = mdelta["total"] - mdelta["idle"]

    def ms(us: float) -> float:
        return round(us / 1000.0, 3)

    clients = []
    for w in workers:
        c = cpu_delta(w.name)
        clients.append(
            {
                "name": w.name,
                "subscribers": w.report["subscribers"],
                "cpu_s": round(c, 3),
                "cpu_pct_of_core": round(100 * c / cpu_wall, 1),
                "loop_lag_ms": w.report["loop_lag"],
            }
        )
    servers = {}
    for node in nodes:
        c = cpu_delta(node["name"])
        servers[node["name"]] = {
            "cpu_s": round(c, 3),
            "cpu_pct_of_core": round(100 * c / cpu_wall, 1),
        }
        for name in node.get("workers", {}):
            c = cpu_delta(name)
            servers[name] = {
                "cpu_s": round(c, 3),
                "cpu_pct_of_core": round(100 * c / cpu_wall, 1),
                "sockets_at_end": worker_sockets[name],
            }
    sub_cpu = sum(node_cpu(n) for n in sub_nodes)

    result: dict[str, Any] = {
        "transport": args.transport,
        "gateway_source": source,
        "mode": f"workers-{args.workers}" if args.workers else ("redis-sentinel-cross-node" if args.sentinel else "redis-cluster-cross-node" if args.cluster else "redis-cross-node") if args.redis else "single-node",
        "publisher_node": pub_node["name"],
        "subscriber_nodes": [n["name"] for n in sub_nodes],
        "subscribers_requested": args.subscribers,
        "subscribers": live_subs,
        "subscribe_failures": failed,
        "client_processes": len(workers),
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "warmup_publications": warmup_count,
        "publications_measured": measured,
        "payload_pad_bytes": args.payload_bytes,
        "connect_s": round(connect_s, 2),
        "publisher_max_late_ms": round(max_late * 1000, 2),
        "publish_ack_ms": {
            "p50": ms(percentile(sorted(publisher.ack_us), 0.5)),
            "p99": ms(percentile(sorted(publisher.ack_us), 0.99)),
        },
        "publish_errors": publisher.errors,
        "deliveries_expected": expected,
        "deliveries_received": n_samples,
        "deliveries_missing": expected - n_samples,
        "deliveries_per_s": round(n_samples / window_s, 1) if n_samples else 0,
        "offered_deliveries_per_s": round(args.rate * live_subs, 1),
        "window_s": round(window_s, 3),
        "latency_ms": {
            "p50": ms(percentile(lat_sorted, 0.50)),
            "p90": ms(percentile(lat_sorted, 0.90)),
            "p99": ms(percentile(lat_sorted, 0.99)),
            "p999": ms(percentile(lat_sorted, 0.999)),
            "max": ms(lat_sorted[-1]) if n_samples else None,
            "mean": ms(sum(lat_sorted) / n_samples) if n_samples else None,
        },
        "latency_at_client_callback_ms": {
            "p50": ms(percentile(lat_cb_sorted, 0.50)),
            "p99": ms(percentile(lat_cb_sorted, 0.99)),
            "max": ms(lat_cb_sorted[-1]) if n_samples else None,
        },
        "server": servers,
        "server_cpu_us_per_delivery": round(sub_cpu * 1e6 / n_samples, 2)
        if n_samples
        else None,
        "clients": clients,
        "publisher_process_cpu_pct_of_core": round(
            100 * (snap1["self"] - snap0["self"]) / cpu_wall, 1
        ),
        "cpu_window_s": round(cpu_wall, 3),
        "machine": {
            "cores": ncpu,
            "busy_pct_of_all_cores": round(100 * machine_busy / mdelta["total"], 1)
            if mdelta["total"] > 0
            else None,
            "user_s": round(mdelta["user"], 2),
            "system_s": round(mdelta["system"], 2),
            "irq_softirq_s": round(mdelta["irq"], 2),
            "ours_cpu_s": round(ours, 3),
            "others_cpu_s": round(
                max(0.0, mdelta["user"] + mdelta["system"] - ours), 3
            ),
        },
        "checks": {
            "complete": all(c["complete"] for c in completes),
            "incomplete_subscribers": sum(r["incomplete"] for r in reports),
            "gaps": sum(r["gaps"] for r in reports),
            "duplicates": sum(r["dups"] for r in reports),
            "resets": sum(r["resets"] for r in reports),
            "closed_during_run": sum(r["closed_during_run"] for r in reports),
            "close_codes": {k: v for r in reports for k, v in r["close_codes"].items()},
            "client_errors": sorted({e for r in reports for e in r["errors"]})[:5],
            "server_metrics_deliveries": {
                name: {k: v - metrics0[name].get(k, 0) for k, v in m.items()}
                for name, m in metrics1.items()
            },
            "client_received_total_incl_warmup": sum(
                r["received_total"] for r in reports
            ),
        },
    }
    if args.transport == "poll":
        result["polls"] = sum(r["polls"] for r in reports)
    if redis:
        cmd0, cmd1 = snap0["cmd"], snap1["cmd"]
        calls = {
            k: v - cmd0.get(k, 0)
            for k, v in cmd1.items()
            if k != "info" and v - cmd0.get(k, 0)
        }
        rc = cpu_delta("redis-server")
        idle_in_window = idle.get("redis_calls_per_s", 0) * cpu_wall
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
        result["redis"] = {
            # commandstats counts the commands a Lua script runs as well as the
            # EVALSHA that ran it, and the nodes' background PINGs.
            "commands_per_publication": round(sum(calls.values()) / measured, 2),
            "commands_per_publication_excl_idle": round(
                (sum(calls.values()) - idle_in_window) / measured, 2
            ),
            "scripts_per_publication": round(scripts / measured, 2),
            "by_command": calls,
            "idle_before": idle,
            "idle_calls_in_window_estimate": round(
                idle.get("redis_calls_per_s", 0) * cpu_wall, 1
            ),
            "redis_cpu_pct_of_core": round(100 * rc / cpu_wall, 1),
            "redis_cpu_us_per_publication": round(rc * 1e6 / measured, 1),
            "publisher_node_cpu_us_per_publication": round(
                node_cpu(pub_node) * 1e6 / measured, 1
            ),
        }
    warnings = []
    for client in clients:
        if client["cpu_pct_of_core"] > 100 * CLIENT_CPU_WARN:
            warnings.append(
                f"{client['name']} used {client['cpu_pct_of_core']}% of a core: the load generator may be a bottleneck; use more --clients"
            )
    if (
        result["machine"]["busy_pct_of_all_cores"]
        and result["machine"]["busy_pct_of_all_cores"] > 90
    ):
        warnings.append(
            f"the machine was {result['machine']['busy_pct_of_all_cores']}% busy: server and clients competed for CPU"
        )
    if result["machine"]["others_cpu_s"] > 0.1 * cpu_wall:
        warnings.append(
            f"other processes used {result['machine']['others_cpu_s']} CPU-s during the window: figures are disturbed"
        )
    if max_late > 0.05:
        warnings.append(
            f"the publisher fell behind its schedule by up to {max_late * 1000:.0f} ms"
        )
    if expected != n_samples:
        warnings.append(
            f"{expected - n_samples} of {expected} deliveries did not arrive within the drain time"
        )
    if failed:
        warnings.append(f"{failed} subscribers failed to subscribe")
    result["warnings"] = warnings
    return result


def summary(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"gateway fan-out: transport={r['transport']} mode={r['mode']} subscribers={r['subscribers']} "
        f"over {r['client_processes']} client processes, {r['rate_per_s']:g} pub/s for {r['duration_s']:g}s "
        f"({r['publications_measured']} measured publications, pad {r['payload_pad_bytes']} B)",
        f"  deliveries: {r['deliveries_received']}/{r['deliveries_expected']} received, "
        f"{r['deliveries_per_s']:.0f}/s (offered {r['offered_deliveries_per_s']:.0f}/s)",
        f"  latency publish->receive: p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
        f"p99.9 {lat['p999']} ms, max {lat['max']} ms (receive = client event-loop wake-up)",
        f"  same, at the client's callback: p50 {r['latency_at_client_callback_ms']['p50']} ms, "
        f"p99 {r['latency_at_client_callback_ms']['p99']} ms (includes the load generator's own queueing)",
        f"  publish->ack: p50 {r['publish_ack_ms']['p50']} ms, p99 {r['publish_ack_ms']['p99']} ms",
    ]
    for name, s in r["server"].items():
        lines.append(f"  server {name}: {s['cpu_pct_of_core']}% of a core")
    lines.append(
        f"  server CPU per delivery (subscriber node{'s ' + ', '.join(r['subscriber_nodes']) if len(r['subscriber_nodes']) > 1 else ''}"
        f"{', supervisor and workers' if r['mode'].startswith('workers') else ''}): {r['server_cpu_us_per_delivery']} us"
    )
    for c in r["clients"]:
        lines.append(
            f"  load generator {c['name']} ({c['subscribers']} subs): {c['cpu_pct_of_core']}% of a core, "
            f"event-loop lag p99 {c['loop_lag_ms']['p99_ms']} ms max {c['loop_lag_ms']['max_ms']} ms"
        )
    lines.append(
        f"  publisher/orchestrator: {r['publisher_process_cpu_pct_of_core']}% of a core"
    )
    m = r["machine"]
    lines.append(
        f"  machine: {m['busy_pct_of_all_cores']}% busy over {m['cores']} cores in {r['cpu_window_s']} s: "
        f"user {m['user_s']} s, system {m['system_s']} s, irq/softirq {m['irq_softirq_s']} s; "
        f"our processes {m['ours_cpu_s']} CPU-s, other processes ~{m['others_cpu_s']} CPU-s"
    )
    if "redis" in r:
        rd = r["redis"]
        lines.append(
            f"  redis: {rd['commands_per_publication']} commands/publication ({rd['commands_per_publication_excl_idle']} without the idle rate; "
            f"{rd['scripts_per_publication']} script runs/publication; commands inside scripts count too) {rd['by_command']}, "
            f"idle {rd['idle_before'].get('redis_calls_per_s')} calls/s; redis-server {rd['redis_cpu_pct_of_core']}% of a core, "
            f"{rd['redis_cpu_us_per_publication']} us/publication; publisher node {rd['publisher_node_cpu_us_per_publication']} us/publication"
        )
    if "polls" in r:
        lines.append(f"  polls issued: {r['polls']}")
    ch = r["checks"]
    lines.append(
        f"  checks: complete={ch['complete']} gaps={ch['gaps']} dups={ch['duplicates']} resets={ch['resets']} "
        f"closed={ch['closed_during_run']} server-metrics={ch['server_metrics_deliveries']}"
    )
    for w in r["warnings"]:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def auth_setup(kind: str, tmp: str) -> tuple[list[str], str | None, str | None]:
    """Gateway options and the subscribers' and publisher's tokens for ``--auth``."""
    if kind == "none":
        return [], None, None
    import jwt

    claims = {"exp": int(time.time()) + 3600}
    if kind == "hs256":
        secret = "bench-secret-" + "x" * 32
        key, alg, args = secret, "HS256", ["--jwt-secret", secret]
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rs256" else ec.generate_private_key(ec.SECP256R1())
        path = os.path.join(tmp, "jwt-public.pem")
        with open(path, "wb") as f:
            f.write(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        key, alg, args = private, kind.upper(), ["--jwt-public-key", path]
    sub = jwt.encode({**claims, "sub": "subscriber", "subscribe": ["bench:*"]}, key, alg)
    pub = jwt.encode({**claims, "sub": "publisher", "publish": ["bench:*"]}, key, alg)
    return args, sub, pub


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Gateway fan-out benchmark (see bench/README.md)."
    )
    p.add_argument(
        "--auth",
        choices=["none", "hs256", "rs256", "es256"],
        default="none",
        help="subscribers and publisher authenticate with a JWT of this kind (default none)",
    )
    p.add_argument(
        "--transport",
        choices=["ws", "sse", "poll"],
        default="ws",
        help="subscriber transport (default ws)",
    )
    p.add_argument(
        "--redis",
        action="store_true",
        help="cross-node: own redis-server, publisher on node A, subscribers on node B",
    )
    p.add_argument(
        "--sub-nodes",
        type=int,
        default=1,
        help="with --redis: gateway nodes the subscribers are spread over (B, C, ...), the publisher on node A (default 1)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="with --redis: a 3-master Redis Cluster instead of one redis-server (the channel lives on one of them)",
    )
    p.add_argument(
        "--sentinel",
        action="store_true",
        help="with --redis: the nodes reach the redis-server through three Sentinels (a replica follows it)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="one gateway run with --workers N (and its own redis-server); publisher and subscribers "
        "connect to its one port, so the kernel spreads them over the workers",
    )
    p.add_argument(
        "--subscribers",
        type=int,
        default=None,
        help="subscribers on the channel (default 1000)",
    )
    p.add_argument(
        "--clients", type=int, default=4, help="load-generator processes (default 4)"
    )
    p.add_argument(
        "--rate", type=float, default=20.0, help="publications per second (default 20)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured seconds of publishing (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of publishing before measuring (default 1)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="seconds to wait for the last deliveries (default 10)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="--redis: idle seconds to measure background Redis traffic (default 2)",
    )
    p.add_argument(
        "--payload-bytes",
        type=int,
        default=64,
        help="padding in each publication's data (default 64)",
    )
    p.add_argument(
        "--poll-timeout",
        type=float,
        default=25.0,
        help="poll: hold time asked for (default 25)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=16,
        help="connections each client process opens at once (default 16)",
    )
    p.add_argument(
        "--gateway-src",
        default=None,
        help="run the gateway from this source tree (PYTHONPATH) instead of the installed one",
    )
    p.add_argument(
        "--snapshot",
        metavar="GIT_REF",
        default=None,
        help="run the gateway from a git archive of GIT_REF (e.g. HEAD), not the working tree",
    )
    p.add_argument(
        "--py-spy",
        metavar="PREFIX",
        default=None,
        help="profile the subscriber node (and publisher node) with py-spy during the measured window; writes PREFIX-<node>.txt (figures of a profiled run are disturbed)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line on stdout (the summary goes to stderr)",
    )
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temp dir with gateway/redis logs",
    )
    args = p.parse_args(argv)
    if args.subscribers is None:
        args.subscribers = DEFAULT_SUBSCRIBERS[args.transport]
    if args.workers is not None and not 1 <= args.workers <= 16:
        p.error("--workers must be between 1 and 16")
    if args.subscribers < 1 or args.clients < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--subscribers, --clients, --rate and --duration must be positive")
    if (args.sentinel or args.cluster) and not args.redis:
        p.error("--sentinel and --cluster need --redis")
    if args.sentinel and args.cluster:
        p.error("--sentinel or --cluster, not both")
    if args.sub_nodes != 1 and not args.redis:
        p.error("--sub-nodes needs --redis")
    if not 1 <= args.sub_nodes <= min(4, args.clients):
        p.error("--sub-nodes must be 1 to 4 and at most --clients (each node needs a load generator)")
    if (
        args.subscribers > 20000
        or args.clients > 16
        or args.rate * (args.duration + args.warmup) > 1_000_000
    ):
        p.error(
            "refusing an unbounded run: at most 20000 subscribers, 16 clients, 1e6 publications"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    children = Children()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        result = asyncio.run(run_bench(args, children, tmp))
        text = summary(result)
        if args.json:
            print(text, file=sys.stderr)
            print(json.dumps(result, separators=(",", ":")))
        else:
            print(text)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        killed = children.stop_all()
        if killed:
            log(f"had to SIGKILL: {', '.join(killed)}")
        for name, proc in children.procs:
            if name.startswith("gateway") and proc.returncode not in (
                0,
                None,
                -signal.SIGTERM,
            ):
                log(f"{name} exited with {proc.returncode}")
        if args.keep_tmp or rc == 1:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
