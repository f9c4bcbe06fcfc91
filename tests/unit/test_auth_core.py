"""The sans-I/O authorisation core (gateway.core.auth): claims in, decisions out."""

from __future__ import annotations

import pytest

from gateway.core.auth import OPEN, Credentials, Identity, api_key_identity, identity_from_claims
from gateway.errors import Forbidden, Unauthorized


def test_token_identity_may_use_only_its_patterns():
    who = identity_from_claims({"sub": "alice", "subscribe": ["room:*", "user:alice"], "publish": ["room:?"]})
    assert who.may_subscribe("room:42") and who.may_subscribe("user:alice")
    assert not who.may_subscribe("user:bob") and not who.may_subscribe("roomx")
    assert who.may_publish("room:1") and not who.may_publish("room:12")
    with pytest.raises(Forbidden):
        who.check_subscribe("user:bob")
    with pytest.raises(Forbidden):
        who.check_publish("room:12")


def test_a_token_without_lists_may_do_nothing():
    who = identity_from_claims({"sub": "alice"})
    assert (who.subscribe, who.publish) == ((), ())
    assert not who.may_subscribe("a") and not who.may_publish("a")


def test_open_and_api_key_identities_may_do_everything_without_a_sender():
    for who in (OPEN, api_key_identity()):
        assert who.may_subscribe("anything") and who.may_publish("anything")
        assert who.sender is None
    assert identity_from_claims({"sub": "alice"}).sender == "alice"


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": ""},
        {"sub": 7},
        {"sub": "x" * 257},
        {"sub": "a", "subscribe": "room:*"},
        {"sub": "a", "subscribe": ["ok", 3]},
        {"sub": "a", "publish": [""]},
        {"sub": "a", "publish": ["p"] * 257},
        {"sub": "a", "exp": "soon"},
        {"sub": "a", "exp": True},
        {"sub": "a", "iat": float("nan")},
    ],
)
def test_bad_claim_shapes_are_unauthorized(claims):
    with pytest.raises(Unauthorized):
        identity_from_claims(claims)


def test_expiry_arithmetic_on_plain_times():
    who = identity_from_claims({"sub": "a", "exp": 1000})
    assert who.seconds_left(990.5) == 9.5
    assert who.seconds_left(2000) == 0.0
    assert not who.expired(999.9) and who.expired(1000)
    assert identity_from_claims({"sub": "a"}).seconds_left(5) is None


def test_refresh_needs_the_same_sub_and_kind():
    alice = Identity(sub="alice", exp=10)
    alice.check_refresh(Identity(sub="alice", exp=20))
    with pytest.raises(Forbidden):
        alice.check_refresh(Identity(sub="bob", exp=20))
    with pytest.raises(Forbidden):
        api_key_identity().check_refresh(alice)


def test_credentials_order_and_bearer_parsing():
    c = Credentials("sse", authorization="Bearer  abc ", token="tok", cookies={"gateway_token": "cook", "other": "x"})
    assert c.bearer == "abc"
    assert c.presented() == ["tok", "abc", "cook"]
    assert Credentials("sse", authorization="Basic abc").bearer is None
    assert Credentials("sse", authorization="Bearer ").bearer is None
    assert Credentials("sse", token="same", authorization="Bearer same").presented() == ["same"]
    assert Credentials("ws").presented() == []
