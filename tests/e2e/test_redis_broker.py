"""RedisBroker against a real redis-server: keys, expiry, outages, hangs, flushes, bad data."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import pytest_twisted

from gateway.broker import broker_from_config
from gateway.broker.redis import RedisBroker, parse_redis_url
from gateway.config import Config, ConfigError
from gateway.core.model import Position
from gateway.errors import BadRequest, Unavailable
from gateway.testing import sleep
from tests.contracts.conftest import RecordingListener
from tests.e2e.support import TIMEOUT_FACTOR, wait_for


@pytest_twisted.async_yield_fixture
async def brokers(redis_server):
    """``await brokers(**kwargs)`` -> a started RedisBroker on the test's Redis, and its listener."""
    from twisted.internet import reactor

    started: list[RedisBroker] = []

    async def make(url: str | None = None, wait: bool = True, **kwargs: Any) -> tuple[RedisBroker, RecordingListener]:
        broker = RedisBroker(url or redis_server.url, reactor=reactor, **kwargs)
        listener = RecordingListener()
        started.append(broker)
        d = broker.start(listener)
        if wait:
            await d
            await wait_for(broker.is_ready, what="broker ready")
        return broker, listener

    yield make
    for broker in started:
        await broker.stop()


async def failure_of(d) -> BaseException:
    try:
        await d
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e
    raise AssertionError("expected the Deferred to fail")


# -- configuration --------------------------------------------------------------


def test_url_defaults_and_options():
    """The URL gives host, port, db, prefix and credentials; the defaults are 6379, 0 and 'gateway'."""
    plain = parse_redis_url("redis://example.com")
    full = parse_redis_url("redis://u:p%40ss@10.0.0.1:6380/3?prefix=gw:eu")

    assert ("example.com", 6379, 0, "gateway", None) == (plain.host, plain.port, plain.db, plain.prefix, plain.password)
    assert ("10.0.0.1", 6380, 3, "gw:eu", "u", "p@ss") == (full.host, full.port, full.db, full.prefix, full.username, full.password)
    assert "redis://10.0.0.1:6380/3?prefix=gw:eu" == full.display()


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:6379/0",
        "redis://localhost:6379/zero",
        "redis://localhost:notaport/0",
        "redis://localhost:6379/0?prefix=",
        "redis://localhost:6379/0?prefix=a{b}",
        "redis://localhost:6379/0?pool=3",
    ],
)
def test_bad_urls_are_config_errors(url):
    """A URL the broker cannot use is a ConfigError naming the problem, before anything connects."""
    with pytest.raises(ConfigError, match="redis"):
        parse_redis_url(url)


def test_broker_from_config_builds_a_redis_broker():
    """--redis selects the Redis broker with the configured history bounds; the name hides the password."""
    from twisted.internet import reactor

    broker = broker_from_config(Config(redis="redis://:secret@127.0.0.1:1/2", history_size=7, history_ttl=9), reactor)

    assert isinstance(broker, RedisBroker)
    assert (7, 9) == (broker.history_size, broker.history_ttl)
    assert "redis://127.0.0.1:1/2" == broker.name


# -- keys -------------------------------------------------------------------------


async def test_keys_live_under_the_prefix_and_expire(redis_server, brokers):
    """A publication leaves a meta hash and a history list under the prefix, both with an expiry."""
    broker, _ = await brokers(redis_server.url + "?prefix=gw", history_size=2, history_ttl=30)

    for i in range(5):
        await broker.publish("room:1", i)

    assert ["gw:{room:1}:hist", "gw:{room:1}:meta"] == sorted(redis_server.cli("KEYS", "*").split())
    assert 2 == int(redis_server.cli("LLEN", "gw:{room:1}:hist"))
    assert 30 < int(redis_server.cli("TTL", "gw:{room:1}:hist")) <= 40
    assert 86000 < int(redis_server.cli("TTL", "gw:{room:1}:meta")) <= 86400
    assert "5" == redis_server.cli("HGET", "gw:{room:1}:meta", "s").strip()


async def test_prefixes_separate_deployments(redis_server, brokers):
    """Two prefixes on one Redis have their own seqs and never see each other's publications."""
    a, la = await brokers(redis_server.url + "?prefix=a")
    b, lb = await brokers(redis_server.url + "?prefix=b")
    await a.subscribe("c")
    await b.subscribe("c")

    pa = await a.publish("c", "for a")
    pb1 = await b.publish("c", "for b")
    pb2 = await b.publish("c", "for b again")
    await wait_for(lambda: len(la.publications) == 1 and len(lb.publications) == 2, what="deliveries")

    assert (1, 1, 2) == (pa.seq, pb1.seq, pb2.seq)
    assert ["for a"] == [p.data for p in la.publications]
    assert ["for b", "for b again"] == [p.data for p in lb.publications]


async def test_stop_closes_every_connection(redis_server, brokers):
    """A running broker holds its pool and one subscriber connection; stop() closes all of them."""
    broker, _ = await brokers(poolsize=2)

    # 2 pooled + 1 subscriber + redis-cli itself (the last two may still be connecting)
    await wait_for(lambda: redis_server.cli("CLIENT", "LIST").count("\n") == 4, what="all connections")
    await broker.stop()
    await wait_for(lambda: redis_server.cli("CLIENT", "LIST").count("\n") == 1, what="connections closed")

    assert broker.is_ready() is False


# -- outages ------------------------------------------------------------------------


async def test_redis_down_fails_fast_and_recovers(redis_server, brokers):
    """While Redis is down every call fails at once with Unavailable; when it is back the broker is
    ready again, resubscribed, and tells its listener so the bus can fill gaps."""
    broker, listener = await brokers()
    await broker.subscribe("c")
    before = await broker.publish("c", "before")
    await wait_for(lambda: len(listener.publications) == 1, what="first delivery")

    killed = time.monotonic()
    redis_server.kill()
    await wait_for(lambda: not broker.is_ready(), what="outage noticed")
    detected = time.monotonic() - killed

    t0 = time.monotonic()
    errors = [
        await failure_of(broker.publish("c", "during")),
        await failure_of(broker.history("c", None)),
        await failure_of(broker.subscribe("d")),
    ]
    failed_in = time.monotonic() - t0
    await broker.unsubscribe("never-subscribed")  # succeeds while down

    redis_server.start()
    back = time.monotonic()
    await wait_for(broker.is_ready, timeout=5, what="recovery")
    recovered = time.monotonic() - back
    await wait_for(lambda: listener.reconnects >= 1, what="broker_reconnected")
    after = await broker.publish("c", "after")
    await wait_for(lambda: len(listener.publications) == 2, what="delivery after recovery")

    print(f"\nredis outage: detected in {detected * 1000:.0f} ms, calls failed in {failed_in * 1000:.1f} ms, ready {recovered * 1000:.0f} ms after restart")
    assert all(isinstance(e, Unavailable) for e in errors), errors
    assert detected < 0.5 * TIMEOUT_FACTOR
    assert failed_in < 0.1 * TIMEOUT_FACTOR
    assert recovered < 2.5 * TIMEOUT_FACTOR
    # The new Redis is empty: the channel starts a new epoch instead of renumbering the old one.
    assert (1, 1) == (before.seq, after.seq)
    assert before.epoch != after.epoch
    assert after == listener.publications[-1]


async def test_starting_while_redis_is_down(redis_server, brokers):
    """A broker started with Redis down starts anyway (not ready, publishes refused) and connects when Redis comes."""
    redis_server.kill()
    broker, _ = await brokers(wait=False, connect_timeout=0.3)

    await wait_for(lambda: broker._started is None, what="start() fired")
    error = await failure_of(broker.publish("c", 1))
    ready_while_down = broker.is_ready()
    redis_server.start()
    await wait_for(broker.is_ready, what="connected")
    pub = await broker.publish("c", 2)

    assert isinstance(error, Unavailable)
    assert ready_while_down is False
    assert 1 == pub.seq


async def test_hung_redis_is_detected_by_the_health_check(redis_server, brokers):
    """A Redis that stops answering (SIGSTOP) makes the broker unready within a command timeout
    even with no traffic; a publish meanwhile fails with Unavailable; SIGCONT brings it back."""
    broker, _ = await brokers(command_timeout=0.4, health_interval=0.1)
    stopped = time.monotonic()
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        pending = broker.publish("c", "while hung")
        error = await failure_of(pending)
        await wait_for(lambda: not broker.is_ready(), what="hang noticed")
        detected = time.monotonic() - stopped
        # Reconnecting succeeds at the TCP level (the kernel still accepts), but a
        # connection only counts once Redis answers on it: no flapping back to ready.
        samples = []
        for _ in range(40):
            samples.append(broker.is_ready())
            await sleep(0.02)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await wait_for(broker.is_ready, what="recovery")
    pub = await broker.publish("c", "after")

    print(f"\nredis hang: detected in {detected * 1000:.0f} ms")
    assert isinstance(error, Unavailable)
    assert detected < 1.5 * TIMEOUT_FACTOR
    assert not any(samples)
    assert pub.seq >= 1


async def test_subscriber_connection_loss_resubscribes(redis_server, brokers):
    """When only the pub/sub connection drops, it comes back subscribed and the listener is told."""
    broker, listener = await brokers()
    await broker.subscribe("c")

    redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_for(lambda: listener.reconnects == 1, what="broker_reconnected")
    pub = await broker.publish("c", "after")
    await wait_for(lambda: listener.publications == [pub], what="delivery after resubscribe")

    assert broker.is_ready()
    assert "1" in redis_server.cli("PUBSUB", "NUMSUB", broker.pubsub_channel("c")).split()


# -- epochs, scripts, bad data ----------------------------------------------------------


async def test_flushall_starts_a_new_epoch(redis_server, brokers):
    """After FLUSHALL the channel gets a new epoch from seq 1; the old position cannot continue."""
    broker, _ = await brokers()
    old = [await broker.publish("c", i) for i in range(3)]

    redis_server.command("FLUSHALL")
    fresh = await broker.publish("c", "x")
    history = await broker.history("c", old[-1].position)

    assert 1 == fresh.seq
    assert fresh.epoch != old[0].epoch
    assert history.publications is None
    assert Position(fresh.epoch, 1) == history.top


async def test_flushed_scripts_are_loaded_again(redis_server, brokers):
    """SCRIPT FLUSH (or a failover to a replica without the scripts) does not break publishing."""
    broker, _ = await brokers(poolsize=1)
    await broker.publish("c", 1)

    redis_server.command("SCRIPT", "FLUSH")
    pub = await broker.publish("c", 2)
    history = await broker.history("c", Position(pub.epoch, 0))

    assert 2 == pub.seq
    assert [1, 2] == [p.data for p in history.publications]


async def test_script_error_is_unavailable(redis_server, brokers):
    """A key of the wrong type (someone else's data under our prefix) fails the publish with Unavailable."""
    broker, _ = await brokers()
    redis_server.command("SET", broker.meta_key("c"), "not a hash")

    error = await failure_of(broker.publish("c", 1))

    assert isinstance(error, Unavailable)
    assert broker.is_ready()


async def test_undecodable_messages_are_dropped(redis_server, brokers):
    """A foreign message on our pub/sub channel is logged and dropped; later publications still arrive."""
    broker, listener = await brokers()
    await broker.subscribe("c")

    redis_server.command("PUBLISH", broker.pubsub_channel("c"), "garbage")
    redis_server.command("PUBLISH", broker.pubsub_channel("c"), "1:2:e:" + json.dumps({"no": "data"}))
    pub = await broker.publish("c", "good")
    await wait_for(lambda: len(listener.publications) == 1, what="good delivery")

    assert [pub] == listener.publications


async def test_data_that_is_not_json_is_a_bad_request(brokers):
    """Python callers passing data JSON cannot carry get BadRequest, and nothing is published."""
    broker, _ = await brokers()

    error = await failure_of(broker.publish("c", {1, 2}))
    pub = await broker.publish("c", "fine")

    assert isinstance(error, BadRequest)
    assert 1 == pub.seq


async def test_connections_send_without_nagle_delay(brokers):
    """Both connection kinds set TCP_NODELAY: a publish written while the previous one is
    unanswered goes out at once instead of waiting for Redis' acknowledgement."""
    import socket

    broker, _ = await brokers()
    await wait_for(lambda: broker._subscriber is not None, what="pub/sub connection")
    for conn in [*broker._commands, broker._subscriber]:
        sock = conn.transport.getHandle()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
