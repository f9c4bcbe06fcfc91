"""A partial broker outage stays partial (Redis Cluster with one master down), over real
sockets with httpx and websockets: the channels of the shard that is down get
``unavailable`` (WebSocket error, HTTP 503) on publish, subscribe, SSE, poll and
presence; every other channel is served as usual; ``/readyz`` answers ``200 degraded``
naming the shard, ``503`` only when every shard is down; ``gateway_broker_up`` is 0.
The broker is :class:`~gateway.testing.ManualBroker` with channels in ``down``, and two
stand-in shards for ``/readyz``.  The real cluster: tests/e2e/test_cluster_partial.py."""

from __future__ import annotations

from gateway.broker.shards import ShardStats
from gateway.testing import ManualBroker, WSClient, aio, http

from .conftest import wait_until

HEALTHY, DOWN = "room:ok", "room:down"


class TwoShards(ManualBroker):
    """ManualBroker whose ``down`` channels belong to shard ``s2``; ``s1`` holds the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = [ShardStats("10.0.0.1:7000"), ShardStats("10.0.0.2:7001")]

    def shards(self) -> list[ShardStats]:
        self.stats[0].up = self.ready
        self.stats[1].up = self.ready and not self.down
        return self.stats


async def publish(gw, channel, data="x"):
    return await http("POST", gw.base + "/publish", json={"channel": channel, "data": data})


async def test_publishes_on_healthy_channels_go_on_the_down_shards_are_503(gw_factory):
    broker = TwoShards()
    gw = gw_factory(broker=broker)
    broker.down = {DOWN}
    ok = await publish(gw, HEALTHY)
    assert 200 == ok.status_code, ok.text
    refused = await publish(gw, DOWN)
    assert (503, "unavailable") == (refused.status_code, refused.json()["error"]["code"])
    assert DOWN in refused.json()["error"]["message"]
    ws = await WSClient.connect(gw.ws_url)
    assert "ack" == (await ws.request({"type": "publish", "channel": HEALTHY, "data": 1, "id": 1}))["type"]
    error = await ws.request({"type": "publish", "channel": DOWN, "data": 1, "id": 2})
    assert ("error", "unavailable") == (error["type"], error["code"])
    # Back: the channel publishes again.
    broker.down = set()
    assert "ack" == (await ws.request({"type": "publish", "channel": DOWN, "data": 1, "id": 3}))["type"]
    await ws.close()


async def test_websocket_subscribes_to_healthy_channels_only(gw_factory):
    broker = TwoShards()
    gw = gw_factory(broker=broker)
    broker.down = {DOWN}
    ws = await WSClient.connect(gw.ws_url)
    assert "subscribed" == (await ws.request({"type": "subscribe", "channel": HEALTHY, "id": 1}))["type"]
    error = await ws.request({"type": "subscribe", "channel": DOWN, "id": 2})
    assert ("error", "unavailable") == (error["type"], error["code"])
    assert [HEALTHY] == gw.bus.channels
    # Live delivery on the healthy channel goes on meanwhile.
    pub = await gw.gateway.publish(HEALTHY, "live")
    broker.deliver(pub)
    message = await ws.recv()
    assert ("message", HEALTHY, pub.seq, "live") == (message["type"], message["channel"], message["seq"], message["data"])
    await ws.close()


async def test_sse_and_poll_on_healthy_channels_work_any_down_channel_is_503(gw_factory, sse):
    broker = TwoShards()
    gw = gw_factory(broker=broker)
    broker.down = {DOWN}
    stream = await sse(f"{gw.base}/sse?channel={HEALTHY}")
    assert 200 == stream.status
    await wait_until(lambda: gw.bus.subscriber_count(HEALTHY) == 1, what="stream subscribed")
    for channels in ([DOWN], [HEALTHY, DOWN]):
        query = "&".join(f"channel={c}" for c in channels)
        refused = await sse(f"{gw.base}/sse?{query}")
        assert 503 == refused.status
        assert "unavailable" == (await aio(refused.body()))["error"]["code"]
        r = await http("GET", f"{gw.base}/poll?{query}&timeout=0")
        assert (503, "unavailable") == (r.status_code, r.json()["error"]["code"])
    r = await http("GET", f"{gw.base}/poll?channel={HEALTHY}&timeout=0")
    assert 200 == r.status_code and [] == r.json()["messages"]
    # The refused requests hold nothing.
    assert 1 == gw.bus.subscriber_count()
    assert 1 == gw.gateway.connection_count("sse") and 0 == gw.gateway.connection_count("poll")
    pub = await gw.gateway.publish(HEALTHY, "to the stream")
    broker.deliver(pub)
    event = await aio(stream.event())
    assert (pub.seq, "to the stream") == (event["data"]["seq"], event["data"]["data"])


async def test_presence_of_the_down_shards_channels_is_unavailable(gw_factory):
    broker = TwoShards()
    gw = gw_factory(broker=broker)
    ws = await WSClient.connect(gw.ws_url)
    for i, channel in enumerate((HEALTHY, DOWN)):
        assert "subscribed" == (await ws.request({"type": "subscribe", "channel": channel, "id": i}))["type"]
    broker.down = {DOWN}
    ok = await http("GET", gw.base + "/presence", params={"channel": HEALTHY})
    assert 200 == ok.status_code, ok.text
    refused = await http("GET", gw.base + "/presence", params={"channel": DOWN})
    assert (503, "unavailable") == (refused.status_code, refused.json()["error"]["code"])
    reply = await ws.request({"type": "presence", "id": 9, "channel": DOWN})
    assert ("error", "unavailable") == (reply["type"], reply["code"])
    await ws.close()


async def test_readyz_is_degraded_with_one_shard_down_and_503_with_all(gw_factory):
    broker = TwoShards()
    gw = gw_factory(broker=broker)
    r = await http("GET", gw.base + "/readyz")
    assert (200, "ready") == (r.status_code, r.json()["status"])
    broker.down = {DOWN}
    r = await http("GET", gw.base + "/readyz")
    assert 200 == r.status_code
    assert {"status": "degraded", "reason": "some Redis shards are down", "shards_down": ["10.0.0.2:7001"]} == {
        k: v for k, v in r.json().items() if k != "node"
    }
    metrics = (await http("GET", gw.base + "/metrics")).text
    assert "gateway_broker_up 0.0" in metrics
    assert 'gateway_redis_shard_up{shard="10.0.0.2:7001"} 0.0' in metrics
    assert 'gateway_redis_shard_up{shard="10.0.0.1:7000"} 1.0' in metrics
    broker.ready = False
    r = await http("GET", gw.base + "/readyz")
    assert 503 == r.status_code
    assert {"status": "unavailable", "reason": "message bus not reachable", "shards_down": ["10.0.0.1:7000", "10.0.0.2:7001"]} == r.json()
    # With every shard down the refusals say so without naming a channel.
    refused = await publish(gw, HEALTHY)
    assert (503, "the message bus is not available") == (refused.status_code, refused.json()["error"]["message"])
    broker.ready, broker.down = True, set()
    r = await http("GET", gw.base + "/readyz")
    assert (200, "ready") == (r.status_code, r.json()["status"])
    assert "gateway_broker_up 1.0" in (await http("GET", gw.base + "/metrics")).text

