"""The ``http`` authenticator (--auth-url) against a real twisted.web backend on a free
port: what the backend receives, 200/401/403/500/timeout/garbage, caching and
coalescing, cookie sessions, and the connection pool closed when the node stops
(docs/protocol.md section 8)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gateway.auth import auth_chain_from_config
from gateway.auth.http import HTTPAuthenticator
from gateway.config import ConfigError, load_config
from gateway.core.auth import Credentials
from gateway.errors import Forbidden, Unauthorized, Unavailable
from gateway.testing import start_gateway
from tests.e2e.support import TIMEOUT_FACTOR, free_port

CLAIMS = {"sub": "alice", "subscribe": ["room:*"], "publish": ["room:1"]}


class Backend(Resource):
    """An application backend: answers by the token (or session cookie) it is sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict] = []
        self.held: list = []

    def render_POST(self, request):
        body = json.loads(request.content.read())
        self.received.append(body)
        request.setHeader(b"content-type", b"application/json")
        key = body["token"] or body["cookies"].get("session") or ""
        if key in ("ok", "s-alice"):
            return json.dumps(CLAIMS).encode()
        if key == "no":
            request.setResponseCode(401)
            return b'{"error":"login"}'
        if key == "banned":
            request.setResponseCode(403)
            return b"{}"
        if key == "boom":
            request.setResponseCode(500)
            return b"oops"
        if key == "garbage":
            return b"<html>not json"
        if key == "list":
            return b"[1, 2]"
        if key == "nosub":
            return b'{"subscribe": ["*"]}'
        if key == "slow":
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(418)
        return b""


@pytest_twisted.async_yield_fixture
async def backend():
    from twisted.internet import reactor

    resource = Backend()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.port = port.getHost().port
    resource.url = f"http://127.0.0.1:{resource.port}/auth"
    yield resource
    for request in resource.held:
        if not request.finished and not request._disconnected:
            request.finish()
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def make_auth(backend):
    """``make_auth(**kwargs)``: an HTTPAuthenticator on the backend, stopped after the test."""
    from twisted.internet import reactor

    made = []

    def make(**kwargs):
        auth = HTTPAuthenticator(kwargs.pop("url", backend.url), reactor, **kwargs)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        await auth.stop()


def token(value: str, transport: str = "websocket") -> Credentials:
    return Credentials(transport, token=value)


async def test_backend_receives_the_documented_json_and_200_claims_become_the_identity(backend, make_auth):
    """The POST body holds transport, cookies, authorization, token and origin; a 200
    with claims is the identity those claims describe."""
    auth = make_auth()
    credentials = Credentials(
        "sse", authorization="Bearer ok", token="ok", cookies={"session": "x", "theme": "dark"}, origin="https://app.example"
    )
    identity = await auth.authenticate(credentials)
    assert (identity.sub, identity.subscribe, identity.publish) == ("alice", ("room:*",), ("room:1",))
    assert backend.received == [
        {
            "transport": "sse",
            "cookies": {"session": "x", "theme": "dark"},
            "authorization": "Bearer ok",
            "token": "ok",
            "origin": "https://app.example",
        }
    ]
    await make_auth(cache=0).authenticate(Credentials("poll", token="ok"))
    assert backend.received[-1] == {"transport": "poll", "cookies": {}, "authorization": None, "token": "ok", "origin": None}


@pytest.mark.parametrize(
    "value,error",
    [("no", Unauthorized), ("banned", Forbidden), ("boom", Unavailable), ("garbage", Unavailable), ("list", Unavailable), ("nosub", Unavailable), ("teapot", Unavailable)],
)
async def test_backend_answers_map_to_errors_never_to_an_open_door(backend, make_auth, value, error):
    """401 is unauthorized, 403 forbidden; a 500, another status, a body that is not
    JSON, not an object or claims without sub are all unavailable."""
    auth = make_auth()
    with pytest.raises(error):
        await auth.authenticate(token(value))


async def test_a_backend_that_does_not_answer_in_time_is_unavailable(backend, make_auth):
    """No answer within the timeout: unavailable, and the held connection is dropped."""
    from twisted.internet import reactor

    auth = make_auth(timeout=0.3 * TIMEOUT_FACTOR)
    started = reactor.seconds()
    with pytest.raises(Unavailable):
        await auth.authenticate(token("slow"))
    assert reactor.seconds() - started < 5 * TIMEOUT_FACTOR
    assert len(backend.held) == 1


async def test_a_backend_that_is_down_is_unavailable(make_auth):
    """Connection refused (nothing listens on the port): unavailable."""

    auth = make_auth(url=f"http://127.0.0.1:{free_port()}/auth")
    with pytest.raises(Unavailable):
        await auth.authenticate(token("ok"))


async def test_answers_are_cached_per_credential_for_the_cache_time(backend, make_auth):
    """With a cache, the same credential is asked once (200 and 401 alike); another
    credential is asked on its own; with cache 0 every request is asked."""
    auth = make_auth(cache=60)
    for _ in range(3):
        assert (await auth.authenticate(token("ok"))).sub == "alice"
        with pytest.raises(Unauthorized):
            await auth.authenticate(token("no"))
    assert len(backend.received) == 2
    await auth.authenticate(Credentials("sse", cookies={"session": "s-alice"}))
    assert len(backend.received) == 3
    uncached = make_auth(cache=0)
    for _ in range(3):
        await uncached.authenticate(token("ok"))
    assert len(backend.received) == 6


async def test_backend_failures_are_not_cached(backend, make_auth):
    """An unavailable answer is asked again next time (the backend may be back)."""
    auth = make_auth(cache=60)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await auth.authenticate(token("boom"))
    assert len(backend.received) == 2


async def test_concurrent_identical_requests_share_one_backend_call(backend, make_auth):
    """Ten requests with the same credential at once: one POST, ten identities."""
    auth = make_auth(cache=0)
    results = await defer.gatherResults([auth.authenticate(token("ok")) for _ in range(10)])
    assert [i.sub for i in results] == ["alice"] * 10
    assert len(backend.received) == 1


async def test_cookie_session_through_auth_url_option(backend):
    """--auth-url alone makes an AuthChain that authenticates a browser's session cookie
    (no token at all), refuses an unknown one, and says unauthorized with no credentials."""
    chain = auth_chain_from_config(load_config({"auth-url": backend.url}))
    try:
        assert chain.configured
        identity = await chain.authenticate(Credentials("sse", cookies={"session": "s-alice"}, origin="https://app"))
        assert identity.sub == "alice"
        assert identity.may_subscribe("room:7") and not identity.may_publish("room:2")
        with pytest.raises(Unauthorized):
            await chain.authenticate(Credentials("sse", cookies={"session": "no"}))
        with pytest.raises(Unauthorized):
            await chain.authenticate(Credentials("sse"))
        assert backend.received[0]["cookies"] == {"session": "s-alice"}
        assert len(backend.received) == 2
    finally:
        await chain.stop()


async def test_http_authenticator_plugin_with_arguments(backend):
    """--authenticator http:url=URL,cache=0 selects it with its own URL and cache."""
    chain = auth_chain_from_config(load_config({"authenticator": [f"http:url={backend.url},cache=0"]}))
    try:
        for _ in range(2):
            assert (await chain.authenticate(token("ok"))).sub == "alice"
        assert len(backend.received) == 2
    finally:
        await chain.stop()


def _connections_to(port: int) -> list:
    from twisted.internet import reactor, tcp

    out = []
    for selectable in reactor.getReaders():
        if isinstance(selectable, tcp.Client) and selectable.getPeer().port == port:
            out.append(selectable)
    return out


async def test_the_node_closes_its_backend_connections_when_it_stops(backend, monkeypatch):
    """A running gateway with --auth-url keeps a persistent connection to the backend;
    stopping the node closes it."""
    running = start_gateway(auth_url=backend.url, drain_timeout=2.0)
    try:
        assert (await running.gateway.auth.authenticate(token("ok"))).sub == "alice"
        assert len(_connections_to(backend.port)) == 1  # kept in the pool
    finally:
        await running.stop()
    assert _connections_to(backend.port) == []


def test_a_bad_auth_url_is_a_config_error_naming_the_option(monkeypatch):
    """--auth-url that is not http(s) stops start-up with one line naming it."""
    from gateway.app import Gateway
    with pytest.raises(ConfigError, match="^--auth-url: not an http"):
        Gateway(load_config({"auth-url": "ftp://example.com/"}))


async def test_a_cached_answer_runs_out_after_the_cache_time(backend, make_auth):
    """Over real sockets and the real clock: reused within --auth-cache, asked again after."""
    from gateway.testing import sleep

    cache = 1.0 * TIMEOUT_FACTOR
    auth = make_auth(cache=cache)
    for _ in range(2):
        assert (await auth.authenticate(token("ok"))).sub == "alice"
    assert len(backend.received) == 1
    await sleep(cache + 0.1)  # the cache time itself is what is tested
    assert (await auth.authenticate(token("ok"))).sub == "alice"
    assert len(backend.received) == 2
