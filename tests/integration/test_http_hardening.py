"""The HTTP surface under hostile or careless clients (issue 7 items 6, 7, 8, 9, 12),
over real sockets: ``GET /ws`` without an upgrade, bodies over the limit, slow
requests, old WebSocket handshakes, and the ``Server`` header."""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
import time

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from twisted.internet import reactor
from twisted.web import resource, server

from gateway import Config, GatewayService
from gateway.resource import GatewayResource
from gateway.testing import DEFAULT_TIMEOUT, WSClient, aio, http, sleep
from gateway.transports._http import (
    DEFAULT_REQUEST_TIMEOUT,
    GatewayHTTPChannel,
    GatewayRequest,
    gateway_site,
)
from gateway.transports.websocket import GatewayWebSocketFactory
from tests.integration import test_tls
from tests.integration.conftest import SSEClient
from tests.integration.rawhttp import (
    LoggedErrors,
    RawResponse,
    chunked,
    exchange,
    open_raw,
    read_response,
    request_bytes,
)

# The TLS node fixture of test_tls.py, available here as ``tls``.
tls = test_tls.tls_node

APP = "https://app.example"
EVIL = "https://evil.example"


def ws_headers(**extra: str) -> dict[str, str]:
    """A valid RFC 6455 upgrade, plus ``extra``."""
    key = base64.b64encode(os.urandom(16)).decode()
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **extra}


@pytest_twisted.async_yield_fixture
async def serve():
    """Listen with a given Site on a free port: ``port = serve(site)``; stopped at teardown."""
    ports = []

    def start(site: server.Site) -> int:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        await port.stopListening()


def short_deadline_site(gw, request_timeout: float = 0.5, **kwargs) -> server.Site:
    return gateway_site(GatewayResource(gw.gateway), max_body_size=gw.gateway.config.max_message_size, request_timeout=request_timeout, **kwargs)


def assert_json_error(r: RawResponse, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.header("content-type") == "application/json", r
    assert r.json()["error"]["code"] == code, r
    assert r.header("server") == "gateway", r


# -- item 6: GET /ws without an upgrade --------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["", "?redirect=https://evil.example/", "?redirect=javascript:alert(1)", "?redirect=x&after=abc", "?after=-1"],
)
async def test_get_ws_without_upgrade_is_426_json_without_redirect(gw, query):
    """`GET /ws` without an upgrade: 426 JSON with Upgrade: websocket; no status page, no redirect, no traceback."""
    with LoggedErrors() as errors:
        r = await aio(exchange(gw.port, request_bytes("GET", "/ws" + query)))
    assert_json_error(r, 426, "bad_request")
    assert r.header("upgrade") == "websocket"
    assert {t.strip().lower() for t in (r.header("connection") or "").split(",")} == {"upgrade", "close"}
    assert r.header("location") is None
    assert b"Autobahn" not in r.body and b"<html" not in r.body.lower()
    assert not errors.events, "\n".join(errors.texts())


async def test_autobahn_resource_alone_serves_no_status_page(gw, serve):
    """The factory itself refuses the status page and its redirect, even mounted without the gateway's checks."""
    root = resource.Resource()
    root.putChild(b"ws", WebSocketResource(GatewayWebSocketFactory(gw.gateway)))
    port = serve(server.Site(root))
    for query in ("", "?redirect=https://evil.example/"):
        r = await aio(exchange(port, request_bytes("GET", "/ws" + query)))
        assert r.status != 200 and r.status != 303, r
        assert r.header("location") is None
        assert b"Autobahn" not in r.body


# -- item 9: only version 13 over HTTP/1.1; origins not bypassable ----------------------


async def test_hybi_8_with_sec_websocket_origin_is_426(gw_factory):
    """`Sec-WebSocket-Version: 8` with `Sec-WebSocket-Origin: evil` (once accepted past --allowed-origin) is 426 naming version 13."""
    gw = gw_factory(allowed_origin=(APP,))
    r = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers(**{"Sec-WebSocket-Version": "8", "Sec-WebSocket-Origin": EVIL}))))
    assert_json_error(r, 426, "bad_request")
    assert r.header("sec-websocket-version") == "13"
    assert r.header("upgrade") == "websocket"


@pytest.mark.parametrize("version", [None, "8", "12", "14", "13, 8", "abc"])
async def test_any_version_but_13_is_426(gw, version):
    """A missing or other Sec-WebSocket-Version is 426 with Sec-WebSocket-Version: 13."""
    headers = ws_headers()
    if version is None:
        del headers["Sec-WebSocket-Version"]
    else:
        headers["Sec-WebSocket-Version"] = version
    r = await aio(exchange(gw.port, request_bytes("GET", "/ws", headers)))
    assert_json_error(r, 426, "bad_request")
    assert r.header("sec-websocket-version") == "13"


async def test_http_1_0_upgrade_is_426(gw):
    """A WebSocket upgrade over HTTP/1.0 (once accepted: Autobahn replays it as 1.1) is 426."""
    r = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers(), version="HTTP/1.0")))
    assert_json_error(r, 426, "bad_request")
    assert r.header("sec-websocket-version") == "13"


async def test_sec_websocket_origin_is_checked_on_version_13_too(gw_factory):
    """A version-13 upgrade whose Sec-WebSocket-Origin is not allowed is refused with 403 JSON."""
    gw = gw_factory(allowed_origin=(APP,))
    r = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers(**{"Sec-WebSocket-Origin": EVIL}))))
    assert_json_error(r, 403, "forbidden")


async def test_unlisted_origin_is_403_json_and_listed_origin_upgrades(gw_factory):
    """Origin not listed: 403 JSON (not a bare status line); listed: 101 with Server: gateway."""
    gw = gw_factory(allowed_origin=(APP,))
    refused = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers(Origin=EVIL))))
    assert_json_error(refused, 403, "forbidden")
    ws = await WSClient.connect(gw.ws_url, origin=APP)
    subscribed = await ws.request({"type": "subscribe", "channel": "c", "id": 1})
    assert subscribed["type"] == "subscribed"
    await ws.close()


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("no key", {"Sec-WebSocket-Key": None}),
        ("short key", {"Sec-WebSocket-Key": "abc"}),
        ("key not base64", {"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}),
        ("origin without host", {"Origin": "https://"}),
        ("origin with a bad port", {"Origin": "https://a.example:99999"}),
        ("host with a bad port", {"Host": "a.example:x"}),
        ("repeated subprotocol", {"Sec-WebSocket-Protocol": "a, a"}),
    ],
)
async def test_malformed_handshake_is_400_json(gw, name, headers):
    """Handshakes Autobahn would refuse with a bare status line get a 400 JSON answer first."""
    all_headers = ws_headers()
    for k, v in headers.items():
        if v is None:
            del all_headers[k]
        else:
            all_headers[k] = v
    data = request_bytes("GET", "/ws", all_headers)
    if "Host" in headers:
        data = data.replace(b"Host: 127.0.0.1\r\n", b"", 1)
    r = await aio(exchange(gw.port, data))
    assert_json_error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "offer",
    ["permessage-deflate; client_max_window_bits=abc", "permessage-deflate; server_max_window_bits", "permessage-deflate; permessage-deflate"],
)
async def test_malformed_extension_offer_is_declined_not_a_bare_400(gw, offer):
    """An extension offer Autobahn cannot parse (once a bare 400 without Server header) is declined: 101, no extension."""
    r = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers(**{"Sec-WebSocket-Extensions": offer})), head_only=True))
    assert r.status == 101, r
    assert r.header("sec-websocket-extensions") is None
    assert r.header("server") == "gateway"


async def test_draining_node_refuses_upgrades_with_503_json(gw):
    """While draining, an upgrade is a 503 JSON `unavailable`."""
    gw.gateway.draining = True
    try:
        r = await aio(exchange(gw.port, request_bytes("GET", "/ws", ws_headers())))
    finally:
        gw.gateway.draining = False
    assert_json_error(r, 503, "unavailable")


# -- item 7: bodies refused before they are read, never spooled --------------------------


async def test_declared_huge_body_is_refused_before_it_is_sent(gw_factory):
    """`Content-Length: 1000000000` with a few bytes sent gets a prompt 413 JSON, then the connection closes."""
    gw = gw_factory(max_message_size=1024)
    head = request_bytes("POST", "/publish", {"Content-Type": "application/json", "Content-Length": "1000000000"})
    start = time.monotonic()
    r = await aio(exchange(gw.port, head + b'{"channel":'))
    assert_json_error(r, 413, "too_large")
    assert r.header("connection") == "close"
    assert time.monotonic() - start < DEFAULT_TIMEOUT


async def test_expect_100_continue_over_the_limit_gets_only_the_413(gw_factory):
    """A client waiting for `100 Continue` with too large a body gets the 413 alone."""
    gw = gw_factory(max_message_size=1024)
    r = await aio(exchange(gw.port, request_bytes("POST", "/publish", {"Content-Length": "5000", "Expect": "100-continue"})))
    assert_json_error(r, 413, "too_large")
    assert b"100 Continue" not in r.body


async def test_chunked_body_is_cut_off_at_the_limit(gw_factory):
    """A chunked body gets its 413 as soon as it passes the limit, before the client has finished sending."""
    gw = gw_factory(max_message_size=1024)
    body = b'{"channel":"c","data":"' + b"x" * 4000 + b'"}'
    head = request_bytes("POST", "/publish", {"Transfer-Encoding": "chunked"})
    r = await aio(exchange(gw.port, head + chunked(body[:2000], last=False)))
    assert_json_error(r, 413, "too_large")


async def test_client_still_sending_after_the_413_can_read_it(gw_factory):
    """The refused client keeps writing; the server discards, the client still reads the whole 413."""
    gw = gw_factory(max_message_size=1024)

    async def go() -> RawResponse:
        reader, writer = await open_raw(gw.port)
        try:
            writer.write(request_bytes("POST", "/publish", {"Content-Length": "10000000"}))
            for _ in range(20):
                writer.write(b"x" * 16384)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    r = await aio(go())
    assert_json_error(r, 413, "too_large")


@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
async def test_publish_within_the_limit_still_works(gw_factory, encoding):
    """A body of exactly --max-message-size bytes is accepted, by Content-Length or chunked."""
    gw = gw_factory(max_message_size=1024)
    body = b'{"channel":"c","data":"x"}'
    body = body[:-1] + b" " * (1024 - len(body)) + b"}"
    assert len(body) == 1024
    if encoding == "chunked":
        data = request_bytes("POST", "/publish", {"Transfer-Encoding": "chunked"}) + chunked(body)
    else:
        data = request_bytes("POST", "/publish", {}, body)
    r = await aio(exchange(gw.port, data))
    assert r.status == 200, r
    assert r.json()["seq"] == 1


def _temp_files() -> set[str]:
    """Files in the temp directory this process holds open (TemporaryFile shows as '(deleted)')."""
    tmp = os.path.realpath(tempfile.gettempdir())
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tmp + "/"):
            found.add(target)
    return found


async def test_large_accepted_body_is_not_spooled_to_a_temp_file(gw_factory):
    """A 500 KB body under a 1 MB limit is held in memory: no temp file appears while it arrives
    (twisted.web spools bodies over 100 KB to one)."""
    gw = gw_factory(max_message_size=1_000_000)
    before = _temp_files()

    async def go() -> tuple[set[str], RawResponse]:
        reader, writer = await open_raw(gw.port)
        try:
            body = b'{"channel":"c","data":"' + b"x" * 499_000 + b'"}'
            writer.write(request_bytes("POST", "/publish", {"Content-Length": str(len(body))}))
            writer.write(body[:250_000])
            await writer.drain()
            # Two full round trips on other connections: the reactor has read the head
            # (and gotLength has chosen the body's buffer) by the time they are answered.
            for _ in range(2):
                await exchange(gw.port, request_bytes("GET", "/healthz"))
            during = _temp_files()
            writer.write(body[250_000:])
            await writer.drain()
            return during, await read_response(reader)
        finally:
            writer.close()

    during, r = await aio(go())
    assert during - before == set()
    assert r.status == 200, r


# -- item 8: slow requests ----------------------------------------------------------------


async def _feed_slowly(port: int, data: bytes, every: float) -> tuple[RawResponse, float]:
    """Send ``data`` one byte per ``every`` seconds until an answer comes; return it and when."""
    reader, writer = await open_raw(port)
    start = time.monotonic()
    answer = asyncio.ensure_future(read_response(reader, timeout=DEFAULT_TIMEOUT * 2))
    try:
        for i in range(len(data)):
            if answer.done():
                break
            writer.write(data[i : i + 1])
            await asyncio.wait([answer], timeout=every)
        return await answer, time.monotonic() - start
    finally:
        answer.cancel()
        writer.close()


async def test_slow_loris_head_is_cut_at_the_deadline(gw, serve):
    """A request head fed one byte at a time is answered 408 JSON and closed at the deadline,
    although every byte restarts twisted.web's idle timeout."""
    port = serve(short_deadline_site(gw, request_timeout=0.5, timeout=0.3))
    r, elapsed = await aio(_feed_slowly(port, request_bytes("GET", "/healthz"), every=0.1))
    assert_json_error(r, 408, "bad_request")
    assert r.header("connection") == "close"
    assert 0.45 <= elapsed < 0.5 + DEFAULT_TIMEOUT


async def test_slow_body_is_cut_at_the_deadline(gw, serve):
    """A body that trickles in is cut off the same way: the deadline covers head and body."""
    port = serve(short_deadline_site(gw, request_timeout=0.5))
    body = b'{"channel":"c","data":"' + b"x" * 100 + b'"}'
    head = request_bytes("POST", "/publish", {"Content-Length": str(len(body))})

    r, elapsed = await aio(_feed_slowly(port, head + body, every=0.05))
    assert_json_error(r, 408, "bad_request")
    assert elapsed < 0.5 + DEFAULT_TIMEOUT


async def test_deadline_spares_streams_held_polls_and_websockets(gw, serve):
    """Once a request is in, the deadline is over: an SSE stream, a held poll and a WebSocket outlive it."""
    port = serve(short_deadline_site(gw, request_timeout=0.3))
    base = f"http://127.0.0.1:{port}"
    stream = await aio(SSEClient.open(base + "/sse?channel=long"))
    ws = await WSClient.connect(f"ws://127.0.0.1:{port}/ws")
    try:
        await ws.request({"type": "subscribe", "channel": "long", "id": 1})
        held = http("GET", base + "/poll?channel=long&timeout=3")
        await sleep(1.0)  # over three deadlines
        pub = await gw.gateway.publish("long", "still here")
        assert (await aio(stream.event()))["data"]["seq"] == pub.seq
        assert (await ws.recv())["seq"] == pub.seq
        assert (await held).json()["messages"][0]["data"] == "still here"
    finally:
        await aio(stream.close())
        await ws.close()


async def test_deadline_does_not_cut_an_idle_keep_alive_connection(gw, serve):
    """Between requests, a keep-alive connection is governed by the idle timeout, not the deadline."""
    port = serve(short_deadline_site(gw, request_timeout=0.3))
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    async def go() -> list[int]:
        reader, writer = await open_raw(port)
        statuses = []
        try:
            for _ in range(2):
                writer.write(one)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEFAULT_TIMEOUT)
                r = RawResponse(head[:-4], b"")
                await reader.readexactly(int(r.header("content-length") or 0))
                statuses.append(r.status)
                await asyncio.sleep(0.8)  # idle for over two deadlines
        finally:
            writer.close()
        return statuses

    assert await aio(go()) == [200, 200]


async def test_idle_timeout_still_closes_idle_connections(gw, serve):
    """The deadline keeps no idle connection open past the Site's idle timeout."""
    port = serve(short_deadline_site(gw, request_timeout=30, timeout=0.3))

    async def go() -> bytes:
        reader, writer = await open_raw(port)
        try:
            return await asyncio.wait_for(reader.read(), DEFAULT_TIMEOUT)
        finally:
            writer.close()

    assert await aio(go()) == b""


def test_service_site_has_the_defences():
    """GatewayService serves with the gateway's channel and request: 30 s deadline, bodies bounded by --max-message-size."""
    svc = GatewayService(Config(listen=(), max_message_size=4096))
    assert svc.site.protocol is GatewayHTTPChannel
    assert svc.site.requestFactory is GatewayRequest
    assert (svc.site.request_timeout, svc.site.max_body_size) == (DEFAULT_REQUEST_TIMEOUT, 4096) == (30.0, 4096)


# -- item 12: Server: gateway on every answer ----------------------------------------------


async def test_every_kind_of_answer_says_server_gateway(gw_factory, serve):
    """twisted.web answers, the 101 upgrade, the 426, 405, 404, early 413, malformed-request 400
    and the 408 all carry `Server: gateway` and no version."""
    gw = gw_factory(max_message_size=1024)
    answers: dict[str, RawResponse] = {}
    p = gw.port
    answers["200 json"] = await aio(exchange(p, request_bytes("GET", "/healthz")))
    answers["200 metrics"] = await aio(exchange(p, request_bytes("GET", "/metrics")))
    answers["200 sse"] = await aio(exchange(p, request_bytes("GET", "/sse?channel=a"), head_only=True))
    answers["200 publish"] = await aio(exchange(p, request_bytes("POST", "/publish", {}, b'{"channel":"a","data":1}')))
    answers["204 preflight"] = await aio(exchange(p, request_bytes("OPTIONS", "/publish", {"Origin": APP})))
    answers["101 upgrade"] = await aio(exchange(p, request_bytes("GET", "/ws", ws_headers()), head_only=True))
    answers["426"] = await aio(exchange(p, request_bytes("GET", "/ws")))
    answers["405"] = await aio(exchange(p, request_bytes("DELETE", "/healthz")))
    answers["404"] = await aio(exchange(p, request_bytes("GET", "/nope")))
    answers["413"] = await aio(exchange(p, request_bytes("POST", "/publish", {"Content-Length": "99999"})))
    answers["400 request line"] = await aio(exchange(p, b"GET /\r\n\r\n"))
    answers["400 line too long"] = await aio(exchange(p, b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n\r\n"))
    slow = serve(short_deadline_site(gw, request_timeout=0.2))
    answers["408"], _ = await aio(_feed_slowly(slow, request_bytes("GET", "/healthz"), every=0.05))
    assert answers["101 upgrade"].status == 101
    for kind, r in answers.items():
        assert (kind, r.headers.get("server")) == (kind, ["gateway"])


async def test_malformed_request_gets_400_json(gw):
    """twisted.web's own refusals (bad request line, bad header, bad chunk, bad Content-Length) are 400 JSON.

    Pins the override of ``HTTPChannel._respondToBadRequestAndDisconnect``.
    """
    cases = [
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for data in cases:
        r = await aio(exchange(gw.port, data))
        assert_json_error(r, 400, "bad_request")


# -- a foreign Site: the endpoint-level fixes hold -----------------------------------------


async def test_endpoint_fixes_hold_in_a_foreign_site(serve):
    """Mounted under /realtime of a plain server.Site: HEAD is no 500, /ws is 426 / 405 / version-checked,
    a declared oversize body is 413, the bare root is a 404 for every method."""
    svc = GatewayService(Config(listen=(), max_message_size=1024))
    svc.startService()
    try:
        root = resource.Resource()
        root.putChild(b"realtime", svc.resource)
        port = serve(server.Site(root))
        with LoggedErrors() as errors:
            head = await aio(exchange(port, request_bytes("HEAD", "/realtime/publish")))
            plain = await aio(exchange(port, request_bytes("GET", "/realtime/ws")))
            post_ws = await aio(exchange(port, request_bytes("POST", "/realtime/ws")))
            v8 = await aio(exchange(port, request_bytes("GET", "/realtime/ws", ws_headers(**{"Sec-WebSocket-Version": "8"}))))
            big = await aio(exchange(port, request_bytes("POST", "/realtime/publish", {"Content-Length": "2000"}, b"x" * 2000)))
            root_get = await aio(exchange(port, request_bytes("GET", "/realtime")))
            root_post = await aio(exchange(port, request_bytes("POST", "/realtime")))
            slash_post = await aio(exchange(port, request_bytes("POST", "/realtime/")))
        assert (head.status, head.header("allow")) == (405, "OPTIONS, POST")
        assert plain.status == 426 and plain.json()["error"]["code"] == "bad_request"
        assert (post_ws.status, post_ws.header("allow")) == (405, "GET")
        assert (v8.status, v8.header("sec-websocket-version")) == (426, "13")
        assert big.status == 413 and big.json()["error"]["code"] == "too_large"
        assert [r.status for r in (root_get, root_post, slash_post)] == [404, 404, 404]
        assert root_post.json()["error"]["code"] == "not_found"
        assert not errors.events, "\n".join(errors.texts())
    finally:
        await svc.stopService()


# -- TLS: refusals written through the TLS layer ------------------------------------------


async def test_refusals_reach_the_client_over_tls(tls):
    """Over an ssl: listener the early 413 and the 426 arrive whole (no half-close under TLS)."""
    base, _, context = tls
    port = int(base.rsplit(":", 1)[1])

    async def ask(data: bytes) -> RawResponse:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    big = await aio(ask(request_bytes("POST", "/publish", {"Content-Length": "1000000000"}) + b"{"))
    assert_json_error(big, 413, "too_large")
    plain = await aio(ask(request_bytes("GET", "/ws")))
    assert_json_error(plain, 426, "bad_request")


# -- bodies are never parsed as forms ------------------------------------------------------


class _ArgsEcho(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        import json

        return json.dumps(sorted(k.decode() for k in request.args)).encode()


async def test_form_bodies_are_not_parsed_into_request_args(serve):
    """No endpoint takes a form: a url-encoded or multipart body's fields never become
    request arguments (where ``token=`` is read from), only the query's do."""
    port = serve(gateway_site(_ArgsEcho(), max_body_size=4096))
    form = request_bytes("POST", "/p?q=1", {"Content-Type": "application/x-www-form-urlencoded"}, b"token=x&channel=c")
    r = await aio(exchange(port, form))
    assert (r.status, r.json()) == (200, ["q"])
    multipart = b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\nx\r\n--b--\r\n'
    r = await aio(exchange(port, request_bytes("POST", "/p", {"Content-Type": "multipart/form-data; boundary=b"}, multipart)))
    assert (r.status, r.json()) == (200, [])
