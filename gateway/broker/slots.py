"""Redis Cluster routing decisions, sans I/O: plain values in, plain values out.

* :func:`key_slot`: the slot of a key, CRC16 (XMODEM) of its hash tag modulo 16384,
  exactly as Redis computes it (``CLUSTER KEYSLOT``): the tag is the text between the
  first ``{`` and the next ``}`` when that is not empty, else the whole key.
* :func:`parse_slots`: the master of every slot range from a ``CLUSTER SLOTS`` reply.
* :func:`parse_redirect`: a ``MOVED`` or ``ASK`` error, as txredisapi hands it over
  (the error text), into a :class:`Redirect`.
* :class:`SlotMap`: which master serves which slot; ``MOVED`` updates one slot in place
  (a full refresh is the caller's choice, :meth:`SlotMap.replace`), ``ASK`` does not
  change the map (it redirects one command, preceded by ``ASKING``).

Every key of a gateway channel carries the channel's hash tag (``P:{<channel>}:meta``,
``:hist``, ``:idem:<sha>``, the presence keys), so each script touches one slot; a
revocation is one key tagged by identity (``P:{rev:<sub>}``).

:mod:`gateway.broker.cluster` routes through these.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import attrs

__all__ = ["SLOTS", "Redirect", "SlotMap", "crc16", "group_by_owner", "hash_tag", "key_slot", "parse_redirect", "parse_slots"]

SLOTS = 16384


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the one Redis Cluster uses."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its slot (see the module docstring)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (str keys are UTF-8, as the broker sends them)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return crc16(hash_tag(raw)) % SLOTS


Address = tuple[str, int]


@attrs.frozen
class Redirect:
    """A ``MOVED`` (the slot lives elsewhere now) or ``ASK`` (this one key, during a
    migration, is already on the importing node) error."""

    kind: str  # "MOVED" or "ASK"
    slot: int
    address: Address


_REDIRECT_RE = re.compile(r"^(MOVED|ASK) (\d+) (\S*):(\d+)$")


def parse_redirect(message: str | bytes, current: Address | None = None) -> Redirect | None:
    """The redirect in an error reply's text (``"MOVED 3999 127.0.0.1:6381"``), or None
    when it is another error.  An empty host (``":6381"``, a node that does not know its
    own address) means the host of ``current``, the node that answered."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    text = text.removeprefix("ERR ")
    match = _REDIRECT_RE.match(text.strip())
    if match is None:
        return None
    kind, slot, host, port = match.groups()
    if not 0 <= int(slot) < SLOTS or not 0 < int(port) < 65536:
        return None
    if not host:
        if current is None:
            return None
        host = current[0]
    return Redirect(kind, int(slot), (host, int(port)))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_slots(reply: Any, current: Address | None = None) -> list[tuple[int, int, Address]]:
    """``(first slot, last slot, master address)`` per range of a ``CLUSTER SLOTS`` reply
    (``[[start, end, [host, port, id, ...], [replica...]...], ...]``), sorted.

    Raises:
        ValueError: the reply is not shaped like one, or its ranges overlap.
    """
    if not isinstance(reply, (list, tuple)):
        raise ValueError(f"CLUSTER SLOTS: expected a list, got {type(reply).__name__}")
    ranges = []
    for entry in reply:
        try:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host, port = _text(master[0]), int(master[1])
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"CLUSTER SLOTS: unreadable entry {entry!r}") from e
        if not 0 <= start <= end < SLOTS:
            raise ValueError(f"CLUSTER SLOTS: bad range {start}-{end}")
        if host in ("", "?"):
            if current is None:
                raise ValueError("CLUSTER SLOTS: a master without an address")
            host = current[0]
        ranges.append((start, end, (host, port)))
    ranges.sort()
    for (_, end, _), (start, _, _) in itertools.pairwise(ranges):
        if start <= end:
            raise ValueError("CLUSTER SLOTS: overlapping ranges")
    return ranges


class SlotMap:
    """Which master serves each slot; unknown slots have no owner (None)."""

    def __init__(self) -> None:
        self._owner: list[Address | None] = [None] * SLOTS
        self._ranges: list[tuple[int, int, Address]] | None = None  # as last replaced
        self.version = 0  # bumped on every change

    def replace(self, ranges: list[tuple[int, int, Address]]) -> set[int]:
        """Take a full map (from :func:`parse_slots`); returns the slots whose owner changed."""
        if ranges == self._ranges:
            return set()  # the usual refresh: nothing to rebuild
        owner: list[Address | None] = [None] * SLOTS
        for start, end, address in ranges:
            owner[start : end + 1] = [address] * (end - start + 1)
        changed = {slot for slot in range(SLOTS) if owner[slot] != self._owner[slot]}
        self._owner = owner
        self._ranges = list(ranges)
        if changed:
            self.version += 1
        return changed

    def owner(self, slot: int) -> Address | None:
        return self._owner[slot]

    def owner_of(self, key: str | bytes) -> Address | None:
        return self._owner[key_slot(key)]

    def moved(self, redirect: Redirect) -> bool:
        """Apply a ``MOVED``: the slot's new owner.  True if the map changed.  (``ASK``
        never changes the map: the slot still belongs to the migrating node.)"""
        if redirect.kind != "MOVED" or self._owner[redirect.slot] == redirect.address:
            return False
        self._owner[redirect.slot] = redirect.address
        self._ranges = None
        self.version += 1
        return True

    def masters(self) -> set[Address]:
        """Every address that owns at least one slot."""
        return {a for a in self._owner if a is not None}

    def slots_of(self, address: Address) -> list[int]:
        return [slot for slot, a in enumerate(self._owner) if a == address]

    def covered(self) -> bool:
        """True when every slot has an owner (the cluster serves every key)."""
        return all(a is not None for a in self._owner)

    def ranges(self) -> list[tuple[int, int, Address]]:
        """The map as sorted ``(first, last, address)`` ranges."""
        out: list[tuple[int, int, Address]] = []
        for slot, address in enumerate(self._owner):
            if address is None:
                continue
            if out and out[-1][2] == address and out[-1][1] == slot - 1:
                out[-1] = (out[-1][0], slot, address)
            else:
                out.append((slot, slot, address))
        return out


def group_by_owner(slot_map: SlotMap, keys: list[str]) -> dict[Address | None, list[str]]:
    """``keys`` grouped by the master serving them (None: no owner known yet): which
    shard's pub/sub connection subscribes to which channels."""
    out: dict[Address | None, list[str]] = {}
    for key in keys:
        out.setdefault(slot_map.owner_of(key), []).append(key)
    return out

