"""Revocation across two real nodes sharing a real redis-server (docs/protocol.md section 8)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.core.auth import Credentials
from gateway.errors import Forbidden, Unavailable
from gateway.testing import http
from tests.e2e.support import TIMEOUT_FACTOR, wait_for

SECRET = "a-test-secret-of-at-least-32-bytes!!"
KEY = "backend-key"


def make_token(sub: str = "alice", iat: float | None = None) -> str:
    payload: dict[str, Any] = {"sub": sub, "subscribe": ["*"], "publish": ["*"]}
    if iat is not None:
        payload["iat"] = int(iat)
    return jwt.encode(payload, SECRET, algorithm="HS256")


class FakeSession:
    """A ClientSession stand-in: records when and how often it is revoked."""

    def __init__(self) -> None:
        self.revoked_at: list[float] = []

    def revoke(self) -> None:
        self.revoked_at.append(time.monotonic())


def authenticate(node: Any, token: str) -> Any:
    return node.gateway.auth.authenticate(Credentials("websocket", token=token))


async def two_nodes(nodes: Any, redis_server: Any) -> Any:
    a, b = await nodes(2, api_key=(KEY,), jwt_secret=SECRET)
    control = a.bus.broker.control_channel

    def listening() -> bool:
        return int(redis_server.cli("PUBSUB", "NUMSUB", control).split()[1]) == 2

    await wait_for(listening, what="both nodes on the control channel")
    return a, b


async def test_revocation_on_one_node_closes_sessions_and_refuses_old_tokens_on_the_other(nodes, redis_server):
    """POST /disconnect on node A: alice's session on node B is closed within a second; on B a
    token issued before is refused (though B had just accepted it), one issued a second later works."""
    a, b = await two_nodes(nodes, redis_server)
    old = make_token(iat=time.time() - 60)
    on_b, bob_on_b, on_a = FakeSession(), FakeSession(), FakeSession()
    b.gateway.identity_opened("alice", on_b)
    b.gateway.identity_opened("bob", bob_on_b)
    a.gateway.identity_opened("alice", on_a)
    accepted_before = (await authenticate(b, old)).sub  # node B now has an answer cached

    sent = time.monotonic()
    r = await http("POST", a.base + "/disconnect", json={"sub": "alice"}, headers={"authorization": f"Bearer {KEY}"})
    called = int(time.time())
    await wait_for(lambda: on_b.revoked_at, timeout=1.0, what="alice's session on node B revoked")

    assert "alice" == accepted_before
    assert (200, {"disconnected": 1}) == (r.status_code, r.json())
    assert on_b.revoked_at[0] - sent < 1.0 * TIMEOUT_FACTOR
    # Each once: node A ignores its own control message.
    assert (1, 1, 0) == (len(on_a.revoked_at), len(on_b.revoked_at), len(bob_on_b.revoked_at))
    with pytest.raises(Forbidden):
        await authenticate(b, old)
    with pytest.raises(Forbidden):
        await authenticate(b, make_token())  # no iat
    await wait_for(lambda: int(time.time()) > called, what="the next second")
    fresh = make_token(iat=time.time())
    assert "alice" == (await authenticate(b, fresh)).sub
    assert "alice" == (await authenticate(a, fresh)).sub
    # The revocation is one key per identity, with the TTL of --revocation-ttl.
    key = a.bus.broker.revocation_key("alice")
    assert "gateway:{rev:alice}" == key
    assert called - 1 <= int(redis_server.cli("GET", key)) <= called
    assert 86000 < int(redis_server.cli("TTL", key)) <= 86400


async def test_revocation_ttl_comes_from_the_option(nodes, redis_server):
    (a,) = await nodes(1, api_key=(KEY,), revocation_ttl=30)

    r = await http("POST", a.base + "/disconnect", json={"sub": "carol"}, headers={"authorization": f"Bearer {KEY}"})

    assert 200 == r.status_code
    assert 0 < int(redis_server.cli("TTL", a.bus.broker.revocation_key("carol"))) <= 30


async def test_redis_down_disconnect_is_503_and_authentication_fails_closed(nodes, redis_server):
    """With Redis gone, POST /disconnect answers 503 (the local sessions are closed anyway)
    and no token is accepted: the revocation check fails with Unavailable, not open."""
    a, b = await two_nodes(nodes, redis_server)
    token = make_token(iat=time.time())
    assert "alice" == (await authenticate(b, token)).sub  # cached on B
    session = FakeSession()
    a.gateway.identity_opened("alice", session)

    redis_server.kill()
    await wait_for(lambda: not a.bus.is_ready() and not b.bus.is_ready(), what="nodes unready")
    r = await http("POST", a.base + "/disconnect", json={"sub": "alice"}, headers={"authorization": f"Bearer {KEY}"})

    assert 503 == r.status_code
    assert "unavailable" == r.json()["error"]["code"]
    assert 1 == len(session.revoked_at)
    for node in (a, b):
        with pytest.raises(Unavailable):
            await authenticate(node, token)
        with pytest.raises(Unavailable):
            await authenticate(node, make_token("bob", iat=time.time()))


class SessionOf(FakeSession):
    """A fake session that also carries its identity, as a ClientSession does."""

    def __init__(self, identity: Any) -> None:
        super().__init__()
        self.identity = identity


async def test_revocation_missed_while_a_node_could_not_hear_is_applied_when_it_reconnects(nodes, redis_server):
    """Node B's pub/sub connection is down (and kept from coming back) when alice is revoked on
    node A, so B misses the control message; once B's pub/sub is back it re-checks its open
    sessions against the store and closes alice's, not bob's."""
    a, b = await two_nodes(nodes, redis_server)
    alice = await authenticate(b, make_token(iat=time.time() - 60))
    bob = await authenticate(b, make_token("bob", iat=time.time() - 60))
    on_b, bob_on_b = SessionOf(alice), SessionOf(bob)
    b.gateway.identity_opened("alice", on_b)
    b.gateway.identity_opened("bob", bob_on_b)
    control = a.bus.broker.control_channel

    def listeners() -> int:
        return int(redis_server.cli("PUBSUB", "NUMSUB", control).split()[1])

    redis_server.command("ACL", "SETUSER", "default", "-subscribe")
    try:
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_for(lambda: listeners() == 0, what="pub/sub connections gone")
        r = await http("POST", a.base + "/disconnect", json={"sub": "alice"}, headers={"authorization": f"Bearer {KEY}"})
        assert 200 == r.status_code
    finally:
        redis_server.command("ACL", "SETUSER", "default", "+subscribe")
    assert [] == on_b.revoked_at  # nothing reached node B
    await wait_for(lambda: listeners() == 2, timeout=10, what="both nodes back on the control channel")
    await wait_for(lambda: on_b.revoked_at, timeout=5, what="alice's session on node B closed after the reconnect")
    assert [] == bob_on_b.revoked_at
