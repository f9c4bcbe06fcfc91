"""A raw-socket HTTP/1.1 client for what well-behaved clients will not send:
any method, broken heads, huge declared bodies, one byte at a time."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Self

from gateway.testing import DEFAULT_TIMEOUT


class RawResponse:
    """A parsed HTTP response.

    Attributes:
        status: the status code.
        reason: the reason phrase.
        headers: lower-cased name -> every value, in order.
        body: the bytes after the head (all of them up to EOF, or none with ``head_only``).
    """

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
        self.status = int(status)
        self.reason = reason[0] if reason else ""
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r}>"


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=2**20)


async def read_response(
    reader: asyncio.StreamReader, head_only: bool = False, timeout: float = DEFAULT_TIMEOUT, to_eof: bool = False
) -> RawResponse:
    """Read one response: its head, then (unless ``head_only``) its ``Content-Length``
    bytes, or everything up to EOF without one (or with ``to_eof``: the answer to a HEAD)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    response = RawResponse(head[:-4], b"")
    if not head_only:
        length = response.header("content-length")
        if length is not None and response.status != 101 and not to_eof:
            response.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
        else:
            response.body = await asyncio.wait_for(reader.read(), timeout)
    return response


async def exchange(port: int, data: bytes, head_only: bool = False, timeout: float = DEFAULT_TIMEOUT) -> RawResponse:
    """Send ``data`` on a new connection and read the answer (to EOF unless ``head_only``)."""
    reader, writer = await open_raw(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, head_only, timeout, to_eof=data.startswith(b"HEAD "))
    finally:
        writer.close()


def request_bytes(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """A request with ``Host``, ``Connection: close`` and a ``Content-Length`` when there is a body."""
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    all_headers = {"Connection": "close", **(headers or {})}
    if body:
        all_headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 100, last: bool = True) -> bytes:
    """``body`` in chunked transfer coding (without the final empty chunk unless ``last``)."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + (b"0\r\n\r\n" if last else b"")


class LoggedErrors:
    """Collects every twisted.logger event at level error or above, or carrying a
    failure (a traceback), while it is installed: ``with LoggedErrors() as errors:``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import LogLevel

        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.error):
            self.events.append(event)

    def __enter__(self) -> Self:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        out = []
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            out.append(text)
        return out
