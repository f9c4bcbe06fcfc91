"""Redis Cluster for the Redis broker: one link per master, every call routed by slot.

:class:`ClusterBroker` is the routing layer of ``redis+cluster://``: it keeps a
:class:`~gateway.broker.slots.SlotMap` (from ``CLUSTER SLOTS``) and one
:class:`~gateway.broker.redis.RedisBroker` per master, in *sharded* mode (each is the
whole single-Redis machinery, connections, deadlines, health check, resubscribe and gap
fill, pointed at one master).  A channel's publish, history and presence go to the
master of the channel's slot, where all its keys live (they share the ``{channel}`` hash
tag); its publications go out with ``SPUBLISH`` on ``P:{<channel>}:pub`` and each node
``SSUBSCRIBE``\\s on that master, so no message crosses the whole cluster.

*Redirects.*  txredisapi has no cluster support (no slot routing, no ``MOVED``/``ASK``,
and its pub/sub knows neither ``SSUBSCRIBE`` nor ``smessage``), hence this module.  A
``MOVED`` updates the map, schedules a full refresh and retries the call once on the new
owner; an ``ASK`` retries it once on the importing node after ``ASKING``.  Neither ran
the script, so a retry cannot publish twice.

*Slot moves and failovers.*  The map is refreshed every ``refresh_interval`` seconds
(from any master that answers, else the seed nodes), after a redirect, and when a
master drops a sharded subscription (it does so when the channel's slot moves away).
Channels whose slot changed owner are subscribed on the new owner and the listener's
``broker_reconnected`` fills the gaps from history; links to masters that own no slot
any more are closed.  A channel used under another master starts a new epoch (the
writer guard of publish.lua), so what a promoted replica had not received, or a
migration raced, is a ``reset``, never reused seqs.

*Readiness.*  :meth:`~ClusterBroker.is_ready` holds while every slot has a master
whose link is up; :meth:`~ClusterBroker.channel_ready` while the master of the
channel's slot has its link up, so a partial outage stays partial: while a master is
down (before its replica is promoted, or for good without one), calls for its
channels fail fast with :class:`~gateway.errors.Unavailable` and the gates of the
bus, SSE, poll and presence refuse those channels only; the other shards go on.
When the link is back, its resubscribe and the listener's ``broker_reconnected``
fill the gaps.  (The healthy masters keep answering only with
``cluster-require-full-coverage no``; with Redis's default they refuse every key
while a slot has no master, and every channel is unavailable.)  ``shards()`` lists
every link (``host:port``) for ``/metrics`` and ``/readyz``.

*Control messages* (revocations) use plain ``PUBLISH``, which a cluster delivers to
every node; every link subscribes, and only the messages of one link (the first master
in address order that is up) reach the listener, so each arrives once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.broker.redis import Redirected, RedisBroker
from gateway.broker.redisurl import parse_redis_url
from gateway.broker.shards import ShardStats
from gateway.broker.slots import Address, SlotMap, key_slot, parse_slots
from gateway.config import Config
from gateway.core.model import HistoryResult, Position, Publication
from gateway.core.presence import PresenceChange, PresencePage
from gateway.errors import Unavailable
from gateway.interfaces import IBroker, IBrokerListener

__all__ = ["ClusterBroker"]


class _LinkListener:
    """What one link tells the cluster broker's listener."""

    def __init__(self, owner: ClusterBroker, address: Address) -> None:
        self.owner = owner
        self.address = address

    def publication_received(self, pub: Publication) -> None:
        if self.owner._listener is not None:
            self.owner._listener.publication_received(pub)

    def publications_received(self, pubs: list[Publication]) -> None:
        listener = self.owner._listener
        if listener is None:
            return
        many = getattr(listener, "publications_received", None)
        if many is not None:
            many(pubs)
        else:
            for pub in pubs:
                listener.publication_received(pub)

    def presence_received(self, channel: str, events: Any) -> None:
        if self.owner._listener is not None:
            self.owner._listener.presence_received(channel, events)

    def broker_reconnected(self) -> None:
        if self.owner._listener is not None and not self.owner._stopping:
            self.owner._listener.broker_reconnected()

    def control_received(self, message: dict[str, Any]) -> None:
        if self.owner._listener is not None and self.owner._control_link() == self.address:
            self.owner._listener.control_received(message)


@implementer(IBroker)
class ClusterBroker:
    """The broker over a Redis Cluster (see the module docstring).

    Args:
        url: ``redis+cluster://[[user]:password@]host1:port1,host2:port2[?prefix=P]``.
        history_size, history_ttl, reactor: as for :class:`RedisBroker`.
        refresh_interval: seconds between ``CLUSTER SLOTS`` refreshes.
        link_options: keyword arguments for every link (:class:`RedisBroker`).
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        *,
        reactor: Any,
        refresh_interval: float = 1.0,
        **link_options: Any,
    ) -> None:
        self.url = parse_redis_url(url)
        self.name = self.url.display()
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._reactor = reactor
        self.refresh_interval = refresh_interval
        self._link_options = link_options
        self.connect_timeout = float(link_options.get("connect_timeout", 2.0))
        self.slot_map = SlotMap()
        self.links: dict[Address, RedisBroker] = {}
        self._channels: dict[str, Address] = {}  # channel -> the link it is subscribed on
        self._listener: IBrokerListener | None = None
        self._refresh: LoopingCall | None = None
        self._refreshing: defer.Deferred[None] | None = None
        self._again = False
        self._stopping = False
        self.refreshes = 0
        self.redirects = {"MOVED": 0, "ASK": 0}  # redirects followed
        self.dropped = 0  # subscriptions a master dropped (slot moved)
        self._started: defer.Deferred[None] | None = None
        self._start_calls: list[Any] = []
        # Keys and names are the links' (one prefix for all).
        self._keys = RedisBroker(self._link_url(self.url.nodes[0]), history_size, history_ttl, reactor=reactor, sharded=True)

    @classmethod
    def from_config(cls, config: Config, reactor: Any) -> ClusterBroker:
        assert config.redis is not None
        return cls(config.redis, config.history_size, config.history_ttl, reactor=reactor)

    def _link_url(self, address: Address) -> str:
        from urllib.parse import quote

        auth = ""
        if self.url.password is not None:
            auth = f"{quote(self.url.username or '', safe='')}:{quote(self.url.password, safe='')}@"
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"redis://{auth}{host}:{address[1]}/0?prefix={self.url.prefix}"

    # -- keys (the same as every link's) ------------------------------------------

    def meta_key(self, channel: str) -> str:
        return self._keys.meta_key(channel)

    def history_key(self, channel: str) -> str:
        return self._keys.history_key(channel)

    def idempotency_key(self, channel: str, key: str) -> str:
        return self._keys.idempotency_key(channel, key)

    def pubsub_channel(self, channel: str) -> str:
        return self._keys.pubsub_channel(channel)

    def presence_keys(self, channel: str) -> list[str]:
        return self._keys.presence_keys(channel)

    def revocation_key(self, sub: str) -> str:
        return self._keys.revocation_key(sub)

    @property
    def control_channel(self) -> str:
        return self._keys.control_channel

    # -- lifecycle ---------------------------------------------------------------

    def start(self, listener: IBrokerListener) -> defer.Deferred[None]:
        """Read the slot map from a seed node, connect to every master; fires once
        ready, or after ``connect_timeout`` (the refresh loop goes on trying)."""
        self._listener = listener
        self._stopping = False
        self._refresh = LoopingCall(self.refresh)
        self._refresh.clock = self._reactor
        self._refresh.start(self.refresh_interval, now=True)
        started: defer.Deferred[None] = defer.Deferred()
        self._started = started
        self._start_calls = [self._reactor.callLater(self.connect_timeout * 2, self._start_done)]
        self._check_started()
        self._log.info("connecting to {url}", url=self.name)
        return started

    def _check_started(self) -> None:
        # The links report readiness each on its own; look every 50 ms until started.
        if self.is_ready():
            self._start_done()
        elif self._started is not None:
            self._start_calls.append(self._reactor.callLater(0.05, self._check_started))

    def _start_done(self) -> None:
        for call in self._start_calls:
            if call.active():
                call.cancel()
        self._start_calls = []
        started, self._started = self._started, None
        if started is not None:
            if not self.is_ready() and not self._stopping:
                self._log.warn("{url} is not ready yet; this node is not ready until it is", url=self.name)
            started.callback(None)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self._stopping = True
        self._start_done()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        self._refresh = None
        if self._refreshing is not None:
            yield self._refreshing
        links, self.links = list(self.links.values()), {}
        yield defer.gatherResults([link.stop() for link in links], consumeErrors=True)
        self._channels.clear()

    def is_ready(self) -> bool:
        if self._stopping or not self.slot_map.covered():
            return False
        return all(a in self.links and self.links[a].is_ready() for a in self.slot_map.masters())

    def channel_ready(self, channel: str) -> bool:
        """True while the master of ``channel``'s slot is known and its link is up."""
        if self._stopping:
            return False
        address = self.slot_map.owner(key_slot(channel))
        link = self.links.get(address) if address is not None else None
        return link is not None and link.is_ready()

    def shards(self) -> list[ShardStats]:
        """One entry per master link (``host:port``)."""
        out = []
        for address, link in sorted(self.links.items()):
            link.shard.name = f"{address[0]}:{address[1]}"
            out.append(link.shard)
        return out

    @property
    def subscribed_channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    def _control_link(self) -> Address | None:
        up = sorted(a for a, link in self.links.items() if link.is_ready())
        return up[0] if up else None

    # -- the slot map ---------------------------------------------------------------

    def refresh(self) -> defer.Deferred[None]:
        """Read ``CLUSTER SLOTS`` again (at most one read at a time; one more after it
        when asked meanwhile) and apply it."""
        if self._stopping:
            return defer.succeed(None)
        if self._refreshing is not None:
            self._again = True
            return self._refreshing
        self._refreshing = d = defer.ensureDeferred(self._refresh_once())

        def done(result: Any) -> None:
            self._refreshing = None
            if isinstance(result, Failure):
                self._log.warn("cluster slot map refresh failed: {error}", error=result.getErrorMessage())
            if self._again and not self._stopping:
                self._again = False
                self.refresh()

        d.addBoth(done)
        return d

    async def _refresh_once(self) -> None:
        reply = None
        for address, link in sorted(self.links.items()):
            if not link.is_ready():
                continue
            try:
                reply = await link.execute("cluster slots", "CLUSTER", "SLOTS")
                current = address
                break
            except Unavailable:
                continue
        if reply is None:
            reply, current = await self._ask_seeds()
        if self._stopping:
            return
        self.refreshes += 1
        self._apply(parse_slots(reply, current))

    async def _ask_seeds(self) -> tuple[Any, Address]:
        import txredisapi

        for host, port in self.url.nodes:
            try:
                conn = await txredisapi.Connection(
                    host,
                    port,
                    reconnect=False,
                    charset=None,
                    convertNumbers=False,
                    password=self.url.password,
                    username=self.url.username,
                    connectTimeout=self.connect_timeout,
                    replyTimeout=self.connect_timeout,
                )
            except Exception as e:  # noqa: BLE001 - any seed failing: try the next one
                self._log.warn("seed {host}:{port}: {error}", host=host, port=port, error=e)
                continue
            try:
                return await conn.execute_command("CLUSTER", "SLOTS"), (host, port)
            except Exception as e:  # noqa: BLE001
                self._log.warn("seed {host}:{port}: CLUSTER SLOTS failed: {error}", host=host, port=port, error=e)
                continue
            finally:
                await conn.disconnect()
        raise Unavailable("no cluster node answered CLUSTER SLOTS")

    def _apply(self, ranges: list[tuple[int, int, Address]]) -> None:
        changed = self.slot_map.replace(ranges)
        for address in self.slot_map.masters():
            if address not in self.links:
                self._open(address)
        if changed:
            self._log.info("cluster slot map: {count} slot(s) changed owner", count=len(changed))
        self._move_subscriptions()
        for address in list(self.links):
            if address not in self.slot_map.masters():
                link = self.links.pop(address)
                link.stop()

    def _open(self, address: Address) -> RedisBroker:
        link = RedisBroker(
            self._link_url(address),
            self.history_size,
            self.history_ttl,
            reactor=self._reactor,
            sharded=True,
            on_dropped=self._dropped,
            **self._link_options,
        )
        self.links[address] = link
        link.start(_LinkListener(self, address))  # type: ignore[arg-type]
        return link

    def _move_subscriptions(self) -> None:
        """Subscribe every channel whose slot has another owner now on that owner,
        then have the listener fill the gaps from history."""
        ds = []
        for channel, address in list(self._channels.items()):
            owner = self.slot_map.owner(key_slot(channel))
            if owner is None or owner == address or owner not in self.links:
                continue
            old = self.links.get(address)
            if old is not None:
                old.unsubscribe(channel)
            self._channels[channel] = owner
            d = self.links[owner].subscribe(channel)
            ds.append(d.addErrback(self._resubscribe_failed, channel))
        if ds:
            # Once subscribed where the channels live now, whatever was published
            # meanwhile is in history.
            defer.gatherResults(ds).addCallback(lambda _: self._listener and not self._stopping and self._listener.broker_reconnected())

    def _resubscribe_failed(self, failure: Failure, channel: str) -> None:
        self._log.warn("resubscribing {channel} failed ({error}); retrying on the next refresh", channel=channel, error=failure.getErrorMessage())
        if channel in self._channels:
            # Not subscribed anywhere: the next refresh subscribes it again.
            self._channels[channel] = ("", 0)

    def _dropped(self, channel: str) -> None:
        # A master dropped a sharded subscription: its slot moved.  Mark it nowhere so
        # the refresh subscribes it on the new owner.
        self.dropped += 1
        if channel in self._channels:
            self._channels[channel] = ("", 0)
        self.refresh()

    # -- routing ------------------------------------------------------------------

    def _link(self, channel: str, what: str) -> RedisBroker:
        address = self.slot_map.owner(key_slot(channel))
        link = self.links.get(address) if address is not None else None
        if link is None or self._stopping:
            raise Unavailable(f"{what}: no master serves the slot of {channel!r}")
        return link

    def _redirected(self, failure: Failure, retry: Any, what: str) -> Any:
        """Follow one MOVED/ASK: retry on the named node (after ASKING for ASK)."""
        failure.trap(Redirected)
        redirect = failure.value.redirect
        self.redirects[redirect.kind] += 1
        if redirect.kind == "MOVED":
            self.slot_map.moved(redirect)
            self.refresh()
        link = self.links.get(redirect.address)
        if link is None:
            link = self._open(redirect.address)
        if not link.is_ready():
            raise Unavailable(f"{what}: {redirect.address[0]}:{redirect.address[1]} is not connected yet")
        return retry(link, redirect.kind == "ASK")

    def _routed(self, channel: str, what: str, call: Any) -> defer.Deferred[Any]:
        try:
            link = self._link(channel, what)
        except Unavailable:
            return defer.fail()
        d = defer.maybeDeferred(call, link, False)
        d.addErrback(self._redirected, call, what)
        return d

    def publish(
        self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None
    ) -> defer.Deferred[Publication]:
        def call(link: RedisBroker, asking: bool) -> defer.Deferred[Publication]:
            return link.publish(channel, data, sender, idempotency_key, asking=asking)

        return self._routed(channel, "publish", call)

    def history(self, channel: str, since: Position | None) -> defer.Deferred[HistoryResult]:
        return self._routed(channel, "history", lambda link, asking: link.history(channel, since))

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        try:
            link = self._link(channel, "subscribe")
        except Unavailable:
            return defer.fail()
        previous = self._channels.get(channel)
        self._channels[channel] = self.slot_map.owner(key_slot(channel))  # type: ignore[assignment]

        def failed(failure: Failure) -> Failure:
            if previous is None:
                self._channels.pop(channel, None)
            return failure

        return link.subscribe(channel).addErrback(failed)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        address = self._channels.pop(channel, None)
        link = self.links.get(address) if address is not None else None
        if link is None:
            return defer.succeed(None)
        return link.unsubscribe(channel)

    def publish_control(self, message: dict[str, Any]) -> defer.Deferred[None]:
        address = self._control_link()
        if address is None:
            return defer.fail(Unavailable("control: no cluster node is reachable"))
        return self.links[address].publish_control(message)

    def presence_update(self, changes: list[PresenceChange]) -> defer.Deferred[None]:
        by_link: dict[Address, list[PresenceChange]] = {}
        for change in changes:
            address = self.slot_map.owner(key_slot(change.channel))
            if address is None or address not in self.links:
                return defer.fail(Unavailable(f"presence: no master serves the slot of {change.channel!r}"))
            by_link.setdefault(address, []).append(change)
        if not by_link:
            return defer.succeed(None)
        ds = [self.links[a].presence_update(cs) for a, cs in by_link.items()]
        d = defer.gatherResults(ds, consumeErrors=True)

        def unwrap(failure: Failure) -> Failure:
            failure.trap(defer.FirstError)
            return failure.value.subFailure  # type: ignore[no-any-return]

        return d.addCallbacks(lambda _: None, unwrap)

    def presence_query(self, channel: str, limit: int, after: str | None) -> defer.Deferred[PresencePage]:
        return self._routed(channel, "presence", lambda link, asking: link.presence_query(channel, limit, after))

    # -- what else lives in Redis (revocations) -----------------------------------

    def execute(self, what: str, command: str, *args: Any) -> defer.Deferred[Any]:
        """One command on the master of its first argument's slot (a key)."""
        if not args:
            return defer.fail(Unavailable(f"{what}: a cluster command needs a key"))
        return self._routed(str(args[0]), what, lambda link, asking: link.execute(what, command, *args))

    def eval(self, what: str, script: bytes, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        """A script on the master of its keys' slot (they must share one)."""
        if not keys or len({key_slot(k) for k in keys}) != 1:
            return defer.fail(Unavailable(f"{what}: a cluster script needs keys of one slot"))
        return self._routed(keys[0], what, lambda link, asking: link.eval(what, script, keys, args))
