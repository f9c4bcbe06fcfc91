"""Presence across nodes on a real redis-server (docs/protocol.md section 11): join/leave
seen on the other node by WebSocket, SSE and long-poll subscribers; long-poll presence
expiring; a node killed with SIGKILL losing its clients within --presence-ttl; Redis down
answering unavailable, and presence rebuilt when it returns.

Clients are third-party libraries (``websockets`` through WSClient, ``httpx``); tokens
are made with pyjwt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import jwt as pyjwt
import pytest

from gateway.testing import WSClient, aio, http, sleep
from tests.e2e.support import TIMEOUT_FACTOR, free_port, wait_for

pytestmark = pytest.mark.redis

TTL = 2.0
SECRET = "presence-e2e-secret-0123456789abcdef"
API_KEY = "presence-e2e-api-key-0123456789"


def token(sub):
    claims = {"sub": sub, "exp": int(time.time()) + 600, "subscribe": ["*"], "publish": ["*"]}
    return pyjwt.encode(claims, SECRET, algorithm="HS256")


async def ws(base_ws, sub):
    return await WSClient.connect(f"{base_ws}?token={token(sub)}")


async def subscribe(client, channel, join_leave=False):
    reply = await client.request({"type": "subscribe", "id": channel, "channel": channel, "join_leave": join_leave})
    assert "subscribed" == reply["type"], reply
    return reply


async def presence(base, channel):
    return await http("GET", base + "/presence", params={"channel": channel, "token": token("admin")})


async def wait_presence(base, channel, want, what="presence", timeout=10.0):
    last = None
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        r = await presence(base, channel)
        if r.status_code == 200:
            last = r.json()
            if want(last):
                return last
        else:
            last = (r.status_code, r.text)
        await sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last answer {last}")


def subs(body):
    return {m["sub"]: m["connections"] for m in body["members"]}


async def sse_events(url, into, opened):
    """Read the join/leave events of an SSE stream into ``into`` (an asyncio task)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client, client.stream("GET", url) as r:
        opened.set_result(r.status_code)
        fields: dict = {}
        async for line in r.aiter_lines():
            if line == "":
                if fields.get("event") in ("join", "leave"):
                    into.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


async def next_event(client, kinds=("join", "leave")):
    while True:
        event = await client.recv(timeout=10 * TIMEOUT_FACTOR)
        if event["type"] in kinds:
            return event


async def test_join_leave_across_nodes_on_every_transport(nodes):
    """Watchers on node A (WebSocket, SSE, long-poll, all with join_leave) see alice join
    when her first connection subscribes on node B (not again for her second) and leave
    when the last one closes; a poll client polling on B then A is one member, seen from
    both nodes, and leaves --presence-ttl after its last poll ended."""
    a, b = await nodes(2, presence_ttl=TTL, jwt_secret=SECRET, api_key=(API_KEY,))
    watcher = await ws(a.ws_url, "watcher")
    await subscribe(watcher, "room", join_leave=True)
    assert {"type": "join", "channel": "room", "sub": "watcher"} == await next_event(watcher)
    sse_seen: list = []
    opened = asyncio.get_event_loop().create_future()
    task = asyncio.ensure_future(sse_events(f"{a.base}/sse?channel=room&join_leave=1&token={token('sse-watcher')}", sse_seen, opened))
    try:
        assert 200 == await aio(opened)
        assert {"type": "join", "channel": "room", "sub": "sse-watcher"} == await next_event(watcher)

        poll = http("GET", a.base + "/poll", params={"channel": "room", "join_leave": "1", "timeout": "10", "client": "tab-9", "token": API_KEY})
        await wait_for(lambda: a.gateway.connection_count("poll") == 1, what="held poll on A")

        alice1 = await ws(b.ws_url, "alice")
        alice2 = await ws(b.ws_url, "alice")
        await subscribe(alice1, "room")
        join = {"type": "join", "channel": "room", "sub": "alice"}
        assert join == await next_event(watcher)
        r = await poll
        assert [join] == r.json()["messages"]
        await subscribe(alice2, "room")
        body = await wait_presence(a.base, "room", lambda body: subs(body).get("alice") == 2, what="alice's two connections from A")
        assert ["alice", "sse-watcher", "watcher"] == [m["sub"] for m in body["members"]]
        assert 1 == body["anonymous"]  # the anonymous poll client tab-9
        await alice1.close()
        await alice2.close()
        leave = {"type": "leave", "channel": "room", "sub": "alice"}
        assert leave == await next_event(watcher)
        await wait_for(lambda: len(sse_seen) >= 3, what="SSE join/leave")
        assert [(None, "join", {"type": "join", "channel": "room", "sub": "sse-watcher"}), (None, "join", join), (None, "leave", leave)] == sse_seen[:3]

        # bob polls on B, then on A: one member; he leaves TTL after the last poll ended.
        for node in (b, a):
            r = await http("GET", node.base + "/poll", params={"channel": "room", "timeout": "0", "token": token("bob")})
            assert 200 == r.status_code
        ended = time.monotonic()
        assert {"type": "join", "channel": "room", "sub": "bob"} == await next_event(watcher)
        body = await wait_presence(b.base, "room", lambda body: "bob" in subs(body), what="bob seen from B")
        assert 1 == subs(body)["bob"]
        assert {"type": "leave", "channel": "room", "sub": "bob"} == await next_event(watcher)
        assert TTL - 0.1 <= time.monotonic() - ended
        await wait_presence(b.base, "room", lambda body: body["anonymous"] == 0, what="tab-9 expired")
    finally:
        task.cancel()
        await watcher.close()


class TwistdNode:
    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        twistd_bin = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd_bin, "-n", "--pidfile=", "gateway", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--redis", redis_url, "--node-id", "doomed", "--presence-ttl", str(TTL), "--jwt-secret", SECRET],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    async def ready(self) -> None:
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "twistd exited early"
            try:
                if (await http("GET", self.base + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await sleep(0.1)
        raise AssertionError("twistd node not ready")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


async def test_killed_node_takes_its_clients_out_within_ttl(nodes, redis_server):
    """A twistd node holding carol's WebSocket and SSE connections is killed with SIGKILL:
    within --presence-ttl a watcher on the surviving node sees carol leave, and she is gone
    from presence."""
    (a,) = await nodes(1, presence_ttl=TTL, jwt_secret=SECRET)
    doomed = TwistdNode(redis_server.url)
    try:
        await doomed.ready()
        watcher = await ws(a.ws_url, "watcher")
        await subscribe(watcher, "room", join_leave=True)
        assert "watcher" == (await next_event(watcher))["sub"]
        carol = await ws(doomed.ws_url, "carol")
        await subscribe(carol, "room")
        assert {"type": "join", "channel": "room", "sub": "carol"} == await next_event(watcher)
        body = await wait_presence(a.base, "room", lambda body: "carol" in subs(body))
        assert {"carol": 1, "watcher": 1} == subs(body)

        doomed.kill9()
        killed = time.monotonic()
        assert {"type": "leave", "channel": "room", "sub": "carol"} == await next_event(watcher)
        took = time.monotonic() - killed
        assert took <= TTL + 0.5 * TIMEOUT_FACTOR, took
        assert {"watcher": 1} == subs(await wait_presence(a.base, "room", lambda body: True))
        await watcher.close()
        # Her connection died with the node: closing it may fail, and that is fine.
        with contextlib.suppress(Exception):
            await carol.close()
    finally:
        doomed.kill9()


async def test_redis_down_presence_unavailable_then_rebuilt(nodes, redis_server):
    """While Redis is down presence queries answer unavailable (HTTP 503, WebSocket error)
    and connections stay open; when Redis returns empty, nodes register their live clients
    again and the answer is whole."""
    a, b = await nodes(2, presence_ttl=TTL, jwt_secret=SECRET)
    alice = await ws(a.ws_url, "alice")
    bob = await ws(b.ws_url, "bob")
    await subscribe(alice, "room")
    await subscribe(bob, "room")
    await wait_presence(a.base, "room", lambda body: subs(body) == {"alice": 1, "bob": 1})

    redis_server.kill()
    await wait_for(lambda: not a.bus.is_ready() and not b.bus.is_ready(), what="nodes notice Redis down")
    r = await presence(a.base, "room")
    assert (503, "unavailable") == (r.status_code, r.json()["error"]["code"])
    reply = await bob.request({"type": "presence", "id": 1, "channel": "room"})
    assert ("error", "unavailable") == (reply["type"], reply["code"])
    # A client that leaves while Redis is down is taken out once it is back.
    await bob.close()

    redis_server.start()
    body = await wait_presence(b.base, "room", lambda body: subs(body) == {"alice": 1}, what="presence rebuilt", timeout=15)
    assert 0 == body["anonymous"]
    reply = await alice.request({"type": "presence", "id": 2, "channel": "room"})
    assert {"alice": 1} == {m["sub"]: m["connections"] for m in reply["members"]}
    await alice.close()
