"""Shared fixtures: a real gateway on a free port, and a check that each test leaves
the reactor clean (no delayed calls left behind by the gateway)."""

from __future__ import annotations

import sys

import pytest_twisted

from gateway.testing import sleep, start_gateway

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore imports sniffio (which nothing installs any more) inside every async
    # request's lock setup; each failed import searches sys.path again (through pytest's
    # import hook too): some 0.25 ms, several times per request.  None in sys.modules
    # fails the import at once, and httpcore falls back to asyncio as before.
    sys.modules["sniffio"] = None  # type: ignore[assignment]


@pytest_twisted.async_yield_fixture
async def gw():
    """A running single-node gateway (in-process bus) on 127.0.0.1:<free port>."""
    running = start_gateway(drain_timeout=2.0)
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def gw_factory():
    """Start gateways with custom settings: ``gw_factory(heartbeat=1, ...)``."""
    started = []

    def make(**overrides):
        running = start_gateway(**{"drain_timeout": 2.0, **overrides})
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


def _gateway_calls(reactor):
    calls = []
    for call in reactor.getDelayedCalls():
        if not call.active():
            continue
        text = repr(call.func)
        if "gateway" in getattr(call.func, "__module__", "") or "gateway." in text:
            calls.append(call)
    return calls


def _selectables(reactor):
    return set(reactor.getReaders()) | set(reactor.getWriters())


@pytest_twisted.async_yield_fixture(autouse=True)
async def clean_reactor():
    """Fail a test that leaves gateway timers, listening ports or connections on the reactor."""
    from twisted.internet import reactor

    before = _selectables(reactor)
    yield
    leftover = _gateway_calls(reactor)
    for call in leftover:
        call.cancel()
    assert not leftover, f"test left gateway timers behind: {leftover}"
    # Connections closed by the test's clients are noticed by the server within a
    # reactor turn or two; give them a moment before calling them leaked.
    for _ in range(100):
        extra = _selectables(reactor) - before
        if not extra:
            break
        await sleep(0.02)
    assert not extra, f"test left listening ports or connections behind: {extra}"
