"""`gateway.workers.WorkerSupervisor` inside the test's reactor (as an embedding
application would run it), with real worker processes and a real redis-server: a
`tcp:0` listener is one port for every worker; stopping the service drains the
workers; a worker that cannot start ends the supervisor with its error line."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet import reactor

from gateway.config import Config
from gateway.core.supervision import Exit
from gateway.testing import http
from gateway.workers import WorkerSupervisor, worker_config
from tests.e2e.support import TIMEOUT_FACTOR, wait_for

pytestmark = pytest.mark.redis


def config(redis_url: str, **overrides) -> Config:
    return Config(
        listen=("tcp:0:interface=127.0.0.1",), redis=redis_url, workers=2, node_id="svc", drain_timeout=2.0, **overrides
    )


def test_worker_config_names_each_worker():
    base = Config(node_id="n", workers=3, redis="redis://127.0.0.1:1/0")
    assert attrs.evolve(base, workers=None, node_id="n-2") == worker_config(base, 2)


async def test_stopping_the_service_drains_the_workers(redis_server):
    """Both workers accept on the one port of tcp:0; stopService() drains them and fires
    once every worker has exited, with status 0."""
    exits: list[Exit] = []
    svc = WorkerSupervisor(config(redis_server.url), reactor, on_exit=exits.append)
    svc.startService()
    try:
        ((_, port),) = svc.ports
        base = f"http://127.0.0.1:{port.getHost().port}"
        await wait_for(lambda: len(svc.machine.running()) == 2 and all(p.up for p in svc.processes.values()), 20, "workers up")
        nodes: set[str] = set()
        for _ in range(200):
            nodes.add((await http("GET", base + "/healthz")).json()["node"])
            if len(nodes) == 2:
                break
        assert {"svc-1", "svc-2"} == nodes
        pids = dict(svc.pids)
    finally:
        stopped = svc.stopService()
        assert stopped is not None
        await stopped.addTimeout(15 * TIMEOUT_FACTOR, reactor)
    assert [Exit(0)] == exits
    assert {} == svc.processes and [] == svc.ports
    assert sorted(pids) == [1, 2]
    assert svc.stopService() is None


async def test_a_worker_that_cannot_start_ends_the_supervisor(redis_server):
    """Nothing checked the hook before the workers started (make_supervisor would have):
    each worker fails on it, and the supervisor ends with status 1 and the worker's line."""
    exits: list[Exit] = []
    svc = WorkerSupervisor(config(redis_server.url, hook=("nope",)), reactor, on_exit=exits.append)
    svc.startService()
    outcome = await svc.done.addTimeout(20 * TIMEOUT_FACTOR, reactor)
    assert [outcome] == exits
    assert 1 == outcome.status
    assert outcome.error is not None and outcome.error.startswith("--hook") and "unknown hook 'nope'" in outcome.error
    assert {} == svc.processes and [] == svc.ports
    assert svc.stopService() is None
