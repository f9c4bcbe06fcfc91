"""Publish hooks selected with --hook and discovered in the plugins package."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config
from gateway.hooks import discover_hook_factories
from gateway.testing import WSClient, http


def test_builtin_hooks_are_discovered_through_the_plugins_package():
    """The gateway's own hooks arrive through plugins/, like any third-party one."""
    assert {"log", "allow-channels"} <= set(discover_hook_factories())


async def test_allow_channels_refuses_other_channels_over_http_and_websocket(gw_factory):
    """allow-channels:room:* lets room:1 through and refuses news with 403 / `forbidden`."""
    gw = gw_factory(hook=("allow-channels:room:*",))
    ok = await http("POST", gw.base + "/publish", json={"channel": "room:1", "data": 1})
    assert ok.status_code == 200
    refused = await http("POST", gw.base + "/publish", json={"channel": "news", "data": 1})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    ws = await WSClient.connect(gw.ws_url)
    error = await ws.request({"type": "publish", "channel": "news", "data": 1, "id": 1})
    assert (error["type"], error["code"]) == ("error", "forbidden")
    await ws.close()


async def test_log_hook_logs_each_publication(gw_factory):
    """The log hook writes one structured log event per accepted publication."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = gw_factory(hook=("log",))
        await gw.bus.publish("audit", {"x": 1})
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [e for e in events if e.get("log_format", "").startswith("published {channel}")]
    assert [(e["channel"], e["seq"]) for e in logged] == [("audit", 1)]


@pytest.mark.parametrize(
    "spec,message",
    [("nope", "unknown hook 'nope'"), ("allow-channels", "at least one pattern"), ("log:x", "takes no arguments")],
)
def test_bad_hook_is_a_clear_config_error(spec, message):
    """An unknown hook or bad hook arguments stop start-up with a message naming the problem."""
    from gateway.app import Gateway

    with pytest.raises(ConfigError, match=message):
        Gateway(load_config({"hook": [spec]}))
