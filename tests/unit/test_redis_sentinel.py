"""Sentinel pieces with plain values: the ``redis+sentinel://`` URL, INFO/ROLE reading, and
:class:`SentinelEndpoint`'s discovery over stand-in Sentinel connections and a Clock.
The failover itself runs against real processes in tests/e2e/test_sentinel.py."""

from __future__ import annotations

import pytest
import txredisapi
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.broker.redisurl import parse_redis_url
from gateway.broker.sentinel import (
    MasterNotFound,
    SentinelEndpoint,
    parse_info,
    parse_role,
)
from gateway.config import ConfigError


def test_sentinel_url_forms():
    url = parse_redis_url("redis+sentinel://s%40cret@h1:26380,h2,[::1]:5/mymaster/2?prefix=gw")
    assert ("redis+sentinel", "mymaster", 2, "gw") == (url.scheme, url.master_name, url.db, url.prefix)
    assert (("h1", 26380), ("h2", 26379), ("::1", 5)) == url.nodes
    assert ("s@cret", None) == (url.password, url.username)
    assert "redis+sentinel://h1:26380,h2:26379,[::1]:5/mymaster/2?prefix=gw" == url.display()
    with_user = parse_redis_url("redis+sentinel://u:p@h1/m")
    assert ("u", "p", 0) == (with_user.username, with_user.password, with_user.db)
    assert "s@cret" not in repr(url)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+sentinel://h1/", "MASTER_NAME"),
        ("redis+sentinel://h1", "MASTER_NAME"),
        ("redis+sentinel://h1/bad name", "MASTER_NAME"),
        ("redis+sentinel://h1/m/x", "database must be a number"),
        ("redis+sentinel://h1/m/0/extra", "database must be a number"),
        ("redis+sentinel://h1:port/m", "invalid host"),
        ("redis+sentinel://,h2/m", "invalid host"),
        ("redis+sentinel://h1/m?x=1", "unknown URL parameter"),
        ("redis+sentinel://h1/m?prefix=a b", "prefix must match"),
        ("redis+cluster://h1:7000,h2:7001/0", "no path"),
        ("rediss://h1", "expected redis://"),
    ],
)
def test_bad_sentinel_urls_are_config_errors(url, error):
    with pytest.raises(ConfigError, match=error):
        parse_redis_url(url)


def test_cluster_url():
    url = parse_redis_url("redis+cluster://u:p@h1:7000,h2?prefix=gw")
    assert ("redis+cluster", (("h1", 7000), ("h2", 6379)), 0, "gw") == (url.scheme, url.nodes, url.db, url.prefix)
    assert ("u", "p") == (url.username, url.password)
    assert "redis+cluster://h1:7000,h2:6379?prefix=gw" == url.display()


def test_parse_info_and_role():
    info = parse_info(b"# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc123\r\n\r\n")
    assert {"role": "master", "connected_slaves": "1", "master_replid": "abc123"} == info
    assert "slave" == parse_role([b"slave", b"127.0.0.1", 6379, b"connected", 42])
    assert "master" == parse_role(["master", 0, []])
    assert "" == parse_role(b"garbage")
    assert "" == parse_role([])


class FakeSentinel:
    """Stands in for a txredisapi connection to one Sentinel: answers are released by hand."""

    def __init__(self):
        self.calls: list[defer.Deferred] = []

    def sentinel_masters(self):
        d = defer.Deferred()
        self.calls.append(d)
        return d


def test_master_state_check_is_txredisapis():
    """Pins the txredisapi behaviour the endpoint relies on: a master flagged s_down or
    o_down, or not a master, is not available."""
    check = FakeManager(0).check_master_state
    assert check(state(1)) and not check(state(1, "master,s_down")) and not check(state(1, "master,o_down"))
    assert not check(state(1, "slave"))


def state(port, flags="master", others=2):
    return {"ip": "127.0.0.1", "port": str(port), "is_master": "master" in flags, "is_sdown": "s_down" in flags,
            "is_odown": "o_down" in flags, "num-other-sentinels": str(others)}


class FakeManager:
    """Stands in for txredisapi.Sentinel, with its own master-state check."""

    min_other_sentinels = 0
    check_master_state = txredisapi.Sentinel.check_master_state

    def __init__(self, count):
        self.sentinels = [FakeSentinel() for _ in range(count)]
        self.disconnected = 0

    def disconnect(self):
        self.disconnected += 1
        return defer.succeed(None)


def endpoint(count=3, timeout=2.0):
    clock = Clock()
    changes = []
    manager = FakeManager(count)
    ep = SentinelEndpoint(clock, (), "m", timeout, changes.append, manager=manager)
    return ep, clock, manager.sentinels, changes


def results(d):
    out = []
    d.addBoth(out.append)
    return out


def test_the_first_sentinel_naming_an_up_master_wins():
    ep, clock, fakes, changes = endpoint()
    got = results(ep.discover())
    fakes[0].calls[0].callback({"m": state(7000, "master,s_down")})
    assert [] == got
    fakes[1].calls[0].callback({"m": state(7001)})
    assert [("127.0.0.1", 7001)] == got
    fakes[2].calls[0].callback({"m": state(7002)})  # late answers change nothing
    assert [("127.0.0.1", 7001)] == got and [] == changes
    assert not clock.getDelayedCalls()


def test_no_master_fails_once_every_sentinel_answered():
    ep, clock, fakes, _ = endpoint()
    got = results(ep.discover())
    fakes[0].calls[0].callback({"m": state(7000, "master,o_down")})
    fakes[1].calls[0].errback(RuntimeError("sentinel down"))
    assert [] == got
    fakes[2].calls[0].callback({"other": state(7000)})
    assert 1 == len(got) and got[0].check(MasterNotFound)
    assert not clock.getDelayedCalls()


def test_silent_sentinels_fail_discovery_after_the_timeout():
    ep, clock, fakes, _ = endpoint(timeout=2.0)
    got = results(ep.discover())
    clock.advance(1.9)
    assert [] == got
    clock.advance(0.1)
    assert 1 == len(got) and got[0].check(MasterNotFound)
    fakes[0].calls[0].callback({"m": state(7000)})  # too late: ignored
    assert 1 == len(got)


def test_a_new_master_is_reported_once():
    ep, _, fakes, changes = endpoint(count=1)
    for port in (7000, 7000, 7001, 7001):
        got = results(ep.discover())
        fakes[0].calls[-1].callback({"m": state(port)})
        assert [("127.0.0.1", port)] == got
    assert [("127.0.0.1", 7001)] == changes


def test_close_fails_pending_discoveries_and_refuses_new_ones():
    ep, clock, _, _ = endpoint()
    got = results(ep.discover())
    ep.close()
    assert 1 == len(got) and got[0].check(MasterNotFound) and 1 == ep._manager.disconnected
    assert not clock.getDelayedCalls()
    later = results(ep.discover())
    assert later[0].check(MasterNotFound)


class FakeTransport:
    def __init__(self, port=6379):
        self.aborted = 0
        self.port = port

    def abortConnection(self):
        self.aborted += 1

    def getPeer(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", self.port)


class FakeConn:
    def __init__(self, port=6379):
        self.transport = FakeTransport(port)


def sentinel_broker():
    from gateway.broker.redis import RedisBroker

    return RedisBroker("redis+sentinel://127.0.0.1:1/m", reactor=Clock())


def test_a_connection_to_a_replica_is_refused_and_a_masters_id_is_its_writer():
    broker = sentinel_broker()
    conn = FakeConn()
    broker._check_master(b"# Replication\r\nrole:master\r\nmaster_replid:r1\r\n", conn)
    assert "r1" == conn.writer
    with pytest.raises(Exception, match="not a master"):
        broker._check_master(b"role:slave\r\nmaster_replid:r1\r\n", FakeConn())


def test_a_demoted_master_is_left():
    """ROLE answering 'slave' on the health check, or a READONLY error on a write, drops
    the connection (it reconnects through the Sentinels); other errors do not."""
    import txredisapi
    from twisted.python.failure import Failure

    from gateway.errors import Unavailable

    broker = sentinel_broker()
    conn = FakeConn()
    broker._still_master([b"master", 10, []], conn)
    assert 0 == conn.transport.aborted
    broker._still_master([b"slave", b"127.0.0.1", 7000, b"connected", 10], conn)
    assert 1 == conn.transport.aborted
    result = broker._unavailable(Failure(txredisapi.ResponseError("READONLY You can't write against a read only replica.")), "publish", conn)
    assert result.check(Unavailable) and 2 == conn.transport.aborted
    broker._unavailable(Failure(txredisapi.ResponseError("ERR something else")), "publish", conn)
    assert 2 == conn.transport.aborted


def test_connections_to_an_old_master_are_dropped_when_the_sentinels_name_a_new_one():
    broker = sentinel_broker()
    old, new = FakeConn(7000), FakeConn(7001)
    broker._commands = [old, new]
    broker._subscriber = FakeConn(7000)
    broker._master_changed(("127.0.0.1", 7001))
    assert (1, 0, 1) == (old.transport.aborted, new.transport.aborted, broker._subscriber.transport.aborted)
    assert 1 == broker.master_changes


def test_shard_stats_histogram_is_cumulative():
    from gateway.broker.shards import LATENCY_BUCKETS, ShardStats

    stats = ShardStats("s")
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 7.0):
        stats.observe(seconds)
    buckets = dict(stats.buckets())
    assert 2 == buckets["0.0005"] and 2 == buckets["0.0025"] and 4 == buckets["0.005"] and 4 == buckets["2.5"]
    assert 5 == buckets["+Inf"] and len(LATENCY_BUCKETS) + 1 == len(buckets)
    assert abs(stats.total - 7.0066) < 1e-9
