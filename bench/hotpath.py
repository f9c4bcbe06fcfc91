"""Server CPU per delivery of the fan-out path alone, repeatable on a busy machine.

One process runs a gateway node (memory broker, the real epoll reactor, real TCP
sockets) and N subscriber sockets of its own (WebSocket, SSE or long-poll).  Each
round publishes one publication through the bus and turns the reactor until every
byte of it is written, which is all server work, timed with the thread's CPU clock
(``time.thread_time``); then, untimed, the subscriber sockets are read and checked
(every subscriber got every publication, in order; polls re-poll here).  Nothing
else runs in between, so the figure does not depend on how busy the machine is or on
how publications happen to batch, unlike bench/fanout.py's.

It includes the bus, the sequencer, the transport's per-subscriber code, the frame
writes and their ``send()`` calls, and the reactor turns; for polls also parsing the
next request and answering it.  It excludes the publisher's own connection and the
client side (their reads happen outside the timed part).

    python bench/hotpath.py                       # ws, 1000 subscribers, 200 rounds
    python bench/hotpath.py --transport sse
    python bench/hotpath.py --transport poll --subscribers 1000
    python bench/hotpath.py --gateway-src DIR     # another source tree (e.g. a git archive)

``valgrind --tool=callgrind python bench/hotpath.py --rounds R`` at two values of R
gives instructions per delivery as the difference divided by the extra deliveries.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socket
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transport", choices=["ws", "sse", "poll"], default="ws")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument("--gateway-src", help="put this source tree first on sys.path")
    p.add_argument("--no-access-log", action="store_true", help="the node's --no-access-log (when its code has it)")
    p.add_argument(
        "--redis",
        action="store_true",
        help="the node on a redis-server of its own; publications arrive over its pub/sub connection "
        "from another client (what node B of the cross-node scenario does; the publish itself is not timed)",
    )
    p.add_argument("--batch", type=int, default=1, help="publications per round (with --redis they can arrive in one read)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tracemalloc", type=int, metavar="TOP", default=0, help="instead: Python memory per subscriber by source line (top TOP lines)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.gateway_src:
        sys.path.insert(0, os.path.abspath(args.gateway_src))
    resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536)) if resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 65536 else None
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    import gateway
    from gateway.testing import start_gateway

    overrides = {"access_log": False} if args.no_access_log and _has_option("access_log") else {}
    publisher = None
    if args.redis:
        publisher = _RedisPublisher()
        overrides["redis"] = publisher.url
        from gateway.broker.redis import RedisBroker

        # No health-check PINGs and long command deadlines: between rounds the reactor
        # does not turn (and under valgrind a round takes seconds of wall time).
        broker = RedisBroker(publisher.url, reactor=reactor, command_timeout=3600.0, health_interval=0)
        running = start_gateway(broker=broker, **overrides)
    else:
        running = start_gateway(**overrides)
    if publisher is not None:
        # Resolving the Redis address goes through the reactor's thread pool, which
        # only starts with reactor.run(); this benchmark turns the reactor by hand.
        pool = reactor.getThreadPool()
        if not pool.started:
            pool.start()
        deadline = time.monotonic() + 30
        while not running.bus.broker.is_ready():
            reactor.runUntilCurrent()
            reactor.doIteration(0.01)
            if time.monotonic() > deadline:
                raise SystemExit("the node never connected to its redis-server")
    # What a twistd node does (gc.freeze() in trees without tune_gc; the Date cache).
    import gc

    import gateway.tap

    getattr(gateway.tap, "tune_gc", gc.freeze)()
    try:
        from gateway.transports import _httpdate
    except ImportError:
        pass
    else:
        _httpdate.install()
    port = running.port
    channel = "bench"
    n = args.subscribers

    def turn(times: int = 1) -> None:
        for _ in range(times):
            reactor.runUntilCurrent()
            reactor.doIteration(0)

    if args.tracemalloc:
        import gc
        import tracemalloc

        turn(5)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
    clients = []
    while len(clients) < n:
        # Within the listen backlog, then let the reactor accept them.
        clients += [_Client(args.transport, port, channel) for _ in range(min(20, n - len(clients)))]
        turn(3)
    deadline = time.monotonic() + 60
    while running.bus.subscriber_count(channel) < n or any(not c.ready for c in clients):
        turn()
        for c in clients:
            c.read_setup()
        if time.monotonic() > deadline:
            raise SystemExit(f"only {running.bus.subscriber_count(channel)} of {n} subscribed")

    if args.tracemalloc:
        for _ in range(20):
            turn()
        gc.collect()
        after = tracemalloc.take_snapshot()
        ignore = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)]
        stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
        total = sum(st.size_diff for st in stats)
        print(f"{args.transport}: {total / n:.0f} bytes of Python allocations per subscriber ({n} subscribers; client objects excluded)")
        for st in stats[: args.tracemalloc]:
            frame = st.traceback[0]
            print(f"  {st.size_diff / n:7.0f} B  {st.count_diff / n:5.1f} blocks  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
        os._exit(0)
    pad = "x" * args.payload_bytes
    total_cpu = 0.0
    measured = 0
    for round_ in range(args.warmup + args.rounds):
        first = round_ * args.batch
        r = first + args.batch - 1  # the round is done once the last one arrived
        if publisher is not None:
            # Untimed: another Redis client publishes (as node A would).
            for i in range(first, r + 1):
                publisher.publish(channel, {"r": i, "pad": pad})
            t0 = time.thread_time()
        else:
            t0 = time.thread_time()
            for i in range(first, r + 1):
                running.bus.publish(channel, {"r": i, "pad": pad})
        turn(2)
        t1 = time.thread_time()
        pending = clients
        spins = 0
        while pending:
            pending = [c for c in pending if not c.got(r)]
            if pending:
                t2 = time.thread_time()
                turn()
                total_cpu += time.thread_time() - t2 if round_ >= args.warmup else 0
                spins += 1
                if spins > 100000:
                    raise SystemExit(f"round {r}: {len(pending)} subscribers never got it")
        if args.transport == "poll":
            # The next poll of every client is part of a delivery's cost.
            for c in clients:
                c.repoll()
            t2 = time.thread_time()
            while running.bus.subscriber_count(channel) < n:
                turn()
            t3 = time.thread_time()
            if round_ >= args.warmup:
                total_cpu += t3 - t2
        if round_ >= args.warmup:
            total_cpu += t1 - t0
            measured += n * args.batch
    result = {
        "transport": args.transport,
        "subscribers": n,
        "rounds": args.rounds,
        "batch": args.batch,
        "broker": "redis" if args.redis else "memory",
        "gateway": os.path.dirname(gateway.__file__),
        "server_cpu_us_per_delivery": round(total_cpu / measured * 1e6, 3),
    }
    for c in clients:
        c.close()
    print(json.dumps(result) if args.json else f"{args.transport}: {result['server_cpu_us_per_delivery']} us of server CPU per delivery ({n} subscribers, {args.rounds} rounds of {args.batch}, {result['broker']} broker)")
    if publisher is not None:
        publisher.stop()
        reactor.getThreadPool().stop()
    os._exit(0)


def _has_option(name: str) -> bool:
    import attrs

    from gateway.config import Config

    return any(a.name == name for a in attrs.fields(Config))


class _RedisPublisher:
    """A redis-server of the benchmark's own, and a blocking client publishing to it
    exactly as RedisBroker.publish does (publish.lua), from outside the node."""

    def __init__(self) -> None:
        import hashlib
        import subprocess
        import tempfile

        from procs import _die_with_parent, free_port

        from gateway.broker.redis import load_script

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="hotpath-redis.")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.script = load_script("publish.lua")
        self.sha = hashlib.sha1(self.script).hexdigest()
        self.buf = b""
        self.loaded = False

    def publish(self, channel: str, data: object) -> None:
        body = json.dumps({"c": channel, "d": data, "f": None}, separators=(",", ":"))
        keys = [f"gateway:{{{channel}}}:meta", f"gateway:{{{channel}}}:hist"]
        args = [f"gateway:0:pub:{channel}", body, "bench-epoch", "1000", "300000", "310", "86400", "300000", ""]
        head = ["EVALSHA", self.sha] if self.loaded else ["EVAL", self.script]
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in [*head, len(keys), *keys, *args]]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts))
        reply = self._reply()
        assert not reply.startswith(b"-"), reply
        self.loaded = True

    def _reply(self) -> bytes:
        # A publish.lua reply is one short array; read until its last line is in.
        while self.buf.count(b"\r\n") < 5 and not self.buf.startswith(b"-"):
            self.buf += self.sock.recv(65536)
        reply, self.buf = self.buf, b""
        return reply

    def stop(self) -> None:
        import shutil

        self.sock.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class _Client:
    """One subscriber on a non-blocking socket, driven by hand."""

    def __init__(self, transport: str, port: int, channel: str) -> None:
        self.transport = transport
        self.port = port
        self.channel = channel
        self.buf = b""
        self.ready = False
        self.last = -1
        self.cursor: str | None = None
        self.sock = self._connect()
        if transport == "ws":
            key = base64.b64encode(os.urandom(16))
            self.sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        elif transport == "sse":
            self.sock.sendall(b"GET /sse?channel=" + channel.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            self._poll()
            self.ready = True

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        return sock

    def _recv(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                raise SystemExit("server closed a subscriber")
            self.buf += chunk

    def read_setup(self) -> None:
        if self.ready:
            return
        self._recv()
        if self.transport == "ws":
            if b"\r\n\r\n" in self.buf and not getattr(self, "upgraded", False):
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                self.upgraded = True
                payload = json.dumps({"type": "subscribe", "channel": self.channel}).encode()
                self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            if getattr(self, "upgraded", False) and b"subscribed" in self.buf:
                self.buf = b""
                self.ready = True
        elif b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            self.ready = True

    def _poll(self) -> None:
        query = "channel=" + self.channel + ("&cursor=" + self.cursor if self.cursor else "")
        self.sock.sendall(b"GET /poll?" + query.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def got(self, r: int) -> bool:
        """Whether publication ``r`` arrived (consumes what was read)."""
        self._recv()
        marker = b'"r":%d,' % r
        if marker not in self.buf:
            return False
        if self.transport == "poll":
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                return False
            body = json.loads(rest[:length])
            self.cursor = body["cursor"]
            self.buf = rest[length:]
        else:
            self.buf = b""
        return True

    def repoll(self) -> None:
        self._poll()

    def close(self) -> None:
        self.sock.close()


if __name__ == "__main__":
    main()
