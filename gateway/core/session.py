"""Per-connection session state, shared by every transport.

Theory of operation: a transport creates one :class:`Session` per client connection
(WebSocket) or request (SSE, poll, publish).  The session knows who the client is
(its :class:`~gateway.core.auth.Identity`, with its permissions and deadline) and
which channels it holds, and enforces the per-connection limits and permissions; it
does no I/O and holds opaque subscription handles that the transport created
through the bus.  The I/O around it (the expiry timer, revocation, rate limits) is
:class:`gateway.transports._session.ClientSession`, also one for every transport.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from gateway.core.auth import OPEN, Identity
from gateway.core.commands import Auth, Command, Ping
from gateway.core.events import reply
from gateway.errors import BadRequest, Unauthorized

__all__ = ["Session", "MAX_SUBSCRIPTIONS"]

MAX_SUBSCRIPTIONS = 1000

S = TypeVar("S")


class Session(Generic[S]):
    """Identity and subscriptions of one client connection.

    Args:
        max_subscriptions: the most channels one connection may hold.
    """

    def __init__(self, max_subscriptions: int = MAX_SUBSCRIPTIONS, identity: Identity | None = OPEN) -> None:
        self.max_subscriptions = max_subscriptions
        # None until authenticated (a WebSocket waiting for its auth command).
        self.identity: Identity | None = identity
        self._subscriptions: dict[str, S] = {}

    @property
    def authenticated(self) -> bool:
        return self.identity is not None

    def authenticate(self, identity: Identity) -> None:
        """Set the identity, or replace it on a refresh (same ``sub``, else :class:`Forbidden`
        and the old identity stays)."""
        if self.identity is not None and self.identity is not OPEN:
            self.identity.check_refresh(identity)
        self.identity = identity

    def admits(self, command: Command) -> bool:
        """Whether ``command`` may run now.  Once authenticated, every command; before
        (a WebSocket waiting for its ``auth``), only ``auth``: any other one, ``ping``
        included, is "a command before auth" and the transport closes the
        connection with 4001 (docs/protocol.md section 4)."""
        return self.identity is not None or isinstance(command, Auth)

    def pong(self, command: Ping) -> dict[str, Any]:
        """The reply to ``ping``: ``{"type":"pong"}`` with the command's ``id`` echoed
        (no ``id`` field when the ping had none, as for every reply).

        Raises:
            Unauthorized: before the session is authenticated.
        """
        self._require()
        return reply("pong", command.id)

    def check_publish(self, channel: str) -> None:
        """Raise :class:`Forbidden` unless the identity may publish to ``channel``."""
        self._require().check_publish(channel)

    def _require(self) -> Identity:
        if self.identity is None:
            raise Unauthorized("authenticate first")
        return self.identity

    def __len__(self) -> int:
        return len(self._subscriptions)

    @property
    def channels(self) -> list[str]:
        return list(self._subscriptions)

    def check_subscribe(self, channel: str) -> None:
        """Raise :class:`BadRequest` unless ``channel`` may be added now, :class:`Forbidden`
        unless the identity may subscribe to it."""
        self._require().check_subscribe(channel)
        if channel in self._subscriptions:
            raise BadRequest(f"already subscribed to {channel!r}")
        if len(self._subscriptions) >= self.max_subscriptions:
            raise BadRequest(f"at most {self.max_subscriptions} subscriptions per connection")

    def add(self, channel: str, subscription: S) -> None:
        self.check_subscribe(channel)
        self._subscriptions[channel] = subscription

    def get(self, channel: str) -> S | None:
        return self._subscriptions.get(channel)

    def remove(self, channel: str) -> S | None:
        return self._subscriptions.pop(channel, None)

    def clear(self) -> list[S]:
        """Forget every subscription; return them (the transport cancels them)."""
        subs = list(self._subscriptions.values())
        self._subscriptions.clear()
        return subs
