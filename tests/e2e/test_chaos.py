"""Chaos: two real `twistd -n gateway --redis` nodes, thousands of publications, WebSocket and
long-poll subscribers that drop and reconnect at random (to either node), a `kill -9` of a
node and a Redis restart without persistence.  Every subscriber's whole stream, across all
its reconnections, is checked: nothing acked lost without a `reset` announcing it, nothing
delivered twice, nothing out of order, no `reset` backwards within an epoch, and no
reset skipping a publication history still held (the only ones skipped are those of the
old epoch that Redis lost before a reconnecting subscriber could read them).

The figures are printed (run with ``-s`` to see them) for the closing notes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from gateway.testing import aio
from tests.e2e.support import TIMEOUT_FACTOR, free_port, until

pytestmark = pytest.mark.redis

CHANNEL = "chaos"
TOTAL = int(os.environ.get("GATEWAY_CHAOS_PUBLICATIONS", "5000"))
PUBLISHERS = 4
WS_SUBSCRIBERS = 4
POLL_SUBSCRIBERS = 2


class Node:
    """One `twistd -n gateway --redis` process on a fixed port, killable with SIGKILL."""

    def __init__(self, redis_url: str, name: str) -> None:
        self.port = free_port()
        self.redis_url = redis_url
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.log = open(os.devnull, "w")  # noqa: SIM115

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        twistd_bin = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd_bin, "-n", "--pidfile=", "gateway", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--redis", self.redis_url, "--node-id", self.name, "--drain-timeout", "2",
             # History longer than the run: a subscriber that falls behind on a loaded
             # machine still resumes; every reset is then Redis losing its data.
             "--history-size", str(2 * TOTAL)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


async def ready(node: Node, client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get(node.base + "/readyz", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


class KeepAlive:
    """Keep-alive HTTP/1.1 connections (one per node) on asyncio streams, for the run's
    thousands of publishes and polls: this process's CPU bounds the run, and httpx spends
    several times as much of it per request.  A request on a connection the node dropped
    (killed, draining) fails with :data:`HTTP_ERRORS`; the next one connects again."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def request(self, method: str, node: Node, target: str, body: bytes = b"") -> tuple[int, dict]:
        """``(status, JSON body)`` of one request to ``node``."""
        conn = self._conns.pop(node.port, None)
        if conn is None:
            conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", node.port), self.timeout)
        reader, writer = conn
        try:
            writer.write(
                f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            status = int(head.split(b" ", 2)[1])
            match = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
            assert match is not None, head
            payload = await asyncio.wait_for(reader.readexactly(int(match.group(1))), self.timeout)
        except BaseException:
            writer.close()
            raise
        self._conns[node.port] = conn
        return status, json.loads(payload)

    def close(self) -> None:
        for _, writer in self._conns.values():
            writer.close()
        self._conns.clear()


# A node that died or dropped the connection, a timeout, an answer cut short.
HTTP_ERRORS = (OSError, EOFError, asyncio.TimeoutError)


class Stream:
    """What one subscriber saw, across every reconnection, and its running position."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[tuple[str, dict]] = []
        self.position: tuple[str, int] | None = None
        self.reconnects = 0

    def see(self, kind: str, event: dict) -> None:
        self.events.append((kind, event))
        if kind in ("message", "reset", "start"):
            self.position = (event["epoch"], event["seq"])


def check(stream: Stream, acked: set[tuple[str, int]]) -> dict[str, int]:
    """Walk a subscriber's events; count what the protocol forbids."""
    figures = {"delivered": 0, "duplicated": 0, "reordered": 0, "backward_resets": 0, "resets": 0}
    delivered: set[tuple[str, int]] = set()
    # Publications a reset told the subscriber it would not get, by why: its own epoch
    # moved on past history; the old epoch's tail was lost with Redis' data; the new
    # epoch's start was skipped although history held it.
    skipped: dict[str, set[tuple[str, int]]] = {"same_epoch": set(), "old_epoch": set(), "new_epoch": set()}
    by_epoch: dict[str, set[int]] = {}
    for epoch, seq in acked:
        by_epoch.setdefault(epoch, set()).add(seq)
    pos: tuple[str, int] | None = None
    for kind, e in stream.events:
        if kind == "start":
            pos = (e["epoch"], e["seq"])
        elif kind == "subscribed":
            # A resume continues from its `since` (missed messages follow, or a reset);
            # a fresh subscription starts at the reply's position.
            pos = (e["since"]["epoch"], e["since"]["seq"]) if e.get("since") else (e["epoch"], e["seq"])
        elif kind == "reset":
            figures["resets"] += 1
            new = (e["epoch"], e["seq"])
            assert pos is not None
            if new[0] == pos[0]:
                if new[1] < pos[1]:
                    figures["backward_resets"] += 1
                skipped["same_epoch"].update((pos[0], s) for s in range(pos[1] + 1, new[1] + 1))
            else:
                skipped["old_epoch"].update((pos[0], s) for s in by_epoch.get(pos[0], ()) if s > pos[1])
                skipped["new_epoch"].update((new[0], s) for s in range(1, new[1] + 1))
            pos = new
        elif kind == "message":
            key = (e["epoch"], e["seq"])
            figures["delivered"] += 1
            if key in delivered:
                figures["duplicated"] += 1
            elif pos is None or key != (pos[0], pos[1] + 1):
                figures["reordered"] += 1
            delivered.add(key)
            pos = key
    for why, keys in skipped.items():
        figures[f"reset_skips_{why}"] = len(acked & keys - delivered)
    figures["lost"] = len(acked - delivered - set().union(*skipped.values()))
    return figures


def decode_cursor(cursor: str) -> tuple[str, int]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    epoch, seq = json.loads(raw)[CHANNEL]
    return epoch, seq


async def test_chaos_two_nodes_node_kill_and_redis_restart(redis_server):
    rng = random.Random(int(os.environ.get("GATEWAY_CHAOS_SEED", "7")))
    nodes = [Node(redis_server.url, "a"), Node(redis_server.url, "b")]
    for node in nodes:
        node.start()
    try:
        figures = await aio(_scenario(nodes, redis_server, rng))
    finally:
        for node in nodes:
            node.stop()
    print("\nchaos figures:", json.dumps(figures, indent=1))
    for name, f in figures["subscribers"].items():
        assert (f["lost"], f["duplicated"], f["reordered"], f["backward_resets"]) == (0, 0, 0, 0), (name, f)
        # The only publications a reset may skip are the old epoch's that Redis lost
        # before this subscriber got them (it was reconnecting when Redis restarted).
        assert (f["reset_skips_same_epoch"], f["reset_skips_new_epoch"]) == (0, 0), (name, f)


async def _scenario(nodes: list[Node], redis_server, rng: random.Random) -> dict:
    client = httpx.AsyncClient(timeout=5)
    await until(lambda: all(n.alive for n in nodes), what="nodes started")
    deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
    while not all([await ready(n, client) for n in nodes]):
        assert time.monotonic() < deadline, "nodes not ready"
        await asyncio.sleep(0.05)

    acked: list[tuple[str, int]] = []
    failed_publishes = 0
    stop = asyncio.Event()
    streams: list[Stream] = []
    timeline: dict[str, float] = {}
    t0 = time.monotonic()

    def live_nodes() -> list[Node]:
        return [n for n in nodes if n.alive] or nodes

    async def publisher(p: int) -> None:
        nonlocal failed_publishes
        http = KeepAlive(timeout=5)
        k = 0
        while len(acked) < TOTAL:
            node = live_nodes()[(p + k) % len(live_nodes())]
            k += 1
            try:
                status, body = await http.request("POST", node, "/publish", json.dumps({"channel": CHANNEL, "data": f"p{p}-{k}"}).encode())
            except HTTP_ERRORS:
                status = None
            if status == 200:
                acked.append((body["epoch"], body["seq"]))
            else:
                failed_publishes += 1
                await asyncio.sleep(0.02)
        http.close()

    async def ws_subscriber(i: int) -> None:
        stream = Stream(f"ws{i}")
        streams.append(stream)
        attempt = i
        while not stop.is_set():
            node = live_nodes()[attempt % len(live_nodes())]
            attempt += 1
            command: dict = {"type": "subscribe", "channel": CHANNEL, "id": attempt}
            since = None
            if stream.position is not None:
                since = {"epoch": stream.position[0], "seq": stream.position[1]}
                command["since"] = since
            try:
                async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws", open_timeout=2, close_timeout=0.1) as ws:
                    await ws.send(json.dumps(command))
                    drop_after = rng.randint(100, 1500)
                    seen = 0
                    while not stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.2)
                        except asyncio.TimeoutError:
                            continue
                        event = json.loads(raw)
                        kind = event["type"]
                        if kind == "subscribed":
                            stream.see("subscribed", {**event, "since": since})
                            if since is None:
                                stream.position = (event["epoch"], event["seq"])
                        elif kind in ("message", "reset"):
                            stream.see(kind, event)
                            seen += 1
                        elif kind == "error":
                            break  # e.g. unavailable while Redis restarts: resubscribe
                        if seen >= drop_after:
                            # A random client drop: the connection is cut (a clean close
                            # would wait for the unread messages queued in this client).
                            ws.transport.abort()
                            break
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
                pass
            stream.reconnects += 1
            await asyncio.sleep(0.01)

    async def poll_subscriber(i: int) -> None:
        stream = Stream(f"poll{i}")
        streams.append(stream)
        cursor = None
        attempt = i
        http = KeepAlive(timeout=3)
        while not stop.is_set():
            node = live_nodes()[attempt % len(live_nodes())]
            attempt += 1
            target = f"/poll?channel={CHANNEL}&timeout=1" + (f"&cursor={cursor}" if cursor else "")
            try:
                status, body = await http.request("GET", node, target)
            except HTTP_ERRORS:
                stream.reconnects += 1
                await asyncio.sleep(0.02)
                continue
            if status != 200:
                stream.reconnects += 1
                await asyncio.sleep(0.02)
                continue
            if cursor is None:
                epoch, seq = decode_cursor(body["cursor"])
                # Where this first poll started: before its messages.
                first = body["messages"][0] if body["messages"] else None
                start = (first["epoch"], first["seq"] - 1) if first and first["type"] == "message" else (epoch, seq)
                stream.see("start", {"epoch": start[0], "seq": start[1]})
            for event in body["messages"]:
                stream.see(event["type"], event)
            cursor = body["cursor"]
        http.close()

    tasks = [asyncio.ensure_future(ws_subscriber(i)) for i in range(WS_SUBSCRIBERS)]
    tasks += [asyncio.ensure_future(poll_subscriber(i)) for i in range(POLL_SUBSCRIBERS)]
    await until(lambda: len(streams) == WS_SUBSCRIBERS + POLL_SUBSCRIBERS and all(s.position for s in streams), what="subscribers")
    publishers = [asyncio.ensure_future(publisher(p)) for p in range(PUBLISHERS)]

    await until(lambda: len(acked) >= TOTAL * 0.3, timeout=120, what="30% published")
    nodes[0].kill9()
    timeline["node_a_killed"] = time.monotonic() - t0
    await until(lambda: len(acked) >= TOTAL * 0.45, timeout=120, what="45% published")
    nodes[0].start()
    timeline["node_a_restarted"] = time.monotonic() - t0
    await until(lambda: len(acked) >= TOTAL * 0.6, timeout=120, what="60% published")
    redis_server.kill()
    redis_server.start()
    timeline["redis_restarted"] = time.monotonic() - t0
    await asyncio.gather(*publishers)
    timeline["all_acked"] = time.monotonic() - t0

    final_epoch = acked[-1][0]
    top = max(seq for epoch, seq in acked if epoch == final_epoch)

    def caught_up() -> bool:
        return all(s.position is not None and s.position[0] == final_epoch and s.position[1] >= top for s in streams)

    await until(caught_up, timeout=60, what="every subscriber caught up")
    stop.set()
    await asyncio.gather(*tasks)
    await client.aclose()

    acked_set = set(acked)
    return {
        "publications_acked": len(acked),
        "distinct_acked": len(acked_set),
        "publishes_failed_and_retried": failed_publishes,
        "epochs": len({e for e, _ in acked}),
        "timeline_s": {k: round(v, 2) for k, v in timeline.items()},
        "subscribers": {s.name: {**check(s, acked_set), "reconnects": s.reconnects} for s in streams},
    }
