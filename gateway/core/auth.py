"""Identity and permissions: claims in, decisions out (docs/protocol.md section 8).

Theory of operation
-------------------
Every transport gathers what a request presents (:class:`Credentials`: the
``Authorization`` header, a ``token`` from the query or the WebSocket ``auth``
command, the cookies) and hands it to the node's authenticators, which turn it into
an :class:`Identity` or refuse it.  From then on every question a transport asks is
answered here, the same way for WebSocket, SSE, long-poll and ``POST /publish``:

* may it subscribe to a channel, see its presence (:meth:`Identity.check_subscribe`);
* may it publish to a channel (:meth:`Identity.check_publish`);
* until when is it valid (:attr:`Identity.exp`, :meth:`Identity.seconds_left`);
* may a refresh replace it (:meth:`Identity.check_refresh`: the same ``sub``).

Nothing here does I/O or reads a clock: time comes in as ``now`` arguments.

Identities:

* :data:`OPEN` when no authentication is configured: anonymous, every channel.
* an API key: no ``sub``, every channel (``kind="api-key"``).
* a token (JWT, ``--auth-url`` answer, a plugin): ``sub`` and the ``subscribe`` /
  ``publish`` glob lists of its claims; without a list, nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from gateway.core.channels import pattern_matches
from gateway.errors import Forbidden, Unauthorized

__all__ = [
    "MAX_PATTERNS",
    "OPEN",
    "Credentials",
    "Identity",
    "api_key_identity",
    "identity_from_claims",
]

# The most patterns one claim list may hold (a token is not a policy database).
MAX_PATTERNS = 256
MAX_SUB_LENGTH = 256
COOKIE_NAME = "gateway_token"


@attrs.frozen
class Identity:
    """Who a client is and what it may do.

    Attributes:
        sub: the identity (a token's ``sub``); None for API keys and anonymous access.
        kind: ``"open"`` (no authentication configured), ``"api-key"`` or ``"token"``.
        subscribe: glob patterns of the channels it may subscribe to.
        publish: glob patterns of the channels it may publish to.
        everything: may subscribe and publish on every channel (open or API key).
        exp: when it stops being valid, in seconds since the Unix epoch, or None.
        iat: when its token was issued (for revocation), or None.
        grace: seconds past ``exp`` it is still honoured (the JWT clock-skew leeway).
    """

    sub: str | None = None
    kind: str = "token"
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    everything: bool = False
    exp: float | None = None
    iat: float | None = None
    grace: float = 0.0

    def may_subscribe(self, channel: str) -> bool:
        return self.everything or any(pattern_matches(p, channel) for p in self.subscribe)

    def may_publish(self, channel: str) -> bool:
        return self.everything or any(pattern_matches(p, channel) for p in self.publish)

    def check_subscribe(self, channel: str) -> None:
        """Raise :class:`Forbidden` unless it may subscribe to (or see presence of) ``channel``."""
        if not self.may_subscribe(channel):
            raise Forbidden(f"not permitted to subscribe to {channel!r}")

    def check_publish(self, channel: str) -> None:
        """Raise :class:`Forbidden` unless it may publish to ``channel``."""
        if not self.may_publish(channel):
            raise Forbidden(f"not permitted to publish to {channel!r}")

    def seconds_left(self, now: float) -> float | None:
        """Seconds until ``exp`` (0 when past), or None when it does not expire."""
        if self.exp is None:
            return None
        return max(0.0, self.exp + self.grace - now)

    def expired(self, now: float) -> bool:
        return self.exp is not None and now >= self.exp + self.grace

    def check_refresh(self, new: Identity) -> None:
        """Raise :class:`Forbidden` unless ``new`` may replace this identity on a live
        connection: a refresh keeps the same ``sub`` (and kind)."""
        if new.kind != self.kind or new.sub != self.sub:
            raise Forbidden("a refreshed token must carry the same sub")

    @property
    def sender(self) -> str | None:
        """What a publication's ``from`` says: the token's ``sub`` (never client-supplied)."""
        return self.sub if self.kind == "token" else None


OPEN = Identity(kind="open", everything=True)


def api_key_identity() -> Identity:
    """The identity of a backend holding an API key: every channel, no ``sub``."""
    return Identity(kind="api-key", everything=True)


def _patterns(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise Unauthorized(f"claim {name!r} must be a list of channel patterns")
    if len(value) > MAX_PATTERNS:
        raise Unauthorized(f"claim {name!r} holds more than {MAX_PATTERNS} patterns")
    return tuple(value)


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthorized(f"claim {name!r} must be a number of seconds")
    return float(value)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The identity a verified token's claims describe.

    ``sub`` is required (a string); ``subscribe`` and ``publish`` are optional lists
    of glob patterns (absent: nothing); ``exp`` and ``iat`` optional numbers.

    Raises:
        Unauthorized: when a claim has the wrong shape.
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        raise Unauthorized(f"the token has no valid sub claim (a string of 1-{MAX_SUB_LENGTH} characters)")
    return Identity(
        sub=sub,
        kind="token",
        subscribe=_patterns(claims, "subscribe"),
        publish=_patterns(claims, "publish"),
        exp=_time(claims, "exp"),
        iat=_time(claims, "iat"),
    )


@attrs.frozen
class Credentials:
    """What one request or connection presents, before anyone checked it.

    Attributes:
        transport: ``"websocket"``, ``"sse"``, ``"poll"``, ``"publish"``, or the
            endpoint name for the operator endpoints (``"metrics"``, ``"disconnect"``).
        authorization: the ``Authorization`` header, or None.
        token: a ``token=`` query parameter or the WebSocket ``auth`` command's token.
        cookies: the request's cookies (empty for JSONP, which never uses them).
        origin: the ``Origin`` header, or None.
    """

    transport: str
    authorization: str | None = None
    token: str | None = None
    cookies: Mapping[str, str] = attrs.field(factory=dict)
    origin: str | None = None

    @property
    def bearer(self) -> str | None:
        """The credential of an ``Authorization: Bearer ...`` header."""
        if self.authorization is None:
            return None
        scheme, _, value = self.authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def presented(self) -> list[str]:
        """Every credential presented, strongest first: the explicit ``token``, the
        bearer header, the ``gateway_token`` cookie."""
        out = [c for c in (self.token, self.bearer, self.cookies.get(COOKIE_NAME)) if c]
        return list(dict.fromkeys(out))

    @property
    def anonymous(self) -> bool:
        """True when nothing at all was presented (no token, header or cookie)."""
        return not self.presented() and not self.cookies
