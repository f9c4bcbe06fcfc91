"""Many one-shot timers on one reactor call: the SSE heartbeats and held polls' timeouts.

Why
---
An idle SSE stream waits for its next heartbeat and a held poll for its timeout,
each on a ``reactor.callLater``: a ``DelayedCall`` with its attributes, three bound
methods, an empty ``kw`` dict and its time, about 480 bytes per connection, for a
time and something to call.

What
----
:class:`Deadlines` keeps ``[time, seq, owner]`` entries (about 160 bytes) in a
heap and holds one ``callLater`` for the earliest.  When it fires, every entry due
by then is taken in order of time (and of scheduling, for equal times) and its
owner's ``on_deadline()`` is called.  A timer fires when its own ``callLater``
would have: at the same reactor time, ``delay`` seconds after it was set; a
cancelled one never fires and lets go of its owner at once.

The reactor holds no call of this while no timer is set.  Cancelled entries are
dropped from the heap once they are more than half of it, as Twisted's reactor
does with its own.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines"]

_TIME = 0
_SEQ = 1
_OWNER = 2


class Deadlines:
    """One-shot timers sharing one reactor call (see the module docstring).

    Args:
        clock: the reactor (``seconds``, ``callLater``).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._call: Any = None
        self._call_time = 0.0
        self._live = 0
        self._cancelled = 0
        self._running = False

    @property
    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return self._live

    def call_later(self, delay: float, owner: Any) -> list[Any]:
        """Call ``owner.on_deadline()`` in ``delay`` seconds; returns the timer
        (for :meth:`cancel` and :meth:`active`)."""
        now = self._clock.seconds()
        entry = [now + delay, next(self._seq), owner]
        heapq.heappush(self._heap, entry)
        self._live += 1
        if not self._running and (self._call is None or entry[_TIME] < self._call_time):
            self._arm(entry[_TIME], now)
        return entry

    @staticmethod
    def active(entry: list[Any]) -> bool:
        """Whether ``entry`` is still to fire."""
        return entry[_OWNER] is not None

    def cancel(self, entry: list[Any]) -> None:
        """``entry`` will not fire (nothing happens if it fired or was cancelled)."""
        if entry[_OWNER] is None:
            return
        entry[_OWNER] = None
        self._live -= 1
        self._cancelled += 1
        if not self._live:
            self._heap.clear()
            self._cancelled = 0
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif self._cancelled > 50 and self._cancelled * 2 > len(self._heap):
            self._heap[:] = [e for e in self._heap if e[_OWNER] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self, when: float, now: float) -> None:
        self._call_time = when
        if self._call is not None:
            self._call.reset(max(0.0, when - now))
        else:
            self._call = self._clock.callLater(max(0.0, when - now), self._due)

    def _due(self) -> None:
        self._call = None
        # What was due when this call was set is due now, whatever rounding made of
        # the reactor's time.
        now = max(self._clock.seconds(), self._call_time)
        # Timers set meanwhile (a heartbeat sets the next) wait for the next call,
        # even when already due (a delay of 0), as they would on the reactor.
        newer = next(self._seq)
        heap = self._heap
        self._running = True
        try:
            while heap and heap[0][_TIME] <= now and heap[0][_SEQ] < newer:
                entry = heapq.heappop(heap)
                owner = entry[_OWNER]
                if owner is None:
                    self._cancelled -= 1
                    continue
                entry[_OWNER] = None
                self._live -= 1
                try:
                    owner.on_deadline()
                except Exception:
                    self._log.failure("a timer of {owner!r} failed", owner=owner)
        finally:
            self._running = False
        if self._live:
            while heap[0][_OWNER] is None:
                heapq.heappop(heap)
                self._cancelled -= 1
            self._arm(heap[0][_TIME], self._clock.seconds())
        else:
            heap.clear()
            self._cancelled = 0
