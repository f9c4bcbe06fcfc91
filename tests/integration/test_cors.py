"""CORS on /sse, /poll and /publish (docs/protocol.md section 8), over real sockets."""

from __future__ import annotations

from gateway.testing import aio, http

APP = "https://app.example"
EVIL = "https://evil.example"


def cors_headers(response):
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


async def _requests(gw, sse, origin):
    """One response from each endpoint, sent with ``origin`` (None: no Origin header)."""
    headers = {} if origin is None else {"Origin": origin}
    stream = await sse(gw.base + "/sse?channel=a", headers)
    poll = await http("GET", gw.base + "/poll?channel=a&timeout=0", headers=headers)
    publish = await http("POST", gw.base + "/publish", json={"channel": "a", "data": 1}, headers=headers)
    await aio(stream.close())
    return {"sse": (stream.status, stream.headers), "poll": (poll.status_code, poll.headers), "publish": (publish.status_code, publish.headers)}


async def test_every_origin_allowed_without_a_list(gw, sse):
    """With no --allowed-origin, every endpoint answers Access-Control-Allow-Origin: *."""
    for endpoint, (status, headers) in (await _requests(gw, sse, EVIL)).items():
        assert (endpoint, status) == (endpoint, 200)
        assert (endpoint, headers.get("access-control-allow-origin")) == (endpoint, "*")


async def test_listed_origin_is_echoed_with_vary(gw_factory, sse):
    """A listed origin is echoed back with Vary: Origin (and may send credentials)."""
    gw = gw_factory(allowed_origin=(APP,))
    for endpoint, (status, headers) in (await _requests(gw, sse, APP)).items():
        assert (endpoint, status) == (endpoint, 200)
        assert (endpoint, headers.get("access-control-allow-origin")) == (endpoint, APP)
        assert (endpoint, headers.get("access-control-allow-credentials")) == (endpoint, "true")
        assert "Origin" in headers.get("vary", "")


async def test_unlisted_origin_gets_no_cors_headers(gw_factory, sse):
    """An unlisted origin gets no CORS headers, so the browser hides the answer; reads are
    served, the publish (a write) is refused with 403."""
    gw = gw_factory(allowed_origin=(APP,))
    for endpoint, (status, headers) in (await _requests(gw, sse, EVIL)).items():
        assert (endpoint, status) == (endpoint, 403 if endpoint == "publish" else 200)
        assert (endpoint, [k for k in headers if k.lower().startswith("access-control-")]) == (endpoint, [])


async def test_no_origin_header_is_not_refused(gw_factory, sse):
    """A request without Origin (not a browser) is served normally when a list is configured."""
    gw = gw_factory(allowed_origin=(APP,))
    for endpoint, (status, headers) in (await _requests(gw, sse, None)).items():
        assert (endpoint, status) == (endpoint, 200)
        assert "access-control-allow-origin" not in headers


async def test_preflight_for_allowed_origin(gw_factory):
    """OPTIONS from a listed origin: 204 with the methods and headers each endpoint takes."""
    gw = gw_factory(allowed_origin=(APP,))
    expected_methods = {"/sse": "GET, OPTIONS", "/poll": "GET, OPTIONS", "/publish": "POST, OPTIONS"}
    for path, methods in expected_methods.items():
        r = await http(
            "OPTIONS",
            gw.base + path,
            headers={"Origin": APP, "Access-Control-Request-Method": methods.split(",")[0], "Access-Control-Request-Headers": "content-type"},
        )
        assert (path, r.status_code) == (path, 204)
        assert r.headers["access-control-allow-origin"] == APP
        assert r.headers["access-control-allow-methods"] == methods
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        assert "last-event-id" in r.headers["access-control-allow-headers"].lower()
        assert int(r.headers["access-control-max-age"]) > 0


async def test_preflight_from_any_origin_without_a_list(gw):
    """With no list, a preflight from any origin is allowed with `*`."""
    r = await http("OPTIONS", gw.base + "/publish", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"


async def test_preflight_for_unlisted_origin_is_403_without_cors_headers(gw_factory):
    """OPTIONS from an unlisted origin: 403 JSON and no CORS headers."""
    gw = gw_factory(allowed_origin=(APP,))
    for path in ("/sse", "/poll", "/publish"):
        r = await http("OPTIONS", gw.base + path, headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"})
        assert (path, r.status_code) == (path, 403)
        assert r.json()["error"]["code"] == "forbidden"
        assert cors_headers(r) == {}


async def test_errors_carry_cors_headers_for_allowed_origins(gw_factory):
    """A 400 from an allowed origin still carries CORS headers, so the page can read the error."""
    gw = gw_factory(allowed_origin=(APP,))
    for method, path in (("GET", "/sse"), ("GET", "/poll?channel=a&timeout=-1"), ("POST", "/publish")):
        r = await http(method, gw.base + path, headers={"Origin": APP})
        assert (path, r.status_code) == (path, 400)
        assert r.headers["access-control-allow-origin"] == APP


async def test_publish_from_unlisted_browser_origin_is_refused(gw_factory):
    """With --allowed-origin set, a POST /publish from another browser origin is a 403 and publishes nothing."""
    gw = gw_factory(allowed_origin=("https://app.example",))
    refused = await http(
        "POST",
        gw.base + "/publish",
        content=b'{"channel":"c","data":1}',
        headers={"origin": "https://evil.example", "content-type": "text/plain"},
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert "access-control-allow-origin" not in refused.headers
    ok = await http("POST", gw.base + "/publish", json={"channel": "c", "data": 1}, headers={"origin": "https://app.example"})
    assert (ok.status_code, ok.json()["seq"]) == (200, 1)
    backend = await http("POST", gw.base + "/publish", json={"channel": "c", "data": 2})
    assert (backend.status_code, backend.json()["seq"]) == (200, 2)
