"""Helpers for the HTTP streaming tests (SSE and long-poll) over real sockets.

Clients are independent of the gateway: ``httpx`` for SSE streams and polls, raw
asyncio sockets where many connections are needed.  Every client a test opens
through the ``sse`` fixture is closed when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest_twisted

from gateway.testing import DEFAULT_TIMEOUT, aio, sleep
from tests.e2e.support import client_ssl


class SSEClient:
    """One ``GET /sse`` response read with httpx, parsed into events.

    Attributes:
        status: the HTTP status.
        headers: the response headers.
        comments: comment lines (``: ping``) seen so far.
    """

    def __init__(self, client: httpx.AsyncClient, response: httpx.Response) -> None:
        self.client = client
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self.comments: list[str] = []
        self._lines = response.aiter_lines()

    @classmethod
    async def open(cls, url: str, headers: dict[str, str] | None = None) -> SSEClient:
        """Connect and return once the response headers are in (asyncio coroutine)."""
        # No read timeout on the stream itself: each read below has its own.
        client = httpx.AsyncClient(timeout=httpx.Timeout(DEFAULT_TIMEOUT, read=None), verify=client_ssl())
        response = await client.send(client.build_request("GET", url, headers=headers), stream=True)
        return cls(client, response)

    async def _next(self, want_comment: bool) -> Any:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                # A block without data (the stream's opening `id:`) is no event.
                if "data" in fields and not want_comment:
                    return fields
                fields = {}
                continue
            if line.startswith(":"):
                self.comments.append(line)
                if want_comment:
                    return line
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("stream ended")

    async def event(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next event as ``{"id", "event", "data" (parsed JSON)}``."""
        fields = await asyncio.wait_for(self._next(False), timeout)
        fields["data"] = json.loads(fields["data"])
        return fields

    async def comment(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The next comment line (events before it are skipped)."""
        return await asyncio.wait_for(self._next(True), timeout)

    async def ended(self, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Read until the server ends the stream; return the events read meanwhile."""
        events = []

        async def drain() -> None:
            try:
                while True:
                    events.append(await self._next(False))
            except EOFError:
                return

        await asyncio.wait_for(drain(), timeout)
        return events

    async def body(self) -> Any:
        """The whole body as JSON (for error answers)."""
        return json.loads(await self.response.aread())

    async def close(self) -> None:
        await self.response.aclose()
        await self.client.aclose()


@pytest_twisted.async_yield_fixture
async def sse():
    """Open SSE streams: ``stream = await sse(url, headers)``; all closed at teardown."""
    opened: list[SSEClient] = []

    async def open_stream(url: str, headers: dict[str, str] | None = None) -> SSEClient:
        client = await aio(SSEClient.open(url, headers))
        opened.append(client)
        return client

    yield open_stream
    for client in opened:
        await aio(client.close())


async def wait_until(predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> None:
    """Wait (on the reactor) until ``predicate()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


def cursor_of(positions: dict[str, tuple[str, int]]) -> str:
    """Build a cursor the way a client library would (docs/protocol.md section 1)."""
    raw = json.dumps({c: [e, s] for c, (e, s) in positions.items()}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(cursor: str) -> dict[str, list[Any]]:
    """Read a cursor back (independently of the gateway's own decoder)."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
