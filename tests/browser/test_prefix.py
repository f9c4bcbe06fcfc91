"""gateway.js and the demo when the gateway is mounted under /realtime of another
twisted.web site (run with `twistd -ny app.tac`): the page finds ../gateway.js and
the gateway's endpoints relative to itself, on every transport."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.browser.conftest import TIMEOUT, free_port, http

APP = """
from twisted.application import strports
from twisted.application.service import Application
from twisted.web import resource, server, static

from gateway import Config, GatewayService

application = Application("host-app")
realtime = GatewayService(Config(listen=(), demo=True))
realtime.setServiceParent(application)
root = resource.Resource()
root.putChild(b"", static.Data(b"the host application", "text/plain"))
root.putChild(b"realtime", realtime.resource)
strports.service("tcp:{port}:interface=127.0.0.1", server.Site(root)).setServiceParent(application)
"""


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    """The host application, one for the module's tests: each sends and awaits a text of its own."""
    tmp_path = tmp_path_factory.mktemp("mounted")
    port = free_port()
    tac = tmp_path / "app.tac"
    tac.write_text(APP.format(port=port))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = open(tmp_path / "app.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "-y", str(tac)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}/realtime/"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                if http().get(base + "readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the host application did not start"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_demo_under_a_prefix(chromium, mounted, transport):
    """/realtime/demo/?transports=X: connected over X, a message sent from the page comes back through /realtime/."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        urls = []
        page.on("request", lambda r: urls.append(r.url))
        page.goto(mounted + f"demo/?transports={transport}")
        page.get_by_text("connected", exact=True).wait_for()
        assert page.locator("#transport").inner_text() == transport
        assert page.evaluate("gw.url") == mounted
        page.get_by_label("Your name").fill("Prefix")
        page.get_by_label("Message", exact=True).fill(f"mounted, {transport}")
        page.get_by_label("Message", exact=True).press("Enter")
        page.locator("#messages li", has_text=f"mounted, {transport}").wait_for()
        assert all(u.startswith(mounted) for u in urls), urls
        assert mounted + "gateway.js" in urls
    finally:
        context.close()
