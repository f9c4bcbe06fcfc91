"""``POST /publish`` (docs/protocol.md section 7): single and batch publications over HTTP.

A publish is authenticated like every HTTP request (``Authorization``, ``token=``,
the ``gateway_token`` cookie: docs/protocol.md section 8).  Every item of a batch
must be permitted before anything is published (a 403 names the first refused
item); the request then takes one token from its ``--publish-rate`` bucket (per
token ``sub``, API key or client address; a 429 with ``Retry-After`` beyond it).
Each publication's ``from`` is the token's ``sub``, never anything the client sent.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from gateway.core.auth import Identity
from gateway.core.commands import (
    has_surrogate_escape,
    loads_json_object,
    parse_idempotency_key,
    parse_publication,
)
from gateway.core.events import encode_json
from gateway.core.model import Publication
from gateway.errors import BadRequest, Forbidden, GatewayError, Internal, TooLarge
from gateway.transports._auth import (
    authenticate_request,
    publish_rate_key,
    respond_error,
)
from gateway.transports._http import finish_json
from gateway.transports.cors import CORSResource, apply_cors

__all__ = ["PublishResource", "MAX_BATCH"]

MAX_BATCH = 1000


def _result(pub: Publication) -> dict[str, Any]:
    return {"channel": pub.channel, "seq": pub.seq, "epoch": pub.epoch}


# (channel, data, idempotency_key) of one publication of a body.
Item = tuple[str, Any, str | None]


def _parse_item(obj: Any, surrogates: bool) -> Item:
    """(channel, data, idempotency_key) of one publication object; ``surrogates``:
    the body holds a surrogate escape, so ``data`` must be checked for UTF-8."""
    channel, data = parse_publication(obj)
    key = parse_idempotency_key(obj)
    if surrogates:
        encode_json(data)
    return channel, data, key


def parse_publish_body(body: bytes) -> tuple[bool, list[Item]]:
    """Validate a publish body whole; return (is_batch, [(channel, data, idempotency_key), ...]).

    A bad item of a batch (its ``idempotency_key`` or ``data`` holding an unpaired
    surrogate included) is a :class:`BadRequest` naming its index."""
    obj = loads_json_object(body, encodable=False)
    surrogates = has_surrogate_escape(body)
    batch = "messages" in obj and "channel" not in obj
    if batch:
        items = obj["messages"]
        if not isinstance(items, list) or not items:
            raise BadRequest("messages must be a non-empty array")
        if len(items) > MAX_BATCH:
            raise BadRequest(f"at most {MAX_BATCH} messages per batch")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(_parse_item(item, surrogates))
            except GatewayError as e:
                raise type(e)(f"messages[{i}]: {e.message}") from None
    else:
        out = [_parse_item(obj, surrogates)]
    if surrogates:
        # Anything else of the body that UTF-8 cannot encode is refused as before.
        encode_json(obj, "the JSON document")
    return batch, out


class PublishResource(CORSResource):
    """``POST /publish``."""

    cors_methods = ("POST",)

    _log = Logger()

    def render_POST(self, request: Request) -> bytes | int:
        if not apply_cors(self.gateway, request):
            # A browser page from an origin not listed: refuse the write itself, not
            # only the reading of the answer (a text/plain form post needs no
            # preflight, so CORS alone would not stop it).
            raise Forbidden("origin not allowed to publish")
        limit = self.gateway.config.max_message_size
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read(limit + 1)
        if len(body) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
        # Who it is first: a client without valid credentials learns nothing about
        # how its body would have been judged.
        d = authenticate_request(self.gateway, request, "publish")
        d.addCallback(self._authenticated, request, body)
        d.addCallbacks(self._done, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _authenticated(self, identity: Identity, request: Request, body: bytes) -> Any:
        """The body valid as a whole (else 400), every item permitted (else 403 naming
        it; nothing published), the rate limit taken (else 429), then publish with
        ``from`` = the identity's sender; fires with (is_batch, results)."""
        batch, items = parse_publish_body(body)
        for i, (channel, _, _) in enumerate(items):
            try:
                identity.check_publish(channel)
            except Forbidden as e:
                raise Forbidden(f"messages[{i}]: {e.message}" if batch else e.message) from None
        self.gateway.check_publish_rate(publish_rate_key(self.gateway, request, identity))
        if not batch:
            channel, data, key = items[0]
            d = self.gateway.publish(channel, data, identity.sender, idempotency_key=key)
            return d.addCallback(lambda pub: (False, [_result(pub)]))
        d = self._publish_all(items, identity.sender)
        return d.addCallback(lambda results: (batch, results))

    @defer.inlineCallbacks
    def _publish_all(self, items: list[Item], sender: str | None = None) -> Any:
        results: list[dict[str, Any]] = []
        for channel, data, key in items:
            try:
                pub = yield self.gateway.publish(channel, data, sender, idempotency_key=key)
            except GatewayError as e:
                e.partial_results = results  # type: ignore[attr-defined]
                raise
            results.append(_result(pub))
        return results

    def _done(self, outcome: tuple[bool, list[dict[str, Any]]], request: Request) -> None:
        batch, results = outcome
        finish_json(request, 200, {"results": results} if batch else results[0])

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(GatewayError):
            error: GatewayError = failure.value
        else:
            self._log.failure("publish failed", failure)
            error = Internal("internal error")
        partial = getattr(error, "partial_results", None)
        respond_error(request, error, extra={"results": partial} if partial else None)
