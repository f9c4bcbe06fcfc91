"""Reading what a server-side WebSocket wrote, for unit tests on StringTransport."""

from __future__ import annotations

import struct


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked frame in ``data`` (7- and 16-bit lengths)."""
    out = []
    while data:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            start = 4
        out.append((opcode, data[start : start + n]))
        data = data[start + n :]
    return out
