"""Process plumbing for the benchmark: free ports, child processes that cannot
outlive the benchmark, CPU times from /proc, and tiny loopback HTTP/Redis
clients for health checks, metrics and ``INFO commandstats``."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = [
    "CLK_TCK",
    "Children",
    "cpu_seconds",
    "free_port",
    "http_get",
    "machine_cpu",
    "redis_command",
    "twistd_path",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine, summed over cores, from /proc/stat:
    ``user`` (user+nice), ``system``, ``irq`` (irq+softirq: loopback TCP is mostly
    softirq work, not always charged to a process), ``idle`` (idle+iowait),
    ``total``."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    t = [int(p) for p in parts[:8]]  # user nice system idle iowait irq softirq steal
    return {
        "user": (t[0] + t[1]) / CLK_TCK,
        "system": t[2] / CLK_TCK,
        "irq": (t[5] + t[6]) / CLK_TCK,
        "idle": (t[3] + t[4]) / CLK_TCK,
        "total": sum(t) / CLK_TCK,
    }


def twistd_path() -> str:
    """The real twistd script of this interpreter (not a pyenv shim, so the pid we
    start is the server process itself)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("twistd")
    if not found:
        raise SystemExit("twistd not found")
    return found


_PR_SET_PDEATHSIG = 1
try:
    # Resolved here, in the parent: the child (between fork and exec) only calls it.
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If the benchmark itself is killed (even with SIGKILL), the kernel sends
    # SIGTERM to this child: nothing is left running.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    """Every process the benchmark starts; :meth:`stop_all` ends them in reverse order.

    Each child gets its own session (a Ctrl-C in the terminal reaches only the
    benchmark, which then stops them in order) and, with ``die_with_parent``
    (the default), dies with the benchmark.  Children started once the
    benchmark has threads should pass ``die_with_parent=False`` (a
    ``preexec_fn`` is unsafe in a threaded parent) and be bounded otherwise.
    """

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []

    def popen(
        self,
        name: str,
        argv: list[str],
        stderr_path: str | None = None,
        die_with_parent: bool = True,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv``; its stderr goes to ``stderr_path`` when given."""
        preexec = _die_with_parent if die_with_parent else None
        if stderr_path is not None:
            with open(stderr_path, "wb") as stderr:
                kwargs["stderr"] = stderr
                return self.popen(name, argv, None, die_with_parent, **kwargs)
        # The only callers that start children once threads exist pass
        # die_with_parent=False (no preexec_fn).
        proc = subprocess.Popen(
            argv,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509
            **kwargs,
        )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass

    def stop_all(self) -> list[str]:
        """Stop every child still running; returns the names of those that had to be killed."""
        killed = []
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 15.0
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                killed.append(name)
        for _, proc in self.procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        return killed


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking HTTP/1.0 GET on 127.0.0.1 (health checks, /metrics)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode("ascii")
        )
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def _resp_encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_command(port: int, *args: str, timeout: float = 5.0) -> Any:
    """One Redis command over a fresh connection (simple, bulk and error replies only)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(_resp_encode(*args))
        buf = b""
        while b"\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            buf += data
        line, _, rest = buf.partition(b"\r\n")
        kind, value = line[:1], line[1:]
        if kind == b"+":
            return value.decode()
        if kind == b"-":
            raise RuntimeError(value.decode())
        if kind == b":":
            return int(value)
        if kind == b"$":
            n = int(value)
            while len(rest) < n + 2:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("redis closed the connection")
                rest += data
            return rest[:n].decode()
        raise RuntimeError(f"unexpected reply {line!r}")


def commandstats(port: int) -> dict[str, int]:
    """Calls per command from ``INFO commandstats``."""
    out: dict[str, int] = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=", 1) for kv in rest.split(","))
            out[name[len("cmdstat_") :]] = int(fields["calls"])
    return out


__all__ += ["commandstats"]


# Chromium's flags for the browser benchmarks: headless, and no background traffic
# (this machine's closed network refuses it); the test page is served by the gateway
# on 127.0.0.1, so Chromium's local-network checks are off.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=LocalNetworkAccessChecks",
]
