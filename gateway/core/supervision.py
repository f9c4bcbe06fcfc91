"""The ``--workers`` supervision policy, sans-I/O: when to start, restart, stop and
kill worker processes, and with what status the supervisor exits.

Theory of operation
-------------------
The supervisor (``twistd -n gateway --workers N``) runs N worker processes, each a
full gateway node.  :class:`Supervision` is its policy as a state machine: the
process adapter (:mod:`gateway.workers`) tells it what happened (a worker is up, a
worker exited, a stop was asked for, time passed) with a plain ``now`` argument,
and carries out the actions it returns (:class:`Spawn`, :class:`Terminate`,
:class:`Kill`, :class:`Exit`, :class:`Log`).  It never reads a clock itself; the
adapter calls :meth:`Supervision.tick` at :meth:`Supervision.next_wakeup`.

The rules:

* :meth:`~Supervision.start` spawns every worker.  A worker is *up* once it has
  started its node and adopted the listening sockets (:meth:`~Supervision.up`).
* A worker that exits before it was ever up could not start (a bad option, a
  plugin that fails to load, ...): that is a startup error, the same for every
  worker, so it is reported once and the supervisor stops the others and exits
  with status 1 instead of restarting it forever.
* A worker that was up and exits unexpectedly (killed, crashed) is restarted
  after a backoff: :data:`BACKOFF_INITIAL` seconds after its first exit, doubling
  with every further exit of the same worker up to :data:`BACKOFF_MAX`; a worker
  that stayed up :data:`STABLE_AFTER` seconds starts from the initial delay again.
  If a restarted worker exits again before it is up, :data:`MAX_FAILED_RESTARTS`
  times in a row, the supervisor gives up: status 1.
* :meth:`~Supervision.stop` (SIGTERM) cancels pending restarts and sends every
  running worker SIGTERM: each drains within ``drain_timeout`` by itself.  A
  worker still running ``drain_timeout + kill_grace`` seconds after the stop is
  killed.  Once the last worker has exited the supervisor exits: status 0 when
  every worker drained and exited by itself, 1 when one had to be killed.
"""

from __future__ import annotations

import signal as _signal

import attrs

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "KILL_GRACE",
    "MAX_FAILED_RESTARTS",
    "STABLE_AFTER",
    "Exit",
    "ExitStatus",
    "Kill",
    "Log",
    "Spawn",
    "Supervision",
    "Terminate",
    "backoff_delay",
]

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0
MAX_FAILED_RESTARTS = 5
KILL_GRACE = 5.0


@attrs.frozen
class ExitStatus:
    """How a worker process ended: an exit ``code``, or the ``signal`` that killed it."""

    code: int | None = None
    signal: int | None = None

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit status {self.code}"

    @property
    def clean(self) -> bool:
        return self.signal is None and self.code == 0


@attrs.frozen
class Spawn:
    """Start worker ``index`` (1-based)."""

    index: int


@attrs.frozen
class Terminate:
    """Send worker ``index`` SIGTERM: drain and exit."""

    index: int


@attrs.frozen
class Kill:
    """Send worker ``index`` SIGKILL (it did not drain in time)."""

    index: int


@attrs.frozen
class Log:
    """A line for the supervisor's log; ``level`` is ``info``, ``warn`` or ``error``."""

    level: str
    text: str


@attrs.frozen
class Exit:
    """Every worker has exited: the supervisor exits with ``status``.

    ``error`` is the one line to print on stderr for a startup error (None otherwise).
    """

    status: int
    error: str | None = None


Action = Spawn | Terminate | Kill | Log | Exit


def backoff_delay(exits: int) -> float:
    """Seconds before restarting a worker after its ``exits``-th exit in a row (1-based)."""
    return min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** max(0, exits - 1))


@attrs.define
class _Worker:
    index: int
    running: bool = False
    up: bool = False
    ever_up: bool = False
    up_since: float | None = None
    exits: int = 0
    failed_restarts: int = 0
    restart_at: float | None = None
    killed: bool = False


class Supervision:
    """The supervisor's state machine for ``workers`` worker processes.

    Every method takes ``now`` (seconds from a clock that only goes forward) and
    returns the actions to carry out, in order.
    """

    def __init__(self, workers: int, drain_timeout: float, kill_grace: float = KILL_GRACE) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.drain_timeout = drain_timeout
        self.kill_grace = kill_grace
        self._workers = {i: _Worker(i) for i in range(1, workers + 1)}
        self.stopping = False
        self.kill_at: float | None = None
        self.outcome: Exit | None = None
        self._status = 0
        self._error: str | None = None

    # -- what the adapter can ask ------------------------------------------------

    def running(self) -> list[int]:
        """Indexes of the workers whose process is running."""
        return [w.index for w in self._workers.values() if w.running]

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do (a restart or a kill), or None."""
        times = [w.restart_at for w in self._workers.values() if w.restart_at is not None]
        if self.kill_at is not None and any(w.running and not w.killed for w in self._workers.values()):
            times.append(self.kill_at)
        return min(times) if times else None

    # -- events --------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Spawn every worker."""
        actions: list[Action] = []
        for w in self._workers.values():
            w.running = True
            actions.append(Spawn(w.index))
        return actions

    def up(self, index: int, now: float) -> list[Action]:
        """Worker ``index`` started its node and listens."""
        w = self._workers[index]
        if not w.running or w.up:
            return []
        w.up = True
        w.ever_up = True
        w.up_since = now
        w.failed_restarts = 0
        return []

    def exited(self, index: int, status: ExitStatus, now: float, error: str | None = None) -> list[Action]:
        """Worker ``index``'s process ended with ``status``.

        ``error`` is the line it printed on stderr before it was up (its startup
        error), if any: it becomes the supervisor's own one-line error.
        """
        return self._exited(index, status, now, error)

    def _exited(self, index: int, status: ExitStatus, now: float, error: str | None) -> list[Action]:
        w = self._workers[index]
        if not w.running:
            return []
        was_up, up_since = w.up, w.up_since
        w.running = False
        w.up = False
        w.up_since = None
        actions: list[Action] = []
        if self.stopping:
            if not status.clean and not w.killed:
                actions.append(Log("warn", f"worker {index} exited during the drain ({status})"))
            return actions + self._maybe_exit()
        if not w.ever_up:
            return self._fail(f"worker {index} could not start ({status})", error, now)
        if not was_up:
            w.failed_restarts += 1
            if w.failed_restarts >= MAX_FAILED_RESTARTS:
                return self._fail(f"worker {index} exited {w.failed_restarts} times in a row before it was up (last: {status})", error, now)
        if up_since is not None and now - up_since >= STABLE_AFTER:
            w.exits = 0
        w.exits += 1
        delay = backoff_delay(w.exits)
        w.restart_at = now + delay
        return [Log("warn", f"worker {index} exited unexpectedly ({status}); restarting it in {delay:g} s")]

    def stop(self, now: float) -> list[Action]:
        """SIGTERM: drain every worker, then exit (status 0 if all drained by themselves)."""
        if self.stopping:
            return []
        return [Log("info", f"draining {len(self.running())} worker(s)"), *self._stop(now)]

    def tick(self, now: float) -> list[Action]:
        """Time passed: start the restarts that are due, kill workers past the drain deadline."""
        actions: list[Action] = []
        for w in self._workers.values():
            if w.restart_at is not None and w.restart_at <= now:
                w.restart_at = None
                w.running = True
                actions.append(Spawn(w.index))
        if self.kill_at is not None and now >= self.kill_at:
            for w in self._workers.values():
                if w.running and not w.killed:
                    w.killed = True
                    self._status = 1
                    actions.append(Log("error", f"worker {w.index} did not exit within {self.drain_timeout + self.kill_grace:g} s of the drain; killing it"))
                    actions.append(Kill(w.index))
        return actions

    # -- internals -----------------------------------------------------------------

    def _stop(self, now: float) -> list[Action]:
        self.stopping = True
        self.kill_at = now + self.drain_timeout + self.kill_grace
        actions: list[Action] = []
        for w in self._workers.values():
            w.restart_at = None
            if w.running:
                actions.append(Terminate(w.index))
        return actions + self._maybe_exit()

    def _fail(self, reason: str, error: str | None, now: float) -> list[Action]:
        self._status = 1
        # The worker's own line says what is wrong (it is what a single node prints);
        # without one, say which worker failed and how.
        self._error = error or f"{reason}: see the log"
        return [Log("error", reason), *self._stop(now)]

    def _maybe_exit(self) -> list[Action]:
        if self.outcome is not None or self.running():
            return []
        self.outcome = Exit(self._status, self._error)
        return [self.outcome]
