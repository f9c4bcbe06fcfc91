"""The demo chat (``--demo``) in Chromium: typed and sent with the keyboard, the message
shows up; transport and state are visible; ``?transports=`` forces one; who is online
comes from the gateway's presence (anonymous visitors are counted). The screenshot in the
README (docs/demo.png) is taken here: written into docs/ when it is missing or when
GATEWAY_UPDATE_SCREENSHOTS=1 (so that a test run does not change the checkout)."""

from __future__ import annotations

import os
import pathlib
import time

import pytest

from tests.browser.conftest import TIMEOUT

ROOT = pathlib.Path(__file__).resolve().parents[2]


def open_demo(chromium, gateway, query="", clock=False):
    context = chromium.new_context(viewport={"width": 900, "height": 620})
    if clock:
        # Playwright's clock: time flows as usual, and a test may skip ahead (see presence_shows).
        context.clock.install()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(gateway.base + "demo/" + query)
    return context, page, errors


def presence_shows(page, text):
    """Wait until the page's who-is-online line reads ``text``.  The page asks again every
    5 s, and an answer sent right after its own subscribe may not count it yet (the node
    batches presence changes): skip ahead to each next ask instead of waiting for it."""
    line = page.locator("#anonymous")
    deadline = time.monotonic() + TIMEOUT
    while line.inner_text() != text:
        assert time.monotonic() < deadline, f"{line.inner_text()!r}, not {text!r}"
        if line.inner_text():  # answered: the next ask is due in 5 s
            page.clock.fast_forward(5000)
        page.wait_for_timeout(50)


def test_demo_chat_sends_and_shows_messages(chromium, gateway, tmp_path):
    """Name and message typed, Enter sends; the message appears with its seq; another visitor's message appears too; status says connected over websocket."""
    context, page, errors = open_demo(chromium, gateway, clock=True)
    try:
        page.get_by_text("connected", exact=True).wait_for()
        assert page.locator("#transport").inner_text() == "websocket"
        gateway.publish("demo:lobby", {"name": "Ada", "text": "Hello from the backend"})
        page.get_by_label("Your name").fill("Grace")
        page.get_by_label("Message", exact=True).fill("Hi Ada, this came through gateway.js")
        page.get_by_label("Message", exact=True).press("Enter")
        page.locator("#messages li").nth(1).wait_for()
        texts = page.locator("#messages li").all_inner_texts()
        assert "Ada:" in texts[0] and "Hello from the backend" in texts[0] and "#1" in texts[0]
        assert "Grace:" in texts[1] and "Hi Ada, this came through gateway.js" in texts[1] and "#2" in texts[1]
        assert page.get_by_label("Message", exact=True).input_value() == ""  # cleared, focus kept for the next one
        assert page.evaluate("document.activeElement.id") == "text"
        # Who is online: this page is an anonymous connection; a second visitor is counted.
        presence_shows(page, "1 anonymous connection")
        other = context.new_page()
        other.goto(gateway.base + "demo/")
        presence_shows(other, "2 anonymous connections")
        other.close()
        gateway.publish("demo:lobby", {"name": "Ada", "text": "Try ?transports=poll to watch the fallback"})
        page.locator("#messages li").nth(2).wait_for()
        shot = page.screenshot(path=str(tmp_path / "demo.png"))
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        target = ROOT / "docs" / "demo.png"
        if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1" or not target.exists():
            target.write_bytes(shot)
        assert errors == []
    finally:
        context.close()


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_demo_forced_transport(chromium, gateway, transport):
    """?transports=sse or poll: the status shows it, and messages still flow both ways."""
    context, page, errors = open_demo(chromium, gateway, f"?transports={transport}")
    try:
        page.get_by_text("connected", exact=True).wait_for()
        assert page.locator("#transport").inner_text() == transport
        page.get_by_label("Your name").fill("Lin")
        page.get_by_label("Message", exact=True).fill(f"sent with {transport} forced")
        page.get_by_role("button", name="Send").click()
        page.locator("#messages li", has_text=f"sent with {transport} forced").wait_for()
        assert errors == []
    finally:
        context.close()


def test_demo_state_shows_reconnecting_and_recovers(chromium, gateway):
    """The node restarts: the page shows reconnecting with a delay, then connected again, and a notice for the reset."""
    context, page, errors = open_demo(chromium, gateway)
    try:
        page.get_by_text("connected", exact=True).wait_for()
        gateway.publish("demo:lobby", {"name": "Ada", "text": "before"})
        page.get_by_text("before").wait_for()
        gateway.stop()
        page.get_by_text("reconnecting", exact=True).wait_for()
        assert "next try in" in page.locator("#delay").inner_text() or page.locator("#state").inner_text() != "reconnecting"
        gateway.start()
        gateway.publish("demo:lobby", {"name": "Ada", "text": "after"})
        page.get_by_text("after").wait_for(timeout=40000)
        page.get_by_text("connected", exact=True).wait_for()
        page.get_by_text("some earlier messages are no longer available").wait_for()
        assert errors == []
    finally:
        context.close()
