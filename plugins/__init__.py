"""Gateway plugins: authenticators and publish hooks, discovered with twisted.plugin.

Drop a module here (or in a ``plugins`` directory of another distribution on
sys.path) that defines objects providing ``IPlugin`` and one of the gateway's plugin
interfaces; see ``plugins/README.md``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
