"""The gateway's built-in publish hooks, exposed through its own extension point
(the way Twisted exposes its own cred checkers in twisted/plugins/cred_*.py)."""

from gateway.hooks import AllowChannelsHookFactory, LogHookFactory

log = LogHookFactory()
allow_channels = AllowChannelsHookFactory()
