"""No secret is ever logged: a gateway started with secrets from options, files, the
environment and plugin arguments, then asked with right and wrong credentials over
HTTP (query tokens included) and through its chain, logs none of them
(docs/protocol.md section 8)."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest
from twisted.logger import formatEvent, globalLogPublisher

from gateway.core.auth import Credentials
from gateway.testing import http, start_gateway

SECRETS = {
    "cli_key": "cli-key-5c1a0e",
    "file_key": "file-key-9d2b7f",
    "env_key": "env-key-3e8c4a",
    "jwt_secret": "jwt-file-secret-7f3a9c2e1b0d4a6e8f",
    "plugin_key": "plugin-key-4b6d1e",
    "wrong_key": "wrong-key-0a9f8e",
}


def as_text(event: dict) -> str:
    """Everything an observer could write: the formatted text and every field's repr."""
    parts = [formatEvent(event)]
    parts += [repr(value) for key, value in event.items() if key not in ("log_logger", "log_source", "log_observer")]
    failure = event.get("log_failure")
    if failure is not None:
        parts.append(failure.getTraceback())
    return "\n".join(parts)


async def test_secrets_and_tokens_never_appear_in_the_log(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text(SECRETS["file_key"] + "\n")
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRETS["jwt_secret"])
    monkeypatch.setenv("GATEWAY_API_KEYS", SECRETS["env_key"])
    good = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 60, "subscribe": ["*"]}, SECRETS["jwt_secret"], algorithm="HS256")
    forged = pyjwt.encode({"sub": "mallory"}, "forged-secret-2d4f6a8c0e1b3d5f7a9c", algorithm="HS256")
    tokens = [good, forged]

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        running = start_gateway(
            api_key=(SECRETS["cli_key"],),
            api_key_file=str(keys),
            jwt_secret_file=str(secret),
            authenticator=(f"api-key:key={SECRETS['plugin_key']}",),
            drain_timeout=2.0,
        )
        try:
            auth = running.gateway.auth
            for value in (SECRETS["cli_key"], SECRETS["file_key"], SECRETS["env_key"], SECRETS["plugin_key"], good):
                identity = await auth.authenticate(Credentials("publish", authorization=f"Bearer {value}"))
                assert identity.kind in ("api-key", "token")
            for value in (SECRETS["wrong_key"], forged):
                with pytest.raises(Exception):  # noqa: B017 - refused, whatever the code
                    await auth.authenticate(Credentials("sse", token=value, cookies={"gateway_token": value}))
            # Over the wire, with every way a credential travels (the access log sees the URI).
            for value in (*tokens, SECRETS["cli_key"], SECRETS["wrong_key"]):
                await http("GET", f"{running.base}/poll?channels=a&timeout=0&token={value}")
                await http("GET", f"{running.base}/metrics", headers={"Authorization": f"Bearer {value}"})
                await http("GET", f"{running.base}/sse?token={value}", headers={"Referer": f"https://app/?token={value}"})
                await http("POST", f"{running.base}/publish", json={"channel": "a", "data": 1}, headers={"Cookie": f"gateway_token={value}"})
        finally:
            await running.stop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(as_text(e) for e in events)
    for name, value in [*SECRETS.items(), ("good token", good), ("forged token", forged)]:
        assert value not in text, f"{name} was logged"
        # Not even the signature part of a token.
        if value.count(".") == 2:
            assert value.rsplit(".", 1)[1] not in text, f"{name}'s signature was logged"
    assert "token=[redacted]" in text  # the access log was captured
