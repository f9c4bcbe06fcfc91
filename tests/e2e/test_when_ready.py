"""GatewayService.whenReady() with a real Redis: it waits while Redis is down and fires
once publishes can be made durable."""

from __future__ import annotations

import pytest
from twisted.internet import defer, reactor

from gateway import Config, GatewayService
from gateway.testing import sleep
from tests.e2e.support import TIMEOUT_FACTOR

pytestmark = pytest.mark.redis


async def test_when_ready_waits_for_redis_then_publish_succeeds(redis_server):
    """Started while Redis is down, the service is not ready and whenReady() waits; once Redis
    is up it fires and a publish made then succeeds."""
    redis_server.kill()
    svc = GatewayService(Config(listen=(), redis=redis_server.url))
    svc.startService()
    try:
        ready = svc.whenReady()
        await sleep(0.5)  # long enough for several readiness checks; nothing may fire
        assert not ready.called and not svc.bus.is_ready()
        redis_server.start()
        assert await ready.addTimeout(10 * TIMEOUT_FACTOR, reactor) is None
        pub = await svc.bus.publish("ready", {"n": 1})
        assert pub.seq == 1
        assert await svc.whenReady() is None  # ready now: at once
    finally:
        await defer.ensureDeferred(svc.stopService())
