"""Startup errors of `twistd -n gateway --workers N` (docs/protocol.md section 10): one line
on stderr, exit status 1, and never a restart loop, whether the supervisor finds the
problem (options) or a worker does (a plugin that fails in the worker process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.e2e.support import TIMEOUT_FACTOR, free_port
from tests.e2e.test_workers import alive
from tests.integration.test_startup_errors import assert_one_line_error

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REDIS = "redis://127.0.0.1:1/0"  # never connected to: every case fails before


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_FACTOR,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--workers", "2"], ["--workers", "needs --redis"]),
        (["--workers", "0", "--redis", REDIS], ["--workers", "> 0"]),
        (["--workers", "-1", "--redis", REDIS], ["--workers", "> 0"]),
        (["--workers", "two", "--redis", REDIS], ["--workers", "expected int", "two"]),
        (["--workers", "1.5", "--redis", REDIS], ["--workers", "1.5"]),
        (["--workers", "2", "--redis", REDIS, "--listen", "unix:/tmp/gw-workers.sock"], ["unix:/tmp/gw-workers.sock", "tcp: and tcp6:"]),
        (["--workers", "2", "--redis", REDIS, "--listen", "systemd:domain=INET:index=0"], ["systemd:", "tcp: and tcp6:"]),
        (["--workers", "2", "--redis", REDIS, "--hook", "nope"], ["--hook", "unknown hook 'nope'"]),
    ],
    ids=["no-redis", "zero", "negative", "not-a-number", "not-an-integer", "unix", "systemd", "bad-hook"],
)
def test_bad_workers_options_are_one_line_errors(args, expected):
    """Refused by the supervisor before any worker starts."""
    proc = run(*args)
    assert_one_line_error(proc, *expected)
    assert "worker 1 started" not in proc.stdout


def test_a_port_in_use_is_reported_once():
    """The supervisor binds once: a port in use is one line, whatever N is."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("--workers", "3", "--redis", REDIS, "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert_one_line_error(proc, f"--listen tcp:{port}:interface=127.0.0.1", "in use")


# A hook that loads in the supervisor (which checks the options) but not in a worker:
# a problem only a worker meets, such as a file only its environment cannot read.
FAILS_IN_WORKERS = textwrap.dedent(
    '''
    import sys

    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from gateway.interfaces import IPublishHookFactory


    @implementer(IPlugin, IPublishHookFactory)
    class Factory:
        hookType = "not-in-workers"
        hookHelp = "Fails to load in a worker process."
        argStringFormat = "(none)"

        def make_hook(self, argstring):
            if sys.argv[0].endswith("worker.py"):
                raise ValueError("cannot load in a worker process")
            from gateway.hooks import LogHook

            return LogHook()


    not_in_workers = Factory()
    '''
)


def test_a_worker_that_cannot_start_is_one_line_and_status_1(tmp_path):
    """Every worker fails at startup: the supervisor prints the worker's error once,
    exits 1 without restarting any worker, and leaves no process behind."""
    (tmp_path / "gateway_plugins").mkdir()
    (tmp_path / "gateway_plugins" / "gateway_not_in_workers.py").write_text(FAILS_IN_WORKERS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    proc = run(
        "--workers", "2", "--redis", REDIS, "--hook", "not-in-workers",
        "--listen", f"tcp:{free_port()}:interface=127.0.0.1", env=env,
    )
    line = assert_one_line_error(proc, "--hook", "not-in-workers", "cannot load in a worker process")
    assert line.startswith("gateway: ")
    for index in (1, 2):
        assert 1 == len(re.findall(rf"worker {index} started", proc.stdout)), proc.stdout
    assert "could not start (exit status 1)" in proc.stdout
    for pid in re.findall(r"started \(pid (\d+)\)", proc.stdout):
        assert not alive(int(pid))
