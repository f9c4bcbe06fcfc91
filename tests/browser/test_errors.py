"""Error paths of gateway.js against a real gateway with authentication: a refused
publish rejects with the error code on every transport, a refused subscription is an
`error` event naming the channel, a failing token function is reported and retried,
and bad arguments throw at once."""

from __future__ import annotations

import pytest

SECRET = "browser-errors-secret"
CLAIMS = {"sub": "bob", "subscribe": ["room", "open:*"], "publish": ["room"]}


@pytest.fixture
def secured(gateway_factory):
    return gateway_factory("--jwt-secret", SECRET)


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_refused_publish_rejects_with_the_code(client_factory, secured, transport):
    """Publishing where the token does not allow it rejects with "forbidden"; an allowed publish still goes through."""
    client = client_factory(secured)
    client.start(transports=[transport], channels=("room",), jwt={"secret": SECRET, "ttl": 300, "claims": CLAIMS})
    client.wait_connected(transport)
    assert client.publish("open:1", "nope") == {"error": "forbidden"}
    ok = client.publish("room", "yes")
    assert ok["ack"]["seq"] == 1
    assert [e["data"] for e in client.wait_events(1, "room")] == ["yes"]


def test_refused_subscription_is_an_error_event_and_the_others_work(client_factory, secured):
    """On a WebSocket, subscribing to a channel the token does not allow gives {code: forbidden, channel}; other channels are unaffected."""
    client = client_factory(secured)
    client.start(transports=["websocket"], channels=("room", "secret"), jwt={"secret": SECRET, "ttl": 300, "claims": CLAIMS})
    client.wait_connected("websocket")
    client.wait("window.errors.length >= 1")
    errors = client.js("() => window.errors")
    assert [(e["code"], e.get("channel")) for e in errors] == [("forbidden", "secret")]
    secured.publish("room", 1, headers={"Authorization": "Bearer " + client.js(f"() => mintToken({SECRET!r}, 60, {{sub: 'svc', publish: ['*']}})")})
    assert [e["seq"] for e in client.wait_events(1, "room")] == [1]


def test_failing_token_function_is_reported_and_retried(client_factory, secured):
    """A token function that throws twice: two `token` error events, reconnecting with a delay, then connected with the third token."""
    client = client_factory(secured)
    client.js(
        f"""() => {{
        let calls = 0;
        window.gw = new Gateway(location.origin + "/", {{transports: ["websocket"], _timing: {{backoffBase: 50}}, token: () => {{
            calls++;
            if (calls <= 2) throw new Error("token service down " + calls);
            return mintToken({SECRET!r}, 300, {{sub: "bob", subscribe: ["room"]}});
        }}}});
        gw.on("state", s => states.push(s));
        gw.on("error", e => errors.push(e));
        gw.subscribe("room", e => events.push(e));
    }}"""
    )
    client.wait_connected("websocket")
    errors = client.js("() => window.errors")
    assert [e["code"] for e in errors] == ["token", "token"]
    assert "token service down 1" in errors[0]["message"]
    assert [s["state"] for s in client.states()].count("reconnecting") == 2


def test_bad_arguments_throw(client):
    """Unknown transport, no usable transport, bad channel or callback: TypeError at once."""
    result = client.js(
        """() => {
        const caught = (f) => { try { f(); return null; } catch (e) { return e.name + ": " + e.message; } };
        const gw = new Gateway(location.origin + "/", {transports: ["poll"]});
        const out = {
          transport: caught(() => new Gateway("/", {transports: ["carrier-pigeon"]})),
          none: caught(() => new Gateway("/", {transports: []})),
          channel: caught(() => gw.subscribe("", () => {})),
          callback: caught(() => gw.subscribe("room", null)),
          event: caught(() => gw.on("nope", () => {})),
        };
        gw.close();
        return out;
    }"""
    )
    assert result["transport"] == 'TypeError: unknown transport "carrier-pigeon"'
    assert result["none"].startswith("TypeError: none of the transports")
    assert result["channel"] == "TypeError: channel must be a non-empty string"
    assert result["callback"] == "TypeError: callback must be a function"
    assert result["event"] == 'TypeError: unknown event "nope"'
