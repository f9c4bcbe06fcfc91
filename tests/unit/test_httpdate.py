"""gateway/transports/_httpdate.py: the per-second Date text, and the twisted.web name it replaces."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import http, resource, server

from gateway.transports import _httpdate


def test_the_current_second_is_formatted_once_and_as_twisted_does():
    now = [1_700_000_000.2]
    formatted: list = []
    real = http.datetimeToString
    cached = _httpdate.CachedHTTPDate(clock=lambda: now[0])
    try:
        http.datetimeToString = lambda t=None: formatted.append(t) or real(t)
        first = cached()
        now[0] += 0.7  # same second
        assert cached() is first
        now[0] += 0.2  # the next one
        second = cached()
    finally:
        http.datetimeToString = real
    assert formatted == [1_700_000_000, 1_700_000_000 + 1]
    assert first == real(1_700_000_000) == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert second == real(1_700_000_001)
    assert cached(86400) == real(86400)  # an explicit time: formatted as asked


def test_responses_carry_the_date_from_the_name_install_replaces():
    """twisted.web's Request.process reads ``datetimeToString`` from twisted.web.server's
    globals: what install() replaces is what every response's Date comes from."""
    assert "datetimeToString" in server.Request.process.__code__.co_names
    before = server.datetimeToString
    try:
        _httpdate.install()
        _httpdate.install()  # idempotent
        assert isinstance(server.datetimeToString, _httpdate.CachedHTTPDate)
        server.datetimeToString._second, server.datetimeToString._text = 10**12, b"marked"
        server.datetimeToString._clock = lambda: 10**12

        class Leaf(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"x"

        channel = server.Site(Leaf()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b"\r\nDate: marked\r\n" in transport.value()
        channel.connectionLost(None)
    finally:
        server.datetimeToString = before
