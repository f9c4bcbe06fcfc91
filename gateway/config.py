"""Configuration: one declarative option table, one frozen :class:`Config`.

The table :data:`OPTIONS` produces the ``twistd gateway`` options, the TOML keys
(the long option names) and the defaults; :func:`load_config` applies the
precedence defaults < TOML file < command line and validates everything in one place.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = ["Config", "ConfigError", "Option", "OPTIONS", "load_config"]

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


class ConfigError(ValueError):
    """An option has a bad value; the message names it."""


@attrs.frozen
class Option:
    """One configuration option.

    Attributes:
        name: the long option name, also the TOML key.
        kind: ``str``, ``int``, ``float`` or ``bool`` (the type of one value; a
            ``bool`` is a pair of flags, ``--NAME`` and ``--no-NAME``).
        default: the value when nothing sets it.
        help: one line for ``--help``.
        repeatable: the option may be given several times (a TOML array).
        metavar: what the help shows as the value.
        check: a predicate on the converted value, with the rule it enforces.
    """

    name: str
    kind: type
    default: Any
    help: str
    repeatable: bool = False
    metavar: str = ""
    check: tuple[Callable[[Any], bool], str] | None = None

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def _positive(v: Any) -> bool:
    return bool(v > 0)


OPTIONS: tuple[Option, ...] = (
    Option("listen", str, (DEFAULT_LISTEN,), f"Twisted endpoint to listen on (repeatable; default {DEFAULT_LISTEN}).", True, "ENDPOINT"),
    Option("redis", str, None, "Share channels through Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?prefix=P], redis+sentinel://[[USER]:PASSWORD@]HOST:PORT,.../MASTER[/DB][?prefix=P] or redis+cluster://[[USER]:PASSWORD@]HOST:PORT,...[?prefix=P] (default: in-process bus).", metavar="URL"),
    Option("workers", int, None, "Run N worker processes on the same listening sockets, each a node sharing channels through --redis (default: this process serves).", metavar="N", check=(_positive, "must be > 0")),
    Option("jwt-secret", str, None, "HS256 secret for JWT authentication.", metavar="SECRET"),
    Option("jwt-public-key", str, None, "PEM public key file for RS256/ES256 JWT authentication.", metavar="FILE"),
    Option("jwt-secret-file", str, None, "File holding the HS256 secret (instead of --jwt-secret, which ps shows).", metavar="FILE"),
    Option("jwt-audience", str, None, "Required JWT aud claim.", metavar="AUD"),
    Option("jwt-issuer", str, None, "Required JWT iss claim.", metavar="ISS"),
    Option("jwt-leeway", float, 5.0, "Seconds of clock skew allowed on exp, nbf and iat.", metavar="SECONDS", check=(lambda v: v >= 0, "must be >= 0")),
    Option("api-key", str, (), "API key for backends: publish and subscribe everywhere (repeatable).", True, "KEY"),
    Option("api-key-file", str, None, "File of API keys, one per line (instead of --api-key).", metavar="FILE"),
    Option("authenticator", str, (), "Authenticator plugin NAME[:ARGS] from the plugins package (repeatable).", True, "AUTH"),
    Option("auth-url", str, None, "Authenticate with your backend: POST the request's cookies and Authorization to URL.", metavar="URL"),
    Option("auth-cache", float, 30.0, "Seconds an --auth-url answer is cached per credential.", metavar="SECONDS", check=(lambda v: v >= 0, "must be >= 0")),
    Option("auth-timeout", float, 10.0, "Seconds a WebSocket may take to authenticate (auth command) when the upgrade carried no token.", metavar="SECONDS", check=(_positive, "must be > 0")),
    Option("revocation-ttl", float, 86400.0, "Seconds POST /disconnect keeps refusing an identity's earlier tokens.", metavar="SECONDS", check=(_positive, "must be > 0")),
    Option("presence-ttl", float, 30.0, "Seconds a long-poll client stays present after its last poll ended (and the most a dead node's clients stay).", metavar="SECONDS", check=(_positive, "must be > 0")),
    Option("publish-rate", float, None, "Publications per second (bursts of as many) per connection, identity, API key or client address (default: unlimited).", metavar="N", check=(_positive, "must be > 0")),
    Option("max-connections", int, None, "Open WebSockets, SSE streams and held polls per node (default: unlimited).", metavar="N", check=(_positive, "must be > 0")),
    Option("allowed-origin", str, (), "Browser origin allowed to connect (repeatable; default: every origin).", True, "ORIGIN"),
    Option("history-size", int, 1000, "Publications kept per channel for resume.", metavar="N", check=(_positive, "must be > 0")),
    Option("history-ttl", float, 300.0, "Seconds a publication is kept for resume.", metavar="SECONDS", check=(_positive, "must be > 0")),
    Option("heartbeat", float, 20.0, "Seconds between WebSocket pings and SSE ping comments.", metavar="SECONDS", check=(_positive, "must be > 0")),
    Option("max-message-size", int, 65536, "Largest WebSocket message and POST /publish body, in bytes.", metavar="BYTES", check=(lambda v: v >= 256, "must be >= 256")),
    Option("node-id", str, None, "This node's name in logs and health output (default: host:pid).", metavar="ID"),
    Option("hook", str, (), "Publish hook NAME[:ARGS] from the plugins package, e.g. log or allow-channels:room:* (repeatable).", True, "HOOK"),
    Option("drain-timeout", float, 10.0, "Seconds a SIGTERM drain may take before exiting.", metavar="SECONDS", check=(lambda v: v >= 0, "must be >= 0")),
    Option("demo", bool, False, "Serve the demo chat page (built on /gateway.js) at /demo/."),
    Option("access-log", bool, True, "One access-log line per HTTP request (token= values redacted); --no-access-log writes none."),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@attrs.frozen(kw_only=True)
class Config:
    """Everything a gateway node is configured with (immutable).

    Every field has the default of docs/protocol.md section 10, so ``Config()`` is a
    working single-node configuration and embedders set only what they need.
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    redis: str | None = None
    workers: int | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_secret_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 5.0
    api_key: tuple[str, ...] = ()
    api_key_file: str | None = None
    authenticator: tuple[str, ...] = ()
    auth_url: str | None = None
    auth_cache: float = 30.0
    auth_timeout: float = 10.0
    revocation_ttl: float = 86400.0
    presence_ttl: float = 30.0
    publish_rate: float | None = None
    max_connections: int | None = None
    allowed_origin: tuple[str, ...] = ()
    history_size: int = 1000
    history_ttl: float = 300.0
    heartbeat: float = 20.0
    max_message_size: int = 65536
    node_id: str = attrs.field(factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    drain_timeout: float = 10.0
    hook: tuple[str, ...] = ()
    demo: bool = False
    access_log: bool = True
    # Tuning knobs that are not command-line options.
    max_subscriptions: int = 1000
    max_send_buffer: int = 4 * 1024 * 1024
    # Publications kept per channel so that a subscription continuing from this
    # node's position, or just behind it, starts without a broker history read
    # (0: every subscription reads history); seconds a channel's broker
    # subscription outlives its last local subscriber (0: released at once).
    recent_publications: int = 64
    channel_linger: float = 5.0


def _convert(option: Option, value: Any, source: str) -> Any:
    def one(v: Any) -> Any:
        if option.kind is bool:
            # A flag: true or false in TOML, present or absent on the command line.
            if not isinstance(v, bool):
                raise ConfigError(f"{option.name}: expected true or false, got {v!r} ({source})")
            return v
        if option.kind is str:
            if not isinstance(v, str):
                raise ConfigError(f"{option.name}: expected a string, got {v!r} ({source})")
            return v
        if isinstance(v, bool):
            raise ConfigError(f"{option.name}: expected a number, got {v!r} ({source})")
        try:
            converted = option.kind(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{option.name}: expected {option.kind.__name__}, got {v!r} ({source})") from None
        if option.kind is int and isinstance(v, float) and v != converted:
            raise ConfigError(f"{option.name}: expected an integer, got {v!r} ({source})")
        if option.kind is float and not math.isfinite(converted):
            raise ConfigError(f"{option.name}: expected a number, got {v!r} ({source})")
        if option.check is not None and not option.check[0](converted):
            raise ConfigError(f"{option.name}: {option.check[1]}, got {v!r} ({source})")
        return converted

    if option.repeatable:
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(one(v) for v in values)
    if isinstance(value, (list, tuple)):
        raise ConfigError(f"{option.name}: takes one value, got a list ({source})")
    return one(value)


def read_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file: top-level keys are long option names."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config: unknown option(s) in {path}: {', '.join(unknown)}")
    return data


def load_config(cli: Mapping[str, Any] | None = None, config_file: str | None = None) -> Config:
    """Build a :class:`Config` from defaults, then the TOML file, then ``cli``.

    Args:
        cli: option name to value (strings as typed; lists for repeatable
            options); options absent or None/empty were not given.
        config_file: path of a TOML file, or None.

    Raises:
        ConfigError: naming the option and the source of a bad value.
    """
    values: dict[str, Any] = {}
    if config_file:
        for name, value in read_toml(config_file).items():
            values[_BY_NAME[name].attr] = _convert(_BY_NAME[name], value, config_file)
    for name, value in (cli or {}).items():
        option = _BY_NAME.get(name)
        if option is None:
            raise ConfigError(f"unknown option {name}")
        if value is None or (option.repeatable and not value):
            continue
        values[option.attr] = _convert(option, value, "command line")
    if "listen" in values and not values["listen"]:
        raise ConfigError("listen: at least one endpoint is needed")
    if values.get("jwt_secret") and values.get("jwt_public_key"):
        raise ConfigError("give --jwt-secret or --jwt-public-key, not both")
    if values.get("redis") is not None:
        from gateway.broker.redisurl import parse_redis_url

        parse_redis_url(values["redis"])
    if values.get("workers") is not None and values.get("redis") is None:
        raise ConfigError("workers: needs --redis (the workers share channels through Redis)")
    if values.get("node_id") is None:
        values.pop("node_id", None)
    return Config(**values)


def options_markdown() -> str:
    """The README's option table, generated from :data:`OPTIONS` (``python -m gateway.config``)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        default = o.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif isinstance(default, tuple):
            default = ", ".join(default) if default else "none"
        if o.kind is bool:
            rows.append(f"| `--{o.name}` / `--no-{o.name}` | {default} | {o.help} |")
            continue
        rows.append(f"| `--{o.name}`{' (repeatable)' if o.repeatable else ''} | {'none' if default is None else default} | {o.help} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(options_markdown())
