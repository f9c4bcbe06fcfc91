"""Per-connection session state, shared by every transport.

Theory of operation: a transport creates one :class:`Session` per client connection
(WebSocket) or request (SSE, poll).  The session knows who the client is and which
channels it holds, and enforces the per-connection limits; it does no I/O and holds
opaque subscription handles that the transport created through the bus.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from gateway.errors import BadRequest

__all__ = ["Session", "MAX_SUBSCRIPTIONS"]

MAX_SUBSCRIPTIONS = 1000

S = TypeVar("S")


class Session(Generic[S]):
    """Identity and subscriptions of one client connection.

    Args:
        max_subscriptions: the most channels one connection may hold.
    """

    def __init__(self, max_subscriptions: int = MAX_SUBSCRIPTIONS) -> None:
        self.max_subscriptions = max_subscriptions
        self.identity: str | None = None
        self.authenticated = False
        self.claims: dict[str, Any] = {}
        self._subscriptions: dict[str, S] = {}

    def __len__(self) -> int:
        return len(self._subscriptions)

    @property
    def channels(self) -> list[str]:
        return list(self._subscriptions)

    def check_subscribe(self, channel: str) -> None:
        """Raise :class:`BadRequest` unless ``channel`` may be added now."""
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
