"""The ``--redis`` URL, in one of three forms:

* ``redis://[[user]:password@]host[:port][/db][?prefix=P]``: one Redis;
* ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/MASTER_NAME[/db][?prefix=P]``:
  the master that the Sentinels name ``MASTER_NAME``, found again after a failover
  (the password is the data nodes'; the Sentinels are asked without one);
* ``redis+cluster://[[user]:password@]host1:7000,host2:7001[?prefix=P]``: a Redis
  Cluster, reached through any of the seed nodes (a cluster has database 0 only;
  see :mod:`gateway.broker.cluster`).

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


SINGLE, SENTINEL, CLUSTER = "redis", "redis+sentinel", "redis+cluster"
_DEFAULT_PORTS = {SINGLE: 6379, SENTINEL: 26379, CLUSTER: 6379}
_MASTER_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class RedisURL:
    """A parsed ``--redis`` URL (see the module docstring).

    ``host``/``port`` are the first of ``nodes`` (the one Redis in ``redis://``).
    """

    host: str
    port: int
    db: int
    prefix: str
    username: str | None
    password: str | None = attrs.field(repr=False)
    scheme: str = SINGLE
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None

    def display(self) -> str:
        """The URL without credentials, for logs and ``/healthz``."""
        suffix = "" if self.prefix == DEFAULT_PREFIX else f"?prefix={self.prefix}"
        if self.scheme == SINGLE:
            return f"redis://{_hostport(self.host, self.port)}/{self.db}{suffix}"
        hosts = ",".join(_hostport(h, p) for h, p in self.nodes)
        if self.scheme == SENTINEL:
            return f"{self.scheme}://{hosts}/{self.master_name}/{self.db}{suffix}"
        return f"{self.scheme}://{hosts}{suffix}"


def parse_redis_url(url: str) -> RedisURL:
    """Parse the ``--redis`` value.

    Raises:
        ConfigError: naming what is wrong.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in (SENTINEL, CLUSTER):
        return _parse_multi(url, scheme)
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as e:
        raise ConfigError(f"redis: invalid URL {url!r}: {e}") from None
    if parts.scheme != "redis":
        raise ConfigError(
            f"redis: expected redis://HOST:PORT/DB, redis+sentinel://HOSTS/MASTER/DB or redis+cluster://HOSTS, got {url!r}"
        )
    host = parts.hostname or "localhost"
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"redis: the database must be a number, got {path!r}")
    prefix = _prefix(parts.query)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return RedisURL(host, port, int(path or 0), prefix, username, password, SINGLE, ((host, port),))


def _prefix(query_string: str) -> str:
    query = parse_qs(query_string, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise ConfigError(f"redis: unknown URL parameter(s): {', '.join(unknown)}")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(f"redis: prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    return prefix


def _parse_multi(url: str, scheme: str) -> RedisURL:
    """``redis+sentinel://`` and ``redis+cluster://``: a comma-separated host list,
    which :func:`urllib.parse.urlsplit` cannot read as one netloc."""
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise ConfigError(f"redis: unexpected fragment in {url!r}")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if colon:
            username, password = unquote(user) or None, unquote(secret) or None
        else:
            # redis+sentinel://password@hosts (the form of the issue): a bare secret.
            password = unquote(user) or None
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        try:
            parts = urlsplit("//" + item)
            host, port = parts.hostname, parts.port or _DEFAULT_PORTS[scheme]
        except ValueError as e:
            raise ConfigError(f"redis: invalid host {item!r} in {url!r}: {e}") from None
        if not host or parts.path or parts.username:
            raise ConfigError(f"redis: invalid host {item!r} in {url!r}")
        nodes.append((host, port))
    segments = [p for p in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()
    master_name = None
    db = "0"
    if scheme == SENTINEL:
        if not segments or not _MASTER_NAME_RE.match(segments[0]):
            raise ConfigError(f"redis: expected {SENTINEL}://HOST:PORT,.../MASTER_NAME[/DB], got {url!r}")
        master_name = segments.pop(0)
        if segments:
            db = segments.pop(0)
    elif segments:
        raise ConfigError(f"redis: a cluster URL has no path (database 0 only), got {url!r}")
    if segments or not db.isdigit():
        raise ConfigError(f"redis: the database must be a number, got {'/'.join([db, *segments])!r}")
    host, port = nodes[0]
    return RedisURL(host, port, int(db), _prefix(query), username, password, scheme, tuple(nodes), master_name)
