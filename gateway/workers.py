"""``twistd -n gateway --workers N``: a supervisor process and N worker processes.

The supervisor (the twistd process) binds every ``--listen`` endpoint once, stops
accepting on it itself, and hands the listening sockets to N worker processes
(``python -m gateway.worker``) as inherited file descriptors; each worker adopts them
(``reactor.adoptStreamPort``) and runs a full gateway node with node id
``NODE-ID-<index>``, sharing channels with the others through ``--redis``.  The
kernel spreads new connections over the workers that accept on the shared socket.

Why a shared socket and not ``SO_REUSEPORT``: one bind, so a port in use is one
error reported once by the supervisor before any worker starts; ``tcp:0`` means
one port for all the workers; a restarted worker gets the very socket the others
use, with no window in which the kernel hashes connections to a socket that is
gone; and it needs nothing from the kernel or the endpoint beyond a file descriptor.

The policy (restart with backoff, startup errors, drain, kill) is
:class:`gateway.core.supervision.Supervision`; this module only carries it out:
spawning processes, relaying their log lines, forwarding signals.

Protocol between the two: the worker reads a JSON spec (its config, its index,
the inherited socket descriptors) from its stdin until EOF; it writes log lines
to stdout (relayed into the supervisor's log as ``worker N: ...``), a startup
error as one ``gateway: ...`` line on stderr, and ``up`` on descriptor 3 once its
node listens.  Listening sockets are descriptors 4 and up.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import gateway
from gateway.config import Config, ConfigError
from gateway.core.supervision import (
    Exit,
    ExitStatus,
    Kill,
    Log,
    Spawn,
    Supervision,
    Terminate,
)
from gateway.service import ListenError, _problem, parse_endpoint

__all__ = ["SHAREABLE", "WorkerSupervisor", "check_shareable", "worker_config", "worker_spec"]

#: Endpoint types whose listening socket the workers can share.
SHAREABLE = ("tcp", "tcp6")

UP_FD = 3
FIRST_SOCKET_FD = 4
# Bounds on what the supervisor holds of a worker's output.
MAX_LINE = 65536
MAX_EARLY_LINES = 100


def check_shareable(description: str) -> None:
    """Raise :class:`ConfigError` unless ``description`` is a ``tcp:`` or ``tcp6:`` endpoint."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in SHAREABLE:
        raise ConfigError(
            f"listen {description}: --workers shares tcp: and tcp6: listening sockets only "
            "(terminate TLS in front of the gateway, or run one process per unix socket)"
        )


def worker_config(config: Config, index: int) -> Config:
    """Worker ``index``'s node configuration: the supervisor's, with node id ``NODE-ID-<index>``."""
    return attrs.evolve(config, workers=None, node_id=f"{config.node_id}-{index}")


def worker_spec(config: Config, index: int, sockets: list[tuple[int, int, str]], supervisor_pid: int) -> bytes:
    """The JSON a worker reads on stdin. ``sockets``: (child fd, address family, description)."""
    return json.dumps(
        {
            "index": index,
            "supervisor": supervisor_pid,
            "config": attrs.asdict(worker_config(config, index)),
            "sockets": sockets,
        }
    ).encode()


def config_from_spec(values: dict[str, Any]) -> Config:
    """The inverse of ``attrs.asdict`` for :class:`Config` (JSON turned its tuples into lists)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return Config(**fields)


class _NoConnections(protocol.Factory):
    """The supervisor's own factory on the shared sockets: it never accepts (see :meth:`WorkerSupervisor._listen`)."""

    noisy = False

    def logPrefix(self) -> str:
        return "gateway supervisor (the workers accept)"


def _exit_status(reason: Failure) -> ExitStatus:
    value = reason.value
    return ExitStatus(code=getattr(value, "exitCode", None), signal=getattr(value, "signal", None))


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker process: relays its output, reports ``up`` and its exit to the supervisor."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.up = False
        self._partial: dict[int, bytes] = {1: b"", 2: b""}
        # stderr lines before the worker is up: its startup error, if it fails.
        self.early_stderr: list[str] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == UP_FD:
            if not self.up and b"up" in data:
                self.up = True
                for line in self.early_stderr:
                    self.supervisor.relay(self.index, line)
                self.early_stderr = []
                self.supervisor.worker_up(self.index)
            return
        if childFD not in self._partial:
            return
        *lines, rest = (self._partial[childFD] + data).split(b"\n")
        if len(rest) > MAX_LINE:  # no newline in sight: pass it on as it is
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for raw in lines:
            self._line(childFD, raw.decode("utf-8", "replace").rstrip("\r"))

    def _line(self, fd: int, line: str) -> None:
        if fd == 2 and not self.up:
            self.early_stderr.append(line)
            del self.early_stderr[:-MAX_EARLY_LINES]
        else:
            self.supervisor.relay(self.index, line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._line(fd, rest.decode("utf-8", "replace"))
        self._partial = {1: b"", 2: b""}
        error_line = None
        if not self.up:
            for line in self.early_stderr:
                self.supervisor.relay(self.index, line)
            errors = [line for line in self.early_stderr if line.startswith("gateway: ")]
            if errors:
                error_line = errors[-1][len("gateway: ") :]
        self.supervisor.worker_exited(self.index, _exit_status(reason), error_line)


def _exit_process(reactor: Any) -> Callable[[Exit], None]:
    """What twistd's supervisor does on :class:`Exit`: print its error line (as every
    startup error is printed, see :mod:`gateway.tap`), stop the reactor, exit with its status."""

    def exit_(outcome: Exit) -> None:
        if outcome.error is not None:
            from gateway.tap import report

            report(outcome.error)
        if outcome.status:
            # twistd exits 0 once the reactor stops; a startup error must be status 1.
            # At exit, after twistd removed its pid file and flushed its log:
            def status() -> None:
                for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                    try:
                        if stream is not None:
                            stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(outcome.status)

            atexit.register(status)
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass  # already stopping (twistd stopped the service)

    return exit_


class WorkerSupervisor(service.Service):
    """Holds the listening sockets and supervises ``config.workers`` worker processes.

    Args:
        config: the node configuration (``config.workers`` workers, each with
            :func:`worker_config`).
        reactor: the reactor (spawnProcess, callLater, seconds).
        on_exit: called once with the :class:`~gateway.core.supervision.Exit` when
            every worker has exited (twistd: stop the reactor with that status).
        handle_signals: take over SIGTERM and SIGINT once the reactor runs, so a
            signal drains the workers and the process exits 0 (twistd's own handler
            would make the exit status 143).

    Attributes:
        ports: the supervisor's listening ports (it does not accept on them).
        done: fires with the :class:`Exit` once every worker has exited.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        on_exit: Callable[[Exit], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if not config.workers:
            raise ConfigError("workers: must be > 0")
        for description in config.listen:
            check_shareable(description)
        self.config = config
        self.reactor = reactor
        self.on_exit = on_exit
        self.handle_signals = handle_signals
        self.machine = Supervision(config.workers, config.drain_timeout)
        self._endpoints = [(d, parse_endpoint(reactor, d)) for d in config.listen]
        self.ports: list[Any] = []
        self.processes: dict[int, _WorkerProcess] = {}
        self.pids: dict[int, int] = {}
        self.done: defer.Deferred[Exit] = defer.Deferred()
        self._timer: Any = None
        self._started = False

    # -- twistd service --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        if not self.ports:
            self._listen()
        super().startService()
        self.reactor.callWhenRunning(self._begin)

    def stopService(self) -> Any:
        """Stopped from outside (not by its own signal handling): drain the workers first."""
        super().stopService()
        if self.machine.outcome is not None:
            return None
        self._do(self.machine.stop(self.reactor.seconds()))
        return self.done if self.machine.outcome is None else None

    def _listen(self) -> None:
        """Bind every endpoint once (errors as :class:`ListenError`); then stop
        accepting on it here: the workers accept on their inherited copies."""
        for description, endpoint in self._endpoints:
            outcome: list[Any] = []
            endpoint.listen(_NoConnections()).addBoth(outcome.append)
            if not outcome or isinstance(outcome[0], Failure):
                problem = _problem(outcome[0].value) if outcome else "did not listen synchronously"
                for _, port in self.ports:
                    port.stopListening()
                self.ports = []
                message = f"listen {description}: {problem}"
                self._log.critical("cannot start: {message}", message=message)
                raise ListenError(message)
            port = outcome[0]
            port.stopReading()
            self.ports.append((description, port))
            self._log.info(
                "gateway listening on {address} with {workers} worker processes", address=port.getHost(), workers=self.config.workers
            )

    def _begin(self) -> None:
        if self._started:
            return
        self._started = True
        if self.handle_signals:
            signal.signal(signal.SIGTERM, self._signalled)
            # As Twisted does: a SIGINT ignored at startup (a background job) stays ignored.
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._signalled)
        self._do(self.machine.start(self.reactor.seconds()))

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.drain, signal.Signals(signum).name)

    # -- events --------------------------------------------------------------------------

    def drain(self, why: str = "asked") -> None:
        """Drain every worker (SIGTERM to each), then exit."""
        if not self.machine.stopping:
            self._log.info("{why}: draining the workers (up to {timeout} s)", why=why, timeout=self.config.drain_timeout)
            self._close_ports()
        self._do(self.machine.stop(self.reactor.seconds()))

    def worker_up(self, index: int) -> None:
        self._log.info("worker {index} (pid {pid}) is up", index=index, pid=self.pids.get(index))
        self._do(self.machine.up(index, self.reactor.seconds()))

    def worker_exited(self, index: int, status: ExitStatus, error_line: str | None) -> None:
        self.processes.pop(index, None)
        self.pids.pop(index, None)
        self._do(self.machine.exited(index, status, self.reactor.seconds(), error_line))

    def relay(self, index: int, line: str) -> None:
        if line:
            self._log.info("worker {index}: {line}", index=index, line=line)

    # -- actions -------------------------------------------------------------------------

    def _do(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self._spawn(action.index)
            elif isinstance(action, (Terminate, Kill)):
                proc = self.processes.get(action.index)
                if proc is not None and proc.transport is not None:
                    try:
                        proc.transport.signalProcess("TERM" if isinstance(action, Terminate) else "KILL")
                    except error.ProcessExitedAlready:
                        pass
            elif isinstance(action, Log):
                getattr(self._log, action.level)("{text}", text=action.text)
            elif isinstance(action, Exit):
                self._finish(action)
        self._reschedule()

    def _spawn(self, index: int) -> None:
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", UP_FD: "r"}
        sockets = []
        for k, (description, port) in enumerate(self.ports):
            child_fds[FIRST_SOCKET_FD + k] = port.fileno()
            sockets.append((FIRST_SOCKET_FD + k, int(port.addressFamily), description))
        env = dict(os.environ)
        # The worker imports the very gateway package the supervisor runs.
        root = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        proc = _WorkerProcess(self, index)
        transport = self.reactor.spawnProcess(
            proc, sys.executable, [sys.executable, "-m", "gateway.worker"], env=env, childFDs=child_fds
        )
        self.processes[index] = proc
        self.pids[index] = transport.pid
        transport.writeToChild(0, worker_spec(self.config, index, sockets, os.getpid()))
        transport.closeChildFD(0)
        self._log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)

    def _reschedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        when = self.machine.next_wakeup()
        if when is not None:
            self._timer = self.reactor.callLater(max(0.0, when - self.reactor.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._do(self.machine.tick(self.reactor.seconds()))

    def _close_ports(self) -> None:
        ports, self.ports = self.ports, []
        for _, port in ports:
            port.stopListening()

    def _finish(self, outcome: Exit) -> None:
        self._close_ports()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if outcome.status == 0:
            self._log.info("every worker has exited")
        if self.on_exit is not None:
            self.on_exit(outcome)
        self.done.callback(outcome)


def make_supervisor(config: Config, reactor: Any = None) -> WorkerSupervisor:
    """The twistd supervisor for ``config`` (raises :class:`ConfigError` for what cannot work)."""
    from gateway.service import GatewayService

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    for description in config.listen:
        check_shareable(description)
    # Build one node as a worker would (without listening), so a bad --hook,
    # --authenticator or key file is the same one-line startup error as without --workers.
    GatewayService(attrs.evolve(worker_config(config, 0), listen=()), reactor)
    return WorkerSupervisor(config, reactor, on_exit=_exit_process(reactor), handle_signals=True)
