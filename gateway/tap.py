"""``twistd gateway``: options parsed into a :class:`~gateway.config.Config`, then
the same :class:`~gateway.service.GatewayService` an embedder would build.

Startup errors (docs/protocol.md section 10) are one line on the process's real
stderr naming the option, and exit status 1, whatever phase they happen in:

* option parsing (a bad value, a bad or missing ``--config`` file, an unknown
  option): :meth:`Options.parseOptions` reports and raises ``SystemExit(1)``;
* building the service (a ``--listen`` that does not parse, a missing TLS key or
  certificate, an unknown ``--hook``): :func:`makeService` does the same;
* listening (a port in use, no permission): twistd binds in
  ``privilegedStartService`` after :func:`makeService` returned, and without
  ``-n`` only after it has gone into the background, where an error reaches the
  terminal as twistd's own two-line "An error has occurred" report.  So
  :func:`makeService` first tries each TCP or TLS port with a throwaway socket
  (:func:`probe_listen`) and reports one that cannot be bound right away; for what
  can still fail later (the port taken in between), it installs a
  ``sys.excepthook`` that prints a :class:`~gateway.service.ListenError` as one
  line instead of a traceback.

``sys.__stderr__`` is used because twistd replaces ``sys.stderr`` with its log
(which goes to stdout under ``-n``).
"""

from __future__ import annotations

import errno
import gc
import re
import socket
import sys
from typing import Any, NoReturn

from twisted.application import service
from twisted.python import usage

import gateway
from gateway.config import OPTIONS, ConfigError, load_config

__all__ = ["GatewayOptions", "Options", "makeService"]

_OPTION_NAMES = {o.name for o in OPTIONS} | {"config"}
_NAMED = re.compile(r"([a-z][a-z-]*)([: ])")


def as_command_line(message: str) -> str:
    """``history-size: ...`` (the option's long name, as config errors say it) as ``--history-size: ...``."""
    m = _NAMED.match(message)
    if m is not None and m.group(1) in _OPTION_NAMES:
        return "--" + message
    return message


def report(message: str) -> None:
    """Write ``gateway: MESSAGE`` as one line on the real stderr."""
    line = " ".join(as_command_line(message).split())
    stream = sys.__stderr__
    if stream is not None:
        stream.write(f"gateway: {line}\n")
        stream.flush()


def fail(message: str) -> NoReturn:
    """Report ``message`` and exit with status 1 (SystemExit: no traceback)."""
    report(message)
    raise SystemExit(1)


class GatewayOptions(usage.Options):
    """The ``twistd gateway`` options as a plain :class:`usage.Options` (errors raise UsageError)."""

    synopsis = "[options]"
    longdesc = (
        "Real-time messaging gateway: WebSocket (/ws), Server-Sent Events (/sse), long-polling (/poll) "
        "and HTTP publish (/publish) on one port. Options may also come from a TOML file (--config), "
        "keyed by long option name; the command line wins."
    )
    optParameters: list[list[Any]] = [["config", None, None, "TOML file with the same options (keys are long option names)."]] + [
        [o.name, None, None, o.help] for o in OPTIONS if not o.repeatable and o.kind is not bool
    ]

    def __init__(self) -> None:
        super().__init__()
        for o in OPTIONS:
            if o.repeatable:
                self[o.name] = []
            elif o.kind is bool:
                self[o.name] = None

    def opt_version(self) -> NoReturn:
        """Print the gateway's version and exit."""
        print(f"gateway {gateway.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        # A flag left out is "not given" (None), so a TOML `demo = true` stands.
        cli = {o.name: self[o.name] for o in OPTIONS}
        try:
            self.config = load_config(cli, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _repeatable(name: str, help_text: str) -> Any:
    def opt(self: GatewayOptions, value: str) -> None:
        self[name].append(value)

    opt.__doc__ = help_text
    return opt


def _flag(name: str, value: bool, help_text: str) -> Any:
    def opt(self: GatewayOptions) -> None:
        self[name] = value

    opt.__doc__ = help_text
    return opt


for _o in OPTIONS:
    if _o.repeatable:
        setattr(GatewayOptions, "opt_" + _o.name.replace("-", "_"), _repeatable(_o.name, _o.help))
    elif _o.kind is bool:
        # --NAME and --no-NAME; unset (None) unless given, so a --config file still applies.
        setattr(GatewayOptions, "opt_" + _o.attr, _flag(_o.name, True, _o.help))
        setattr(GatewayOptions, "opt_no_" + _o.attr, _flag(_o.name, False, f"Turn --{_o.name} off."))


class Options(GatewayOptions):
    """What twistd parses: a bad option is one line on stderr and exit status 1."""

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(f"{e} (see twistd gateway --help)" if "not recognized" in str(e) else str(e))


def _one_line_listen_errors() -> None:
    """Make an uncaught :class:`~gateway.service.ListenError` one line on stderr (exit status 1)."""
    from gateway.service import ListenError

    previous = sys.excepthook
    if getattr(previous, "_gateway", False):
        return

    def excepthook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        if isinstance(exc, ListenError):
            report(str(exc))
        else:
            previous(exc_type, exc, tb)

    excepthook._gateway = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def tcp_address(description: str) -> tuple[str, int] | None:
    """The (interface, port) a ``tcp:``, ``tcp6:`` or ``ssl:`` listen description binds,
    or None for other endpoint types and for port 0 (any free port)."""
    parts = _UNESCAPED_COLON.split(description)
    kind = parts[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            named[key.strip().lower()] = value.replace("\\:", ":")
        else:
            positional.append(part)
    try:
        port = int(named.get("port", positional[0] if positional else "0"))
    except ValueError:
        return None
    if port == 0:
        return None
    return named.get("interface", "::" if kind == "tcp6" else ""), port


def probe_listen(description: str) -> str | None:
    """Bind and close a socket where ``description`` will listen; the problem, or None.

    Only "address in use" and "permission denied" are reported: anything else is left
    for the real listen, which names it too.
    """
    address = tcp_address(description)
    if address is None:
        return None
    interface, port = address
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As Twisted's listening sockets do, so a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return e.strerror
    return None


def makeService(options: GatewayOptions) -> service.IService:
    """Build the node's service from parsed options (twistd calls this); with
    ``--workers``, the supervisor of :mod:`gateway.workers` instead."""
    from gateway.service import GatewayService

    svc: service.IService
    try:
        if options.config.workers is not None:
            from gateway.workers import make_supervisor

            svc = make_supervisor(options.config)
        else:
            svc = GatewayService(options.config)
    except ConfigError as e:
        fail(str(e))
    for description in options.config.listen:
        problem = probe_listen(description)
        if problem is not None:
            fail(f"listen {description}: {problem}")
    _one_line_listen_errors()
    from twisted.internet import reactor

    reactor.callWhenRunning(tune_gc)  # type: ignore[attr-defined]
    # The node owns its process: one Date text per second for twisted.web's responses.
    from gateway.transports import _httpdate

    _httpdate.install()
    return svc


GC_THRESHOLDS = (20_000, 20, 10)
"""The cyclic collector's thresholds in a twistd node (Python's default: 700, 10, 10)."""


def tune_gc() -> None:
    """Fit the cyclic garbage collector to a long-running node (twistd calls it once running).

    * Everything loaded at startup (modules, plugins, the node itself) lives as long
      as the process: ``gc.freeze()`` keeps it out of the collector's full passes,
      which would otherwise re-scan it every time.
    * The gateway frees what a request or connection leaves by reference counting,
      but a request held even a few milliseconds (a poll waiting for the next
      publication) outlives the young-generation passes, which Python runs every
      700 container allocations, and so reaches the old generation, whose growth
      triggers full passes over every live connection.  At 1,000 pollers that was
      about a tenth of the node's CPU and a full pass every few seconds.  Passes
      every 20,000 allocations let such requests die young; cyclic garbage, if any,
      is still collected, a little later (bench/README.md, "Issue 11, third session").
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
