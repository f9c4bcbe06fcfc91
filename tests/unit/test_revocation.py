"""Revocation stores and the Revoker (gateway.auth.revocation), on fake clocks and brokers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.app import Gateway
from gateway.auth.revocation import (
    MemoryRevocations,
    RedisRevocations,
    is_revoked_at,
)
from gateway.config import Config
from gateway.core.auth import Identity
from gateway.errors import Unavailable
from gateway.testing import ManualBroker

AT = 1_700_000_000


def token(sub: str = "alice", iat: float | None = AT) -> Identity:
    return Identity(sub=sub, kind="token", iat=iat)


def result(d: Any) -> Any:
    """The result of a Deferred that has fired (or a plain value)."""
    if not isinstance(d, defer.Deferred):
        return d
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


# -- the rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iat", "revoked"),
    [
        (AT - 3600, True),  # long before
        (AT - 1, True),  # the second before
        (AT, True),  # the same second
        (AT + 0.999, True),  # still the same second
        (AT + 1, False),  # the next second
        (AT + 3600, False),
        (None, True),  # no iat: refused
    ],
)
def test_tokens_issued_at_or_before_the_revocation_second_are_refused(iat, revoked):
    """A revocation in second S refuses tokens with iat in S or before, and tokens without iat."""
    assert revoked is is_revoked_at(AT, iat)


def test_no_revocation_refuses_nothing():
    assert is_revoked_at(None, None) is False
    assert is_revoked_at(None, AT) is False


# -- the in-memory store ------------------------------------------------------------


def test_memory_store_refuses_earlier_tokens_of_the_revoked_sub_only():
    clock = Clock()
    store = MemoryRevocations(now=clock.seconds)

    result(store.revoke("alice", AT, 60))

    assert store.is_revoked(token(iat=AT)) is True
    assert store.is_revoked(token(iat=None)) is True
    assert store.is_revoked(token(iat=AT + 1)) is False
    assert store.is_revoked(token("bob", iat=AT)) is False
    assert store.is_revoked(Identity(sub=None, kind="api-key", everything=True)) is False


def test_memory_store_forgets_a_revocation_after_its_ttl():
    """The revocation holds for ttl seconds on the store's clock, then the old token works again."""
    clock = Clock()
    store = MemoryRevocations(now=clock.seconds)
    result(store.revoke("alice", AT, 60))

    clock.advance(59.9)
    still = store.is_revoked(token())
    clock.advance(0.1)

    assert (still, store.is_revoked(token())) == (True, False)
    assert store.revoked_at("alice") is None


def test_memory_store_keeps_the_later_revocation_second_and_renews_the_ttl():
    """A second revocation never moves the second backwards; its TTL counts from the new call."""
    clock = Clock()
    store = MemoryRevocations(now=clock.seconds)
    result(store.revoke("alice", AT + 10, 60))
    clock.advance(30)

    result(store.revoke("alice", AT, 60))  # a node whose clock is behind
    clock.advance(59)

    assert store.revoked_at("alice") == AT + 10


def test_memory_store_sweeps_expired_entries_on_revoke():
    clock = Clock()
    store = MemoryRevocations(now=clock.seconds)
    for i in range(100):
        result(store.revoke(f"u{i}", AT, 10))
    clock.advance(10)

    result(store.revoke("alice", AT, 10))

    assert ["alice"] == list(store._entries)


# -- the Redis store, over a fake broker ---------------------------------------------------


class FakeRedis:
    """What RedisRevocations uses of the RedisBroker: is_ready, execute, eval, revocation_key."""

    def __init__(self) -> None:
        self.ready = True
        self.values: dict[str, Any] = {}
        self.gets: list[str] = []
        self.pending: list[defer.Deferred[Any]] | None = None

    def is_ready(self) -> bool:
        return self.ready

    def channel_ready(self, key: str) -> bool:
        return self.ready

    def revocation_key(self, sub: str) -> str:
        return "gateway:{rev:" + sub + "}"

    def execute(self, what: str, command: str, *args: Any) -> defer.Deferred[Any]:
        assert command == "GET"
        self.gets.append(args[0])
        if not self.ready:
            return defer.fail(Unavailable("down"))
        if self.pending is not None:
            d: defer.Deferred[Any] = defer.Deferred()
            d.addCallback(lambda _: self.values.get(args[0]))
            self.pending.append(d)
            return d
        return defer.succeed(self.values.get(args[0]))

    def eval(self, what: str, script: bytes, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        if not self.ready:
            return defer.fail(Unavailable("down"))
        at = max(int(args[0]), int(self.values.get(keys[0], 0)))
        self.values[keys[0]] = str(at).encode()
        return defer.succeed(str(at).encode())


def redis_store() -> tuple[RedisRevocations, FakeRedis, Clock]:
    clock = Clock()
    broker = FakeRedis()
    return RedisRevocations(broker, clock, cache_seconds=1.0), broker, clock


def test_redis_store_reads_the_revocation_second():
    store, broker, _ = redis_store()
    broker.values["gateway:{rev:alice}"] = str(AT).encode()

    assert (True, False) == (result(store.is_revoked(token(iat=AT))), result(store.is_revoked(token(iat=AT + 1))))


def test_redis_store_caches_answers_for_a_second():
    """Answers (revoked or not) are reused for cache_seconds, then read again."""
    store, broker, clock = redis_store()

    first = result(store.is_revoked(token()))
    broker.values["gateway:{rev:alice}"] = str(AT).encode()  # revoked by someone, no control message seen
    cached = result(store.is_revoked(token()))
    clock.advance(1.0)
    fresh = result(store.is_revoked(token()))

    assert (first, cached, fresh) == (False, False, True)
    assert 2 == len(broker.gets)


def test_redis_store_forget_drops_the_cached_answer():
    """A control message about the sub (forget) makes the next check read Redis again."""
    store, broker, _ = redis_store()
    result(store.is_revoked(token()))
    broker.values["gateway:{rev:alice}"] = str(AT).encode()

    store.forget("alice")

    assert result(store.is_revoked(token())) is True


def test_redis_store_does_not_cache_an_answer_read_before_a_forget():
    """A GET sent before the revocation and answered after the control message is not kept."""
    store, broker, _ = redis_store()
    broker.pending = []
    d = store.is_revoked(token())
    store.forget("alice")
    broker.values["gateway:{rev:alice}"] = str(AT).encode()
    broker.pending.pop().callback(None)
    broker.pending = None

    stale = result(d)

    assert (stale, result(store.is_revoked(token()))) == (True, True)


def test_redis_store_revoke_updates_its_own_cache():
    store, broker, _ = redis_store()
    result(store.is_revoked(token()))

    result(store.revoke("alice", AT, 86400))

    assert result(store.is_revoked(token())) is True
    assert 1 == len(broker.gets)


def test_redis_store_fails_closed_while_redis_is_down():
    """Redis unreachable: Unavailable, even for a sub whose answer is cached."""
    store, broker, _ = redis_store()
    result(store.is_revoked(token()))

    broker.ready = False

    with pytest.raises(Unavailable):
        result(store.is_revoked(token()))
    with pytest.raises(Unavailable):
        result(store.is_revoked(token("bob")))
    with pytest.raises(Unavailable):
        result(store.revoke("alice", AT, 10))


def test_redis_store_refuses_on_an_unreadable_entry():
    store, broker, _ = redis_store()
    broker.values["gateway:{rev:alice}"] = b"garbage"

    with pytest.raises(Unavailable):
        result(store.is_revoked(token(iat=AT + 100)))


# -- the Revoker on a node --------------------------------------------------------------


class FakeSession:
    def __init__(self) -> None:
        self.revoked = 0

    def revoke(self) -> None:
        self.revoked += 1


def node(now: float = AT + 0.5) -> tuple[Gateway, ManualBroker]:
    broker = ManualBroker()
    gateway = Gateway(Config(revocation_ttl=60), reactor=Clock(), broker=broker)
    result(gateway.start())
    gateway.revoker.now = lambda: now
    return gateway, broker


def test_revoker_stores_closes_local_sessions_and_tells_the_other_nodes():
    gateway, broker = node()
    alice = [FakeSession(), FakeSession()]
    bob = FakeSession()
    for s in alice:
        gateway.identity_opened("alice", s)
    gateway.identity_opened("bob", bob)

    count = result(defer.ensureDeferred(gateway.revoker.revoke("alice")))

    assert 2 == count
    assert [1, 1, 0] == [s.revoked for s in [*alice, bob]]  # not twice: its own control message is ignored
    assert [{"type": "revoke", "sub": "alice", "origin": gateway.revoker.origin}] == broker.control_messages
    assert gateway.auth.revocations is gateway.revoker.store
    assert gateway.revoker.store.revoked_at("alice") == AT


def test_control_message_from_another_node_closes_local_sessions():
    gateway, broker = node()
    session = FakeSession()
    gateway.identity_opened("alice", session)

    broker.listener.control_received({"type": "revoke", "sub": "alice", "origin": "elsewhere"})
    broker.listener.control_received({"type": "revoke", "sub": 7})
    broker.listener.control_received({"type": "other", "sub": "alice"})

    assert 1 == session.revoked


def test_revoker_closes_local_sessions_even_when_the_bus_fails():
    """The control message cannot be sent: this node's sessions are closed all the same,
    and the call fails with Unavailable (to be retried)."""
    gateway, broker = node()
    session = FakeSession()
    gateway.identity_opened("alice", session)
    broker.ready = False

    with pytest.raises(Unavailable):
        result(defer.ensureDeferred(gateway.revoker.revoke("alice")))

    assert 1 == session.revoked
    assert [] == broker.control_messages


def test_revoker_closes_local_sessions_and_sends_nothing_when_the_store_fails():
    """The revocation cannot be stored: local sessions closed, no control message, Unavailable."""
    gateway, broker = node()
    session = FakeSession()
    gateway.identity_opened("alice", session)
    fake = FakeRedis()
    fake.ready = False
    gateway.revoker.store = RedisRevocations(fake, Clock())

    with pytest.raises(Unavailable):
        result(defer.ensureDeferred(gateway.revoker.revoke("alice")))

    assert 1 == session.revoked
    assert [] == broker.control_messages


class IdentifiedSession(FakeSession):
    def __init__(self, identity: Identity | None) -> None:
        super().__init__()
        self.identity = identity


def test_a_reconnect_rechecks_open_sessions_against_the_store():
    """A revocation stored while this node missed the control message (its broker was
    reconnecting) closes the sessions it covers once the broker reconnects."""
    gateway, broker = node()
    old, later = IdentifiedSession(token(iat=AT - 10)), IdentifiedSession(token(iat=AT + 10))
    bob, anonymous = IdentifiedSession(token("bob", iat=AT - 10)), IdentifiedSession(None)
    for s in (old, later, anonymous):
        gateway.identity_opened("alice", s)
    gateway.identity_opened("bob", bob)
    result(gateway.revoker.store.revoke("alice", AT, 60))  # as another node did
    broker.listener.broker_reconnected()
    assert (1, 0, 0, 0) == (old.revoked, later.revoked, bob.revoked, anonymous.revoked)


def test_a_recheck_stops_quietly_when_the_store_is_unreachable():
    gateway, broker = node()
    session = IdentifiedSession(token())
    gateway.identity_opened("alice", session)

    class Down:
        def forget(self, sub: str) -> None:
            pass

        def is_revoked(self, identity: Identity) -> Any:
            return defer.fail(Unavailable("Redis is not reachable"))

    gateway.revoker.store = Down()
    assert 0 == result(defer.ensureDeferred(gateway.revoker.recheck()))
    assert 0 == session.revoked
