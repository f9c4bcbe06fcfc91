"""``GET /gateway.js``, ``GET /gateway.d.ts`` and ``--demo``'s ``/demo/`` (docs/protocol.md
sections 2 and 9): content types, a strong ETag with 304s, caching headers, HEAD, 405s,
the demo only with --demo, and all of it under a prefix in a foreign Site."""

from __future__ import annotations

import hashlib
import pathlib

from twisted.internet import reactor
from twisted.web import resource, server

from gateway import Config, GatewayService
from gateway.testing import http
from gateway.webclient import _etag_matches

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATIC = ROOT / "gateway" / "static"


async def test_gateway_js_is_served_with_type_etag_and_cache_headers(gw):
    """The file's exact bytes, application/javascript; charset=utf-8, a strong ETag from the content, public caching."""
    r = await http("GET", gw.base + "/gateway.js")
    body = (STATIC / "gateway.js").read_bytes()
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["content-type"] == "application/javascript; charset=utf-8"
    assert r.headers["content-length"] == str(len(body))
    assert r.headers["etag"] == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["access-control-allow-origin"] == "*"
    assert b"root.Gateway = factory()" in body  # a classic script defines the global


async def test_if_none_match_is_a_304_without_body(gw):
    """A matching If-None-Match (alone, in a list, weak, or *) is a 304 with the ETag; a stale one gets the file."""
    etag = (await http("GET", gw.base + "/gateway.js")).headers["etag"]
    for header in (etag, f'"stale", {etag}', "W/" + etag, "*"):
        r = await http("GET", gw.base + "/gateway.js", headers={"If-None-Match": header})
        assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", etag), header
    r = await http("GET", gw.base + "/gateway.js", headers={"If-None-Match": '"stale"'})
    assert r.status_code == 200 and len(r.content) > 1000


async def test_head_and_other_methods(gw):
    """HEAD has GET's headers and no body; POST/PUT/DELETE are JSON 405s with Allow: GET, HEAD."""
    get = await http("GET", gw.base + "/gateway.d.ts")
    head = await http("HEAD", gw.base + "/gateway.d.ts")
    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == get.headers[name], name
    assert get.headers["content-type"] == "application/typescript; charset=utf-8"
    assert b"export declare class Gateway" in get.content
    for method in ("POST", "PUT", "DELETE"):
        r = await http(method, gw.base + "/gateway.js", content=b"{}")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "GET, HEAD"
        assert r.json()["error"]["code"] == "bad_request"


async def test_demo_is_a_404_without_the_option(gw):
    """Without --demo, /demo/ and /demo are the JSON 404 of any unknown path."""
    for path in ("/demo/", "/demo", "/demo/demo.js"):
        r = await http("GET", gw.base + path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"


async def test_demo_is_served_with_the_option(gw_factory):
    """With demo=True: the page (HTML loading ../gateway.js), its script and style; /demo redirects relatively; unknown files 404."""
    node = gw_factory(demo=True)
    page = await http("GET", node.base + "/demo/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="../gateway.js"></script>' in page.content
    script = await http("GET", node.base + "/demo/demo.js")
    assert script.headers["content-type"] == "application/javascript; charset=utf-8"
    assert b'new URL("../", location.href)' in script.content
    css = await http("GET", node.base + "/demo/demo.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    moved = await http("GET", node.base + "/demo")
    assert (moved.status_code, moved.headers["location"]) == (301, "demo/")
    missing = await http("GET", node.base + "/demo/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    post = await http("POST", node.base + "/demo/", content=b"x")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_served_under_a_prefix_in_a_foreign_site():
    """Mounted at /realtime: /realtime/gateway.js and /realtime/demo/ are served; the demo's relative URLs resolve there."""
    svc = GatewayService(Config(listen=(), demo=True))
    root = resource.Resource()
    root.putChild(b"realtime", svc.resource)
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    svc.startService()
    try:
        base = f"http://127.0.0.1:{port.getHost().port}/realtime"
        js = await http("GET", base + "/gateway.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("application/javascript")
        page = await http("GET", base + "/demo/")
        assert page.status_code == 200 and b"../gateway.js" in page.content
        moved = await http("GET", base + "/demo")
        assert moved.headers["location"] == "demo/"  # relative: /realtime/demo/
    finally:
        await svc.stopService()
        await port.stopListening()


def test_etag_matching():
    """If-None-Match: exact, listed, weak (W/) and * match; others do not."""
    etag = b'"abc"'
    assert _etag_matches(b'"abc"', etag)
    assert _etag_matches(b'"x", "abc"', etag)
    assert _etag_matches(b'W/"abc"', etag)
    assert _etag_matches(b"*", etag)
    assert not _etag_matches(b'"abcd"', etag)
    assert not _etag_matches(None, etag)
