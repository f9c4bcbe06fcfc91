"""The gateway's seams, as zope interfaces whose docstrings carry the contracts."""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IBroker", "IBrokerListener"]


class IBrokerListener(Interface):
    """What a broker delivers to: the node's :class:`~gateway.bus.Bus`, exactly one per broker."""

    def publication_received(publication):  # type: ignore[no-untyped-def]
        """A publication arrived on a channel this node subscribed to.

        Called once per publication per node (never per client connection), in the
        order the broker received them.  The listener checks seq continuity itself:
        a broker may lose or repeat deliveries (Redis pub/sub across a reconnect),
        and the listener fills gaps with :meth:`IBroker.history`.
        """

    def publications_received(publications):  # type: ignore[no-untyped-def]
        """Optional: several publications that arrived together (one read of the
        broker's delivery connection), in order; the same as
        :meth:`publication_received` for each in turn, but the listener may fan them
        out in one pass.  A broker calls it only when the listener has it.
        """

    def broker_reconnected():  # type: ignore[no-untyped-def]
        """The broker lost and regained its delivery connection: deliveries may have been lost.

        The listener should check every subscribed channel against
        :meth:`IBroker.history` and fill what it missed.
        """

    def control_received(message):  # type: ignore[no-untyped-def]
        """A control message (a JSON object, e.g. ``{"type": "revoke", "sub": "alice"}``)
        sent with :meth:`IBroker.publish_control` by some node, this one included.

        At most once per node: control messages are not stored, so one sent while
        this node's delivery connection is down is lost.
        """

    def presence_received(channel, events):  # type: ignore[no-untyped-def]
        """``join``/``leave`` events (:class:`~gateway.core.presence.PresenceEvent`,
        in order) on a channel this node subscribed to, decided by the presence
        store from some node's :meth:`IBroker.presence_update` or an expiry.

        At most once per node, not stored (like control messages).
        """


class IBroker(Interface):
    """Orders, stores and fans out publications for one node.

    Contract:

    * **Ordering and atomicity.** :meth:`publish` assigns the channel's next seq
      (``top.seq + 1``, the first is 1) and appends the publication to history in one
      atomic step, once for the whole cluster: two publishes never get the same seq,
      and no seq is skipped within an epoch.
    * **Durability before success.** The Deferred of :meth:`publish` fires only once
      the publication is stored in history and handed to delivery; when that cannot
      be done it fails with :class:`~gateway.errors.Unavailable` and the publication
      did not happen.  A publication is never reported done and then dropped.
    * **Epochs.** Each channel has an epoch; when its stream is lost (history
      flushed, a new in-process broker), the channel gets a new epoch and seqs start
      from 1 again.  Seqs are never silently renumbered within an epoch.
    * **Idempotency keys.** A :meth:`publish` with an ``idempotency_key`` that
      was used on the same channel within the broker's idempotency ttl (5 minutes),
      by any node, by a publication of the channel's current epoch, publishes
      nothing (no seq, no history entry, no delivery) and fires with that first
      publication's seq, epoch and ts, ``duplicate=True``.  The check and the
      publish are one atomic step: concurrent publishes with one key publish once.
      When the first publication's epoch is gone, the key is forgotten with it and
      the publish is made anew.
    * **Node-level delivery.** :meth:`subscribe` is per channel per node; every
      publication on a subscribed channel is passed to the listener's
      ``publication_received``, publications of one channel in seq order (the
      listener tolerates repeats and detects gaps).  The in-memory broker delivers
      through this same path.
    """

    name = Attribute("A short name for logs and metrics, e.g. 'memory' or 'redis://host:port/0'.")

    def start(listener):  # type: ignore[no-untyped-def]
        """Begin serving, delivering to ``listener`` (an :class:`IBrokerListener`).

        Returns a Deferred that fires when the broker is ready to try; a broker that
        cannot reach its backend yet still starts and reports :meth:`is_ready` False.
        """

    def stop():  # type: ignore[no-untyped-def]
        """Release connections and timers. Returns a Deferred."""

    def is_ready():  # type: ignore[no-untyped-def]
        """True while publishes on every channel can be made durable right now."""

    def channel_ready(channel):  # type: ignore[no-untyped-def]
        """True while publishes on ``channel`` can be made durable right now.

        The same as :meth:`is_ready` for a broker with one backend.  A broker over
        shards (Redis Cluster) answers for the shard of ``channel``: while one
        shard is down, the channels of the others stay ready, so a partial outage
        stays partial.  Every gate that concerns one channel (publish, subscribe,
        SSE, poll, presence) asks this rather than :meth:`is_ready`.
        """

    def publish(channel, data, sender=None, idempotency_key=None):  # type: ignore[no-untyped-def]
        """Publish ``data`` on ``channel``; ``idempotency_key`` (a valid key, see
        :func:`gateway.core.idempotency.validate_idempotency_key`, or None) makes a
        repeat within 5 minutes a no-op answered with the first publication.

        Returns:
            Deferred firing with the ordered :class:`~gateway.core.model.Publication`,
            or failing with :class:`~gateway.errors.Unavailable` (not published).
        """

    def history(channel, since):  # type: ignore[no-untyped-def]
        """The channel's top, and its publications after ``since`` (a Position or None).

        Returns:
            Deferred firing with a :class:`~gateway.core.model.HistoryResult`;
            ``publications`` is None when history cannot continue from ``since``.
            Fails with :class:`~gateway.errors.Unavailable` when the backend is down.
        """

    def subscribe(channel):  # type: ignore[no-untyped-def]
        """Start node-level delivery of ``channel``; Deferred fires once effective.

        Every publication accepted after the Deferred fires is delivered.
        """

    def unsubscribe(channel):  # type: ignore[no-untyped-def]
        """Stop node-level delivery of ``channel``. Returns a Deferred."""

    def publish_control(message):  # type: ignore[no-untyped-def]
        """Send ``message`` (a JSON-encodable dict) to every node's listener
        (``control_received``), this node's included, on a channel of its own that
        every node listens to once its :meth:`start` fired ready (no
        :meth:`subscribe` needed).

        Returns:
            Deferred firing with None once the message is handed to delivery, or
            failing with :class:`~gateway.errors.Unavailable` (nothing sent).
        """


    def presence_update(changes):  # type: ignore[no-untyped-def]
        """Apply this node's presence ``changes`` (a list of
        :class:`~gateway.core.presence.PresenceChange`) to the cluster's presence
        store, after removing the expired entries of each channel they touch.

        Atomic per channel: every node agrees when an identity's cluster-wide
        connections leave 0 (``join``) and return to 0 (``leave``); those events
        go to ``presence_received`` of every node subscribed to the channel.
        A bounded number of round trips (one per channel per call, pipelined).

        Returns:
            Deferred firing with None, or failing with
            :class:`~gateway.errors.Unavailable` (the caller sends them again later).
        """

    def presence_query(channel, limit, after):  # type: ignore[no-untyped-def]
        """The presence of ``channel`` (expired entries removed first): at most
        ``limit`` members sorted by sub, those after ``after`` (a sub or None).

        Returns:
            Deferred firing with a :class:`~gateway.core.presence.PresencePage`, or
            failing with :class:`~gateway.errors.Unavailable`.
        """


class IPublishHook(Interface):
    """Runs around every publish accepted by this node (WebSocket, HTTP or Python)."""

    def before_publish(channel, data, sender):  # type: ignore[no-untyped-def]
        """Called before the broker sees the publication.

        Raise a :class:`~gateway.errors.GatewayError` (e.g. ``Forbidden``,
        ``BadRequest``, ``RateLimited``) to refuse it; the client gets that error
        and nothing is published.  Must not block.  It runs for every attempt,
        also for one that then turns out not to happen (the broker is down, or a
        repeated ``idempotency_key`` makes it a duplicate, which only the broker
        can tell): keep side effects for :meth:`after_publish`.
        """

    def after_publish(publication):  # type: ignore[no-untyped-def]
        """Called once the broker accepted ``publication`` (a Publication), once per
        publication: not for a duplicate of an ``idempotency_key`` (nothing was
        published then).  Must not block."""


class IPublishHookFactory(Interface):
    """A publish hook type that operators select with ``--hook NAME[:ARGS]``.

    Shaped like Twisted's ``ICheckerFactory``: provide it (and ``twisted.plugin.IPlugin``)
    from a module named ``gateway_*.py`` in the ``plugins`` package, or in a ``plugins``
    directory of another distribution on sys.path.
    """

    hookType = Attribute("The name used in --hook, e.g. 'log'.")
    hookHelp = Attribute("One paragraph on what the hook does.")
    argStringFormat = Attribute("What goes after the colon, e.g. 'PATTERN[,PATTERN...]'.")

    def make_hook(argstring):  # type: ignore[no-untyped-def]
        """Return an :class:`IPublishHook` configured by ``argstring`` ('' when none).

        Raises:
            ValueError: with a message for the operator when ``argstring`` is bad.
        """


__all__ += ["IPublishHook", "IPublishHookFactory"]


class IAuthenticator(Interface):
    """Turns what a request presents into an identity (docs/protocol.md section 8).

    The node asks its authenticators in order; the first that recognises one of the
    presented credentials decides.
    """

    def authenticate(credentials):  # type: ignore[no-untyped-def]
        """Check ``credentials`` (a :class:`~gateway.core.auth.Credentials`).

        Returns a Deferred (or a plain value) of:

        * an :class:`~gateway.core.auth.Identity` when a presented credential is
          this authenticator's and valid;
        * None when none of them is for it (the next authenticator is asked).

        Fails with :class:`~gateway.errors.Unauthorized` for a credential that is
        this authenticator's but invalid or expired, :class:`~gateway.errors.Forbidden`
        for an identity it refuses, and :class:`~gateway.errors.Unavailable` when it
        cannot decide now (its backend is down): never an open door.
        """


class IAuthenticatorFactory(Interface):
    """An authenticator type that operators select with ``--authenticator NAME[:ARGS]``.

    Shaped like Twisted's ``ICheckerFactory``; provide it (and ``twisted.plugin.IPlugin``)
    from a ``gateway_*.py`` module of the plugins package, as publish hooks are.
    """

    authType = Attribute("The name used in --authenticator, e.g. 'jwt'.")
    authHelp = Attribute("One paragraph on what the authenticator does.")
    argStringFormat = Attribute("What goes after the colon, or '' when nothing.")

    def make_authenticator(argstring, config, reactor):  # type: ignore[no-untyped-def]
        """Return an :class:`IAuthenticator` for ``argstring`` ('' when none).

        Raises:
            ValueError: with a message for the operator when the arguments or the
                configuration are unusable.
        """


__all__ += ["IAuthenticator", "IAuthenticatorFactory"]
