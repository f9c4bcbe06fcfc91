"""The I/O side of a client's session, one for every transport.

A :class:`ClientSession` wraps the sans-I/O :class:`~gateway.core.session.Session`
of one WebSocket connection, SSE stream, held poll or publish request, and does
what needs a clock or the node:

* it schedules the identity's expiry (``exp``) on the reactor and calls the
  transport's ``expired()`` then (WebSocket 4001, SSE ``event: error``, a held
  poll answered);
* it registers the identity's ``sub`` with the node, so revocation reaches it
  (:meth:`~gateway.app.Gateway.revoke_local` calls the transport's ``revoked()``:
  WebSocket 4003, SSE ``event: error`` ``forbidden``, held polls 403);
* a refresh (:meth:`authenticate` again) moves the deadline.

The transport object passed as ``owner`` provides ``expired()`` and ``revoked()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.core.auth import Identity
from gateway.core.session import Session

__all__ = ["ClientSession"]


class ClientSession:
    """One client's session and its timers.

    Args:
        gateway: the node (for its reactor and its identity registry).
        owner: the transport object: ``expired()`` and ``revoked()`` are called on it.
        session: the sans-I/O session.
        now: the wall clock (``exp`` is wall-clock time, seconds since the Unix epoch).
    """

    def __init__(self, gateway: Any, owner: Any, session: Session[Any], now: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.owner = owner
        self.session = session
        self._now = now
        self._timer: Any = None
        self._registered: str | None = None
        self.closed = False

    @property
    def identity(self) -> Identity | None:
        return self.session.identity

    def authenticate(self, identity: Identity) -> None:
        """Set (or refresh) the identity: the deadline moves to its ``exp``.

        Raises:
            Forbidden: a refresh with another ``sub``; the old identity and deadline stay.
        """
        self.session.authenticate(identity)
        self._schedule()
        self._register()

    def _schedule(self) -> None:
        self._cancel_timer()
        identity = self.session.identity
        if identity is None or self.closed:
            return
        left = identity.seconds_left(self._now())
        if left is not None:
            self._timer = self.gateway.reactor.callLater(left, self._expire)

    def _register(self) -> None:
        identity = self.session.identity
        sub = identity.sub if identity is not None else None
        if sub == self._registered:
            return
        if self._registered is not None:
            self.gateway.identity_closed(self._registered, self)
        self._registered = sub
        if sub is not None:
            self.gateway.identity_opened(sub, self)

    def _expire(self) -> None:
        self._timer = None
        if not self.closed:
            self.owner.expired()

    def revoke(self) -> None:
        """The identity was revoked (POST /disconnect): tell the transport."""
        if not self.closed:
            self.owner.revoked()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def close(self) -> None:
        """The connection ended: cancel the deadline, leave the registry (idempotent)."""
        self.closed = True
        self._cancel_timer()
        if self._registered is not None:
            self.gateway.identity_closed(self._registered, self)
            self._registered = None
