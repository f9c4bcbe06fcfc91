"""The ``--redis`` URL: ``redis://[[user]:password@]host[:port][/db][?prefix=P]``.

Pure parsing (no Twisted, no txredisapi), so configuration can validate the option
before anything starts.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from gateway.config import ConfigError

__all__ = ["DEFAULT_PREFIX", "RedisURL", "parse_redis_url"]

DEFAULT_PREFIX = "gateway"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-:.]{1,64}$")


@attrs.frozen
class RedisURL:
    """A parsed ``redis://[[user]:password@]host[:port][/db][?prefix=P]`` URL."""

    host: str
    port: int
    db: int
    prefix: str
    username: str | None
    password: str | None = attrs.field(repr=False)

    def display(self) -> str:
        """The URL without credentials, for logs and ``/healthz``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.prefix == DEFAULT_PREFIX else f"?prefix={self.prefix}"
        return f"redis://{host}:{self.port}/{self.db}{suffix}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse the ``--redis`` value.

    Raises:
        ConfigError: naming what is wrong.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as e:
        raise ConfigError(f"redis: invalid URL {url!r}: {e}") from None
    if parts.scheme != "redis":
        raise ConfigError(f"redis: expected redis://HOST:PORT/DB, got {url!r}")
    host = parts.hostname or "localhost"
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"redis: the database must be a number, got {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise ConfigError(f"redis: unknown URL parameter(s): {', '.join(unknown)}")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(f"redis: prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return RedisURL(host, port, int(path or 0), prefix, username, password)
