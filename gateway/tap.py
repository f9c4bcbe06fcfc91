"""``twistd gateway``: options parsed into a :class:`~gateway.config.Config`, then
the same :class:`~gateway.service.GatewayService` an embedder would build.

Startup errors (docs/protocol.md section 10) are one line on the process's real
stderr naming the option, and exit status 1, whatever phase they happen in:

* option parsing (a bad value, a bad or missing ``--config`` file, an unknown
  option): :meth:`Options.parseOptions` reports and raises ``SystemExit(1)``;
* building the service (a ``--listen`` that does not parse, a missing TLS key or
  certificate, an unknown ``--hook``): :func:`makeService` does the same;
* listening (a port in use, no permission): twistd binds in
  ``privilegedStartService`` after :func:`makeService` returned and lets the
  exception end the process (after removing its pid file), so
  :func:`makeService` installs a ``sys.excepthook`` that prints a
  :class:`~gateway.service.ListenError` as one line instead of a traceback.

``sys.__stderr__`` is used because twistd replaces ``sys.stderr`` with its log
(which goes to stdout under ``-n``).
"""

from __future__ import annotations

import re
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
        [o.name, None, None, o.help] for o in OPTIONS if not o.repeatable
    ]

    def __init__(self) -> None:
        super().__init__()
        for o in OPTIONS:
            if o.repeatable:
                self[o.name] = []

    def opt_version(self) -> NoReturn:
        """Print the gateway's version and exit."""
        print(f"gateway {gateway.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
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


for _o in OPTIONS:
    if _o.repeatable:
        setattr(GatewayOptions, "opt_" + _o.name.replace("-", "_"), _repeatable(_o.name, _o.help))


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


def makeService(options: GatewayOptions) -> service.IService:
    """Build the node's service from parsed options (twistd calls this)."""
    from gateway.service import GatewayService

    try:
        svc = GatewayService(options.config)
    except ConfigError as e:
        fail(str(e))
    _one_line_listen_errors()
    return svc
