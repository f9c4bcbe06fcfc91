"""Presence cost (docs/protocol.md section 11): join/leave storms and query time.

Starts its own redis-server and one gateway node (``twistd -n gateway --redis ...
--jwt-secret ...``) on free ports, then:

1. **Join storm**: ``--clients`` WebSockets, each a distinct identity (a JWT ``sub``),
   connect and subscribe to one channel as fast as they can (``--concurrency`` at a
   time; 1,000 take well under a second); it waits until ``GET /presence`` counts
   them all.  **Leave storm**: they all close; it waits until the count is 0.  For
   each storm: the node's CPU per client (from /proc, so the load generator does not
   count) and the Redis calls per client (``INFO commandstats``: every EVAL/EVALSHA
   of presence.lua plus anything else the node sent meanwhile), and the wall time.
2. **Query time**: a second channel is filled with ``--members`` members (1,000 and
   10,000 by default) the way another node would (presence.lua with a node id of its
   own); then ``GET /presence`` of the first page (1,000 members) and of every page
   in turn is timed ``--queries`` times, from this process over HTTP.

    python bench/presence.py                       # 1,000 clients; queries at 1k and 10k members
    python bench/presence.py --clients 3000 --members 1000 10000 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fanout import start_gateway, start_redis
from loadclient import WSConnection
from procs import LOOPBACK, Children, commandstats, cpu_seconds, http_get, redis_command

SECRET = "bench-presence-secret-" + "x" * 32
CHANNEL = "bench:presence"
FILLED = "bench:filled"
LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gateway", "broker", "lua", "presence.lua")


def token(sub: str) -> str:
    import jwt

    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600, "subscribe": ["bench:*"]}, SECRET, "HS256")


class Client(WSConnection):
    def __init__(self, port: int, tok: str, done: asyncio.Future[str]) -> None:
        super().__init__(LOOPBACK, port, f"/ws?token={tok}")
        self.done = done

    def on_open(self) -> None:
        self.send_text(json.dumps({"type": "subscribe", "channel": CHANNEL, "id": 1}).encode())

    def on_text(self, payload: bytes, now: int) -> None:
        if not self.done.done():
            self.done.set_result(json.loads(payload).get("type"))

    def on_failed(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(reason))


QUERIES = [0]


def presence(port: int, channel: str, **params: str) -> dict:
    QUERIES[0] += 1
    query = urllib.parse.urlencode({"channel": channel, "token": ADMIN, **params})
    status, body = http_get(port, f"/presence?{query}")
    if status != 200:
        raise RuntimeError(f"/presence answered {status}: {body[:200]!r}")
    return json.loads(body)


def wait_count(port: int, channel: str, want: int, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while True:
        if presence(port, channel, limit="1")["count"] == want:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"presence count did not reach {want}")
        time.sleep(0.005)


def round_trips(port: int) -> int:
    """Commands clients sent to Redis (``INFO commandstats`` also counts the commands
    a script runs: those are left out), minus this process's INFO calls, and minus the
    ``GET /presence`` script calls this benchmark made itself."""
    return sum(by_command(port).values()) - QUERIES[0]


INNER = {"hget", "hset", "hdel", "zadd", "zrem", "zrangebyscore", "zrangebylex", "zcard", "hmget", "get", "set", "del", "pttl", "pexpire", "publish", "time",
         "hincrby", "rpush", "lpush", "ltrim", "lrange", "lindex", "llen", "expire", "hmset", "hgetall", "exists", "lpop", "incr"}


def by_command(port: int) -> dict[str, int]:
    stats = commandstats(port)
    return {name: n for name, n in stats.items() if name != "info" and name not in INNER}


def _unused(port: int) -> int:
    stats = commandstats(port)
    inner = {"hget", "hset", "hdel", "zadd", "zrem", "zrangebyscore", "zrangebylex", "zcard", "hmget", "get", "set", "del", "pttl", "pexpire", "publish", "time"}
    return sum(n for name, n in stats.items() if name != "info" and name not in inner) - QUERIES[0]


def node_updates(port: int) -> int:
    """The node's own count of presence script calls (gateway_presence_updates_total)."""
    status, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("gateway_presence_updates_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("no gateway_presence_updates_total in /metrics")


async def storm(port: int, pid: int, redis_port: int, count: int, concurrency: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    tokens = [token(f"user{i:06d}") for i in range(count)]
    clients: list[Client] = []

    async def one(tok: str) -> str:
        async with sem:
            done: asyncio.Future[str] = loop.create_future()
            _, proto = await loop.create_connection(lambda: Client(port, tok, done), LOOPBACK, port)
            clients.append(proto)
            return await asyncio.wait_for(done, 60)

    cmds0 = by_command(redis_port)
    q0 = QUERIES[0]
    calls0, evals0, cpu0, t0 = round_trips(redis_port), node_updates(port), cpu_seconds(pid) or 0.0, time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in tokens), return_exceptions=True)
    connected = time.perf_counter() - t0
    ok = sum(1 for r in results if r == "subscribed")
    await loop.run_in_executor(None, wait_count, port, CHANNEL, ok)
    joined = time.perf_counter() - t0
    cpu1, calls1, evals1 = cpu_seconds(pid) or 0.0, round_trips(redis_port), node_updates(port)
    cmds1 = by_command(redis_port)
    breakdown = {k: cmds1.get(k, 0) - cmds0.get(k, 0) for k in cmds1 if cmds1.get(k, 0) != cmds0.get(k, 0)}
    breakdown["(of which this benchmark's /presence polls)"] = QUERIES[0] - q0

    t1 = time.perf_counter()
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await loop.run_in_executor(None, wait_count, port, CHANNEL, 0)
    left = time.perf_counter() - t1
    cpu2, calls2, evals2 = cpu_seconds(pid) or 0.0, round_trips(redis_port), node_updates(port)
    return {
        "ok": ok,
        "connect_s": connected,
        "join_s": joined,
        "join_cpu_us": (cpu1 - cpu0) / max(ok, 1) * 1e6,
        "join_redis_calls": calls1 - calls0,
        "join_presence_evals": evals1 - evals0,
        "leave_s": left,
        "leave_cpu_us": (cpu2 - cpu1) / max(ok, 1) * 1e6,
        "leave_redis_calls": calls2 - calls1,
        "leave_presence_evals": evals2 - evals1,
        "join_breakdown": breakdown,
    }


def fill(redis_port: int, members: int) -> None:
    """Put ``members`` subs in FILLED the way a node would (presence.lua, chunks of 1,000)."""
    script = open(LUA).read()
    sha = redis_command(redis_port, "SCRIPT", "LOAD", script)
    base = "gateway:{" + FILLED + "}:"
    keys = [base + k for k in ("pe", "pc", "pt", "ps", "pa")]
    redis_command(redis_port, "DEL", *keys)
    owner = "bench-filler"
    for start in range(0, members, 1000):
        args = ["u", "gateway:0:pub:" + FILLED]
        for i in range(start, min(members, start + 1000)):
            sub = f"member{i:06d}"
            args += [f"s{len(owner)}:{owner}{sub}", "1", "3600000"]
        redis_command(redis_port, "EVALSHA", sha, "5", *keys, *args, timeout=30)


def time_queries(port: int, queries: int, members: int) -> dict[str, float]:
    first = []
    for _ in range(queries):
        t0 = time.perf_counter()
        body = presence(port, FILLED)
        first.append(time.perf_counter() - t0)
        assert body["count"] == members and len(body["members"]) == min(1000, members), body["count"]
    walk = []
    for _ in range(max(1, queries // 10)):
        t0 = time.perf_counter()
        seen, after = 0, None
        while True:
            body = presence(port, FILLED, **({"after": after} if after else {}))
            seen += len(body["members"])
            after = body.get("next")
            if after is None:
                break
        walk.append(time.perf_counter() - t0)
        assert seen == members, seen
    first.sort()
    return {
        "first_p50_ms": statistics.median(first) * 1e3,
        "first_p95_ms": first[int(len(first) * 0.95) - 1] * 1e3,
        "walk_ms": statistics.median(walk) * 1e3,
        "pages": -(-members // 1000),
    }


ADMIN = ""


def bookkeeping(count: int) -> dict[str, float]:
    """CPU of the node-side presence work alone, in this process: ``count`` joins and
    then ``count`` leaves through NodePresence, batched, with the script arguments built
    as RedisBroker.presence_update builds them (no I/O)."""
    import math

    from gateway.core.presence import NodePresence

    def args_of(changes: list) -> int:
        out: list[str] = []
        for c in changes:
            out.extend((c.member, str(c.count), str(max(1, math.ceil(c.ttl * 1000)))))
        return len(out)

    node = NodePresence("bench-node", 30.0)
    subs = [f"user{i:06d}" for i in range(count)]
    t0 = time.process_time()
    for sub in subs:
        node.connection_added(CHANNEL, sub)
    args_of(node.take_changes())
    t1 = time.process_time()
    for sub in subs:
        node.connection_removed(CHANNEL, sub)
    args_of(node.take_changes())
    t2 = time.process_time()
    return {"join_us": (t1 - t0) / count * 1e6, "leave_us": (t2 - t1) / count * 1e6}


def main() -> int:
    global ADMIN
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--members", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--presence-ttl", type=float, default=30.0)
    args = p.parse_args()
    if args.clients > 20000 or max(args.members) > 200000:
        p.error("at most 20,000 clients and 200,000 members")
    ADMIN = token("bench-admin")
    children = Children()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            redis = start_redis(children, tmp)
            url = f"redis://{LOOPBACK}:{redis['port']}/0"
            node = start_gateway(children, tmp, "a", url, None, ["--jwt-secret", SECRET, "--presence-ttl", str(args.presence_ttl)])
            port, pid = node["port"], node["pid"]
            # Warm-up: imports and first-use caches.
            asyncio.run(storm(port, pid, redis["port"], 50, 10))
            r = asyncio.run(storm(port, pid, redis["port"], args.clients, args.concurrency))
            print(f"Join/leave storm: {r['ok']}/{args.clients} WebSocket clients (distinct subs, {args.concurrency} connecting at a time), one channel, one node on Redis")
            print("| storm | wall s (until /presence agrees) | node CPU µs per client | node's Redis commands | of which presence script calls | Redis commands per client |")
            print("|---|---|---|---|---|---|")
            print(f"| join ({r['connect_s']:.2f} s to connect) | {r['join_s']:.2f} | {r['join_cpu_us']:,.0f} | {r['join_redis_calls']} | {r['join_presence_evals']} | {r['join_redis_calls'] / max(r['ok'], 1):.3f} |")
            print(f"| leave | {r['leave_s']:.2f} | {r['leave_cpu_us']:,.0f} | {r['leave_redis_calls']} | {r['leave_presence_evals']} | {r['leave_redis_calls'] / max(r['ok'], 1):.3f} |")
            print(f"Join storm commands by name: {r['join_breakdown']}")
            b = bookkeeping(args.clients)
            print(f"Node-side presence bookkeeping alone (NodePresence + script arguments, in-process): {b['join_us']:.2f} µs per join, {b['leave_us']:.2f} µs per leave")
            print()
            print(f"Query time, GET /presence over HTTP ({args.queries} queries each), members filled in Redis as another node would")
            print("| members | first page (1,000) p50 ms | p95 ms | all pages, ms | pages |")
            print("|---|---|---|---|---|")
            for members in args.members:
                fill(redis["port"], members)
                q = time_queries(port, args.queries, members)
                print(f"| {members:,} | {q['first_p50_ms']:.1f} | {q['first_p95_ms']:.1f} | {q['walk_ms']:.0f} | {q['pages']} |")
        finally:
            children.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
