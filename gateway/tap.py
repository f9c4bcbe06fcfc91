"""``twistd gateway``: options parsed into a :class:`~gateway.config.Config`, then
the same :class:`~gateway.service.GatewayService` an embedder would build."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from gateway.config import OPTIONS, ConfigError, load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
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

    def postOptions(self) -> None:
        cli = {o.name: self[o.name] for o in OPTIONS}
        try:
            self.config = load_config(cli, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _repeatable(name: str, help_text: str) -> Any:
    def opt(self: Options, value: str) -> None:
        self[name].append(value)

    opt.__doc__ = help_text
    return opt


for _o in OPTIONS:
    if _o.repeatable:
        setattr(Options, "opt_" + _o.name.replace("-", "_"), _repeatable(_o.name, _o.help))


def makeService(options: Options) -> service.IService:
    """Build the node's service from parsed options."""
    from gateway.service import GatewayService

    try:
        return GatewayService(options.config)
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None
