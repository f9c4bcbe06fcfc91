"""Presence (docs/protocol.md section 11), sans-I/O: who is subscribed to a channel.

Theory of operation
-------------------
Presence is kept in *entries*, per channel, in a store shared by the cluster (the
broker: Redis, or memory for one node).  An entry is one of:

* a node's connections of one identity: ``(kind "s", id <sub>, owner <node id>)``
  with the number of that node's WebSocket/SSE connections of ``sub`` subscribed
  to the channel;
* a node's anonymous connections: ``(kind "a", id "", owner <node id>)`` with
  their number;
* a long-poll lease: ``(kind "s", id <sub>)`` or, anonymous, ``(kind "a", id
  <client id>)``, with owner ``""`` (the cluster, not a node: the next poll may
  land anywhere) and a count of 1.

Every entry has an expiry.  A node refreshes its entries every
:attr:`NodePresence.refresh_interval` (a quarter of ``--presence-ttl``) to
:attr:`NodePresence.entry_ttl` (half of it) from now, so a node that dies leaves
entries that expire within half the ttl and are swept by the next update or query
of the channel (every other node with presence on it refreshes it a quarter of the
ttl later at most): its clients are out within ``--presence-ttl``.  A poll lease is
refreshed the same way while the poll is held and, when the poll ends, set to expire
the full ttl later; expiries only ever move later, so whichever node saw the last
poll wins.

:class:`PresenceTable` is the store's logic (the in-memory broker uses it as it is;
``gateway/broker/lua/presence.lua`` is the same logic inside Redis): applying a
node's changes and sweeping expired entries, it keeps each identity's total
connections and answers ``join`` when a total leaves 0 and ``leave`` when it
returns to 0.

:class:`NodePresence` is one node's side: its connections per (channel, identity),
its held polls, and which entries changed since the last flush.  The node's I/O
(:mod:`gateway.presence`) flushes changes in batches (one broker call per channel
per short window, however many clients came and went) and sends a full refresh
periodically and when the broker comes back (re-registering its live clients).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

import attrs

from gateway.core.auth import MAX_SUB_LENGTH
from gateway.core.channels import validate_channel
from gateway.errors import BadRequest

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "NodePresence",
    "PresenceChange",
    "PresenceEvent",
    "PresencePage",
    "PresenceQuery",
    "PresenceTable",
    "parse_client_id",
    "parse_member",
    "parse_presence_query",
]

# members returned per answer when the client does not say; and at most.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 1000
_CLIENT_RE = re.compile(r"[A-Za-z0-9_\-:.]{1,64}")


@attrs.frozen
class PresenceChange:
    """One entry as a node wants it in the store.

    Attributes:
        channel: the channel.
        kind: ``"s"`` (an identity) or ``"a"`` (anonymous).
        id: the ``sub``; ``""`` for a node's anonymous connections; the
            ``client=`` id of an anonymous long-poll client.
        owner: the node id for connections; ``""`` for a long-poll lease.
        count: connections (a lease is 1); 0 removes the entry.
        ttl: seconds from now until the entry expires unless refreshed.
    """

    channel: str
    kind: str
    id: str
    owner: str
    count: int
    ttl: float

    @property
    def member(self) -> str:
        """The entry's name in the store: ``<kind><len(owner)>:<owner><id>``."""
        return f"{self.kind}{len(self.owner)}:{self.owner}{self.id}"


def parse_member(member: str) -> tuple[str, str, str]:
    """``(kind, owner, id)`` of a :attr:`PresenceChange.member`."""
    colon = member.index(":", 1)
    n = int(member[1:colon])
    return member[0], member[colon + 1 : colon + 1 + n], member[colon + 1 + n :]


@attrs.frozen
class PresenceEvent:
    """A ``join`` or ``leave`` of ``sub`` on ``channel``."""

    type: str
    channel: str
    sub: str

    def to_event(self) -> dict[str, Any]:
        return {"type": self.type, "channel": self.channel, "sub": self.sub}


@attrs.frozen
class PresencePage:
    """A presence answer: a page of ``members`` (sorted by sub) of ``count`` in all;
    ``more`` when members follow the page."""

    channel: str
    members: tuple[tuple[str, int], ...]
    count: int
    anonymous: int
    more: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "channel": self.channel,
            "members": [{"sub": sub, "connections": n} for sub, n in self.members],
            "anonymous": self.anonymous,
            "count": self.count,
        }
        if self.more and self.members:
            # More members follow this page: the client asks with after=<next>.
            body["next"] = self.members[-1][0]
        return body


@attrs.frozen
class PresenceQuery:
    channel: str
    limit: int = DEFAULT_LIMIT
    after: str | None = None


def parse_limit(value: Any) -> int:
    """``limit``: an integer 1-:data:`MAX_LIMIT` (a string of digits from a query)."""
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 9:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return value


def parse_after(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SUB_LENGTH:
        raise BadRequest(f"after must be a string of 1-{MAX_SUB_LENGTH} characters (a sub)")
    return value


def parse_presence_query(channel: Any, limit: Any = None, after: Any = None) -> PresenceQuery:
    """Validate a presence query (WebSocket command or ``GET /presence``).

    Raises:
        BadRequest: a bad channel, limit or after.
    """
    return PresenceQuery(
        validate_channel(channel),
        DEFAULT_LIMIT if limit is None else parse_limit(limit),
        parse_after(after),
    )


def parse_client_id(value: str | None) -> str | None:
    """The ``client=`` id of an anonymous long-poll client (1-64 of ``A-Za-z0-9_-:.``)."""
    if value is None:
        return None
    if not _CLIENT_RE.fullmatch(value):
        raise BadRequest("client must be 1-64 characters of A-Z a-z 0-9 _ - : .")
    return value


class _Channel:
    __slots__ = ("anonymous", "entries", "subs", "totals")

    def __init__(self) -> None:
        self.entries: dict[str, list[float]] = {}  # member -> [count, expiry]
        self.totals: dict[str, int] = {}  # sub -> connections in the cluster
        self.subs: list[str] = []  # sorted subs with a total > 0
        self.anonymous = 0


class PresenceTable:
    """The cluster's presence store (the in-memory broker's; presence.lua does the same in Redis)."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}

    def update(self, changes: Iterable[PresenceChange], now: float) -> dict[str, list[PresenceEvent]]:
        """Sweep each touched channel, then apply ``changes``; the join/leave events
        that result, per channel, in order."""
        events: dict[str, list[PresenceEvent]] = {}
        for change in changes:
            out = events.get(change.channel)
            if out is None:
                out = events[change.channel] = self.sweep(change.channel, now)
            self._set(change.channel, change.kind, change.id, change.member, change.count, now + change.ttl, out)
        return {c: e for c, e in events.items() if e}

    def sweep(self, channel: str, now: float) -> list[PresenceEvent]:
        """Remove ``channel``'s expired entries; their leave events."""
        out: list[PresenceEvent] = []
        ch = self._channels.get(channel)
        if ch is None:
            return out
        for member, (_, expiry) in list(ch.entries.items()):
            if expiry <= now:
                kind, _, id_ = parse_member(member)
                self._set(channel, kind, id_, member, 0, now, out)
        return out

    def sweep_all(self, now: float) -> dict[str, list[PresenceEvent]]:
        events = {c: self.sweep(c, now) for c in list(self._channels)}
        return {c: e for c, e in events.items() if e}

    def query(self, channel: str, limit: int, after: str | None, now: float) -> tuple[PresencePage, list[PresenceEvent]]:
        events = self.sweep(channel, now)
        ch = self._channels.get(channel)
        if ch is None:
            return PresencePage(channel, (), 0, 0), events
        start = 0 if after is None else bisect.bisect_right(ch.subs, after)
        page = tuple((sub, ch.totals[sub]) for sub in ch.subs[start : start + limit])
        more = start + limit < len(ch.subs)
        return PresencePage(channel, page, len(ch.subs), ch.anonymous, more), events

    def _set(self, channel: str, kind: str, id_: str, member: str, count: int, expiry: float, out: list[PresenceEvent]) -> None:
        ch = self._channels.get(channel)
        if ch is None:
            if count <= 0:
                return
            ch = self._channels[channel] = _Channel()
        entry = ch.entries.get(member)
        old = int(entry[0]) if entry is not None else 0
        if count > 0:
            if entry is None:
                ch.entries[member] = [count, expiry]
            else:
                entry[0] = count
                entry[1] = max(entry[1], expiry)
        elif entry is not None:
            del ch.entries[member]
        delta = count - old
        if delta:
            if kind == "s":
                before = ch.totals.get(id_, 0)
                total = before + delta
                if total > 0:
                    ch.totals[id_] = total
                    if before <= 0:
                        bisect.insort(ch.subs, id_)
                        out.append(PresenceEvent("join", channel, id_))
                elif before > 0:
                    del ch.totals[id_]
                    del ch.subs[bisect.bisect_left(ch.subs, id_)]
                    out.append(PresenceEvent("leave", channel, id_))
            else:
                ch.anonymous = max(0, ch.anonymous + delta)
        if not ch.entries:
            del self._channels[channel]

    @property
    def channels(self) -> list[str]:
        return list(self._channels)


# A node's entry keys: (channel, kind, id).
_Key = tuple[str, str, str]


class NodePresence:
    """One node's presence: what it holds, and what changed since the last flush.

    Args:
        node: this node's id (the owner of its connection entries).
        ttl: ``--presence-ttl`` in seconds.
    """

    def __init__(self, node: str, ttl: float) -> None:
        self.node = node
        self.ttl = ttl
        self._conns: dict[_Key, int] = {}
        self._polls: dict[_Key, int] = {}
        self._ended: set[_Key] = set()
        self._dirty: set[_Key] = set()

    @property
    def entry_ttl(self) -> float:
        """Seconds a refreshed entry lives without another refresh."""
        return self.ttl / 2

    @property
    def refresh_interval(self) -> float:
        """Seconds between two refreshes of every entry this node holds."""
        return self.ttl / 4

    @staticmethod
    def _conn_key(channel: str, sub: str | None) -> _Key:
        return (channel, "s", sub) if sub is not None else (channel, "a", "")

    def connection_added(self, channel: str, sub: str | None) -> None:
        """A WebSocket or SSE connection (of ``sub``, or anonymous) subscribed to ``channel``."""
        key = self._conn_key(channel, sub)
        self._conns[key] = self._conns.get(key, 0) + 1
        self._dirty.add(key)

    def connection_removed(self, channel: str, sub: str | None) -> None:
        """That connection unsubscribed or closed."""
        key = self._conn_key(channel, sub)
        n = self._conns.get(key, 0) - 1
        if n > 0:
            self._conns[key] = n
        else:
            self._conns.pop(key, None)
        self._dirty.add(key)

    @staticmethod
    def _poll_key(channel: str, sub: str | None, client: str | None) -> _Key | None:
        if sub is not None:
            return (channel, "s", sub)
        if client is not None:
            return (channel, "a", client)
        return None

    def poll_started(self, channel: str, sub: str | None, client: str | None) -> bool:
        """A poll of ``sub`` (or anonymous ``client``) is held on ``channel``.  False
        when it cannot be counted (anonymous without a client id)."""
        key = self._poll_key(channel, sub, client)
        if key is None:
            return False
        self._polls[key] = self._polls.get(key, 0) + 1
        self._ended.discard(key)
        self._dirty.add(("p",) + key)  # type: ignore[arg-type]
        return True

    def poll_ended(self, channel: str, sub: str | None, client: str | None) -> None:
        """That poll was answered (or went away): it stays present ``ttl`` from now."""
        key = self._poll_key(channel, sub, client)
        if key is None or key not in self._polls:
            return
        n = self._polls[key] - 1
        if n > 0:
            self._polls[key] = n
        else:
            del self._polls[key]
            self._ended.add(key)
        self._dirty.add(("p",) + key)  # type: ignore[arg-type]

    @property
    def pending(self) -> bool:
        """True when changes wait for a flush."""
        return bool(self._dirty)

    def _change(self, dirty: tuple[str, ...]) -> PresenceChange | None:
        if dirty[0] == "p":
            key: _Key = dirty[1:]  # type: ignore[assignment]
            channel, kind, id_ = key
            if key in self._polls:
                return PresenceChange(channel, kind, id_, "", 1, self.entry_ttl)
            if key in self._ended:
                self._ended.discard(key)
                return PresenceChange(channel, kind, id_, "", 1, self.ttl)
            return None
        channel, kind, id_ = dirty
        return PresenceChange(channel, kind, id_, self.node, self._conns.get(dirty, 0), self.entry_ttl)  # type: ignore[arg-type]

    def take_changes(self) -> list[PresenceChange]:
        """What changed since the last call, for the store."""
        dirty, self._dirty = self._dirty, set()
        changes = [self._change(d) for d in sorted(dirty)]
        return [c for c in changes if c is not None]

    def refresh_changes(self) -> list[PresenceChange]:
        """Every entry this node holds, plus what changed: a periodic refresh, or
        re-registering everything once the store is back."""
        changes = self.take_changes()
        seen = {(c.channel, c.kind, c.id, c.owner) for c in changes}
        for (channel, kind, id_), n in self._conns.items():
            if (channel, kind, id_, self.node) not in seen:
                changes.append(PresenceChange(channel, kind, id_, self.node, n, self.entry_ttl))
        for channel, kind, id_ in self._polls:
            if (channel, kind, id_, "") not in seen:
                changes.append(PresenceChange(channel, kind, id_, "", 1, self.entry_ttl))
        return changes

    def put_back(self, changes: Iterable[PresenceChange]) -> None:
        """``changes`` did not reach the store: send them again with the next flush."""
        for c in changes:
            if c.owner:
                self._dirty.add((c.channel, c.kind, c.id))
            else:
                key = (c.channel, c.kind, c.id)
                if key not in self._polls and c.ttl == self.ttl:
                    self._ended.add(key)
                self._dirty.add(("p",) + key)  # type: ignore[arg-type]

    def held(self) -> dict[tuple[str, str, str], int]:
        """This node's connection entries (for tests and metrics)."""
        return dict(self._conns)
