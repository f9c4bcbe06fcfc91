"""A ``--workers`` worker process: ``python -m gateway.worker``, started by
:class:`gateway.workers.WorkerSupervisor` (see that module for the protocol).

It reads its spec (JSON) from stdin, adopts the listening sockets it inherited,
runs one gateway node and drains on SIGTERM, as ``twistd -n gateway`` does.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import FileLogObserver, eventAsText, globalLogBeginner
from zope.interface import implementer

from gateway.config import ConfigError
from gateway.workers import UP_FD, config_from_spec

__all__ = ["AdoptedEndpoint", "main"]

_PR_SET_PDEATHSIG = 1


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """An endpoint that "listens" on an already listening socket (an inherited descriptor)."""

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = socket.AddressFamily(family)

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        def adopt() -> Any:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
            os.close(self.fd)  # adoptStreamPort works on its own duplicate
            return port

        return defer.execute(adopt)


def _die_with_supervisor(supervisor: int) -> bool:
    """SIGTERM this process when the supervisor dies (even by SIGKILL); False if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    return os.getppid() == supervisor


def main() -> int:
    # Its own process group: a terminal's Ctrl-C reaches the supervisor, which drains
    # the workers in order, rather than every process at once.
    os.setpgrp()
    spec = json.loads(sys.stdin.buffer.read())
    if not _die_with_supervisor(spec["supervisor"]):
        return 1
    from twisted.internet import reactor

    from gateway.service import GatewayService, ListenError
    from gateway.tap import report

    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, lambda event: (eventAsText(event, includeTimestamp=False) or "") + "\n")],
        redirectStandardIO=False,
    )
    endpoints = [(description, AdoptedEndpoint(reactor, fd, family)) for fd, family, description in spec["sockets"]]
    try:
        svc = GatewayService(config_from_spec(spec["config"]), reactor, endpoints=endpoints)
    except ConfigError as e:
        report(str(e))
        return 1
    status: list[int] = []

    def start() -> None:
        try:
            svc.privilegedStartService()
            svc.startService()
        except ListenError as e:
            report(str(e))
            status.append(1)
            reactor.stop()
            return
        os.write(UP_FD, b"up\n")
        os.close(UP_FD)

    def stop() -> Any:
        return svc.stopService() if svc.running else None

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return status[0] if status else 0


if __name__ == "__main__":
    code = main()
    # Exit now: tearing the interpreter down frees every object one by one, which
    # under load adds seconds to a drain the supervisor is waiting for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
