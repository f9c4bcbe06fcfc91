"""The Redis broker: channels, seqs and history shared by every node through Redis.

Theory of operation
-------------------
*Ordering.*  A publish is one ``EVALSHA`` of ``lua/publish.lua``: it reads (or
creates) the channel's epoch in its meta hash, ``HINCRBY``\\s the seq, appends the
entry to the history list (trimmed by count and by age, with an idle expiry) and
``PUBLISH``\\es the same entry, all atomically inside Redis.  Seqs are therefore
unique and gapless across nodes, and the order on the pub/sub channel is the seq
order.  The entry, ``"<seq>:<ts>:<epoch>:<json body>"``, carries everything a
:class:`~gateway.core.model.Publication` needs, so delivery costs no extra round
trip.  ``ts`` is Redis' own ``TIME``: every node trims history by the same clock.

*Epochs.*  The epoch lives in Redis.  When a channel's meta hash is missing (first
use, idle for longer than the meta expiry, ``FLUSHALL``, a new Redis) the script
that finds it missing installs the fresh epoch the caller passed along and starts
the seq again from 0; the bus sees the new epoch and resets its subscribers.
Seqs are never renumbered silently.

*Delivery.*  One subscriber connection per node, with one Redis ``SUBSCRIBE`` per
channel that has local subscribers (the bus asks on the first local subscriber
and releases on the last).  txredisapi reconnects that connection but does not
restore its subscriptions, so the subscriber protocol resubscribes every wanted
channel when it connects.  Once that is done *and* a command connection works,
the listener's ``broker_reconnected`` makes the bus fill whatever was published
meanwhile from history (``lua/history.lua``, one round trip); messages that
arrived during the resubscribe are handed over after that call.  The publications
of one read of that connection go to the listener together
(``publications_received``, when it has it), so the node fans them out in one
pass; anything else in the read (presence, control messages) keeps its place
between them.  ``subscribe``
fails at once while Redis is unreachable, and waits (up to the command timeout)
while only the pub/sub connection is coming back.

*Control messages.*  :meth:`RedisBroker.publish_control` ``PUBLISH``\\es a JSON
object on ``{prefix}:<db>:control``, which every node's pub/sub connection
subscribes to on each (re)connect, before :meth:`RedisBroker.start` reports the
node started; they go to the listener's ``control_received``.  They are not
stored: a node whose pub/sub connection is down when one is sent misses it.

*Idempotency keys.*  A publish with an ``idempotency_key`` passes one more key
to the same script, ``{prefix}:{<channel>}:idem:<sha-256 of the key>`` (hashed, so
whatever the client chose cannot shape key names; the channel's hash tag keeps it
in the slot of the channel's other keys).  The script answers a key that holds a
publication of the channel's current epoch with that publication and does nothing
else; otherwise it publishes and ``SET``\\s the key with ``PX`` (5 minutes).  The
check and the publish are one atomic step, so a retry on any node, or two
concurrent publishes with one key, publish once.  When Redis lost the keys
(flushed, replaced) the key is gone with the epoch, and a retry publishes anew in
the new epoch.

*Publisher order.*  Redis runs the commands of one connection in the order they
were sent, but nothing orders commands sent on two connections of the pool.  So
a channel's publishes all go out on one connection: the one the channel's name
hashes to, or, while publishes of the channel are still in flight, the one
carrying them (the pool may have grown or shrunk since they were sent).  The
publications one client sends to one channel are thereby sequenced in send
order; other channels still spread over the pool.

*Failing fast.*  txredisapi queues commands issued while Redis is down until it
comes back, which would turn a publish into a hang (or worse, a late publish).
This module picks a live command connection itself and, with none, fails at
once with :class:`~gateway.errors.Unavailable`; :meth:`RedisBroker.is_ready`
is exactly "a command connection is live".  A new connection counts only once
Redis has answered a PING on it (a stopped or loading server still accepts TCP
connections).  Every command also has a
deadline (``command_timeout``): txredisapi's ``replyTimeout`` aborts a connection
whose server stopped answering, and a health check PINGs both connections every
``health_interval`` seconds so a hung or half-open server is noticed even when
idle.  A publish that timed out may still have been applied by Redis (its
subscribers then get it); it is reported as unavailable, never as done.

*Sentinel.*  With ``redis+sentinel://`` both factories connect through a
:class:`~gateway.broker.sentinel.SentinelEndpoint`, which asks the Sentinels for the
master before every attempt; a command connection counts only once ``INFO
replication`` says ``role:master``, and its ``master_replid`` becomes the *writer*
passed to publish.lua and history.lua.  A channel whose meta hash was written under
another writer (a replica promoted since) starts a new epoch: asynchronous
replication may have lost the old master's last acked publications, and going on in
the same epoch would hand their seqs to other publications, a silent gap.  A master
demoted while connected is left on its ``READONLY`` errors, on the health check's
``ROLE`` and when the Sentinels name another address.

*Reconnecting.*  txredisapi's ClientService-based slots back off from
``reconnect_initial_delay`` to ``reconnect_max_delay`` (set per factory, not on
the global class), with jitter.

Keys, under a configurable prefix (``redis://host:port/db?prefix=gw``, default
``gateway``), with the channel name as a Redis Cluster hash tag::

    {prefix}:{<channel>}:meta   hash: e = epoch, s = latest seq, w = writer (Sentinel:
                                the replication ID of the master that began the epoch)
    {prefix}:{<channel>}:hist   list of entries, oldest first
    {prefix}:{<channel>}:idem:<sha-256 hex of the key>
                                "<seq>:<epoch>:<ts>" of the first publication
                                with that idempotency key, expiring after 5 min
    {prefix}:<db>:pub:<channel> pub/sub channel (pub/sub ignores the db number,
                                so it is part of the name)
    {prefix}:{<channel>}:pub    the same in a Redis Cluster (sharded pub/sub,
                                SPUBLISH/SSUBSCRIBE, in the channel's slot)
    {prefix}:<db>:control       pub/sub channel of control messages (revocation),
                                subscribed by every node's pub/sub connection
    {prefix}:{rev:<sub>}        a revoked identity (see gateway.auth.revocation)
    {prefix}:{<channel>}:pe / :pc / :pt / :ps / :pa
                                presence: entries by expiry, their counts, totals
                                per sub, subs present, anonymous count
                                (lua/presence.lua); join/leave events go out on the
                                channel's pub/sub channel as "P<json>"

Memory is bounded by the history settings: each history list holds at most
``history_size`` entries none older than ``history_ttl`` (trimmed on every
publish) and expires ``history_ttl`` + 10 s after the last publish.  The meta hash
(a few dozen bytes) expires after max(24 h, 2 × ``history_ttl``) without a publish
or subscribe: it must outlive the history so no entry is ever read under a new
epoch, and outliving it by a day lets a client of a quiet channel resume without a
reset (its position equals the top, nothing is missing).  That matches the
in-memory broker, which forgets a channel after 24 h idle.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.broker._resp import RespError, RespReader
from gateway.broker.memory import STREAM_IDLE_SECONDS, new_epoch
from gateway.broker.redisurl import CLUSTER, SENTINEL, RedisURL, parse_redis_url
from gateway.broker.shards import ShardStats
from gateway.config import Config
from gateway.core.events import encode_json
from gateway.core.idempotency import IDEMPOTENCY_TTL
from gateway.core.model import HistoryResult, Position, Publication
from gateway.core.presence import PresenceChange, PresenceEvent, PresencePage
from gateway.core.stream import recover
from gateway.errors import BadRequest, Unavailable
from gateway.interfaces import IBroker, IBrokerListener

__all__ = ["RedisBroker", "RedisURL", "load_script", "parse_redis_url"]

# Seconds an idle channel's history list outlives its newest entry (all of it is
# past the ttl by then; the margin only avoids expiring a list being appended to).
HISTORY_EXPIRY_MARGIN = 10
# Most pub/sub messages held back while a reconnected subscriber waits for a
# command connection (see RedisBroker._finish_reconnect).
MAX_BUFFERED = 10000
# Most presence changes in one script call (bounds one call's time inside Redis).
PRESENCE_CHUNK = 1000


def load_script(name: str) -> bytes:
    """The Lua script ``name`` shipped in ``gateway/broker/lua/``."""
    return resources.files("gateway.broker").joinpath("lua", name).read_bytes()


def _txredisapi() -> Any:
    """Import txredisapi on first use: it imports the global reactor at module level,
    which must not happen before the application (or pytest-twisted) installs one."""
    import txredisapi

    return txredisapi


_PROTOCOLS: dict[str, type] = {}


def _later(conn: Any, notify: Any) -> None:
    # Without AUTH or SELECT a connection is ready inside makeConnection(), before
    # the endpoint and txredisapi's ClientService know about it; anything the
    # broker does then (even stopping) must wait for the reactor to finish that.
    broker = conn.factory.broker
    call = broker._reactor.callLater(0, _if_connected, conn, notify)
    broker._soon.add(call)


def _if_connected(conn: Any, notify: Any) -> None:
    broker = conn.factory.broker
    broker._soon = {c for c in broker._soon if c.active()}
    if conn.connected and not broker._stopping:
        notify(conn)


def _protocols() -> dict[str, type]:
    """The two txredisapi protocol subclasses, defined on first use (see :func:`_txredisapi`)."""
    if _PROTOCOLS:
        return _PROTOCOLS
    txredisapi: Any = _txredisapi()

    class _BrokerConnection:
        """What both connection kinds share: they tell the broker when they become
        usable and when they are lost, and they run txredisapi's own timers (reply
        timeouts, resuming the line parser) on the broker's reactor, cancelled when
        the connection is gone, so a stopped broker leaves nothing on the reactor."""

        factory: Any
        _ready: Any

        def _became_usable(self, conn: Any) -> None:
            raise NotImplementedError

        def _was_lost(self, why: Failure) -> None:
            raise NotImplementedError

        def connectionMade(self) -> Any:
            # No Nagle delay: a command written while the previous one is unanswered
            # (publishes pipelined on one connection) goes out at once, as Redis'
            # own replies do (it sets TCP_NODELAY on its side).
            no_delay = getattr(self.transport, "setTcpNoDelay", None)  # type: ignore[attr-defined]
            if no_delay is not None:
                try:
                    no_delay(True)
                except OSError:
                    pass
            # The base runs AUTH (and SELECT) first; tell the broker once it is usable.
            d = super().connectionMade()  # type: ignore[misc]
            self.whenConnected().addCallback(_later, self._became_usable)  # type: ignore[attr-defined]
            return d

        def connectionLost(self, why: Failure) -> None:
            was_ready = bool(self._ready)
            super().connectionLost(why)  # type: ignore[misc]
            self.cancel_timers()
            if was_ready:
                self._was_lost(why)

        def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
            call = self.factory.broker._reactor.callLater(delay, f, *args, **kwargs)
            self._timers = [c for c in getattr(self, "_timers", ()) if c.active()]
            self._timers.append(call)
            return call

        def cancel_timers(self) -> None:
            for call in getattr(self, "_timers", ()):
                if call.active():
                    call.cancel()
            self._timers = []

        def dataReceived(self, data: bytes, unpause: bool = False) -> None:
            # Our reader (gateway/broker/_resp.py) parses every reply in one pass:
            # txredisapi's own (without hiredis) pauses the socket and takes a
            # reactor turn per bulk string (a publish's reply holds one).
            reader = self.__dict__.get("_resp_reader")
            if reader is None:
                reader = self._resp_reader = RespReader(txredisapi.ResponseError)
            try:
                replies = reader.feed(data)
            except RespError as e:
                self.factory.broker._log.warn("{url}: {error}; reconnecting", url=self.factory.broker.name, error=str(e))
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            for reply in replies:
                self.replyReceived(reply)  # type: ignore[attr-defined]

    class _CommandProtocol(_BrokerConnection, txredisapi.RedisProtocol):
        """A pooled command connection."""

        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            # The same bytes as txredisapi's, built in one join (its own encodes
            # every argument and its length through a bytearray, a tenth of a
            # publish's CPU); pinned by tests/unit/test_redis_command.py.
            return command_bytes(args)

        def run_script(self, script: bytes, sha: str, keys: list[str], args: list[Any]) -> Any:
            """``EVALSHA`` of ``script`` (whose SHA-1 is ``sha``), or ``EVAL`` the first
            time on this connection and after a ``NOSCRIPT`` (Redis restarted or its
            scripts were flushed): txredisapi's ``eval`` without a SHA-1 of the
            script per call."""
            loaded: set[str] = self.__dict__.setdefault("_scripts_loaded", set())
            if sha not in loaded:
                d = self.execute_command("EVAL", script, len(keys), *keys, *args)
                return d.addCallback(self._script_loaded, sha)
            d = self.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            return d.addErrback(self._no_script, script, sha, keys, args)

        def _script_loaded(self, reply: Any, sha: str) -> Any:
            self.__dict__.setdefault("_scripts_loaded", set()).add(sha)
            return reply

        def _no_script(self, failure: Failure, script: bytes, sha: str, keys: list[str], args: list[Any]) -> Any:
            if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
                self.__dict__.setdefault("_scripts_loaded", set()).discard(sha)
                return self.run_script(script, sha, keys, args)
            return failure

        def _became_usable(self, conn: Any) -> None:
            self.factory.broker._command_connected(conn)

        def _was_lost(self, why: Failure) -> None:
            self.factory.broker._command_lost(self, why)

    class _SubscriberProtocol(_BrokerConnection, txredisapi.SubscriberProtocol):
        """The node's one pub/sub connection: the broker resubscribes on every (re)connect."""

        def _became_usable(self, conn: Any) -> None:
            self.factory.broker._subscriber_connected(conn)

        def _was_lost(self, why: Failure) -> None:
            self.factory.broker._subscriber_lost(self, why)

        def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
            self.factory.broker._message_received(channel, message)

        def dataReceived(self, data: bytes, unpause: bool = False) -> None:
            # The publications of one read go to the listener together (see
            # RedisBroker._deliver_batch), so the node fans them out in one pass.
            broker = self.factory.broker
            broker._batch = []
            try:
                super().dataReceived(data)
            finally:
                broker._deliver_batch()

        # Sharded pub/sub (Redis Cluster): txredisapi knows SUBSCRIBE and PSUBSCRIBE
        # only.  One channel per SSUBSCRIBE/SUNSUBSCRIBE, so each has one reply; a
        # "sunsubscribe" nobody asked for is the server dropping a channel whose slot
        # moved away.
        def replyReceived(self, reply: Any) -> None:
            kind = reply[0] if isinstance(reply, list) and len(reply) == 3 else None
            if kind == b"smessage":
                self.messageReceived(None, reply[1], reply[2])
            elif kind == b"ssubscribe":
                self.replyQueue.put(reply)
            elif kind == b"sunsubscribe":
                if getattr(self, "_sunsubscribing", 0) > 0:
                    self._sunsubscribing -= 1
                    self.replyQueue.put(reply)
                else:
                    self.factory.broker._shard_channel_dropped(reply[1])
            else:
                super().replyReceived(reply)

        def ssubscribe(self, channel: str) -> Any:
            return self.execute_command("SSUBSCRIBE", channel, apply_timeout=False)

        def sunsubscribe(self, channel: str) -> Any:
            self._sunsubscribing = getattr(self, "_sunsubscribing", 0) + 1
            return self.execute_command("SUNSUBSCRIBE", channel)

    class _Factory(txredisapi.RedisFactory):
        """A RedisFactory that never gives up while the broker runs.

        txredisapi stops reconnecting for good when AUTH or SELECT fails, which
        includes a connection dropped in the middle of that handshake (a Redis
        restart at the wrong moment).  A gateway node keeps retrying with backoff
        and stays unready meanwhile; :meth:`RedisBroker.stop` ends the retries.
        """

        def stopTrying(self) -> Any:
            return defer.succeed(None)

        def connectionError(self, why: str) -> None:
            self.broker._log.warn("{url}: {why}; retrying", url=self.broker.name, why=why)

    _PROTOCOLS["factory"] = _Factory
    _PROTOCOLS["command"] = _CommandProtocol
    _PROTOCOLS["subscriber"] = _SubscriberProtocol
    return _PROTOCOLS


def command_bytes(args: Any) -> bytes:
    """A Redis command as RESP bytes, encoding its arguments as txredisapi does with
    ``charset=None``: bytes as they are, text as UTF-8, floats with ``format(x, "f")``,
    anything else as its ``str``."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    try:
        for arg in args:
            t = type(arg)
            if t is str:
                value = arg.encode()
            elif t is bytes:
                value = arg
            elif t is int:
                value = b"%d" % arg
            elif isinstance(arg, str):
                value = arg.encode()
            elif isinstance(arg, bytes):
                value = arg
            elif isinstance(arg, float):
                value = format(arg, "f").encode()
            elif isinstance(arg, bytearray):
                value = bytes(arg)
            else:
                value = str(arg).format().encode()
            append(b"$%d\r\n%s\r\n" % (len(value), value))
    except UnicodeError:
        raise _txredisapi().InvalidData("Encoding charset was not specified") from None
    return b"".join(parts)


def _factory(broker: RedisBroker, protocol: type, poolsize: int, url: RedisURL, db: int | None) -> Any:
    factory = _protocols()["factory"](
        url.display(),
        db,
        poolsize,
        isLazy=True,
        charset=None,
        password=url.password,
        username=url.username,
        replyTimeout=broker.command_timeout,
        convertNumbers=False,
    )
    factory.protocol = protocol
    factory.broker = broker
    # Per factory, not the global class attributes.
    factory.initialDelay = broker.reconnect_initial_delay
    factory.maxDelay = broker.reconnect_max_delay
    return factory


@implementer(IBroker)
class RedisBroker:
    """Broker sharing channels through Redis (see the module docstring).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db][?prefix=P]``.
        history_size: most publications kept per channel.
        history_ttl: oldest publication kept, in seconds.
        reactor: the reactor (``IReactorTCP`` + ``IReactorTime``).
        poolsize: command connections.  One by default: the node is CPU-bound long
            before one connection is (``bench/redis_publish.py``: the same
            publications/s with 1 or 2), and a channel's publishes share one
            connection anyway (*Publisher order*).
        command_timeout: deadline of every Redis command, in seconds.
        connect_timeout: deadline of one connection attempt, in seconds.
        health_interval: seconds between PINGs on idle connections (0: none).
        reconnect_initial_delay: first reconnection delay, in seconds.
        reconnect_max_delay: cap of the reconnection backoff, in seconds.
        idempotency_ttl: seconds an ``idempotency_key`` is remembered per channel
            (millisecond precision; tests shorten it).
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        *,
        reactor: Any,
        poolsize: int = 1,
        command_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        health_interval: float = 1.0,
        reconnect_initial_delay: float = 0.1,
        reconnect_max_delay: float = 1.0,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
        sharded: bool = False,
        on_dropped: Any = None,
    ) -> None:
        self.url = parse_redis_url(url)
        # One shard of a Redis Cluster (gateway.broker.cluster): sharded pub/sub on
        # hash-tagged channels, scripts guarded by the master's replication ID, and
        # MOVED/ASK reported as Redirected; on_dropped(channel) when the server drops
        # a sharded subscription (its slot moved).
        self.sharded = sharded
        self._on_dropped = on_dropped
        self.name = self.url.display()
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._reactor = reactor
        self.poolsize = poolsize
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.reconnect_initial_delay = reconnect_initial_delay
        self.reconnect_max_delay = reconnect_max_delay

        prefix = self.url.prefix
        self._meta_fmt = prefix + ":{{{}}}:meta"
        self._hist_fmt = prefix + ":{{{}}}:hist"
        self._idem_fmt = prefix + ":{{{}}}:idem:{}"
        self._idempotency_ms = str(max(1, math.ceil(idempotency_ttl * 1000)))
        self._pub_prefix = f"{prefix}:{self.url.db}:pub:"
        if sharded:
            # The channel's hash tag: SPUBLISH from the script reaches the subscribers
            # of the channel's own shard.
            self._pub_prefix = f"{prefix}:{{"
        self._pub_prefix_bytes = self._pub_prefix.encode()
        self._pub_suffix = "}:pub" if sharded else ""
        self._pub_suffix_bytes = self._pub_suffix.encode()
        self._control_channel = f"{prefix}:{self.url.db}:control"
        self._control_channel_bytes = self._control_channel.encode()
        self._rev_fmt = prefix + ":{{rev:{}}}"
        self._history_ms = str(math.ceil(history_ttl * 1000))
        self._history_expiry = str(math.ceil(history_ttl) + HISTORY_EXPIRY_MARGIN)
        self._meta_expiry = str(int(max(STREAM_IDLE_SECONDS, math.ceil(2 * history_ttl))))
        self._publish_script = load_script("publish.lua")
        self._history_script = load_script("history.lua")
        self._presence_script = load_script("presence.lua")
        self._presence_fmt = prefix + ":{{{}}}:"
        self._script_sha: dict[bytes, str] = {}  # script -> its SHA-1 (EVALSHA)

        self._listener: IBrokerListener | None = None
        self._pool: Any = None
        self._subscriber_factory: Any = None
        self._commands: list[Any] = []  # live command connections
        self._next = 0
        # channel -> [connection, publishes in flight on it] (publisher order).
        self._inflight: dict[str, list[Any]] = {}
        self._subscriber: Any = None  # the live subscriber connection
        self._subscriber_connections = 0  # how many times it was (re)subscribed
        # Messages that arrive while a reconnected subscriber is still resubscribing
        # are handed over after broker_reconnected(), so the bus is already filling
        # gaps when it sees them.
        self._buffered: list[tuple[bytes, bytes]] | None = None
        # While the pub/sub connection's read is being parsed: its publications,
        # handed to the listener together at the end (see _deliver_batch).
        self._batch: list[Publication] | None = None
        self._resubscribed_conn: Any = None
        self._soon: set[Any] = set()  # pending _later() calls, cancelled by stop()
        # subscribe() calls waiting for the subscriber connection to come (back).
        self._subscribe_waiters: list[defer.Deferred[None]] = []
        self._channels: set[str] = set()  # channels the bus wants delivered
        self._health: LoopingCall | None = None
        self._started: defer.Deferred[None] | None = None
        self._start_timer: Any = None
        self._stopping = False
        self._was_ready = False
        self._down_since: float | None = None
        # redis+sentinel: the endpoint asking the Sentinels for the master.
        self._sentinel: Any = None
        self.master_changes = 0  # masters named after the first (failovers seen)
        shard = self.url.master_name if self.url.scheme == SENTINEL else f"{self.url.host}:{self.url.port}"
        self.shard = ShardStats(shard or "redis")
        # Under Sentinel the scripts guard every stream with the master's replication
        # ID (publish.lua ARGV[9]): a promoted replica has a new one.
        self._guarded = sharded or self.url.scheme in (SENTINEL, CLUSTER)

    @classmethod
    def from_config(cls, config: Config, reactor: Any) -> RedisBroker:
        """The broker for ``config.redis`` with the configured history bounds."""
        assert config.redis is not None
        return cls(config.redis, config.history_size, config.history_ttl, reactor=reactor)

    # -- keys ---------------------------------------------------------------

    def meta_key(self, channel: str) -> str:
        """The Redis key of ``channel``'s meta hash (epoch and latest seq)."""
        return self._meta_fmt.format(channel)

    def history_key(self, channel: str) -> str:
        """The Redis key of ``channel``'s history list."""
        return self._hist_fmt.format(channel)

    def idempotency_key(self, channel: str, key: str) -> str:
        """The Redis key remembering ``key`` (an idempotency key) on ``channel``: the
        key's SHA-256, so no client-chosen text ends up in key names."""
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._idem_fmt.format(channel, digest)

    def pubsub_channel(self, channel: str) -> str:
        """The Redis pub/sub channel carrying ``channel``'s publications."""
        return self._pub_prefix + channel + self._pub_suffix

    def _channel_of(self, redis_channel: bytes) -> str | None:
        if not redis_channel.startswith(self._pub_prefix_bytes) or not redis_channel.endswith(self._pub_suffix_bytes):
            return None
        return redis_channel[len(self._pub_prefix_bytes) : len(redis_channel) - len(self._pub_suffix_bytes)].decode()

    def _shard_channel_dropped(self, redis_channel: Any) -> None:
        if isinstance(redis_channel, str):
            redis_channel = redis_channel.encode()
        channel = self._channel_of(redis_channel)
        if channel is None or channel not in self._channels:
            return
        self._flush_batch()
        self._log.info("{url} dropped the subscription of {channel} (its slot moved)", url=self.name, channel=channel)
        self._channels.discard(channel)
        if self._on_dropped is not None:
            self._on_dropped(channel)

    @property
    def control_channel(self) -> str:
        """The Redis pub/sub channel carrying control messages between nodes."""
        return self._control_channel

    def revocation_key(self, sub: str) -> str:
        """The Redis key holding ``sub``'s revocation (hash-tagged by identity)."""
        return self._rev_fmt.format(sub)

    # -- lifecycle ------------------------------------------------------------

    def start(self, listener: IBrokerListener) -> defer.Deferred[None]:
        """Connect in the background; fires once ready (a command connection is up and
        the pub/sub connection listens to the control channel), or after
        ``connect_timeout`` if not."""
        self._listener = listener
        self._stopping = False
        endpoint: Any
        if self.url.scheme == SENTINEL:
            from gateway.broker.sentinel import SentinelEndpoint

            assert self.url.master_name is not None
            endpoint = self._sentinel = SentinelEndpoint(
                self._reactor, self.url.nodes, self.url.master_name, self.connect_timeout, self._master_changed
            )
        else:
            endpoint = HostnameEndpoint(self._reactor, self.url.host, self.url.port, timeout=self.connect_timeout)
        protocols = _protocols()
        # Database 0 is every connection's default: no SELECT round trip on connect.
        self._pool = _factory(self, protocols["command"], self.poolsize, self.url, self.url.db or None)
        self._subscriber_factory = _factory(self, protocols["subscriber"], 1, self.url, None)
        self._pool.startConnecting(endpoint)
        self._subscriber_factory.startConnecting(endpoint)
        if self.health_interval > 0:
            self._health = LoopingCall(self._health_check)
            self._health.clock = self._reactor
            self._health.start(self.health_interval, now=False)
        self._started = defer.Deferred()
        self._start_timer = self._reactor.callLater(self.connect_timeout, self._start_done)
        self._log.info("connecting to {url}", url=self.name)
        return self._started

    def _maybe_started(self) -> None:
        # Started once publishes can be made durable and control messages arrive.
        if self._started is not None and self.is_ready() and self._resubscribed_conn is not None:
            self._start_done()

    def _start_done(self) -> None:
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None
        started, self._started = self._started, None
        if started is not None:
            if not self.is_ready() and not self._stopping:
                self._log.warn("{url} is not reachable yet; this node is not ready until it is", url=self.name)
            started.callback(None)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Close both connections and stop every timer."""
        self._stopping = True
        self._start_done()
        if self._health is not None and self._health.running:
            self._health.stop()
        self._health = None
        for call in self._soon:
            if call.active():
                call.cancel()
        self._soon = set()
        factories = [f for f in (self._pool, self._subscriber_factory) if f is not None]
        self._pool = self._subscriber_factory = None
        yield defer.gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        if self._sentinel is not None:
            sentinel, self._sentinel = self._sentinel, None
            yield sentinel.close()
        self._commands = []
        self._subscriber = None
        self._channels.clear()
        waiters, self._subscribe_waiters = self._subscribe_waiters, []
        for d in waiters:
            if not d.called:
                d.errback(Unavailable("subscribe: the broker stopped"))

    def is_ready(self) -> bool:
        """True while a command connection is up: publishes can be made durable.

        The pub/sub connection is not part of it: publishing goes on while it
        reconnects (subscribers catch up from history once it is back), and
        :meth:`subscribe` waits for it.  In a real outage both drop together.
        """
        return bool(not self._stopping and self._commands)

    def channel_ready(self, channel: str) -> bool:
        """One Redis holds every channel: :meth:`is_ready`."""
        return self.is_ready()

    def shards(self) -> list[ShardStats]:
        """Per-shard figures for ``/metrics`` and ``/readyz`` (one shard here)."""
        return [self.shard]

    def _readiness_changed(self) -> None:
        ready = self.is_ready()
        self.shard.up = ready
        if ready == self._was_ready:
            return
        self._was_ready = ready
        now = self._reactor.seconds()
        if ready:
            if self._down_since is not None:
                self._log.info("{url} is back after {seconds:.2f}s; node ready", url=self.name, seconds=now - self._down_since)
            else:
                self._log.info("connected to {url}; node ready", url=self.name)
            self._down_since = None
            self._maybe_started()
        else:
            self._down_since = now
            if not self._stopping:
                self._log.warn("lost {url}: publishes are refused until it is back", url=self.name)

    # -- connection events (from the protocols) -------------------------------

    def _command_connected(self, conn: Any) -> None:
        # A connection is only usable once Redis answers on it: a stopped or
        # still-loading server accepts TCP connections all the same.
        if self._guarded:
            # And, under Sentinel, once it is the master: its replication ID
            # becomes the writer the scripts check (see publish.lua).
            d = self._timed(defer.maybeDeferred(conn.execute_command, "INFO", "replication"))
            d.addCallback(self._check_master, conn)
        else:
            d = self._timed(defer.maybeDeferred(conn.execute_command, "PING"))
        d.addCallbacks(self._command_usable, self._connection_unusable, (conn,), errbackArgs=(conn,))

    def _check_master(self, reply: Any, conn: Any) -> None:
        from gateway.broker.sentinel import parse_info

        info = parse_info(reply)
        if info.get("role") != "master" or not info.get("master_replid"):
            raise Unavailable(f"not a master (role {info.get('role', '?')})")
        conn.writer = info["master_replid"]

    def _master_changed(self, address: tuple[str, int]) -> None:
        """The Sentinels name another master: drop connections still open to the old one
        (a demoted master that stayed up would otherwise keep them)."""
        self._log.warn("Sentinel: the master of {name} is now {host}:{port}", name=self.url.master_name, host=address[0], port=address[1])
        self.master_changes += 1
        for conn in [*self._commands, self._subscriber]:
            if conn is None or conn.transport is None:
                continue
            peer = conn.transport.getPeer()
            if (getattr(peer, "host", None), getattr(peer, "port", None)) != address:
                conn.transport.abortConnection()

    def _connection_unusable(self, failure: Failure, conn: Any) -> None:
        if not self._stopping:
            self._log.warn("{url} does not answer on a new connection ({error}); reconnecting", url=self.name, error=failure.getErrorMessage() or failure.type.__name__)
        if conn.transport is not None:
            conn.transport.abortConnection()

    def _command_usable(self, _: object, conn: Any) -> None:
        if self._stopping or not conn.connected:
            return
        self._commands.append(conn)
        self._readiness_changed()
        self._finish_reconnect()

    def _command_lost(self, conn: Any, why: Failure) -> None:
        if conn in self._commands:
            self._commands.remove(conn)
        self._readiness_changed()

    def _subscriber_connected(self, conn: Any) -> None:
        if self._stopping:
            return
        self._subscriber = conn
        self._resubscribed_conn = None
        if self._subscriber_connections:
            self._buffered = []
        channels = sorted(self._channels)
        subscribe = conn.ssubscribe if self.sharded else conn.subscribe
        ds = [self._timed(subscribe(self.pubsub_channel(c))) for c in channels]
        ds.append(self._timed(conn.subscribe(self._control_channel)))
        ds.append(self._timed(defer.maybeDeferred(conn.execute_command, "PING")))
        d = defer.gatherResults(ds, consumeErrors=True)
        d.addCallbacks(self._resubscribed, self._resubscribe_failed, (conn, len(channels)), errbackArgs=(conn,))

    def _resubscribed(self, _: object, conn: Any, count: int) -> None:
        if self._subscriber is not conn or self._stopping:
            return
        reconnected = self._subscriber_connections > 0
        self._subscriber_connections += 1
        self._resubscribed_conn = conn
        if reconnected:
            self.shard.pubsub_reconnects += 1
            self._log.info("pub/sub connection back; resubscribed to {count} channel(s)", count=count)
        self._finish_reconnect()
        self._maybe_started()
        waiters, self._subscribe_waiters = self._subscribe_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _finish_reconnect(self) -> None:
        """Tell the listener once the pub/sub connection is resubscribed *and* a command
        connection is up (its gap fill reads history), then hand over what arrived meanwhile."""
        if self._buffered is None or self._resubscribed_conn is None or not self.is_ready():
            return
        buffered, self._buffered = self._buffered, None
        if self._listener is not None:
            self._flush_batch()
            # Whatever was published while the subscriber was away is in history.
            self._listener.broker_reconnected()
        for redis_channel, message in buffered:
            self._message_received(redis_channel, message)

    def _resubscribe_failed(self, failure: Failure, conn: Any) -> None:
        failure.trap(defer.FirstError)
        self._connection_unusable(failure.value.subFailure, conn)

    def _subscriber_lost(self, conn: Any, why: Failure) -> None:
        if self._subscriber is conn:
            self._subscriber = None
            self._resubscribed_conn = None
            self._buffered = None
            if not self._stopping:
                self._log.warn("pub/sub connection to {url} lost ({why}); reconnecting", url=self.name, why=why.getErrorMessage())

    def _health_check(self) -> None:
        for conn in list(self._commands) + ([self._subscriber] if self._subscriber is not None else []):
            # replyTimeout aborts a connection whose server stopped answering.
            if self._guarded and conn is not self._subscriber:
                # A master demoted while we stayed connected answers as a replica.
                d = defer.maybeDeferred(conn.execute_command, "ROLE")
                d.addCallback(self._still_master, conn)
            else:
                d = defer.maybeDeferred(conn.execute_command, "PING")
            d.addErrback(lambda f: None)

    def _still_master(self, reply: Any, conn: Any) -> None:
        from gateway.broker.sentinel import parse_role

        role = parse_role(reply)
        if role != "master" and conn.transport is not None:
            self._log.warn("{url}: the connected server is now a {role}; reconnecting", url=self.name, role=role or "?")
            conn.transport.abortConnection()

    # -- commands -----------------------------------------------------------------

    def _timed(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        # A backstop: replyTimeout does not cover SUBSCRIBE.
        return d.addTimeout(self.command_timeout + 0.5, self._reactor)

    def _connection(self) -> Any:
        if self._stopping or not self._commands:
            return None
        self._next = (self._next + 1) % len(self._commands)
        return self._commands[self._next]

    def _connection_for(self, channel: str) -> Any:
        """The connection for a publish to ``channel`` (see *Publisher order*)."""
        if self._stopping or not self._commands:
            return None
        entry = self._inflight.get(channel)
        if entry is not None and entry[0] in self._commands:
            return entry[0]
        return self._commands[zlib.crc32(channel.encode("utf-8")) % len(self._commands)]

    def _track(self, channel: str, conn: Any, d: defer.Deferred[Any]) -> None:
        entry = self._inflight.get(channel)
        if entry is None or entry[0] is not conn:
            entry = self._inflight[channel] = [conn, 0]
        entry[1] += 1

        def done(result: Any) -> Any:
            entry[1] -= 1
            if entry[1] == 0 and self._inflight.get(channel) is entry:
                del self._inflight[channel]
            return result

        d.addBoth(done)

    def _eval(
        self,
        what: str,
        script: bytes,
        keys: list[str],
        args: list[Any],
        conn: Any = None,
        writer: bool = False,
        asking: bool = False,
    ) -> defer.Deferred[Any]:
        if conn is None:
            conn = self._connection()
        if conn is None:
            return defer.fail(Unavailable(f"{what}: Redis is not reachable"))
        if writer:
            # The last argument of publish.lua and history.lua (see _check_master),
            # and for publish.lua in a cluster, SPUBLISH.
            args = [*args, getattr(conn, "writer", "")]
            if self.sharded and script is self._publish_script:
                args.append("SPUBLISH")
        if asking:
            # ASK redirect: this one command, on the importing node (same connection, next).
            conn.execute_command("ASKING").addErrback(lambda f: None)
        sha = self._script_sha.get(script)
        if sha is None:
            sha = self._script_sha[script] = hashlib.sha1(script).hexdigest()  # Redis' script id
        run = getattr(conn, "run_script", None)
        if run is None:
            # Not one of our connections (tests): txredisapi's own eval.
            d = self._timed(defer.maybeDeferred(conn.eval, script, keys, args))
        else:
            # txredisapi's replyTimeout (command_timeout) bounds EVAL/EVALSHA itself:
            # no second timer per call.
            try:
                d = run(script, sha, keys, args)
            except Exception:  # noqa: BLE001 - as maybeDeferred: a raise becomes the failure
                d = defer.fail()
        d = self._measured(d)
        d.addErrback(self._unavailable, what, conn)
        return d

    def _measured(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        started = self._reactor.seconds()

        def done(result: Any) -> Any:
            self.shard.observe(self._reactor.seconds() - started)
            return result

        return d.addBoth(done)

    def execute(self, what: str, command: str, *args: Any) -> defer.Deferred[Any]:
        """Run one Redis command on a live command connection, with the command
        deadline; fails at once with :class:`~gateway.errors.Unavailable` while
        Redis is unreachable (``what`` names it in logs and errors)."""
        conn = self._connection()
        if conn is None:
            return defer.fail(Unavailable(f"{what}: Redis is not reachable"))
        d = self._measured(self._timed(defer.maybeDeferred(conn.execute_command, command, *args)))
        d.addErrback(self._unavailable, what, conn)
        return d

    def eval(self, what: str, script: bytes, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        """Run a Lua script as :meth:`execute` runs a command."""
        return self._eval(what, script, keys, args)

    def _unavailable(self, failure: Failure, what: str, conn: Any = None) -> Failure:
        if failure.check(Unavailable):
            return failure
        if self.sharded and failure.check(_txredisapi().ResponseError):
            from gateway.broker.slots import parse_redirect

            redirect = parse_redirect(failure.getErrorMessage(), (self.url.host, self.url.port))
            if redirect is not None:
                return Failure(Redirected(redirect, f"{what}: {redirect.kind} to {redirect.address[0]}:{redirect.address[1]}"))
        if failure.check(_txredisapi().ResponseError) and failure.getErrorMessage().startswith("READONLY"):
            # A master demoted under us (Sentinel failover): reconnect to the new one.
            self._log.warn("{what}: {url} is read-only now; reconnecting", what=what, url=self.name)
            if conn is not None and conn.transport is not None:
                conn.transport.abortConnection()
        elif failure.check(_txredisapi().ResponseError):
            self._log.error("{what} failed in Redis: {error}", what=what, error=failure.getErrorMessage())
        else:
            self._log.warn("{what} failed: {error}", what=what, error=failure.getErrorMessage() or failure.type.__name__)
        return Failure(Unavailable(f"{what}: Redis did not answer"))

    # -- IBroker -------------------------------------------------------------------

    def publish(
        self, channel: str, data: Any, sender: str | None = None, idempotency_key: str | None = None, asking: bool = False
    ) -> defer.Deferred[Publication]:
        try:
            # Refuse what could not be delivered before it takes a seq.
            body = encode_json({"c": channel, "d": data, "f": sender})
        except BadRequest:
            return defer.fail()
        args = [
            self.pubsub_channel(channel),
            body,
            new_epoch(),
            str(self.history_size),
            self._history_ms,
            self._history_expiry,
            self._meta_expiry,
        ]
        keys = [self.meta_key(channel), self.history_key(channel)]
        args.append(self._idempotency_ms)
        if idempotency_key is not None:
            keys.append(self.idempotency_key(channel, idempotency_key))
        conn = self._connection_for(channel)
        if conn is None:
            return defer.fail(Unavailable("publish: Redis is not reachable"))
        d = self._eval("publish", self._publish_script, keys, args, conn, writer=True, asking=asking)
        self._track(channel, conn, d)

        def published(reply: list[Any]) -> Publication:
            seq, epoch, ts = reply[:3]
            return Publication(channel, int(seq), _text(epoch), data, int(ts), sender, duplicate=len(reply) > 3)

        return d.addCallback(published)

    def history(self, channel: str, since: Position | None) -> defer.Deferred[HistoryResult]:
        args = [
            new_epoch(),
            "" if since is None else since.epoch,
            "0" if since is None else str(since.seq),
            self._meta_expiry,
        ]
        d = self._eval("history", self._history_script, [self.meta_key(channel), self.history_key(channel)], args, writer=True)

        def answer(reply: list[Any]) -> HistoryResult:
            epoch, top, now = _text(reply[0]), int(reply[1]), int(reply[2])
            oldest = now - int(self._history_ms)
            pubs = [p for p in (_parse_entry(channel, e) for e in reply[3:]) if p.ts >= oldest]
            return recover(Position(epoch, top), pubs, since)

        return d.addCallback(answer)

    def subscribe(self, channel: str) -> defer.Deferred[None]:
        """Subscribe at node level.

        Fails at once with Unavailable while Redis is unreachable.  While only the
        pub/sub connection is (re)connecting (Redis answers commands), this waits
        for it, up to the command timeout.
        """
        if self._stopping or self._listener is None:
            return defer.fail(Unavailable("subscribe: the broker is not running"))
        conn = self._subscriber
        if conn is None and not self.is_ready():
            return defer.fail(Unavailable("subscribe: Redis is not reachable"))
        self._channels.add(channel)
        if conn is not None:
            subscribe = conn.ssubscribe if self.sharded else conn.subscribe
            d = self._timed(defer.maybeDeferred(subscribe, self.pubsub_channel(channel)))
        else:
            # The connection, when it comes, subscribes to every wanted channel.
            waiter: defer.Deferred[None] = defer.Deferred()
            self._subscribe_waiters.append(waiter)
            d = self._timed(waiter)

        def failed(failure: Failure) -> Failure:
            self._channels.discard(channel)
            return self._unavailable(failure, "subscribe")

        return d.addCallbacks(lambda _: None, failed)

    def unsubscribe(self, channel: str) -> defer.Deferred[None]:
        self._channels.discard(channel)
        conn = self._subscriber
        if conn is None or self._stopping:
            return defer.succeed(None)
        unsubscribe = conn.sunsubscribe if self.sharded else conn.unsubscribe
        d = self._timed(defer.maybeDeferred(unsubscribe, self.pubsub_channel(channel)))
        # Not fatal: a reconnect subscribes only to wanted channels, and stray
        # messages for unwanted ones are dropped.
        d.addErrback(lambda f: self._log.warn("unsubscribe {channel} failed: {error}", channel=channel, error=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    def publish_control(self, message: dict[str, Any]) -> defer.Deferred[None]:
        """``PUBLISH`` ``message`` on the control channel every node listens to."""
        try:
            body = encode_json(message, "control message")
        except BadRequest:
            return defer.fail()
        return self.execute("control", "PUBLISH", self._control_channel, body).addCallback(lambda _: None)

    # -- presence ---------------------------------------------------------------

    def _presence_mode(self, mode: str) -> str:
        # presence.lua: "us"/"qs" publish join/leave with SPUBLISH (sharded pub/sub).
        return mode + "s" if self.sharded else mode

    def presence_keys(self, channel: str) -> list[str]:
        """The Redis keys of ``channel``'s presence (see lua/presence.lua)."""
        base = self._presence_fmt.format(channel)
        return [base + "pe", base + "pc", base + "pt", base + "ps", base + "pa"]

    def presence_update(self, changes: list[PresenceChange]) -> defer.Deferred[None]:
        """One ``EVALSHA`` of lua/presence.lua per channel (at most
        :data:`PRESENCE_CHUNK` changes each), all sent at once."""
        by_channel: dict[str, list[str]] = {}
        for change in changes:
            args = by_channel.setdefault(change.channel, [])
            args.extend((change.member, str(change.count), str(max(1, math.ceil(change.ttl * 1000)))))
        ds = []
        for channel, args in by_channel.items():
            for i in range(0, len(args), 3 * PRESENCE_CHUNK):
                chunk = [self._presence_mode("u"), self.pubsub_channel(channel), *args[i : i + 3 * PRESENCE_CHUNK]]
                ds.append(self._eval("presence", self._presence_script, self.presence_keys(channel), chunk))
        if not ds:
            return defer.succeed(None)
        d = defer.gatherResults(ds, consumeErrors=True)

        def unwrap(failure: Failure) -> Failure:
            failure.trap(defer.FirstError)
            return failure.value.subFailure  # type: ignore[no-any-return]

        return d.addCallbacks(lambda _: None, unwrap)

    def presence_query(self, channel: str, limit: int, after: str | None) -> defer.Deferred[PresencePage]:
        args = [self._presence_mode("q"), self.pubsub_channel(channel), str(limit), after or ""]
        d = self._eval("presence", self._presence_script, self.presence_keys(channel), args)

        def answer(reply: list[Any]) -> PresencePage:
            count, anonymous, more = int(reply[0]), int(reply[1]), bool(int(reply[2]))
            rest = reply[3:]
            members = tuple((_text(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2))
            return PresencePage(channel, members, count, anonymous, more)

        return d.addCallback(answer)

    def _presence_message(self, channel: str, message: bytes) -> None:
        try:
            flat = json.loads(message[1:])
            events = [PresenceEvent(flat[i], channel, flat[i + 1]) for i in range(0, len(flat), 2)]
            if not all(e.type in ("join", "leave") and isinstance(e.sub, str) for e in events):
                raise ValueError("not join/leave events")
        except (ValueError, TypeError, IndexError):
            self._log.warn("undecodable presence message on {channel}: {message!r}", channel=channel, message=message[:200])
            return
        if self._listener is not None:
            self._listener.presence_received(channel, events)

    @property
    def subscribed_channels(self) -> frozenset[str]:
        """Channels delivered to this node (for tests and metrics)."""
        return frozenset(self._channels)

    # -- delivery -----------------------------------------------------------------

    def _message_received(self, redis_channel: bytes, message: bytes) -> None:
        if self._buffered is not None:
            # Past the cap the rest is dropped: the gap fill reads it from history.
            if len(self._buffered) < MAX_BUFFERED:
                self._buffered.append((redis_channel, message))
            return
        if isinstance(redis_channel, str):
            redis_channel = redis_channel.encode()
        if redis_channel == self._control_channel_bytes:
            self._flush_batch()
            self._control_received(message)
            return
        channel = self._channel_of(redis_channel)
        if channel is None or channel not in self._channels or self._listener is None:
            return
        if message[:1] == b"P":
            self._flush_batch()
            self._presence_message(channel, message)
            return
        try:
            pub = _parse_entry(channel, message)
        except (ValueError, KeyError, TypeError, AttributeError):
            # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
            self._log.failure("undecodable message on {channel}: {message!r}", channel=channel, message=message[:200])
            return
        if self._batch is not None:
            self._batch.append(pub)
        else:
            self._listener.publication_received(pub)

    def _flush_batch(self) -> None:
        """Deliver what the current read brought so far, and go on collecting."""
        if self._batch:
            self._deliver_batch()
            self._batch = []

    def _deliver_batch(self) -> None:
        """Hand over the publications of one read of the pub/sub connection: to the
        listener's ``publications_received`` when it has one and there are several
        (it may fan them out in one pass), else one by one.  Called at the end of
        each read, and before anything else goes to the listener (presence, control,
        a reconnect), so the listener sees everything in arrival order."""
        batch, self._batch = self._batch, None
        if not batch or self._listener is None:
            return
        many = getattr(self._listener, "publications_received", None) if len(batch) > 1 else None
        if many is not None:
            many(batch)
        else:
            for pub in batch:
                self._listener.publication_received(pub)


    def _control_received(self, message: bytes) -> None:
        try:
            decoded = json.loads(message)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            self._log.warn("undecodable control message: {message!r}", message=message[:200])
            return
        if self._listener is not None:
            self._listener.control_received(decoded)


class Redirected(Unavailable):
    """A Redis Cluster ``MOVED``/``ASK`` reply (``redirect``); unavailable to whoever
    does not follow it (gateway.broker.cluster does)."""

    def __init__(self, redirect: Any, message: str) -> None:
        super().__init__(message)
        self.redirect = redirect


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_entry(channel: str, entry: Any) -> Publication:
    """Build a Publication from a ``"<seq>:<ts>:<epoch>:<body>"`` entry."""
    if isinstance(entry, str):
        entry = entry.encode()
    seq, ts, epoch, body = entry.split(b":", 3)
    fields = json.loads(body)
    return Publication(channel, int(seq), epoch.decode(), fields["d"], int(ts), fields.get("f"))
