"""A minimal client side of RFC 6455 for the load generator.

Only what a benchmark client needs: the opening handshake (section 4.1), masked
client frames (5.3), and an incremental parser for the server's unmasked frames
(5.2), including continuation frames, ping/pong and close.  No extensions are
offered, so the server never compresses.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

__all__ = [
    "ACCEPT_GUID",
    "FrameParser",
    "HandshakeError",
    "check_handshake",
    "encode_frame",
    "handshake_request",
]

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server did not accept the WebSocket upgrade."""


def handshake_request(host: str, port: int, path: str = "/ws") -> tuple[bytes, bytes]:
    """The upgrade request and the ``Sec-WebSocket-Accept`` value it must get back."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode('ascii')}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")
    return request, accept


def check_handshake(head: bytes, accept: bytes) -> None:
    """Check the server's response head (without the final blank line).

    Raises:
        HandshakeError: not a 101 with the right ``Sec-WebSocket-Accept``.
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise HandshakeError(f"upgrade refused: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept:
        raise HandshakeError("wrong Sec-WebSocket-Accept")


def _mask(payload: bytes, key: bytes) -> bytes:
    # XOR with the 4-byte key repeated, done as one big-integer operation.
    n = len(payload)
    if n == 0:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (
        int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    ).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class FrameParser:
    """Incremental parser of server frames; :meth:`feed` returns complete messages.

    Each item is ``(opcode, payload)`` with opcode TEXT/BINARY for a whole
    (reassembled) message, or PING/PONG/CLOSE for control frames.
    """

    __slots__ = ("_buf", "_frag", "_frag_op")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frag_op: int | None = None
        self._frag: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if b1 & 0x80:
                # Servers must not mask (RFC 6455 5.1); unmask anyway if one does.
                if end - pos < hdr + 4 + n:
                    break
                key = bytes(buf[pos + hdr : pos + hdr + 4])
                payload = _mask(bytes(buf[pos + hdr + 4 : pos + hdr + 4 + n]), key)
                pos += hdr + 4 + n
            else:
                if end - pos < hdr + n:
                    break
                payload = bytes(buf[pos + hdr : pos + hdr + n])
                pos += hdr + n
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                self._frag.append(payload)
                if fin and self._frag_op is not None:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag_op, self._frag = None, []
            elif fin:
                out.append((opcode, payload))
            else:
                self._frag_op, self._frag = opcode, [payload]
        if pos:
            del buf[:pos]
        return out
