"""Authentication on the HTTP transports (docs/protocol.md sections 5, 6, 7 and 8), over
real sockets with httpx: ``GET /sse``, ``GET /poll`` (JSONP too), ``POST /publish`` and
``GET /metrics``.

Tokens are made here with pyjwt from keys generated for the test (an HS256 secret,
RSA and EC key pairs); the gateway verifies them with its own configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import RateLimited, Unavailable
from gateway.testing import aio, http

from .conftest import decode, wait_until

FACTOR = float(os.environ.get("GATEWAY_TESTS_TIMEOUT_FACTOR", "1"))
SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
API_KEY = "backend-key-0123456789abcdef"
APP = "https://app.example"


# -- keys and tokens -------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(sub: str | None = "alice", lifetime: float | None = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iat": now, "subscribe": ["room:*"], "publish": ["room:*"]}
    if sub is not None:
        out["sub"] = sub
    if lifetime is not None:
        out["exp"] = now + lifetime
    out.update(extra)
    return out


def token(sub: str | None = "alice", lifetime: float | None = 300, key: Any = SECRET, algorithm: str = "HS256", **extra: Any) -> str:
    return pyjwt.encode(claims(sub, lifetime, **extra), key, algorithm=algorithm)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A JWT built by hand (pyjwt refuses to make the malicious ones)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    signature = sign(signing_input.encode()) if sign is not None else b""
    return signing_input + "." + b64(signature)


@pytest.fixture
def auth_gw(gw_factory):
    """A node with an HS256 secret and an API key, no clock-skew leeway."""
    return gw_factory(jwt_secret=SECRET, jwt_leeway=0.0, api_key=(API_KEY,))


# -- helpers ---------------------------------------------------------------------


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + value}


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": "gateway_token=" + value}


def presented(source: str, value: str) -> tuple[str, dict[str, str]]:
    """(query suffix, headers) presenting ``value`` through ``source``."""
    if source == "header":
        return "", bearer(value)
    if source == "query":
        return "&token=" + value, {}
    return "", cookie(value)


def poll(gw, query: str, headers: dict[str, str] | None = None):
    return http("GET", gw.base + "/poll?" + query, headers=headers or {})


def publish(gw, body: Any, headers: dict[str, str] | None = None, query: str = ""):
    return http("POST", gw.base + "/publish" + query, json=body, headers=headers or {})


def jsonp_body(response, name: str = "cb") -> Any:
    text = response.text
    assert text.startswith(name + "(") and text.endswith(");"), text
    return json.loads(text[len(name) + 1 : -2])


async def open_ok(sse, gw, query: str, headers: dict[str, str] | None = None):
    stream = await sse(gw.base + "/sse?" + query, headers)
    assert stream.status == 200, await aio(stream.body())
    return stream


def assert_json_error(status: int, body: Any, want_status: int, code: str) -> None:
    assert (status, body["error"]["code"]) == (want_status, code), body


# -- token sources ---------------------------------------------------------------


FORGED = "another-secret-that-is-long-enough-for-hs256-xx"


@pytest.mark.parametrize("source", ["header", "query", "cookie"])
async def test_sse_takes_the_token_from_header_query_or_cookie(auth_gw, sse, source):
    """SSE authenticates with Authorization: Bearer, token= or the gateway_token cookie
    (and a forged token through the same source is a 401)."""
    suffix, headers = presented(source, token(key=FORGED))
    refused = await sse(auth_gw.base + "/sse?channel=room:1" + suffix, headers)
    assert_json_error(refused.status, await aio(refused.body()), 401, "unauthorized")
    suffix, headers = presented(source, token())
    stream = await open_ok(sse, auth_gw, "channel=room:1" + suffix, headers)
    await auth_gw.gateway.publish("room:1", {"n": 1})
    event = await aio(stream.event())
    assert (event["event"], event["data"]["data"]) == ("message", {"n": 1})


@pytest.mark.parametrize("source", ["header", "query", "cookie"])
async def test_poll_takes_the_token_from_header_query_or_cookie(auth_gw, source):
    """Long-poll authenticates with Authorization: Bearer, token= or the gateway_token cookie
    (and a forged token through the same source is a 401)."""
    suffix, headers = presented(source, token(key=FORGED))
    r = await poll(auth_gw, "channel=room:1&timeout=0" + suffix, headers)
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    await auth_gw.gateway.publish("room:1", "x")
    suffix, headers = presented(source, token())
    r = await poll(auth_gw, "channel=room:1&timeout=0" + suffix, headers)
    assert r.status_code == 200, r.text
    assert r.json()["messages"] == []


@pytest.mark.parametrize("source", ["header", "query", "cookie"])
async def test_publish_takes_the_token_from_header_query_or_cookie(auth_gw, source):
    """POST /publish authenticates with Authorization: Bearer, token= or the gateway_token cookie
    (and a forged token through the same source is a 401)."""
    suffix, headers = presented(source, token(key=FORGED))
    r = await publish(auth_gw, {"channel": "room:1", "data": 0}, headers, query="?" + suffix.lstrip("&") if suffix else "")
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    suffix, headers = presented(source, token())
    r = await publish(auth_gw, {"channel": "room:1", "data": 1}, headers, query="?" + suffix.lstrip("&") if suffix else "")
    assert r.status_code == 200, r.text
    assert r.json()["seq"] == 1


async def test_nothing_presented_is_401_everywhere(auth_gw, sse):
    """Without credentials, SSE, poll and publish are JSON 401s and nothing is opened or published."""
    stream = await sse(auth_gw.base + "/sse?channel=room:1")
    assert_json_error(stream.status, await aio(stream.body()), 401, "unauthorized")
    r = await poll(auth_gw, "channel=room:1&timeout=5")
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    r = await publish(auth_gw, {"channel": "room:1", "data": 1})
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    assert auth_gw.bus.subscriber_count() == 0
    assert auth_gw.gateway.connection_count() == 0
    assert auth_gw.gateway.stats.publications == 0


async def test_publish_without_credentials_is_401_whatever_its_body(auth_gw):
    """A client without valid credentials learns nothing about how its body would be judged:
    a malformed or forbidden body is a 401 too; with credentials the same body is a 400."""
    for body in ({"channel": "bad name", "data": 1}, {"data": 1}, [1], {"messages": []}):
        r = await publish(auth_gw, body)
        assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    r = await http("POST", auth_gw.base + "/publish", content=b"{not json", headers={"content-type": "application/json"})
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    r = await publish(auth_gw, {"channel": "bad name", "data": 1}, bearer(API_KEY))
    assert_json_error(r.status_code, r.json(), 400, "bad_request")


# -- JSONP ---------------------------------------------------------------------------


async def test_jsonp_ignores_cookies_and_authorization(auth_gw):
    """A JSONP poll authenticates only with token=: a valid cookie or header alone is a
    (wrapped) 401; the same token as token= works."""
    good = token()
    for headers in (cookie(good), bearer(good), {**cookie(good), **bearer(good)}):
        r = await poll(auth_gw, "channel=room:1&timeout=0&callback=cb", headers)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/javascript"
        assert jsonp_body(r)["error"]["code"] == "unauthorized", headers
    r = await poll(auth_gw, "channel=room:1&timeout=0&callback=cb&token=" + good, cookie("garbage"))
    body = jsonp_body(r)
    assert body["messages"] == [] and "cursor" in body


async def test_jsonp_forbidden_channel_is_wrapped(auth_gw):
    """A JSONP poll on a channel the token may not read: the 403 body wrapped, status 200."""
    r = await poll(auth_gw, "channel=secret&timeout=0&callback=cb&token=" + token())
    assert r.status_code == 200
    assert jsonp_body(r)["error"]["code"] == "forbidden"


# -- bad tokens ----------------------------------------------------------------------


def _bad_tokens(rsa_key) -> dict[str, str]:
    now = int(time.time())
    base = claims()
    return {
        "wrong signature": token(key=FORGED),
        "alg none": hand_made({"alg": "none", "typ": "JWT"}, base),
        "expired": token(lifetime=-30),
        "not yet valid": token(nbf=now + 3600),
        "missing sub": token(sub=None),
        "garbage": "not.a.jwt",
        "RS256 to an HS256 node": token(key=rsa_key, algorithm="RS256"),
    }


@pytest.mark.parametrize("endpoint", ["sse", "poll", "publish"])
async def test_invalid_tokens_are_401_json(auth_gw, sse, rsa_key, endpoint):
    """Wrong signature, alg none, expired, nbf in the future, no sub, garbage: JSON 401."""
    for name, bad in _bad_tokens(rsa_key).items():
        if endpoint == "sse":
            stream = await sse(auth_gw.base + "/sse?channel=room:1", bearer(bad))
            status, body = stream.status, await aio(stream.body())
            await aio(stream.close())
        elif endpoint == "poll":
            r = await poll(auth_gw, "channel=room:1&timeout=5", bearer(bad))
            status, body = r.status_code, r.json()
        else:
            r = await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(bad))
            status, body = r.status_code, r.json()
        assert (name, status, body["error"]["code"]) == (name, 401, "unauthorized")
    assert auth_gw.gateway.stats.publications == 0
    assert auth_gw.bus.subscriber_count() == 0


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_public_key_tokens_and_algorithm_confusion(gw_factory, sse, tmp_path, rsa_key, ec_key, kind):
    """With --jwt-public-key, RS256/ES256 tokens work; an HS256 token signed with the
    public key's PEM as the secret (algorithm confusion) and alg none are 401."""
    private = rsa_key if kind == "rsa" else ec_key
    algorithm = "RS256" if kind == "rsa" else "ES256"
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(private))
    gw = gw_factory(jwt_public_key=str(pem), jwt_leeway=0.0)

    good = token(key=private, algorithm=algorithm)
    stream = await open_ok(sse, gw, "channel=room:1", bearer(good))
    await aio(stream.close())
    r = await publish(gw, {"channel": "room:1", "data": 1}, bearer(good))
    assert r.status_code == 200, r.text

    confused = hand_made(
        {"alg": "HS256", "typ": "JWT"},
        claims(),
        lambda data: hmac.new(public_pem(private), data, hashlib.sha256).digest(),
    )
    for bad in (confused, hand_made({"alg": "none", "typ": "JWT"}, claims()), token()):
        for endpoint in ("sse", "poll", "publish"):
            if endpoint == "sse":
                s = await sse(gw.base + "/sse?channel=room:1", bearer(bad))
                status, body = s.status, await aio(s.body())
            elif endpoint == "poll":
                r = await poll(gw, "channel=room:1&timeout=5", bearer(bad))
                status, body = r.status_code, r.json()
            else:
                r = await publish(gw, {"channel": "room:1", "data": 2}, bearer(bad))
                status, body = r.status_code, r.json()
            assert_json_error(status, body, 401, "unauthorized")
    assert gw.gateway.stats.publications == 1


# -- permissions ---------------------------------------------------------------------


async def test_forbidden_channel_refuses_sse_and_poll_before_opening(auth_gw, sse):
    """One channel outside the token's subscribe patterns: 403 naming it, nothing subscribed."""
    headers = bearer(token())
    stream = await sse(auth_gw.base + "/sse?channel=room:1&channel=secret", headers)
    body = await aio(stream.body())
    assert_json_error(stream.status, body, 403, "forbidden")
    assert "secret" in body["error"]["message"]
    assert stream.headers["content-type"] == "application/json"
    r = await poll(auth_gw, "channel=room:1&channel=secret&timeout=5", headers)
    assert_json_error(r.status_code, r.json(), 403, "forbidden")
    assert "secret" in r.json()["error"]["message"]
    assert auth_gw.bus.subscriber_count() == 0
    assert auth_gw.gateway.connection_count() == 0


async def test_token_without_claims_may_do_nothing(auth_gw, sse):
    """A token without subscribe/publish lists may subscribe and publish nowhere."""
    bare = pyjwt.encode({"sub": "nobody", "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    stream = await sse(auth_gw.base + "/sse?channel=room:1", bearer(bare))
    assert_json_error(stream.status, await aio(stream.body()), 403, "forbidden")
    r = await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(bare))
    assert_json_error(r.status_code, r.json(), 403, "forbidden")


async def test_forbidden_batch_item_publishes_nothing(auth_gw):
    """A batch with one item the token may not publish to: 403 naming its index, nothing published."""
    r = await publish(
        auth_gw,
        {"messages": [{"channel": "room:1", "data": 1}, {"channel": "room:2", "data": 2}, {"channel": "admin", "data": 3}]},
        bearer(token()),
    )
    assert_json_error(r.status_code, r.json(), 403, "forbidden")
    assert "messages[2]" in r.json()["error"]["message"]
    assert auth_gw.gateway.stats.publications == 0
    r = await publish(auth_gw, {"channel": "room:1", "data": "first"}, bearer(API_KEY))
    assert r.json()["seq"] == 1


# -- API keys and /metrics -----------------------------------------------------------


async def test_api_key_has_full_access(auth_gw, sse):
    """An API key subscribes and publishes on every channel, with no from; a wrong key is a 401."""
    r = await publish(auth_gw, {"channel": "secret", "data": 0}, bearer("not-" + API_KEY))
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    stream = await open_ok(sse, auth_gw, "channel=admin&channel=secret", bearer(API_KEY))
    r = await publish(auth_gw, {"channel": "secret", "data": 1}, bearer(API_KEY))
    assert r.status_code == 200
    event = await aio(stream.event())
    assert event["data"]["channel"] == "secret"
    assert "from" not in event["data"]
    r = await poll(auth_gw, "channel=admin&timeout=0&token=" + API_KEY)
    assert r.status_code == 200


async def test_metrics_needs_an_api_key_when_keys_are_configured(auth_gw):
    """/metrics: 401 without credentials, 403 for a user's token, 200 with an API key."""
    r = await http("GET", auth_gw.base + "/metrics")
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    r = await http("GET", auth_gw.base + "/metrics", headers=bearer("wrong-key"))
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    r = await http("GET", auth_gw.base + "/metrics", headers=bearer(token()))
    assert_json_error(r.status_code, r.json(), 403, "forbidden")
    r = await http("GET", auth_gw.base + "/metrics", headers=bearer(API_KEY))
    assert r.status_code == 200
    assert "gateway_publications_total" in r.text
    assert r.headers["content-type"].startswith("text/plain")


async def test_metrics_open_without_api_keys(gw_factory):
    """With JWT but no API key configured, /metrics stays open (a private network)."""
    gw = gw_factory(jwt_secret=SECRET)
    r = await http("GET", gw.base + "/metrics")
    assert r.status_code == 200
    assert "gateway_connections" in r.text


# -- from ----------------------------------------------------------------------------


async def test_publish_from_is_the_token_sub(auth_gw, sse):
    """A token's publication carries from = its sub (never the client's); an API key's none."""
    stream = await open_ok(sse, auth_gw, "channel=room:1", bearer(API_KEY))
    r = await publish(auth_gw, {"channel": "room:1", "data": 1, "from": "mallory"}, bearer(token("bob")))
    assert r.status_code == 200, r.text
    r = await publish(auth_gw, {"messages": [{"channel": "room:1", "data": 2, "from": "mallory"}]}, bearer(token("bob")))
    assert r.status_code == 200, r.text
    r = await publish(auth_gw, {"channel": "room:1", "data": 3}, bearer(API_KEY))
    assert r.status_code == 200, r.text
    events = [(await aio(stream.event()))["data"] for _ in range(3)]
    assert [(e["data"], e.get("from")) for e in events] == [(1, "bob"), (2, "bob"), (3, None)]


# -- rate limit and connection limit -------------------------------------------------


async def test_publish_rate_keys_and_retry_after(auth_gw, monkeypatch):
    """One rate check per request, keyed by sub / API key digest / address; a RateLimited
    is a 429 with Retry-After (its retry_after rounded up, else 1) and nothing published."""
    keys: list[str] = []
    limited: list[RateLimited] = []

    def check(key: str) -> None:
        keys.append(key)
        if limited:
            raise limited.pop()

    monkeypatch.setattr(auth_gw.gateway, "check_publish_rate", check)
    await publish(auth_gw, {"messages": [{"channel": "room:1", "data": 1}, {"channel": "room:2", "data": 2}]}, bearer(token("bob")))
    await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(API_KEY))
    # A wrong bearer beside the right token= does not pick the bucket.
    await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer("junk-" + str(time.time())), query="?token=" + API_KEY)
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()[:32]
    assert keys == ["sub:bob", "key:" + digest, "key:" + digest]
    published = auth_gw.gateway.stats.publications

    error = RateLimited("slow down")
    error.retry_after = 2.2  # type: ignore[attr-defined]
    limited.append(error)
    r = await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(token("bob")))
    assert_json_error(r.status_code, r.json(), 429, "rate_limited")
    assert r.headers["retry-after"] == "3"
    limited.append(RateLimited("slow down"))
    r = await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(token("bob")))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert auth_gw.gateway.stats.publications == published


async def test_publish_rate_key_is_the_address_without_auth(gw, monkeypatch):
    """Anonymous publishes are rate-limited by client address."""
    keys: list[str] = []
    monkeypatch.setattr(gw.gateway, "check_publish_rate", keys.append)
    r = await publish(gw, {"channel": "a", "data": 1})
    assert r.status_code == 200
    assert keys == ["addr:127.0.0.1"]


async def test_connection_limit_refuses_streams_and_polls(auth_gw, sse, monkeypatch):
    """check_connection_limit raising Unavailable: SSE 503, poll 503 (JSONP wrapped), nothing opened."""

    def full() -> None:
        raise Unavailable("too many connections")

    monkeypatch.setattr(auth_gw.gateway, "check_connection_limit", full)
    stream = await sse(auth_gw.base + "/sse?channel=room:1", bearer(token()))
    assert_json_error(stream.status, await aio(stream.body()), 503, "unavailable")
    r = await poll(auth_gw, "channel=room:1&timeout=5", bearer(token()))
    assert_json_error(r.status_code, r.json(), 503, "unavailable")
    r = await poll(auth_gw, "channel=room:1&timeout=5&callback=cb&token=" + token())
    assert jsonp_body(r)["error"]["code"] == "unavailable"
    assert auth_gw.gateway.connection_count() == 0
    r = await publish(auth_gw, {"channel": "room:1", "data": 1}, bearer(token()))
    assert r.status_code == 200


# -- CORS with cookies -------------------------------------------------------------


async def test_listed_origin_may_send_the_cookie(gw_factory, sse):
    """A listed origin gets Access-Control-Allow-Credentials with cookie-authenticated answers."""
    gw = gw_factory(jwt_secret=SECRET, allowed_origin=(APP,))
    headers = {**cookie(token()), "Origin": APP}
    stream = await open_ok(sse, gw, "channel=room:1", headers)
    r = await poll(gw, "channel=room:1&timeout=0", headers)
    p = await publish(gw, {"channel": "room:1", "data": 1}, headers)
    for status, h in ((stream.status, stream.headers), (r.status_code, r.headers), (p.status_code, p.headers)):
        assert status == 200
        assert h["access-control-allow-origin"] == APP
        assert h["access-control-allow-credentials"] == "true"


# -- expiry and refresh ----------------------------------------------------------------


class Publisher:
    """Publishes 0, 1, 2, ... on a channel every ``interval`` seconds until stopped."""

    def __init__(self, gw, channel: str, interval: float) -> None:
        from twisted.internet import task

        self.gw = gw
        self.channel = channel
        self.count = 0
        self.last_seq = 0
        self._loop = task.LoopingCall(self._one)
        self._done = self._loop.start(interval)

    def _one(self):
        self.count += 1
        d = self.gw.gateway.publish(self.channel, self.count)

        def done(pub):
            self.last_seq = max(self.last_seq, pub.seq)

        return d.addCallback(done)

    async def stop(self) -> int:
        self._loop.stop()
        await self._done
        return self.last_seq


def short_token(sub: str = "alice", seconds: int = 2) -> str:
    """A token whose exp is 1 to ``seconds`` s away (exp is whole seconds)."""
    return token(sub, lifetime=seconds)


@pytest.mark.slow
async def test_sse_refresh_across_expiry_misses_nothing(auth_gw, sse):
    """Publications flowing; the stream ends at exp with event: error unauthorized (no id);
    the client reconnects with a fresh token and its last id; every seq arrives once."""
    publisher: Publisher | None = None
    seqs: list[int] = []
    expiries = 0
    last_id: str | None = None
    last_seq = None
    try:
        while last_seq is None or not seqs or seqs[-1] < last_seq:
            headers = bearer(short_token())
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            stream = await open_ok(sse, auth_gw, "channel=room:1", headers)
            if publisher is None:
                # The first stream starts at "now": publish only once it is open.
                publisher = Publisher(auth_gw, "room:1", 0.02)
            while True:
                try:
                    event = await aio(stream.event(timeout=10 * FACTOR))
                except EOFError:
                    raise AssertionError("the stream ended without an error event") from None
                if event["event"] == "error":
                    assert event["data"]["code"] == "unauthorized"
                    assert event["data"]["type"] == "error"
                    assert "id" not in event
                    assert await aio(stream.ended()) == []
                    expiries += 1
                    break
                assert event["event"] == "message"
                seqs.append(event["data"]["seq"])
                last_id = event["id"]
                if last_seq is not None and seqs[-1] >= last_seq:
                    break
            await aio(stream.close())
            if expiries >= 2 and last_seq is None:
                assert publisher is not None
                last_seq = await publisher.stop()
    finally:
        if publisher is not None and publisher._loop.running:
            await publisher.stop()
    assert expiries >= 2
    assert seqs == list(range(1, last_seq + 1))


@pytest.mark.slow
async def test_poll_refresh_across_expiry_misses_nothing(auth_gw):
    """Publications flowing; polls whose token expired are answered at exp or refused with
    401; the client polls again with a fresh token and its cursor; every seq arrives once."""
    current = short_token()
    r = await poll(auth_gw, "channel=room:1&timeout=0", bearer(current))
    cursor: str | None = r.json()["cursor"]
    publisher = Publisher(auth_gw, "room:1", 0.1)
    seqs: list[int] = []
    refused = 0
    last_seq = None
    try:
        while last_seq is None or not seqs or seqs[-1] < last_seq:
            query = "channel=room:1&timeout=10" + ("&cursor=" + cursor if cursor else "")
            r = await poll(auth_gw, query, bearer(current))
            if r.status_code == 401:
                assert r.json()["error"]["code"] == "unauthorized"
                refused += 1
                current = short_token()
                if refused >= 2 and last_seq is None:
                    last_seq = await publisher.stop()
                continue
            assert r.status_code == 200, r.text
            body = r.json()
            seqs.extend(m["seq"] for m in body["messages"])
            cursor = body["cursor"]
    finally:
        if publisher._loop.running:
            await publisher.stop()
    assert refused >= 2
    assert seqs == list(range(1, last_seq + 1))


@pytest.mark.slow
async def test_held_poll_answered_at_exp_then_401_then_resumes(auth_gw):
    """A held poll is answered when its token expires, with its cursor; the same token
    is then a 401; a fresh token with that cursor gets what was published meanwhile."""
    pub = await auth_gw.gateway.publish("room:1", "before")
    expiring = short_token()
    exp = pyjwt.decode(expiring, options={"verify_signature": False})["exp"]
    r = await poll(auth_gw, "channel=room:1&timeout=30", bearer(expiring))
    answered = time.time()
    assert r.status_code == 200
    body = r.json()
    assert body["messages"] == []
    assert decode(body["cursor"]) == {"room:1": [pub.epoch, 1]}
    assert exp - 0.5 <= answered <= exp + 3 * FACTOR
    assert auth_gw.gateway.connection_count() == 0
    r = await poll(auth_gw, "channel=room:1&timeout=0&cursor=" + body["cursor"], bearer(expiring))
    assert_json_error(r.status_code, r.json(), 401, "unauthorized")
    await auth_gw.gateway.publish("room:1", "meanwhile")
    r = await poll(auth_gw, "channel=room:1&timeout=10&cursor=" + body["cursor"], bearer(token()))
    assert [(m["seq"], m["data"]) for m in r.json()["messages"]] == [(2, "meanwhile")]


# -- revocation ----------------------------------------------------------------------


async def test_revoked_sse_stream_gets_forbidden_and_ends(auth_gw, sse):
    """revoke_local(sub): the stream gets event: error forbidden (no id) and ends."""
    stream = await open_ok(sse, auth_gw, "channel=room:1", bearer(token("carol")))
    other = await open_ok(sse, auth_gw, "channel=room:1", bearer(token("dan")))
    await auth_gw.gateway.publish("room:1", 1)
    assert (await aio(stream.event()))["event"] == "message"
    assert auth_gw.gateway.revoke_local("carol") == 1
    event = await aio(stream.event())
    assert event["event"] == "error"
    assert event["data"] == {"type": "error", "code": "forbidden", "message": event["data"]["message"]}
    assert "id" not in event
    assert await aio(stream.ended()) == []
    await wait_until(lambda: auth_gw.gateway.connection_count("sse") == 1, what="the revoked stream to be released")
    # Others are untouched.
    assert (await aio(other.event()))["data"]["data"] == 1
    assert auth_gw.gateway.revoke_local("carol") == 0


async def test_revoked_held_poll_gets_403(auth_gw):
    """revoke_local(sub) answers a held poll with 403 forbidden (JSONP: wrapped)."""
    for callback in (None, "cb"):
        query = "channel=room:1&timeout=30&token=" + token("erin") + (f"&callback={callback}" if callback else "")
        pending = poll(auth_gw, query)
        await wait_until(lambda: auth_gw.gateway.revoke_local("erin") == 1, what="the poll to be held and revoked")
        r = await pending
        if callback is None:
            assert_json_error(r.status_code, r.json(), 403, "forbidden")
        else:
            assert jsonp_body(r)["error"]["code"] == "forbidden"
        assert auth_gw.gateway.connection_count() == 0
        assert auth_gw.bus.subscriber_count() == 0
