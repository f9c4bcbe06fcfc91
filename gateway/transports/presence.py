"""``GET /presence?channel=c[&limit=N][&after=SUB]`` (docs/protocol.md section 11).

The same permission as subscribing to ``c`` (open when no authentication is
configured); answers ``{"channel":"c","members":[{"sub":..,"connections":..}],
"anonymous":N,"count":M}`` with ``members`` sorted by sub, at most ``limit``
(default and most 1,000) of the ``count`` present, those after ``after``; when
more follow, ``next`` is the ``after`` of the next page.  503 while the presence
store (Redis) is unreachable.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from gateway.core.events import dumps
from gateway.core.presence import PresencePage, PresenceQuery, parse_presence_query
from gateway.errors import BadRequest, GatewayError, Internal
from gateway.transports._auth import authenticate_request, respond, respond_error
from gateway.transports._http import query_params, single_param
from gateway.transports.cors import CORSResource, apply_cors

__all__ = ["PresenceResource"]


class PresenceResource(CORSResource):
    """``GET /presence``."""

    _log = Logger()

    def render_GET(self, request: Request) -> bytes | int:
        apply_cors(self.gateway, request)
        params = query_params(request)
        channel = single_param(params, "channel")
        if channel is None:
            raise BadRequest("the channel= parameter is required")
        query = parse_presence_query(channel, single_param(params, "limit"), single_param(params, "after"))
        d = authenticate_request(self.gateway, request, "presence")
        d.addCallback(self._authenticated, query)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _authenticated(self, identity: Any, query: PresenceQuery) -> defer.Deferred[PresencePage]:
        identity.check_subscribe(query.channel)
        return self.gateway.presence.query(query.channel, query.limit, query.after)

    def _answer(self, page: PresencePage, request: Request) -> None:
        respond(request, 200, dumps(page.to_json()))

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(GatewayError):
            error: GatewayError = failure.value
        else:
            self._log.failure("presence query failed", failure)
            error = Internal("internal error")
        respond_error(request, error)
