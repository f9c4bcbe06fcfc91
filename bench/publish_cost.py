"""CPU per ``POST /publish`` of a Redis-backed node (node A of the cross-node scenario).

Starts a redis-server and one gateway node (``twistd -n gateway --redis ...``) of its
own, then sends ``--count`` publications over ``--conns`` keep-alive HTTP connections
with one request in flight on each (as the shared loadgen's publisher does), after
``--warmup`` untimed ones.  The node has no subscribers: what is measured is the
publish path alone (HTTP request, auth, JSON, one EVALSHA, the answer, the access log
line unless ``--no-access-log``).  Prints publications/s and the node's CPU per
publication (utime + stime from /proc), and with ``--callgrind`` the instructions per
publication, counted by valgrind only between the warm-up and the end of the timed
publishes (``callgrind_control -i on/off``), which no other load on the machine changes.

    python bench/publish_cost.py                      # 5,000 publishes over 4 connections
    python bench/publish_cost.py --callgrind --count 1000
    python bench/publish_cost.py --gateway-src DIR    # another source tree (e.g. a git archive)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from procs import Children, cpu_seconds, free_port, http_get, twistd_path


def user_sys(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


class Publisher:
    """One keep-alive connection with one POST /publish in flight at a time."""

    def __init__(self, port: int, channel: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = port
        self.channel = channel
        self.buf = b""
        self.n = 0

    def send(self) -> None:
        body = json.dumps({"channel": self.channel, "data": {"t": time.monotonic_ns(), "p": "x" * 64}}).encode()
        head = (
            f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        self.n += 1

    def read(self) -> bool:
        """Read what is there; True once the answer is complete (it must be a 200)."""
        data = self.sock.recv(65536)
        if not data:
            raise SystemExit("the node closed a publisher connection")
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return False
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"publish failed: {head[:200]!r} {rest[:200]!r}")
        self.buf = rest[length:]
        return True


def publish(pubs: list[Publisher], count: int) -> float:
    """Send ``count`` publications, one in flight per connection; returns the wall time."""
    import selectors

    sel = selectors.DefaultSelector()
    by_fd = {}
    t0 = time.perf_counter()
    sent = done = 0
    for p in pubs:
        if sent < count:
            p.send()
            sent += 1
            sel.register(p.sock, selectors.EVENT_READ, p)
            by_fd[p.sock.fileno()] = p
    while done < count:
        for key, _ in sel.select(10):
            p = key.data
            if p.read():
                done += 1
                if sent < count:
                    p.send()
                    sent += 1
    sel.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--callgrind", action="store_true", help="run the node under valgrind --tool=callgrind")
    ap.add_argument("--memory", action="store_true", help="the in-memory broker instead of Redis (the HTTP path alone)")
    ap.add_argument("--no-access-log", action="store_true")
    ap.add_argument("--profile", metavar="FILE", help="run the node under cProfile (twistd --profile), stats saved to FILE")
    ap.add_argument("--py-spy", metavar="FILE", help="sample the node with py-spy (raw/collapsed stacks to FILE) over the timed publishes")
    ap.add_argument("--gateway-src", help="put this source tree first on the node's PYTHONPATH")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, callgrind output)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="publish-cost.")
    children = Children()
    try:
        rport, port = free_port(), free_port()
        redis = children.popen(
            "redis",
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        wait_port(rport, redis)
        env = dict(os.environ)
        src = os.path.abspath(args.gateway_src or os.path.join(os.path.dirname(__file__), ".."))
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [
            sys.executable, twistd_path(), "-n", "--pidfile", "",
            *([f"--profile={os.path.abspath(args.profile)}", "--savestats"] if args.profile else []), "--logfile", os.path.join(tmp, "node.log"),
            "gateway", "--listen", f"tcp:{port}:interface=127.0.0.1",
        ]
        if not args.memory:
            argv += ["--redis", f"redis://127.0.0.1:{rport}/0"]
        if args.no_access_log:
            argv.append("--no-access-log")
        out = os.path.join(tmp, "callgrind.out")
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]
        node = children.popen("node", argv, stderr_path=os.path.join(tmp, "node.err"), stdout=subprocess.DEVNULL, env=env)
        wait_port(port, node)
        deadline = time.monotonic() + 120
        while http_get(port, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the node never became ready")
            time.sleep(0.2)
        pubs = [Publisher(port, "bench") for _ in range(args.conns)]
        publish(pubs, args.warmup)
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(node.pid)], check=True, stdout=subprocess.DEVNULL)
        spy = None
        if args.py_spy:
            spy = children.popen(
                "py-spy",
                [shutil.which("py-spy") or "py-spy", "record", "-p", str(node.pid), "-r", "500", "-f", "raw", "-o", args.py_spy, "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        u0, s0 = user_sys(node.pid)
        c0 = cpu_seconds(node.pid) or 0.0
        wall = publish(pubs, args.count)
        c1 = cpu_seconds(node.pid) or 0.0
        u1, s1 = user_sys(node.pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(node.pid)], check=True, stdout=subprocess.DEVNULL)
        for p in pubs:
            p.sock.close()
        children.stop(node)
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print(
            f"{args.count} publishes over {args.conns} connections: {args.count / wall:.0f}/s, "
            f"node CPU {1e6 * (c1 - c0) / args.count:.0f} us/publish "
            f"(user {1e6 * (u1 - u0) / args.count:.0f}, system {1e6 * (s1 - s0) / args.count:.0f}; loadavg {' '.join(load)})"
        )
        if args.callgrind:
            total = 0
            for path in glob.glob(out + "*"):
                with open(path) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            total = max(total, int(line.split()[1]))
            print(f"callgrind: {total / args.count / 1e3:.0f}k instructions/publish")
    finally:
        children.stop_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
