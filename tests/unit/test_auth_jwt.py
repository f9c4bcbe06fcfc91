"""JWT and API-key authenticators and the AuthChain, with tokens and keys made here."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer

from gateway.auth import AuthChain, auth_chain_from_config
from gateway.auth.apikey import APIKeyAuthenticator
from gateway.auth.jwt import JWTAuthenticator
from gateway.config import Config
from gateway.core.auth import OPEN, Credentials, Identity
from gateway.errors import Forbidden, Unauthorized

SECRET = "s" * 32


def pem(public_key) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def creds(token: str) -> Credentials:
    return Credentials("websocket", token=token)


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_hs256_token_gives_its_identity():
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "alice", "subscribe": ["a:*"], "publish": ["a:1"], "exp": exp, "iat": exp - 60}, SECRET, "HS256")
    who = JWTAuthenticator(secret=SECRET, leeway=5).authenticate(creds(token))
    assert (who.sub, who.subscribe, who.publish, who.exp, who.iat) == ("alice", ("a:*",), ("a:1",), exp, exp - 60)
    # The leeway extends the deadline, not the exp the client is told.
    assert who.seconds_left(exp) == 5 and not who.expired(exp + 4.9) and who.expired(exp + 5)


def test_rs256_and_es256_with_a_public_key(rsa_key, ec_key):
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        token = jwt.encode({"sub": "bob"}, key, alg)
        assert JWTAuthenticator(public_key=pem(key.public_key())).authenticate(creds(token)).sub == "bob"


@pytest.mark.parametrize("case", ["wrong-secret", "none", "expired", "not-yet", "no-sub", "audience", "issuer"])
def test_invalid_tokens_are_unauthorized(case):
    now = int(time.time())
    claims = {"sub": "alice"}
    key, alg = SECRET, "HS256"
    auth = JWTAuthenticator(secret=SECRET, leeway=2)
    if case == "wrong-secret":
        key = "x" * 32
    elif case == "none":
        token = jwt.encode(claims, None, algorithm="none")
    elif case == "expired":
        claims["exp"] = now - 10
    elif case == "not-yet":
        claims["nbf"] = now + 60
    elif case == "no-sub":
        claims = {"name": "alice"}
    elif case == "audience":
        auth = JWTAuthenticator(secret=SECRET, audience="gateway")
        claims["aud"] = "elsewhere"
    elif case == "issuer":
        auth = JWTAuthenticator(secret=SECRET, issuer="me")
        claims["iss"] = "them"
    if case != "none":
        token = jwt.encode(claims, key, alg)
    with pytest.raises(Unauthorized):
        auth.authenticate(creds(token))


def test_algorithm_confusion_hs256_signed_with_the_rsa_public_key(rsa_key):
    """A token signed with HS256 using the RSA public key's PEM as the secret is refused."""
    public = pem(rsa_key.public_key())
    forged = jwt.api_jws.PyJWS().encode(b'{"sub":"mallory"}', key=b"u" * 32, algorithm="HS256")
    header, payload, _ = forged.split(".")
    import base64
    import hashlib
    import hmac

    signing = f"{header}.{payload}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(public.encode(), signing, hashlib.sha256).digest()).rstrip(b"=").decode()
    with pytest.raises(Unauthorized):
        JWTAuthenticator(public_key=public).authenticate(creds(f"{header}.{payload}.{sig}"))


def test_leeway_accepts_a_just_expired_token():
    token = jwt.encode({"sub": "a", "exp": int(time.time()) - 2}, SECRET, "HS256")
    assert JWTAuthenticator(secret=SECRET, leeway=5).authenticate(creds(token)).sub == "a"


def test_non_jwt_credentials_are_not_the_jwt_authenticators():
    assert JWTAuthenticator(secret=SECRET).authenticate(creds("an-api-key")) is None


def test_api_keys_in_bearer_or_token():
    auth = APIKeyAuthenticator(["k1", "k2"])
    assert auth.authenticate(Credentials("publish", authorization="Bearer k2")).kind == "api-key"
    assert auth.authenticate(Credentials("publish", token="k1")).kind == "api-key"
    assert auth.authenticate(Credentials("publish", authorization="Bearer k3")) is None
    with pytest.raises(ValueError):
        APIKeyAuthenticator([""])


def test_chain_open_without_authenticators_and_closed_with():
    assert result(AuthChain().authenticate(Credentials("sse"))) is OPEN
    chain = AuthChain([APIKeyAuthenticator(["k"]), JWTAuthenticator(secret=SECRET)])
    with pytest.raises(Unauthorized):
        result(chain.authenticate(Credentials("sse")))
    with pytest.raises(Unauthorized):
        result(chain.authenticate(Credentials("sse", token="nope")))
    assert result(chain.authenticate(Credentials("sse", token="k"))).kind == "api-key"
    token = jwt.encode({"sub": "z"}, SECRET, "HS256")
    assert result(chain.authenticate(Credentials("sse", authorization=f"Bearer {token}"))).sub == "z"


def test_chain_refuses_expired_and_revoked_identities():
    class Revoked:
        def is_revoked(self, identity: Identity):
            return defer.succeed(identity.sub == "bad")

    class Fixed:
        def __init__(self, who):
            self.who = who

        def authenticate(self, credentials):
            return self.who

    now = 1000.0
    with pytest.raises(Unauthorized):
        result(AuthChain([Fixed(Identity(sub="a", exp=999))], now=lambda: now).authenticate(Credentials("sse", token="t")))
    with pytest.raises(Forbidden):
        result(AuthChain([Fixed(Identity(sub="bad"))], revocations=Revoked()).authenticate(Credentials("sse", token="t")))
    assert result(AuthChain([Fixed(Identity(sub="good"))], revocations=Revoked()).authenticate(Credentials("sse", token="t"))).sub == "good"


def test_chain_fails_closed_when_an_authenticator_breaks():
    from gateway.errors import Unavailable

    class Broken:
        def authenticate(self, credentials):
            raise RuntimeError("boom")

    with pytest.raises(Unavailable):
        result(AuthChain([Broken()]).authenticate(Credentials("sse", token="t")))


def test_chain_from_config_reads_secrets_from_files_and_the_environment(tmp_path, rsa_key):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    keys_file = tmp_path / "keys"
    keys_file.write_text("k1\n\nk2\n")
    chain = auth_chain_from_config(Config(jwt_secret_file=str(secret_file), api_key_file=str(keys_file)), environ={})
    token = jwt.encode({"sub": "f"}, SECRET, "HS256")
    assert result(chain.authenticate(Credentials("sse", token=token))).sub == "f"
    assert result(chain.authenticate(Credentials("sse", token="k2"))).kind == "api-key"
    env = auth_chain_from_config(Config(), environ={"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_API_KEYS": "e1, e2"})
    assert result(env.authenticate(Credentials("sse", token="e2"))).kind == "api-key"
    assert result(env.authenticate(Credentials("sse", token=token))).sub == "f"
    key_file = tmp_path / "pub.pem"
    key_file.write_text(pem(rsa_key.public_key()))
    rs = auth_chain_from_config(Config(jwt_public_key=str(key_file)), environ={})
    assert result(rs.authenticate(Credentials("sse", token=jwt.encode({"sub": "r"}, rsa_key, "RS256")))).sub == "r"
    assert not auth_chain_from_config(Config(), environ={}).configured


@pytest.mark.parametrize(
    "config,message",
    [
        (Config(jwt_secret_file="/nonexistent/secret"), "--jwt-secret-file"),
        (Config(api_key_file="/nonexistent/keys"), "--api-key-file"),
        (Config(jwt_public_key="/nonexistent/pub.pem"), "--jwt-public-key"),
    ],
)
def test_unreadable_secret_files_name_their_option(config, message):
    with pytest.raises(ValueError, match=message):
        auth_chain_from_config(config, environ={})


def test_a_public_key_file_that_is_not_a_key_is_refused(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError, match="--jwt-public-key"):
        auth_chain_from_config(Config(jwt_public_key=str(bad)), environ={})
