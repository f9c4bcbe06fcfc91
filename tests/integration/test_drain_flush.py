"""SIGTERM on a real `twistd -n gateway`: every answer of the drain is on the wire before
the process exits (docs/protocol.md section 10): held polls get their 200 with a cursor,
SSE streams end with the chunked terminator, WebSockets get a 1001 close frame."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
import time

from tests.integration.test_twistd import free_port, twistd, wait_ready

POLLS = 150
STREAMS = 20
WEBSOCKETS = 20


def read_all(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return data + b"<timeout>"
        except ConnectionResetError:
            return data + b"<reset>"
        if not chunk:
            return data
        data += chunk


def request(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def websocket(port: int) -> socket.socket:
    """A raw WebSocket connection (handshake done) that will not answer the close frame."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_in_background(sock: socket.socket, deadline: float) -> tuple[threading.Thread, list[bytes]]:
    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.append(read_all(sock, deadline)), daemon=True)
    thread.start()
    return thread, out


def test_sigterm_writes_every_drain_answer_before_exiting():
    port = free_port()
    proc = twistd("--listen", f"tcp:{port}:interface=127.0.0.1", "--drain-timeout", "10")
    socks: list[socket.socket] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        polls = [request(port, f"/poll?channel=p{i % 7}&timeout=60") for i in range(POLLS)]
        streams = [request(port, f"/sse?channel=s{i}") for i in range(STREAMS)]
        sockets = [websocket(port) for _ in range(WEBSOCKETS)]
        socks = polls + streams + sockets
        # Every stream has opened (its head came) before the signal; polls are held.
        for s in streams:
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # An idle keep-alive connection: one answered request, then nothing.
        idle = request(port, "/healthz")
        socks.append(idle)
        idle.settimeout(5)
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # let the held polls reach the gateway (no event to wait on from outside)
        # WebSocket clients read all the time (the server aborts a connection whose
        # close it does not get answered, and a reset may discard unread bytes).
        deadline = time.monotonic() + 20
        readers = [read_in_background(s, deadline) for s in sockets]
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        poll_answers = [read_all(s, deadline) for s in polls]
        stream_ends = [read_all(s, deadline) for s in streams]
        idle_end = read_all(idle, deadline)
        for thread, _ in readers:
            thread.join(20)
        proc.communicate(timeout=15)
        exited_after = time.monotonic() - signalled
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    bad = [a[:80] for a in poll_answers if not a.startswith(b"HTTP/1.1 200")]
    assert not bad, f"{len(bad)} of {POLLS} held polls got no answer: {bad[:3]}"
    for answer in poll_answers:
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["messages"] == [] and body["cursor"]
    # Each WebSocket got its close frame: opcode 8, code 1001.
    closes = [out[0] if out else b"" for _, out in readers]
    missing = [c[-20:] for c in closes if b"\x88" not in c or b"\x03\xe9" not in c]
    assert not missing, f"{len(missing)} of {WEBSOCKETS} WebSockets got no 1001 close frame: {missing[:3]}"
    # The idle connection was closed (not waited on until the 10 s drain timeout).
    assert idle_end == b""
    assert exited_after < 6
    unfinished = [e[-40:] for e in stream_ends if not e.endswith(b"0\r\n\r\n")]
    assert not unfinished, f"{len(unfinished)} of {STREAMS} SSE streams were not ended cleanly: {unfinished[:3]}"
