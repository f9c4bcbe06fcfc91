"""Built-in publish hooks, exposed to operators through ``plugins/gateway_hooks.py``
(installed as ``gateway_plugins.gateway_hooks``).

* ``log``: log every accepted publication (channel, seq, sender).
* ``allow-channels:PATTERN[,PATTERN...]``: refuse (``forbidden``) publishes to
  channels that match none of the glob patterns.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import pkgutil
import sys
from types import ModuleType
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.core.channels import pattern_matches
from gateway.core.model import Publication
from gateway.errors import Forbidden
from gateway.interfaces import IPublishHook, IPublishHookFactory

__all__ = [
    "AllowChannelsHook",
    "AllowChannelsHookFactory",
    "LogHook",
    "LogHookFactory",
    "discover_factories",
    "discover_hook_factories",
    "factory_named",
    "load_hooks",
    "plugin_package",
]

PLUGIN_PREFIX = "gateway_"
PLUGIN_PACKAGE = "gateway_plugins"


@implementer(IPublishHook)
class LogHook:
    _log = Logger()

    def before_publish(self, channel: str, data: Any, sender: str | None) -> None:
        pass

    def after_publish(self, publication: Publication) -> None:
        self._log.info(
            "published {channel} seq {seq} epoch {epoch} from {sender}",
            channel=publication.channel,
            seq=publication.seq,
            epoch=publication.epoch,
            sender=publication.sender or "-",
        )


@implementer(IPublishHook)
class AllowChannelsHook:
    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns

    def before_publish(self, channel: str, data: Any, sender: str | None) -> None:
        if not any(pattern_matches(p, channel) for p in self.patterns):
            raise Forbidden(f"publishing to {channel!r} is not allowed on this gateway")

    def after_publish(self, publication: Publication) -> None:
        pass


@implementer(IPlugin, IPublishHookFactory)
class LogHookFactory:
    hookType = "log"
    hookHelp = "Log every accepted publication (channel, seq, epoch, sender) at info level."
    argStringFormat = "(none)"

    def make_hook(self, argstring: str) -> IPublishHook:
        if argstring:
            raise ValueError("the log hook takes no arguments")
        return LogHook()


@implementer(IPlugin, IPublishHookFactory)
class AllowChannelsHookFactory:
    hookType = "allow-channels"
    hookHelp = "Refuse (forbidden) publishes to channels matching none of the glob patterns (* and ?)."
    argStringFormat = "PATTERN[,PATTERN...]"

    def make_hook(self, argstring: str) -> IPublishHook:
        patterns = tuple(p for p in argstring.split(",") if p)
        if not patterns:
            raise ValueError("allow-channels needs at least one pattern, e.g. allow-channels:room:*")
        return AllowChannelsHook(patterns)


def plugin_package() -> ModuleType:
    """The ``gateway_plugins`` package: the repository's ``plugins/`` folder.

    An installed gateway has it under that name (``package_dir`` in setup.cfg).  A
    gateway imported from a source checkout (``PYTHONPATH=.``, or the README's
    ``editable_mode=compat`` install, which puts the project root on sys.path) has
    only the folder ``plugins/`` next to ``gateway/``: it is loaded from there under
    the installed name, so a checkout always uses its own plugins.
    """
    root = pathlib.Path(__file__).resolve().parent.parent
    folder = root / "plugins"
    if not ((root / "setup.cfg").is_file() and (folder / "__init__.py").is_file() and (folder / "gateway_hooks.py").is_file()):
        return importlib.import_module(PLUGIN_PACKAGE)
    module = sys.modules.get(PLUGIN_PACKAGE)
    if module is not None and getattr(module, "__file__", None) == str(folder / "__init__.py"):
        return module
    # Not loaded yet, or a plain import found something else first (another
    # distribution's gateway_plugins/ directory, a namespace package).
    spec = importlib.util.spec_from_file_location(PLUGIN_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PLUGIN_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PLUGIN_PACKAGE]
        raise
    return module


def discover_factories(interface: Any, name_attribute: str) -> dict[str, Any]:
    """Every provider of ``interface`` (a plugin factory) in ``gateway_*`` modules of the
    ``gateway_plugins`` package, by its ``name_attribute``; the first of each name wins.

    Only modules named ``gateway_*`` are imported, so nothing else found on the
    package's path is ever executed.
    """
    package = plugin_package()
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith(PLUGIN_PREFIX):
            continue
        module = importlib.import_module(f"{PLUGIN_PACKAGE}.{info.name}")
        for value in vars(module).values():
            if interface.providedBy(value) and not isinstance(value, type):
                verifyObject(interface, value)
                found.setdefault(getattr(value, name_attribute), value)
    return found


def factory_named(factories: dict[str, Any], spec: str, option: str, kind: str) -> tuple[Any, str]:
    """The factory a ``NAME[:ARGS]`` value names, and its ARGS.

    Raises:
        ValueError: ``<option>: unknown <kind> 'NAME' (available: ...)``.
    """
    name, _, args = spec.partition(":")
    factory = factories.get(name)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        raise ValueError(f"{option}: unknown {kind} {name!r} (available: {known})")
    return factory, args


def discover_hook_factories() -> dict[str, Any]:
    """Every :class:`IPublishHookFactory` of the plugins package, by ``hookType``."""
    return discover_factories(IPublishHookFactory, "hookType")


def load_hooks(specs: tuple[str, ...]) -> list[Any]:
    """Build the hooks named by ``--hook NAME[:ARGS]`` values.

    Raises:
        ValueError: for an unknown hook (listing the known ones) or bad arguments.
    """
    factories = discover_hook_factories() if specs else {}
    hooks = []
    for spec in specs:
        factory, args = factory_named(factories, spec, "hook", "hook")
        name = factory.hookType
        try:
            hook = factory.make_hook(args)
        except ValueError as e:
            raise ValueError(f"hook {name}: {e}") from None
        verifyObject(IPublishHook, hook)
        hooks.append(hook)
    return hooks
