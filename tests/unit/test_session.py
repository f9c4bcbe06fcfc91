"""Per-connection session state: subscription limit, duplicates, remove and clear."""

from __future__ import annotations

import pytest

from gateway.core.session import MAX_SUBSCRIPTIONS, Session
from gateway.core.auth import OPEN, Identity
from gateway.core.commands import Auth, Ping, Publish, Subscribe, Unsubscribe
from gateway.errors import BadRequest, Forbidden, Unauthorized


def test_default_limit_is_protocol_limit():
    """By default a session holds at most 1,000 subscriptions (docs/protocol.md section 4)."""
    assert (1000, 1000) == (MAX_SUBSCRIPTIONS, Session().max_subscriptions)


def test_new_session_is_open_and_empty():
    """Without authentication configured a session is OPEN (every channel) and holds no channel."""
    s: Session[str] = Session()
    assert (OPEN, True, [], 0) == (s.identity, s.authenticated, s.channels, len(s))


def test_unauthenticated_session_may_do_nothing_until_it_authenticates():
    s: Session[str] = Session(identity=None)
    with pytest.raises(Unauthorized):
        s.check_subscribe("a")
    with pytest.raises(Unauthorized):
        s.check_publish("a")
    s.authenticate(Identity(sub="alice", subscribe=("room:*",), publish=("room:1",)))
    s.check_subscribe("room:7")
    s.check_publish("room:1")
    with pytest.raises(Forbidden):
        s.check_subscribe("other")
    with pytest.raises(Forbidden):
        s.check_publish("room:2")


def test_refresh_keeps_the_sub_or_is_refused_and_the_old_identity_stays():
    s: Session[str] = Session(identity=None)
    old = Identity(sub="alice", subscribe=("a",), exp=100.0)
    s.authenticate(old)
    new = Identity(sub="alice", subscribe=("a", "b"), exp=200.0)
    s.authenticate(new)
    assert s.identity is new
    with pytest.raises(Forbidden):
        s.authenticate(Identity(sub="mallory", subscribe=("*",), exp=300.0))
    assert s.identity is new


def test_add_up_to_the_limit():
    """A session accepts exactly max_subscriptions channels."""
    s: Session[str] = Session(max_subscriptions=3)
    for c in ("a", "b", "c"):
        s.add(c, "sub-" + c)
    assert (["a", "b", "c"], 3) == (s.channels, len(s))


def test_subscription_over_the_limit_is_bad_request():
    """Adding a channel beyond max_subscriptions raises BadRequest."""
    s: Session[str] = Session(max_subscriptions=2)
    s.add("a", "sa")
    s.add("b", "sb")
    with pytest.raises(BadRequest):
        s.add("c", "sc")


def test_rejected_subscription_is_not_kept():
    """A subscription refused over the limit leaves the session unchanged."""
    s: Session[str] = Session(max_subscriptions=1)
    s.add("a", "sa")
    with pytest.raises(BadRequest):
        s.add("b", "sb")
    assert (["a"], None) == (s.channels, s.get("b"))


def test_default_limit_is_enforced_at_1001():
    """With the default limit the 1,001st subscription raises BadRequest."""
    s: Session[int] = Session()
    for i in range(1000):
        s.add(f"c{i}", i)
    with pytest.raises(BadRequest):
        s.check_subscribe("c1000")


def test_duplicate_subscribe_is_bad_request():
    """Subscribing twice to the same channel raises BadRequest."""
    s: Session[str] = Session()
    s.add("a", "first")
    with pytest.raises(BadRequest):
        s.add("a", "second")


def test_duplicate_subscribe_keeps_the_first_handle():
    """A refused duplicate leaves the first subscription handle in place."""
    s: Session[str] = Session()
    s.add("a", "first")
    with pytest.raises(BadRequest):
        s.add("a", "second")
    assert "first" == s.get("a")


def test_check_subscribe_does_not_add():
    """check_subscribe only checks; the channel is not held afterwards."""
    s: Session[str] = Session()
    s.check_subscribe("a")
    assert [] == s.channels


def test_remove_returns_handle_and_frees_a_slot():
    """remove returns the handle, and the freed slot can be used again."""
    s: Session[str] = Session(max_subscriptions=1)
    s.add("a", "sa")
    removed = s.remove("a")
    s.add("b", "sb")
    assert ("sa", ["b"]) == (removed, s.channels)


def test_remove_unknown_channel_returns_none():
    """Removing a channel that is not held returns None."""
    assert None == Session().remove("a")  # noqa: E711


def test_resubscribe_after_remove_is_allowed():
    """A channel removed can be subscribed to again."""
    s: Session[str] = Session()
    s.add("a", "first")
    s.remove("a")
    s.add("a", "second")
    assert "second" == s.get("a")


def test_clear_returns_every_handle_and_empties():
    """clear returns every handle and leaves no channel held."""
    s: Session[str] = Session()
    s.add("a", "sa")
    s.add("b", "sb")
    handles = s.clear()
    assert (["sa", "sb"], [], 0) == (sorted(handles), s.channels, len(s))


# -- ping / pong and the auth gate (docs/protocol.md section 4) -----------------


@pytest.mark.parametrize(("rid", "expected"), [(None, {"type": "pong"}), (7, {"type": "pong", "id": 7}), ("a", {"type": "pong", "id": "a"}), (0, {"type": "pong", "id": 0})])
def test_pong_echoes_the_id_or_has_none(rid, expected):
    """pong carries the ping's id as every reply does: absent when the ping had none (0 is an id)."""
    assert expected == Session().pong(Ping(rid))


def test_before_auth_only_auth_is_admitted_and_ping_is_a_command_like_any_other():
    s: Session[str] = Session(identity=None)
    assert s.admits(Auth(1, "t"))
    assert not s.admits(Ping(2))
    assert not s.admits(Subscribe(3, "a", None))
    assert not s.admits(Unsubscribe(4, "a"))
    assert not s.admits(Publish(5, "a", None))
    with pytest.raises(Unauthorized):
        s.pong(Ping(2))
    s.authenticate(Identity(sub="alice"))
    assert all(s.admits(c) for c in (Auth(1, "t"), Ping(2), Subscribe(3, "a", None), Unsubscribe(4, "a"), Publish(5, "a", None)))
    assert {"type": "pong", "id": 2} == s.pong(Ping(2))


def test_open_session_admits_everything():
    """Without authentication configured (OPEN), ping is answered at once."""
    s: Session[str] = Session()
    assert s.admits(Ping(None))
    assert {"type": "pong"} == s.pong(Ping(None))
