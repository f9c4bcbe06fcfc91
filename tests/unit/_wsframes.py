"""Reading what a server-side WebSocket wrote, for unit tests on StringTransport."""

from __future__ import annotations

import json
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


class ServerFrames:
    """Reading helpers for a test connection class that defines ``frames()``."""

    def frames(self) -> list[tuple[int, bytes]]:
        raise NotImplementedError

    def events(self) -> list[dict]:
        """The JSON of every text frame the server sent."""
        return [json.loads(p) for op, p in self.frames() if op == 1]

    def close_code(self) -> int | None:
        """The code of the server's close frame, or None."""
        for op, payload in self.frames():
            if op == 8:
                return struct.unpack("!H", payload[:2])[0]  # type: ignore[no-any-return]
        return None
