"""The browser-test harness: real Chromium (the system's, driven by Playwright's sync
API) against a real ``twistd -n gateway`` subprocess.

Fixtures (keep them stable: other test modules build on them):

* ``chromium`` (package scope): a launched Chromium ``Browser``.  A missing Chromium
  FAILS the tests (install it: ``apt-get install -y chromium``); Playwright's own
  browser downloads are never used.
* ``gateway_factory(*args, env=None)``: start ``twistd -n gateway --listen
  tcp:<free port>`` with extra options; returns a started :class:`GatewayProcess`
  (``.base``, ``.port``, ``.publish()``, ``.restart()``, ``.stop()``, ``.kill()``,
  ``.start()``, ``.output()``).  Everything it started is stopped after the test.
  Gateways asked for again with the same options come from :class:`SpareGateways`
  (started during the previous such test, never used before).
* ``gateway``: ``gateway_factory("--demo")``.
* ``relay_factory(gateway)``: a :class:`TcpRelay` (plain TCP, ``.base``, ``.cut()``
  drops every connection through it) to put between the page and the gateway.
* ``fake_page``: a page with gateway.js and ``fakes.js`` (a manual clock, a scripted
  WebSocket and fetch) for deterministic tests of timing logic; no gateway.
* ``client_factory(gateway_or_base, origin=None)`` / ``client``: a :class:`ClientPage`, a
  fresh browser context with a blank test page that loads ``gateway.js`` from the
  gateway and has the helpers of ``harness.js`` (event collection, timers/sockets
  instrumentation, HS256 token minting).

Why the sync API and subprocesses: the gateway under test runs in its own process,
so the test process's reactor (pytest-twisted's, in a greenlet) is not needed, and
Playwright's sync API (greenlets and an asyncio loop of its own) must not run inside
it.  Two things keep them apart:

* pytest-twisted runs every test function inside its reactor greenlet, sync ones
  included; :func:`pytest_pyfunc_call` below calls the tests of this package
  directly instead, so the reactor never runs during them;
* after any pytest-twisted test has run, the reactor's asyncio loop stays registered
  as the thread's running loop (its greenlet is only switched out), which Playwright
  refuses; the ``chromium`` fixture clears that registration while the browser tests
  run and puts it back afterwards (:func:`outside_reactor_loop`).

``test_harness.py::test_browser_tests_share_a_run_with_twisted_tests`` pins both.
The tests in this package are plain functions: none may use the reactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

HERE = pathlib.Path(__file__).resolve().parent
HARNESS_JS = (HERE / "harness.js").read_text()
FAKES_JS = HERE / "fakes.js"
GATEWAY_JS = HERE.parents[1] / "gateway" / "static" / "gateway.js"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# The test page is fulfilled by Playwright, so Chromium knows no address for it and its
# Local Network Access checks would block its requests to 127.0.0.1.
CHROMIUM_ARGS.append("--disable-features=LocalNetworkAccessChecks")

# Seconds for anything a test waits on in the page or from the gateway.
TIMEOUT = 20.0 * float(os.environ.get("GATEWAY_TESTS_TIMEOUT_FACTOR", "1"))


def chromium_path() -> str:
    """The system's Chromium; a missing one fails the test (never a skip)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    if path is None:
        pytest.fail("Chromium not found: install it (apt-get install -y chromium); the browser tests need it")
    return path


@contextlib.contextmanager
def outside_reactor_loop() -> Iterator[None]:
    """Run the body as if no asyncio loop were running in this thread (see the module doc)."""
    saved = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_http: httpx.Client | None = None


def http() -> httpx.Client:
    """The harness's own httpx client, one for the run: every httpx client builds an SSL
    context (some 40 ms of CPU), which ``httpx.get()`` and ``httpx.post()`` would do on
    each call.  It keeps no connection alive: each request has a connection of its own,
    as with those functions."""
    global _http
    if _http is None:
        _http = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
    return _http


def wait_until(predicate: Any, timeout: float = TIMEOUT, what: str = "condition", interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class GatewayProcess:
    """``twistd -n gateway`` on 127.0.0.1:``port`` with ``args``; restartable on the same port.

    Output goes to a file (a pipe nobody reads could fill and stall the gateway).
    """

    def __init__(self, args: tuple[str, ...] = (), port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.args = tuple(args)
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        fd, self._log_path = tempfile.mkstemp(prefix="gateway-", suffix=".log")
        os.close(fd)
        self.starts = 0

    @property
    def base(self) -> str:
        """The gateway's base URL, ending with ``/``."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = TIMEOUT) -> GatewayProcess:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (:meth:`wait_ready` does)."""
        assert not self.running, "already running"
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [twistd, "-n", "--pidfile=", "gateway", "--listen", f"tcp:{self.port}:interface=127.0.0.1", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = TIMEOUT) -> GatewayProcess:
        """Once ``/readyz`` answers 200; an AssertionError if the process exits or takes too long."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if http().get(self.base + "readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd did not become ready:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the node drains: WebSockets get 1001) and wait for the exit."""
        if not self.running:
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: the node dies without a word."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    def output(self) -> str:
        return pathlib.Path(self._log_path).read_text(errors="replace")

    def publish(self, channel: str, data: Any, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        """POST /publish with httpx (not our client); the ack, or an AssertionError with the error."""
        r = http().post(self.base + "publish", json={"channel": channel, "data": data, **extra}, headers=headers or {}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        return dict(r.json())

    def cleanup(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            os.unlink(self._log_path)


class SpareGateways:
    """Gateways started ahead of need, so that a test finds its gateway running.

    Starting ``twistd`` costs about a second of CPU (imports, mostly), which a test that
    asks for a gateway would otherwise wait for.  Once a second test asks for a gateway
    with the same arguments and environment as an earlier one, a spare with those is
    started while that test runs, and the next test asking for the same gets it.  A spare
    is a fresh process that nothing has used; one that failed to start is replaced by a
    start as usual.  Kinds asked for once only (a cluster's ``--redis`` URL of the test's
    own Redis) never get a spare."""

    def __init__(self) -> None:
        self._spares: dict[Any, GatewayProcess] = {}
        self._asked: set[Any] = set()

    def take(self, args: tuple[str, ...], env: dict[str, str] | None) -> GatewayProcess:
        """A started, ready gateway: ``GatewayProcess(args, env=env).start()``, or a spare like it."""
        # (pytest sets PYTEST_CURRENT_TEST for each test; nothing else may differ.)
        environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTEST_CURRENT_TEST"}
        key = (tuple(args), tuple(sorted(environ.items())))
        proc = self._spares.pop(key, None)
        if proc is not None:
            try:
                proc.wait_ready()
            except AssertionError:
                proc.cleanup()
                proc = None
        if proc is None:
            proc = GatewayProcess(args, env=env).start()
        if key in self._asked:
            spare = GatewayProcess(args, env=env)
            spare.spawn()
            self._spares[key] = spare
        self._asked.add(key)
        return proc

    def close(self) -> None:
        for proc in self._spares.values():
            proc.cleanup()
        self._spares.clear()


class TcpRelay:
    """A plain TCP relay on 127.0.0.1:``port`` to ``target_port`` (threads, real sockets).

    :meth:`cut` closes every connection through it at once (the client sees its
    WebSocket, stream or poll drop, as when a network path fails) while the relay keeps
    accepting new ones; while :attr:`refusing` is true, new connections are closed as
    soon as they are accepted (the path is down); :meth:`stall` makes the open
    connections silent without closing them (a dead path that TCP has not noticed).  The page can be served on the relay's origin so that every
    request of the client goes through it.
    """

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.refusing = False
        self._stalled: set[socket.socket] = set()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if source in self._stalled:
                    continue  # swallowed: the path is dead, the sockets are not
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Close every open connection; returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
        return len(pairs)

    def stall(self) -> int:
        """Stop forwarding on every open connection, in both directions, without closing
        them; returns how many.  New connections work normally."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._stalled.update(pair)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()


class ClientPage:
    """A browser page with the test harness, loading ``gateway.js`` from ``script_base``.

    The page itself is served by Playwright (``page.route``) at ``origin``/test.html, so
    it can sit on any origin (the gateway's by default) without the gateway serving a
    test page.
    """

    def __init__(self, context: Any, origin: str, script_base: str) -> None:
        self.context = context
        self.origin = origin.rstrip("/")
        self.script_base = script_base
        self.page = context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.requests: dict[Any, str] = {}  # requests in flight
        self.started: list[str] = []  # every request the page made
        self.page.on("request", lambda r: (self.requests.__setitem__(r, r.url), self.started.append(r.url)))
        self.page.on("requestfinished", lambda r: self.requests.pop(r, None))
        self.page.on("requestfailed", lambda r: self.requests.pop(r, None))
        html = f'<!doctype html><meta charset="utf-8"><title>gateway.js test</title><script src="{script_base}gateway.js"></script>'
        url = self.origin + "/test.html"
        self.page.route(url, lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html))
        self.page.goto(url)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def start(self, url: str | None = None, channels: tuple[str, ...] = ("room",), **options: Any) -> str:
        """``window.gw = new Gateway(url, options)``, subscribed to ``channels`` (events into ``window.events``).
        Options are Gateway options (``transports``, ``_timing``, ...) plus ``jwt={secret, ttl, claims}``
        (a token function minting HS256 tokens in the page) and ``randomValue`` (a fixed ``_random``).
        In the page: ``window.events`` (every delivered event), ``states`` (with ``at``:
        ``performance.now()``), ``errors``, ``refreshes``, ``tokensIssued``."""
        return str(self.js("([u, o, c]) => startClient(u, o, c)", [url or self.script_base, options, list(channels)]))

    def events(self, channel: str | None = None) -> list[dict[str, Any]]:
        evs = self.js("() => window.events")
        return [e for e in evs if channel is None or e["channel"] == channel]

    def states(self) -> list[dict[str, Any]]:
        return list(self.js("() => window.states"))

    def state(self) -> dict[str, Any]:
        return dict(self.js("() => gw.state"))

    def wait(self, expression: str, timeout: float = TIMEOUT) -> None:
        """Wait until the JavaScript ``expression`` is truthy in the page."""
        try:
            self.page.wait_for_function(expression, timeout=timeout * 1000, polling=50)
        except Exception as e:
            raise AssertionError(f"timed out waiting for {expression}: states={self.states()} console={self.console[-10:]}") from e

    def wait_connected(self, transport: str | None = None, timeout: float = TIMEOUT) -> None:
        check = f' && gw.state.transport === {json.dumps(transport)}' if transport else ""
        self.wait(f'window.gw && gw.state.state === "connected"{check}', timeout)

    def wait_events(self, count: int, channel: str | None = None, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        where = f"e.channel === {json.dumps(channel)}" if channel else "true"
        self.wait(f"window.events.filter(e => {where}).length >= {count}", timeout)
        return self.events(channel)

    def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish through the page's client; ``{"ack": ...}`` or ``{"error": code}``."""
        return dict(self.js("([c, d]) => publishFromPage(c, d)", [channel, data]))

    def live_resources(self) -> dict[str, list[str]]:
        return dict(self.js("() => liveResources()"))

    def pending_requests(self) -> list[str]:
        return list(self.requests.values())

    def wait_no_requests(self, timeout: float = TIMEOUT) -> None:
        """Wait until Playwright has seen every request of the page finish or fail."""
        deadline = time.monotonic() + timeout
        while self.requests:
            if time.monotonic() > deadline:
                raise AssertionError(f"requests still in flight: {self.pending_requests()}")
            self.page.wait_for_timeout(50)  # Playwright delivers its events while it is called

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.context.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool:
    """Call this package's (plain) test functions directly, outside pytest-twisted's reactor greenlet."""
    funcargs = pyfuncitem.funcargs
    pyfuncitem.obj(**{name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames})
    return True


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """The system's Chromium, launched once for the browser tests."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with outside_reactor_loop(), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def spare_gateways() -> Iterator[SpareGateways]:
    spares = SpareGateways()
    try:
        yield spares
    finally:
        spares.close()


@pytest.fixture
def gateway_factory(spare_gateways: SpareGateways) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def make(*args: str, env: dict[str, str] | None = None, port: int | None = None, start: bool = True) -> GatewayProcess:
        if port is None and start:
            proc = spare_gateways.take(args, env)
            started.append(proc)
            return proc
        proc = GatewayProcess(args, port=port, env=env)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.cleanup()


@pytest.fixture
def relay_factory() -> Iterator[Any]:
    """``relay_factory(gateway)``: a :class:`TcpRelay` in front of the gateway, closed after the test."""
    relays: list[TcpRelay] = []

    def make(target: GatewayProcess) -> TcpRelay:
        relay = TcpRelay(target.port)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


@pytest.fixture
def gateway(gateway_factory: Any) -> GatewayProcess:
    return gateway_factory("--demo")


@pytest.fixture
def client_factory(chromium: Any) -> Iterator[Any]:
    pages: list[ClientPage] = []

    def make(target: GatewayProcess | TcpRelay | str, origin: str | None = None) -> ClientPage:
        base = target if isinstance(target, str) else target.base
        context = chromium.new_context()
        context.add_init_script(HARNESS_JS)
        page = ClientPage(context, origin or base, base)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()


@pytest.fixture
def fake_page(chromium: Any) -> Iterator[Any]:
    """A blank page with gateway.js and fakes.js (manual clock, scripted WebSocket and
    fetch) for deterministic tests of the client's timing logic; no gateway, no network."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_content('<!doctype html><meta charset="utf-8"><title>fakes</title>')
        page.add_script_tag(path=str(GATEWAY_JS))
        page.add_script_tag(path=str(FAKES_JS))
        yield page
    finally:
        context.close()


@pytest.fixture
def client(client_factory: Any, gateway: GatewayProcess) -> ClientPage:
    return client_factory(gateway)


@pytest.fixture(autouse=True)
def clean_reactor() -> None:
    """Replaces the root conftest's reactor check: these tests never touch the reactor
    (the gateway runs in a subprocess), and an async fixture here would start it."""
