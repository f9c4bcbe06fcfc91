"""HTTP for :class:`Client`: the ``GET /sse`` stream, ``POST /publish`` and the
``GET /poll?timeout=0`` position query, on twisted.web's ``Agent``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from gateway._bytesbody import BytesBody
from gateway.core.client import SSEParser
from gateway.core.cursor import decode_cursor
from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.client._client import Client, _Pending

__all__ = ["HTTPClient", "SSEConnection"]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


def _error_from(status: int, body: bytes) -> Any:
    """A :class:`ClientError` from an HTTP error answer (its JSON body, or the status)."""
    from gateway.client._client import ClientError

    code, message = _STATUS_CODES.get(status, "internal" if status >= 500 else "bad_request"), f"HTTP {status}"
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error.get("message", message))
    except (ValueError, KeyError, TypeError):
        pass
    return ClientError(code, message)


class _Collect(protocol.Protocol):
    """Reads a whole response body (cancelling the Deferred stops the transfer)."""

    def __init__(self, d: defer.Deferred[bytes]) -> None:
        self.d = d
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.d.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.d.callback(b"".join(self.parts))
        else:
            self.d.errback(reason)


def read_body(response: Any) -> defer.Deferred[bytes]:
    """The body of ``response``; cancelling stops the transfer (``stopProducing``).
    (twisted.web.client.readBody warns about the transport Agent gives body protocols.)"""
    collector: _Collect

    def cancel(d: defer.Deferred[bytes]) -> None:
        transport: Any = collector.transport
        if transport is not None:
            transport.stopProducing()

    d: defer.Deferred[bytes] = defer.Deferred(cancel)
    collector = _Collect(d)
    response.deliverBody(collector)
    return d


class HTTPClient:
    """Requests of one :class:`Client` (no kept-alive connections, so that closing
    leaves nothing behind): publishes with retry, and the position query."""

    _log = Logger()

    def __init__(self, client: Client) -> None:
        self.client = client
        self.pool = HTTPConnectionPool(client.reactor, persistent=False)
        self.agent = Agent(client.reactor, connectTimeout=client.connect_timeout, pool=self.pool)
        self._inflight: set[defer.Deferred[Any]] = set()
        self._posting: set[str] = set()
        self._retries: dict[str, Any] = {}

    def url(self, path: str, query: list[tuple[str, str]] | None = None) -> bytes:
        url = self.client.url + path + ("?" + urlencode(query) if query else "")
        return url.encode("ascii")

    def headers(self, token: str | None, **extra: str) -> Headers:
        headers = Headers()
        for name, value in self.client.headers.items():
            headers.addRawHeader(name, value)
        if token is not None:
            headers.addRawHeader("Authorization", f"Bearer {token}")
        for name, value in extra.items():
            headers.addRawHeader(name.replace("_", "-"), value)
        return headers

    def track(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self._inflight.add(d)

        def done(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        return d.addBoth(done)

    def request(self, method: bytes, url: bytes, headers: Headers, body: bytes | None = None) -> defer.Deferred[Any]:
        """Fires with (status, body bytes)."""
        d = self.agent.request(method, url, headers, BytesBody(body) if body is not None else None)

        def read(response: Any) -> Any:
            return read_body(response).addCallback(lambda data: (response.code, data))

        return self.track(d.addCallback(read))

    def latest(self, channel: str, token: str | None) -> defer.Deferred[str]:
        """The cursor of an immediate poll: the channel's position "now"."""
        url = self.url("poll", [("channel", channel), ("timeout", "0")])

        def answer(result: tuple[int, bytes]) -> str:
            status, body = result
            if status != 200:
                raise _error_from(status, body)
            return str(json.loads(body)["cursor"])

        return self.request(b"GET", url, self.headers(token)).addCallback(answer)

    def publish(self, pending: _Pending, token: str | None, attempt: int = 0) -> None:
        """POST the publish; 200 acks it, a 4xx fails it, anything else (no answer,
        5xx, 429) tries again after a jittered delay until the publish times out."""
        key = pending.key
        if key in self._posting or key in self._retries or key not in self.client._pending:
            return
        self._posting.add(key)
        body = json.dumps(pending.command(), ensure_ascii=False).encode("utf-8")
        d = self.request(b"POST", self.url("publish"), self.headers(token, Content_Type="application/json"), body)

        def answer(result: tuple[int, bytes]) -> None:
            status, data = result
            if status == 200:
                self.client.conn_acked(key, json.loads(data))
            elif 400 <= status < 500 and status != 429:
                self.client.conn_publish_failed(key, _error_from(status, data))
            else:
                raise _error_from(status, data)

        def retry(failure: Any) -> None:
            if failure.check(defer.CancelledError) or key not in self.client._pending:
                return
            delay = self.client.random() * min(5.0, 0.5 * 2**attempt)
            self._log.info("publish over HTTP failed ({e}); again in {delay:.2f} s", e=failure.getErrorMessage(), delay=delay)
            self._retries[key] = self.client.reactor.callLater(delay, self._again, pending, token, attempt + 1)

        def finished(result: Any) -> Any:
            self._posting.discard(key)
            return result

        d.addBoth(finished).addCallback(answer).addErrback(retry)

    def _again(self, pending: _Pending, token: str | None, attempt: int) -> None:
        self._retries.pop(pending.key, None)
        self.publish(pending, self.client._token if self.client._token is not None else token, attempt)

    def close(self) -> defer.Deferred[Any]:
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for d in list(self._inflight):
            d.cancel()
        return self.pool.closeCachedConnections()


class _StreamBody(protocol.Protocol):
    def __init__(self, owner: SSEConnection) -> None:
        self.owner = owner

    def dataReceived(self, data: bytes) -> None:
        self.owner.data(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.owner.stream_ended(reason)


class SSEConnection:
    """One ``GET /sse`` stream for the client's channels, resumed with a cursor built
    from the positions; publishes go through ``POST /publish``. With no subscriptions
    it opens nothing and is ready at once."""

    can_ping = False
    can_refresh = False
    _log = Logger()

    def __init__(self, client: Client, token: str | None, http: HTTPClient) -> None:
        self.client = client
        self.token = token
        self.http = http
        self.ready = False
        self.was_ready = False
        self.refused = False
        self.channels: tuple[str, ...] = ()
        self._parser = SSEParser()
        self._request: defer.Deferred[Any] | None = None
        self._body: _StreamBody | None = None
        self._ended = False
        self._error: Any = None
        self._waiters: list[defer.Deferred[None]] = []
        self._open_call: Any = None

    @property
    def streaming(self) -> bool:
        """Whether a stream is open (none without subscriptions)."""
        return bool(self.channels)

    def open(self) -> None:
        # On the next reactor turn, so that subscriptions made together (in one
        # function) share the first stream instead of reopening it one by one.
        self._open_call = self.client.reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._open_call = None
        client = self.client
        channels = sorted(client._subs)
        if client._sse_one_by_one:
            # After a refusal that named no channel: add new channels one per stream,
            # so that only the refused one fails.
            new = [c for c in channels if client._subs[c]._outcome is _not_yet()]
            channels = [c for c in channels if c not in new] + new[:1]
            if len(new) <= 1:
                client._sse_one_by_one = False
        self.channels = tuple(sorted(channels))
        if not self.channels:
            self._became_ready()
            return
        query = [("channel", c) for c in self.channels]
        cursor = client.positions.cursor(self.channels)
        if cursor is not None:
            query.append(("since", cursor))
        headers = self.http.headers(self.token, Accept="text/event-stream", Cache_Control="no-cache")
        d = self.http.agent.request(b"GET", self.http.url("sse", query), headers)
        self._request = d
        d.addCallbacks(self._response, self._failed)

    # -- driven by the client ---------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        if channel not in self.channels:
            self.client.conn_reopen(self)

    def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.client.conn_reopen(self)

    def publish(self, pending: _Pending) -> None:
        if pending.sent_on is self:
            return
        pending.sent_on = self
        self.http.publish(pending, self.token)

    def ping(self) -> None:  # SSE has the server's ": ping" instead
        pass

    def refresh(self, token: str) -> None:
        self.client.conn_reopen(self)

    def abort(self) -> None:
        if self._open_call is not None:
            self._open_call.cancel()
            self._open_call = None
            self._end(None)
        elif self._request is not None:
            self._request.cancel()
        elif self._body is not None and self._body.transport is not None:
            transport: Any = self._body.transport  # the Agent's producer proxy
            transport.stopProducing()
        elif not self._ended:
            self._end(None)

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self._ended:
            d.callback(None)
            return d
        self._waiters.append(d)
        self.abort()
        return d

    # -- HTTP callbacks ---------------------------------------------------------------

    def _response(self, response: Any) -> None:
        self._request = None
        if response.code == 200:
            self._body = _StreamBody(self)
            response.deliverBody(self._body)
            # Confirm first: becoming ready may already reopen the stream (for a
            # channel subscribed meanwhile), after which this one is not current.
            for channel in self.channels:
                self.client.conn_subscribed(self, channel, None)
            self._became_ready()
            return
        read_body(response).addBoth(self._refused, response.code)

    def _refused(self, body: Any, status: int) -> None:
        error = _error_from(status, body if isinstance(body, bytes) else b"")
        client = self.client
        if status in (400, 403, 404) and self is client._conn:
            # A channel this stream added for the first time may be what was refused:
            # fail those and carry on with the others.
            new = [c for c in self.channels if c in client._subs and client._subs[c]._outcome is _not_yet()]
            if len(new) == 1:
                client.conn_subscribe_failed(self, new[0], error)
            elif new:
                client._sse_one_by_one = True
            if new:
                client.conn_reopen(self)
                return
        self._end(error if status in (400, 401, 403, 404) else None)

    def _failed(self, failure: Any) -> None:
        self._request = None
        if not failure.check(defer.CancelledError):
            self._log.debug("SSE request failed: {e}", e=failure.getErrorMessage())
        self._end(None)

    def data(self, chunk: bytes) -> None:
        client = self.client
        client.conn_traffic(self)
        for event in self._parser.feed(chunk):
            if event.event in ("message", "reset"):
                try:
                    payload = json.loads(event.data)
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    client.conn_event(self, payload)
            elif event.event == "error":
                self._stream_error(event.data)
            if event.id:
                # The cursor after this event: where channels that saw nothing yet stand.
                self._positions_from(event.id)

    def _positions_from(self, cursor: str) -> None:
        # The stream's own cursor: where a channel that has seen nothing yet started.
        try:
            positions = decode_cursor(cursor)
        except BadRequest:
            return
        for channel in self.channels:
            if channel in positions and channel in self.client._subs:
                self.client.positions.set_if_absent(channel, positions[channel])

    def _stream_error(self, data: str) -> None:
        from gateway.client._client import ClientError

        try:
            payload = json.loads(data)
            code = str(payload.get("code"))
        except (ValueError, AttributeError):
            code = "internal"
        if code == "forbidden":
            self._error = ClientError("forbidden", "the server refused this identity")
        # unauthorized (the token expired): reconnect with a fresh token and the cursor.

    def stream_ended(self, reason: Any) -> None:
        self._body = None
        self._end(self._error)

    def _became_ready(self) -> None:
        if not self.ready:
            self.ready = self.was_ready = True
            self.client.conn_ready(self)

    def _end(self, error: Any) -> None:
        if self._ended:
            return
        self._ended = True
        self.ready = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        self.client.conn_lost(self, None, error)


def _not_yet() -> Any:
    from gateway.client._client import _NOT_YET

    return _NOT_YET
