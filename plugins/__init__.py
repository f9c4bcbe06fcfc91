"""Gateway plugins: publish hooks and authenticators, discovered with twisted.plugin's path rules.

Installed as the package ``gateway_plugins`` (this folder is ``plugins/`` in the
repository only).  Drop a ``gateway_*.py`` module here, or in a ``gateway_plugins``
directory without ``__init__.py`` of another distribution on sys.path, that defines
objects providing ``IPlugin`` and one of the gateway's plugin interfaces; see
``plugins/README.md``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
