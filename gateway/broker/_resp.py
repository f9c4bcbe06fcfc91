"""An incremental RESP2 reader for the node's pub/sub connection, without I/O.

Why: txredisapi's own pure-Python reader (used when ``hiredis`` is not installed)
pauses the socket and defers the rest of the buffer to the next reactor turn
(``callLater(0)``) after *every* bulk string, and splits the whole buffer once per
line.  A pub/sub ``message`` is three bulk strings, so a node receiving 500
publications/s spent 1,500 reactor turns a second (with a pause/resume of the socket
each) just reading them, fell seconds behind, and then had its pub/sub connection
aborted by the PING reply timeout (bench/README.md, issue 11).

:class:`RespReader` parses every complete reply in what it is fed, in one pass,
producing the values txredisapi's reader produces with ``charset=None`` and
``convertNumbers=False``: bulk strings as ``bytes`` (``None`` for a null bulk),
status lines as ``str``, integers as ``int``, errors as ``error(text)``, arrays as
``list`` (``None`` for a null array).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RespError", "RespReader"]

_CRLF = b"\r\n"


class RespError(ValueError):
    """The bytes are not RESP: the connection must be dropped."""


class _Incomplete(Exception):
    pass


class RespReader:
    """Feed bytes in, get complete replies out (in order).

    Args:
        error: builds the value of an error reply (``-ERR ...``) from its text.
        max_bulk: the largest bulk string or array accepted (a bound on memory).
    """

    def __init__(self, error: Callable[[str], Any], max_bulk: int = 512 * 1024 * 1024) -> None:
        self._error = error
        self._max = max_bulk
        self._buf = b""

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return every reply now complete.

        Raises:
            RespError: the stream is not valid RESP.
        """
        buf = self._buf + data if self._buf else data
        replies: list[Any] = []
        pos = 0
        try:
            while pos < len(buf):
                value, pos = self._parse(buf, pos)
                replies.append(value)
        except _Incomplete:
            pass
        self._buf = buf[pos:]
        return replies

    def _parse(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = buf.find(_CRLF, pos)
        if end < 0:
            if len(buf) - pos > 65536:
                raise RespError("a RESP line longer than 64 KiB")
            raise _Incomplete
        kind = buf[pos]
        line = buf[pos + 1 : end]
        pos = end + 2
        if kind == 0x24:  # $ bulk string
            n = self._length(line)
            if n < 0:
                return None, pos
            stop = pos + n
            if len(buf) < stop + 2:
                raise _Incomplete
            if buf[stop : stop + 2] != _CRLF:
                raise RespError("a bulk string not followed by CRLF")
            return buf[pos:stop], stop + 2
        if kind == 0x2A:  # * array
            n = self._length(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(buf, pos)
                items.append(item)
            return items, pos
        if kind == 0x2B:  # + status
            return line.decode("utf-8", "replace"), pos
        if kind == 0x2D:  # - error
            return self._error(line.decode("utf-8", "replace")), pos
        if kind == 0x3A:  # : integer
            try:
                return int(line), pos
            except ValueError:
                raise RespError(f"not an integer: {line[:50]!r}") from None
        raise RespError(f"unknown RESP type byte {kind!r}")

    def _length(self, line: bytes) -> int:
        try:
            n = int(line)
        except ValueError:
            raise RespError(f"not a length: {line[:50]!r}") from None
        if n > self._max:
            raise RespError(f"a length of {n} is over the limit")
        return n
