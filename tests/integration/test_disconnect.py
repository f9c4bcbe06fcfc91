"""``POST /disconnect`` on one node, over real HTTP (docs/protocol.md section 8).

The transports' own reactions to a revocation (WebSocket 4003, SSE ``forbidden``,
held polls 403) are each transport's ``revoked()``; here a session registered with
the node records the call, as every ClientSession does.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.core.auth import Credentials
from gateway.errors import Forbidden
from gateway.testing import http
from tests.e2e.support import wait_for

SECRET = "a-test-secret-of-at-least-32-bytes!!"
KEY = "backend-key"


def make_token(sub: str = "alice", iat: float | None = None, **claims: Any) -> str:
    payload = {"sub": sub, "subscribe": ["*"], "publish": ["*"], **claims}
    if iat is not None:
        payload["iat"] = int(iat)
    return jwt.encode(payload, SECRET, algorithm="HS256")


class FakeSession:
    """What Gateway.revoke_local calls: a ClientSession's revoke()."""

    def __init__(self) -> None:
        self.revoked = 0

    def revoke(self) -> None:
        self.revoked += 1


def disconnect(node: Any, body: Any = None, key: str | None = KEY, **kwargs: Any) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    if body is not None:
        kwargs["json"] = body
    return http("POST", node.base + "/disconnect", headers=headers, **kwargs)


async def test_disconnect_closes_the_identity_sessions_and_answers_the_local_count(gw_factory):
    node = gw_factory(api_key=(KEY,), jwt_secret=SECRET)
    alice = [FakeSession(), FakeSession()]
    bob = FakeSession()
    for s in alice:
        node.gateway.identity_opened("alice", s)
    node.gateway.identity_opened("bob", bob)

    r = await disconnect(node, {"sub": "alice"})

    assert (200, {"disconnected": 2}) == (r.status_code, r.json())
    assert "application/json" == r.headers["content-type"]
    assert [1, 1, 0] == [s.revoked for s in [*alice, bob]]


async def test_tokens_issued_up_to_the_revocation_second_are_refused_later_ones_accepted(gw_factory):
    """After the call, a token with iat in the call's second or before (or without iat) is
    forbidden; one issued in a later second is accepted."""
    node = gw_factory(api_key=(KEY,), jwt_secret=SECRET)
    before = make_token(iat=time.time() - 60)
    no_iat = make_token()
    accepted = await node.gateway.auth.authenticate(Credentials("websocket", token=before))

    r = await disconnect(node, {"sub": "alice"})
    called = int(time.time())
    same_second = make_token(iat=called - 1)  # certainly at or before the revocation's second
    await wait_for(lambda: int(time.time()) > called, what="the next second")
    after = make_token(iat=time.time())

    assert "alice" == accepted.sub
    assert 200 == r.status_code
    for refused in (before, no_iat, same_second):
        with pytest.raises(Forbidden):
            await node.gateway.auth.authenticate(Credentials("websocket", token=refused))
    assert "alice" == (await node.gateway.auth.authenticate(Credentials("sse", token=after))).sub
    other = await node.gateway.auth.authenticate(Credentials("poll", token=make_token("bob", iat=time.time() - 60)))
    assert "bob" == other.sub


async def test_disconnect_without_any_api_key_configured_is_forbidden(gw_factory):
    """No API key configured (open node, or JWT only): 403, whatever is presented."""
    open_node = gw_factory()
    jwt_node = gw_factory(jwt_secret=SECRET)
    session = FakeSession()
    open_node.gateway.identity_opened("alice", session)

    answers = [
        await disconnect(open_node, {"sub": "alice"}),
        await disconnect(open_node, {"sub": "alice"}, key=None),
        await disconnect(jwt_node, {"sub": "alice"}, key=make_token("admin")),
        await disconnect(jwt_node, {"sub": "alice"}, key=None),
    ]

    assert [403] * 4 == [r.status_code for r in answers]
    assert ["forbidden"] * 4 == [r.json()["error"]["code"] for r in answers]
    assert 0 == session.revoked


async def test_disconnect_needs_a_valid_api_key(gw_factory):
    """No credentials or a wrong key: 401; a valid token (not an API key): 403; nothing revoked."""
    node = gw_factory(api_key=(KEY,), jwt_secret=SECRET)
    session = FakeSession()
    node.gateway.identity_opened("alice", session)

    missing = await disconnect(node, {"sub": "alice"}, key=None)
    wrong = await disconnect(node, {"sub": "alice"}, key="not-the-key")
    basic = await http("POST", node.base + "/disconnect", json={"sub": "alice"}, headers={"authorization": "Basic a2V5Og=="})
    in_query = await http("POST", node.base + f"/disconnect?token={KEY}", json={"sub": "alice"})
    token = await disconnect(node, {"sub": "alice"}, key=make_token("alice"))

    assert [401, 401, 401, 401, 403] == [r.status_code for r in (missing, wrong, basic, in_query, token)]
    assert "unauthorized" == missing.json()["error"]["code"]
    assert "forbidden" == token.json()["error"]["code"]
    assert 0 == session.revoked
    assert await node.gateway.auth.authenticate(Credentials("websocket", token=make_token("alice")))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"alice"',
        b"{}",
        b'{"sub": ""}',
        b'{"sub": 7}',
        b'{"sub": null}',
        b'{"sub": ["alice"]}',
        b'{"sub": "' + b"a" * 257 + b'"}',
        b'{"sub": "\\ud800"}',
        b"\xff\xfe",
        b'{"sub": NaN}',
    ],
)
async def test_disconnect_with_a_bad_body_is_a_400(gw_factory, body):
    node = gw_factory(api_key=(KEY,), jwt_secret=SECRET)

    r = await disconnect(node, content=body)

    assert 400 == r.status_code
    assert "bad_request" == r.json()["error"]["code"]
    assert node.gateway.revoker.store._entries == {}


async def test_disconnect_accepts_the_longest_sub(gw_factory):
    node = gw_factory(api_key=(KEY,))

    r = await disconnect(node, {"sub": "a" * 256})

    assert (200, {"disconnected": 0}) == (r.status_code, r.json())


async def test_disconnect_serves_post_only(gw_factory):
    node = gw_factory(api_key=(KEY,))

    r = await http("GET", node.base + "/disconnect", headers={"authorization": f"Bearer {KEY}"})

    assert 405 == r.status_code
    assert "POST" == r.headers["allow"]
