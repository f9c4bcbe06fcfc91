"""Secrets from files and the environment (--jwt-secret-file, --api-key-file,
GATEWAY_JWT_SECRET, GATEWAY_API_KEYS, TOML), their errors, which never show a secret,
and tokens kept out of the access log (docs/protocol.md section 8)."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest
from twisted.internet.task import Clock

from gateway.auth import auth_chain_from_config
from gateway.auth.apikey import APIKeyAuthenticator
from gateway.auth.jwt import JWTAuthenticator
from gateway.auth.redact import redact_uri
from gateway.config import ConfigError, load_config
from gateway.core.auth import Credentials
from gateway.errors import Unauthorized

SECRET = "file-or-env-secret-0123456789abcdef"


def chain(cli: dict, environ: dict | None = None, config_file: str | None = None):
    return auth_chain_from_config(load_config(cli, config_file), Clock(), environ={} if environ is None else environ)


def authenticate(auth, value: str):
    out: list = []
    auth.authenticate(Credentials("poll", authorization=f"Bearer {value}")).addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def token(secret: str = SECRET) -> str:
    return pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")


def test_api_keys_from_options_file_and_environment(tmp_path):
    """--api-key, --api-key-file (one a line, blanks ignored) and GATEWAY_API_KEYS
    (commas or whitespace) all give working keys."""
    path = tmp_path / "keys"
    path.write_text("file-key-1\n\n   file-key-2 \n")
    auth = chain({"api-key": ["cli-key"], "api-key-file": str(path)}, {"GATEWAY_API_KEYS": "env-1, env-2 env-3"})
    assert [type(a) for a in auth.authenticators] == [APIKeyAuthenticator]
    for key in ("cli-key", "file-key-1", "file-key-2", "env-1", "env-2", "env-3"):
        assert authenticate(auth, key).kind == "api-key", key
    with pytest.raises(Unauthorized):
        authenticate(auth, "env-1, env-2")


def test_api_keys_from_the_environment_alone_protect_the_node():
    auth = chain({}, {"GATEWAY_API_KEYS": "only-env"})
    assert auth.configured
    assert not chain({}, {"GATEWAY_API_KEYS": " , "}).configured


def test_an_empty_api_key_file_is_an_error_not_an_open_node(tmp_path):
    path = tmp_path / "keys"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"^--api-key-file: {path} holds no key$"):
        chain({"api-key-file": str(path)})


@pytest.mark.parametrize("option", ["api-key-file", "jwt-secret-file", "jwt-public-key"])
def test_unreadable_secret_files_are_errors_naming_the_option_and_path(tmp_path, option):
    """A missing file and a directory: the option, the path and why."""
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"^--{option}: cannot read {missing}: No such file"):
        chain({option: str(missing)})
    with pytest.raises(ValueError, match=f"^--{option}: cannot read {tmp_path}: Is a directory"):
        chain({option: str(tmp_path)})


def test_a_secret_file_that_is_not_text_is_an_error_without_its_content(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfeSECRET-BYTES")
    with pytest.raises(ValueError, match="is not UTF-8 text") as info:
        chain({"jwt-secret-file": str(path)})
    assert "SECRET" not in str(info.value)


def test_jwt_secret_from_a_file_trailing_newline_ignored(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    auth = chain({"jwt-secret-file": str(path)})
    assert [type(a) for a in auth.authenticators] == [JWTAuthenticator]
    assert authenticate(auth, token()).sub == "alice"


def test_an_empty_jwt_secret_file_is_an_error(tmp_path):
    path = tmp_path / "secret"
    path.write_text("\n")
    with pytest.raises(ValueError, match=f"^--jwt-secret-file: {path} is empty$"):
        chain({"jwt-secret-file": str(path)})


def test_jwt_secret_from_the_environment():
    auth = chain({}, {"GATEWAY_JWT_SECRET": SECRET})
    assert authenticate(auth, token()).sub == "alice"
    assert not chain({}, {"GATEWAY_JWT_SECRET": ""}).configured


def test_jwt_secret_precedence_option_then_file_then_environment(tmp_path):
    path = tmp_path / "secret"
    path.write_text("the-file-secret-0123456789abcdefghij")
    env = {"GATEWAY_JWT_SECRET": "the-env-secret-0123456789abcdefghijk"}
    auth = chain({"jwt-secret": "the-cli-secret-0123456789abcdefghijk", "jwt-secret-file": str(path)}, env)
    assert authenticate(auth, token("the-cli-secret-0123456789abcdefghijk")).sub == "alice"
    auth = chain({"jwt-secret-file": str(path)}, env)
    assert authenticate(auth, token("the-file-secret-0123456789abcdefghij")).sub == "alice"
    with pytest.raises(Unauthorized):
        authenticate(auth, token(env["GATEWAY_JWT_SECRET"]))


def test_a_secret_and_a_public_key_together_are_an_error(tmp_path):
    """Whichever way the secret comes (option, file, environment), with --jwt-public-key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "key.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    with pytest.raises(ConfigError, match="not both"):
        load_config({"jwt-secret": SECRET, "jwt-public-key": str(pem)})
    with pytest.raises(ValueError, match="not both"):
        chain({"jwt-secret-file": str(secret_file), "jwt-public-key": str(pem)})
    with pytest.raises(ValueError, match="not both"):
        chain({"jwt-public-key": str(pem)}, {"GATEWAY_JWT_SECRET": SECRET})


def test_a_public_key_file_that_is_not_a_key_is_an_error_without_its_content(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nSECRETISHCONTENT\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="^--jwt-public-key: not a PEM public key") as info:
        chain({"jwt-public-key": str(path)})
    assert "SECRETISHCONTENT" not in str(info.value)


def test_secrets_from_a_toml_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("toml-file-key\n")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'api-key = ["toml-key"]\napi-key-file = "{keys}"\njwt-secret-file = "{secret}"\n')
    auth = chain({}, config_file=str(toml))
    assert authenticate(auth, "toml-key").kind == "api-key"
    assert authenticate(auth, "toml-file-key").kind == "api-key"
    assert authenticate(auth, token()).sub == "alice"


def test_gateway_start_up_error_for_a_secret_file_is_a_config_error(tmp_path, monkeypatch):
    from gateway.app import Gateway
    with pytest.raises(ConfigError, match="^--jwt-secret-file: cannot read"):
        Gateway(load_config({"jwt-secret-file": str(tmp_path / "nope")}), reactor=Clock())


@pytest.mark.parametrize(
    "uri,expected",
    [
        (b"/sse?channels=a&token=abc.def.ghi", b"/sse?channels=a&token=[redacted]"),
        (b"/poll?token=x&callback=cb&token=y", b"/poll?token=[redacted]&callback=cb&token=[redacted]"),
        (b"/poll?tok%65n=x", b"/poll?tok%65n=[redacted]"),
        (b"/poll?tokens=a&mytoken=b", b"/poll?tokens=a&mytoken=b"),
        (b"/ws?token=a#frag", b"/ws?token=[redacted]#frag"),
        (b"/ws", b"/ws"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    "uri,headers",
    [
        (b"/poll?channel=a&cursor=eyJhIjpbImUxIiwzXX0", {}),
        (b"/sse?channel=a&token=abc.def", {b"referer": b"https://x.test/p?token=zzz", b"user-agent": b'curl "7"'}),
        (b"/poll?tok%65n=x", {b"referer": b"", b"user-agent": b"\xffodd\\agent"}),
        (b'/ws?q="\\', {b"referer": b"https://x.test/"}),
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_access_log_line_is_twisted_combined_format_without_tokens(uri, headers, host):
    """The access-log formatter writes twisted.web's combined line, the same text, with tokens redacted."""
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.web.http import combinedLogFormatter
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.auth.redact import _Redacted, access_log_formatter

    request = DummyRequest([b""])
    request.uri = uri
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 123
    request.client = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 5555)
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    for _ in range(2):  # the second time from the cache of escaped values
        line = access_log_formatter("[30/Nov/2026:03:00:00 +0000]", request)
        assert line == combinedLogFormatter("[30/Nov/2026:03:00:00 +0000]", _Redacted(request))
    assert b"zzz" not in line.encode() and b"abc.def" not in line.encode()
