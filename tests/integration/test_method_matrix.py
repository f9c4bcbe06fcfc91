"""Every method on every endpoint (issue 7 item 5), over raw sockets: a 2xx or 4xx
answer, JSON wherever there is a body, ``Allow`` on every 405, ``Server: gateway``,
and nothing logged as an error or traceback."""

from __future__ import annotations

import json

import pytest

from gateway.testing import aio
from tests.integration.rawhttp import LoggedErrors, exchange, request_bytes

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]

# A GET that really opens a stream or a poll, so the matrix covers success too.
PATHS = {
    "/": "/",
    "/ws": "/ws",
    "/sse": "/sse?channel=matrix",
    "/poll": "/poll?channel=matrix&timeout=0",
    "/publish": "/publish",
    "/healthz": "/healthz",
    "/readyz": "/readyz",
    "/metrics": "/metrics",
    "/presence": "/presence?channel=matrix",
    "/gateway.js": "/gateway.js",
    "/gateway.d.ts": "/gateway.d.ts",
    "/nonexistent": "/nonexistent",
}

# Files rather than JSON documents: their 200s carry their own content type.
FILES = {"/gateway.js": "application/javascript; charset=utf-8", "/gateway.d.ts": "application/typescript; charset=utf-8"}

CORS = {"/sse", "/poll", "/publish", "/presence"}
SERVED = {
    "/ws": {"GET"},
    "/sse": {"GET", "OPTIONS"},
    "/poll": {"GET", "OPTIONS"},
    "/publish": {"POST", "OPTIONS"},
    "/healthz": {"GET", "HEAD"},
    "/readyz": {"GET", "HEAD"},
    "/metrics": {"GET", "HEAD"},
    "/presence": {"GET", "OPTIONS"},
    "/gateway.js": {"GET", "HEAD"},
    "/gateway.d.ts": {"GET", "HEAD"},
}


def expected_status(method: str, endpoint: str) -> int:
    if endpoint in ("/", "/nonexistent"):
        return 404  # the bare root is no endpoint either
    if method not in SERVED[endpoint]:
        return 405
    if endpoint == "/ws":
        return 426  # GET without an upgrade
    if method == "OPTIONS":
        return 204  # CORS preflight
    return 200


BODY = json.dumps({"channel": "matrix", "data": {"n": 1}}).encode()


@pytest.mark.parametrize("method", METHODS)
async def test_every_endpoint_answers_every_method_with_json(gw, method):
    """For one method, each endpoint answers 2xx/4xx as expected, JSON bodies, Allow on 405, no traceback."""
    problems = []
    with LoggedErrors() as errors:
        for endpoint, path in PATHS.items():
            headers = {"Content-Type": "application/json"}
            if method == "OPTIONS":
                headers.update({"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            stream = method == "GET" and endpoint == "/sse"
            r = await aio(exchange(gw.port, request_bytes(method, path, headers, BODY), head_only=stream))
            want = expected_status(method, endpoint)
            if r.status != want:
                problems.append(f"{method} {endpoint}: {r.status} (want {want}) {r.body[:200]!r}")
                continue
            assert 200 <= r.status < 500
            assert r.header("server") == "gateway", (method, endpoint, r.headers)
            if r.status == 405:
                allow = {m.strip() for m in (r.header("allow") or "").split(",") if m.strip()}
                assert allow == SERVED[endpoint] | ({"HEAD"} if "HEAD" in SERVED[endpoint] else set()), (method, endpoint, allow)
                assert method not in allow
            if method == "HEAD" or r.status == 204 or stream:
                assert r.body == b"", (method, endpoint, r.body)
                continue
            if endpoint in FILES and r.status == 200:
                assert r.header("content-type") == FILES[endpoint], (method, endpoint, r.headers)
                continue
            if endpoint == "/metrics" and r.status == 200:
                assert (r.header("content-type") or "").startswith("text/plain")  # Prometheus text exposition
                continue
            assert r.header("content-type") == "application/json", (method, endpoint, r.headers)
            body = json.loads(r.body)
            if r.status in (404, 405, 426):
                assert body["error"]["code"] == ("not_found" if r.status == 404 else "bad_request"), (method, endpoint, body)
    assert not problems, "\n".join(problems)
    assert not errors.events, "\n".join(errors.texts())


async def test_head_publish_is_405_not_500(gw):
    """`HEAD /publish` (once a 500 with a critical traceback) is a 405 with Allow and no body."""
    with LoggedErrors() as errors:
        r = await aio(exchange(gw.port, request_bytes("HEAD", "/publish")))
    assert (r.status, r.header("allow"), r.body) == (405, "OPTIONS, POST", b"")
    assert int(r.header("content-length") or 0) > 0  # the length of the JSON a GET-like answer would carry
    assert not errors.events, "\n".join(errors.texts())


async def test_head_on_a_document_has_the_get_headers_without_body(gw):
    """`HEAD /healthz` is the GET answer's status and headers (Content-Length included), no body."""
    get = await aio(exchange(gw.port, request_bytes("GET", "/healthz")))
    head = await aio(exchange(gw.port, request_bytes("HEAD", "/healthz")))
    assert (head.status, head.body) == (200, b"")
    assert head.header("content-length") == get.header("content-length") == str(len(get.body))
    assert head.header("content-type") == "application/json"


async def test_preflight_on_cors_endpoints_lists_methods(gw):
    """OPTIONS on /sse, /poll and /publish is a CORS preflight (204) naming the methods served."""
    for endpoint, method in (("/sse", "GET"), ("/poll", "GET"), ("/publish", "POST")):
        r = await aio(exchange(gw.port, request_bytes("OPTIONS", endpoint, {"Origin": "https://app.example", "Access-Control-Request-Method": method})))
        assert r.status == 204
        assert r.header("access-control-allow-origin") == "*"
        assert method in r.header("access-control-allow-methods")
