"""--authenticator NAME[:ARGS]: the built-in jwt, api-key and http authenticators are
plugins found in the plugins package, their arguments, and one-line errors naming
--authenticator (docs/protocol.md section 8)."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock

from gateway.auth import auth_chain_from_config
from gateway.auth.apikey import APIKeyAuthenticator
from gateway.auth.http import HTTPAuthenticator
from gateway.auth.jwt import JWTAuthenticator
from gateway.auth.plugins import discover_authenticator_factories, parse_args
from gateway.config import ConfigError, load_config
from gateway.core.auth import Credentials
from gateway.errors import Unauthorized
from gateway.hooks import discover_hook_factories

SECRET = "unit-test-hs256-secret-0123456789abcdef"


def chain(cli: dict, environ: dict | None = None):
    return auth_chain_from_config(load_config(cli), Clock(), environ={} if environ is None else environ)


def result(d):
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def hs256(sub: str = "alice", key: str = SECRET, **claims) -> str:
    return pyjwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, key, algorithm="HS256")


def bearer(value: str) -> Credentials:
    return Credentials("websocket", authorization=f"Bearer {value}")


def public_pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_builtin_authenticators_are_discovered_through_the_plugins_package():
    """jwt, api-key and http arrive through plugins/gateway_auth.py; the hooks are still found."""
    factories = discover_authenticator_factories()
    assert {"jwt", "api-key", "http"} <= set(factories)
    for factory in factories.values():
        assert factory.authHelp and factory.argStringFormat
    assert {"log", "allow-channels"} <= set(discover_hook_factories())


def test_jwt_plugin_with_a_secret_argument():
    auth = chain({"authenticator": [f"jwt:secret={SECRET}"]})
    assert [type(a) for a in auth.authenticators] == [JWTAuthenticator]
    assert result(auth.authenticate(bearer(hs256()))).sub == "alice"
    with pytest.raises(Unauthorized):
        result(auth.authenticate(bearer(hs256(key="another-secret-of-enough-length-0123"))))


def test_jwt_plugin_with_secret_file_audience_and_issuer(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    auth = chain({"authenticator": [f"jwt:secret-file={path},audience=app,issuer=login"]})
    assert result(auth.authenticate(bearer(hs256(aud="app", iss="login")))).sub == "alice"
    with pytest.raises(Unauthorized):
        result(auth.authenticate(bearer(hs256(aud="other", iss="login"))))
    with pytest.raises(Unauthorized):
        result(auth.authenticate(bearer(hs256(aud="app"))))


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_jwt_plugin_with_a_public_key_file(tmp_path, kind):
    if kind == "rsa":
        private, algorithm = rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    else:
        private, algorithm = ec.generate_private_key(ec.SECP256R1()), "ES256"
    path = tmp_path / "key.pem"
    path.write_text(public_pem(private))
    auth = chain({"authenticator": [f"jwt:public-key={path}"]})
    token = pyjwt.encode({"sub": "bob"}, private, algorithm=algorithm)
    assert result(auth.authenticate(bearer(token))).sub == "bob"
    with pytest.raises(Unauthorized):  # HS256 signed with the public key text
        result(auth.authenticate(bearer(pyjwt.encode({"sub": "bob"}, "x" * 40, algorithm="HS256"))))


def test_jwt_plugin_without_arguments_uses_the_jwt_options_once():
    """--authenticator jwt with --jwt-secret: the options' authenticator, not two."""
    auth = chain({"jwt-secret": SECRET, "authenticator": ["jwt"]})
    assert [type(a) for a in auth.authenticators] == [JWTAuthenticator]
    assert result(auth.authenticate(bearer(hs256()))).sub == "alice"


def test_api_key_plugin_with_keys_and_with_a_file(tmp_path):
    auth = chain({"authenticator": ["api-key:key=k-one,k-two"]})
    for key in ("k-one", "k-two"):
        assert result(auth.authenticate(bearer(key))).kind == "api-key"
    with pytest.raises(Unauthorized):
        result(auth.authenticate(bearer("k-three")))
    path = tmp_path / "keys"
    path.write_text("file-key-1\n\n  file-key-2  \n")
    auth = chain({"authenticator": [f"api-key:file={path}"]})
    assert result(auth.authenticate(bearer("file-key-2"))).kind == "api-key"


def test_http_plugin_arguments():
    """http:URL, http:url=URL,cache=S,timeout=S, and http alone with --auth-url (once)."""
    auth = chain({"authenticator": ["http:https://app.example/auth"]})
    (http,) = auth.authenticators
    assert isinstance(http, HTTPAuthenticator)
    assert (http.url, http.cache_seconds) == ("https://app.example/auth", 30.0)
    (http,) = chain({"authenticator": ["http:url=http://127.0.0.1:1/a,cache=0,timeout=2.5"]}).authenticators
    assert (http.url, http.cache_seconds, http.timeout) == ("http://127.0.0.1:1/a", 0.0, 2.5)
    (http,) = chain({"auth-url": "http://127.0.0.1:1/b", "auth-cache": "7", "authenticator": ["http"]}).authenticators
    assert (http.url, http.cache_seconds) == ("http://127.0.0.1:1/b", 7.0)


def test_chain_order_api_keys_jwt_plugins_then_auth_url():
    auth = chain(
        {
            "auth-url": "http://127.0.0.1:1/auth",
            "authenticator": ["api-key:key=plugin-key"],
            "jwt-secret": SECRET,
            "api-key": ["option-key"],
        }
    )
    assert [type(a) for a in auth.authenticators] == [APIKeyAuthenticator, JWTAuthenticator, APIKeyAuthenticator, HTTPAuthenticator]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nope", r"^--authenticator: unknown authenticator 'nope' \(available: api-key, http, jwt"),
        ("jwt", r"^--authenticator jwt: jwt needs secret="),
        ("jwt:secret=abc,public-key=/x", r"^--authenticator jwt: give exactly one of"),
        ("jwt:secrets=abc", r"^--authenticator jwt: unknown argument 'secrets'"),
        ("jwt:secret=", r"^--authenticator jwt: the JWT secret is empty"),
        ("jwt:secret=abc,leeway=soon", r"^--authenticator jwt: leeway= must be a number"),
        ("jwt:public-key=/nonexistent/key.pem", r"^--authenticator jwt: public-key: cannot read /nonexistent/key.pem"),
        ("api-key", r"^--authenticator api-key: api-key needs key= or file="),
        ("api-key:key=a,file=/x", r"^--authenticator api-key: give key= or file=, not both"),
        ("api-key:key=", r"^--authenticator api-key: no API key given"),
        ("http", r"^--authenticator http: http needs a URL"),
        ("http:ftp://x", r"^--authenticator http: expected NAME=VALUE"),
        ("http:url=ftp://x", r"^--authenticator http: not an http:// or https:// URL"),
        ("http:url=http://x,timeout=0", r"^--authenticator http: timeout= must be >= 0.001"),
    ],
)
def test_bad_authenticator_is_a_one_line_config_error(spec, message, monkeypatch):
    """The Gateway refuses to start with a ConfigError of one line naming --authenticator."""
    from gateway.app import Gateway
    with pytest.raises(ConfigError, match=message) as info:
        Gateway(load_config({"authenticator": [spec]}), reactor=Clock())
    assert "\n" not in str(info.value)


def test_argument_errors_never_echo_a_secret():
    """A secret holding a comma breaks the argument list; the error does not show its pieces."""
    from gateway.app import Gateway

    for spec in ("jwt:secret=first-half,second-half", "jwt:secret=a,b=second-half"):
        with pytest.raises(ConfigError) as info:
            Gateway(load_config({"authenticator": [spec]}), reactor=Clock())
        assert "second-half" not in str(info.value) and "first-half" not in str(info.value)


def test_parse_args():
    assert parse_args("a=1,b=x=y", ("a", "b")) == {"a": "1", "b": "x=y"}
    assert parse_args("key=a,b,c,file=f", ("key", "file"), lists=("key",)) == {"key": "a,b,c", "file": "f"}
    assert parse_args("", ("a",)) == {}
    with pytest.raises(ValueError, match="given twice"):
        parse_args("a=1,a=2", ("a",))
