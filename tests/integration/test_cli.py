"""``python -m gateway sub|pub|tail`` as real subprocesses against a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import jwt
import pytest
import pytest_twisted

from gateway.testing import DEFAULT_TIMEOUT, aio, http
from tests.e2e.support import free_port
from tests.integration.tcpproxy import Proxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "cli-tests-secret-0123456789abcdef0123"


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "GATEWAY_TOKEN"}
    out["PYTHONPATH"] = ROOT + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra)
    return out


def token_for(**claims: Any) -> str:
    return jwt.encode({"sub": "cli", "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


async def run(*args: str, timeout: float = 30, **extra_env: str) -> tuple[int, str, str]:
    """Run the CLI to completion: (exit status, stdout, stderr)."""

    async def go() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, env=env(**extra_env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out.decode(), err.decode()

    return await aio(go())


class Running:
    """A long-running CLI process (sub, tail) whose output the test reads line by line."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    @classmethod
    async def start(cls, *args: str, **extra_env: str) -> Running:
        proc = await aio(asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, env=env(**extra_env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        ))
        return cls(proc)

    async def event(self, timeout: float = 3 * DEFAULT_TIMEOUT) -> dict[str, Any]:
        line = await aio(asyncio.wait_for(self.proc.stdout.readline(), timeout))
        assert line, f"stdout ended; stderr: {self.stderr}"
        return json.loads(line)

    async def stderr_until(self, text: str, timeout: float = 3 * DEFAULT_TIMEOUT) -> None:
        async def go() -> None:
            while True:
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"stderr ended before {text!r}: {self.stderr}")
                self.stderr.append(line.decode())
                if text in self.stderr[-1]:
                    return

        await aio(asyncio.wait_for(go(), timeout))

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.finished()

    async def finished(self, timeout: float = 3 * DEFAULT_TIMEOUT) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            rest = await self.proc.stderr.read()
            await self.proc.wait()
            return self.proc.returncode, "".join(self.stderr) + rest.decode()

        return await aio(asyncio.wait_for(go(), timeout))


@pytest_twisted.async_yield_fixture
async def procs():
    started: list[Running] = []

    async def start(*args: str, **extra_env: str) -> Running:
        started.append(await Running.start(*args, **extra_env))
        return started[-1]

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await aio(running.proc.wait())


async def publish_http(base: str, channel: str, data: Any) -> dict[str, Any]:
    r = await http("POST", base + "/publish", json={"channel": channel, "data": data})
    assert r.status_code == 200
    return r.json()


def test_help_lists_the_commands():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], check=False, env=env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for word in ("sub", "pub", "tail", "Exit status"):
        assert word in out.stdout
    sub = subprocess.run([sys.executable, "-m", "gateway", "sub", "--help"], check=False, env=env(), capture_output=True, text=True, timeout=30)
    for option in ("--url", "--token", "--transport", "GATEWAY_TOKEN"):
        assert option in sub.stdout


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_sub_prints_what_pub_publishes(gw, procs, transport):
    sub = await procs("sub", "--url", gw.base, "--transport", transport, "a", "b")
    await sub.stderr_until("connected")
    rc, out, err = await run("pub", "--url", gw.base, "--transport", transport, "a", '{"text": "hi"}')
    assert rc == 0, err
    ack = json.loads(out)
    assert ack == {"channel": "a", "seq": 1, "epoch": ack["epoch"]}
    rc, out, _ = await run("pub", "--url", gw.base, "b", "42")
    assert rc == 0
    first, second = await sub.event(), await sub.event()
    assert (first["channel"], first["seq"], first["data"]) == ("a", 1, {"text": "hi"})
    assert (second["channel"], second["seq"], second["data"]) == ("b", 1, 42)
    rc, err = await sub.stop(signal.SIGTERM)
    assert rc == 0
    assert "closed" in err


async def test_sub_resumes_across_reconnects(gw, procs):
    proxy = Proxy(gw.port)
    try:
        sub = await procs("sub", "--url", proxy.base, "flow")
        await sub.stderr_until("connected")
        for n in range(1, 11):
            await publish_http(gw.base, "flow", n)
            if n in (3, 7):
                proxy.cut()
        seqs = [(await sub.event())["seq"] for _ in range(10)]
        assert seqs == list(range(1, 11))
        await sub.stderr_until("reconnecting")
        rc, _ = await sub.stop(signal.SIGINT)
        assert rc == 0
    finally:
        await proxy.stop()


async def test_tail_prints_the_last_n_then_follows(gw, procs):
    for n in range(1, 6):
        await publish_http(gw.base, "log", n)
    tail = await procs("tail", "--url", gw.base, "log", "-n", "3")
    assert [(await tail.event())["data"] for _ in range(3)] == [3, 4, 5]
    await publish_http(gw.base, "log", 6)
    assert (await tail.event())["seq"] == 6
    rc, _ = await tail.stop()
    assert rc == 0


async def test_tail_n_larger_than_history_prints_what_there_is(gw, procs):
    for n in range(1, 3):
        await publish_http(gw.base, "short", n)
    tail = await procs("tail", "--url", gw.base, "short", "-n", "50", "--transport", "sse")
    assert [(await tail.event())["seq"] for _ in range(2)] == [1, 2]
    await publish_http(gw.base, "short", 3)
    assert (await tail.event())["seq"] == 3
    assert (await tail.stop())[0] == 0


async def test_tail_of_an_empty_channel_follows(gw, procs):
    tail = await procs("tail", "--url", gw.base, "empty")
    await tail.stderr_until("connected")
    await publish_http(gw.base, "empty", "first")
    assert (await tail.event())["data"] == "first"
    assert (await tail.stop())[0] == 0


@pytest.mark.parametrize(
    "args, status, code",
    [
        (["pub", "c", "{not json"], 2, "bad_request"),
        (["pub", "bad channel", "1"], 2, "bad_request"),
        (["pub", "--url", "ftp://example/", "c", "1"], 2, "bad_request"),
        (["pub", "--url", "http://127.0.0.1:notaport/", "c", "1"], 2, "bad_request"),
        (["tail", "c", "-n", "-1"], 2, "bad_request"),
        (["sub", "c*"], 2, "bad_request"),
        (["tail", "no spaces"], 2, "bad_request"),
    ],
)
async def test_bad_input_exits_2(gw, args, status, code):
    if "--url" not in args:
        args = [args[0], "--url", gw.base, *args[1:]]
    rc, out, err = await run(*args)
    assert (rc, out) == (status, "")
    assert f"error: {code}" in err


async def test_usage_errors_exit_2():
    rc, _, err = await run("pub", "only-a-channel")
    assert rc == 2 and "usage" in err
    rc, _, err = await run("nosuchcommand")
    assert rc == 2 and "usage" in err


async def test_pub_too_large_exits_2(gw_factory):
    gw = gw_factory(max_message_size=256)
    rc, _, err = await run("pub", "--url", gw.base, "--transport", "sse", "c", json.dumps("x" * 1000))
    assert rc == 2 and "error: too_large" in err


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_pub_refused_exits_3_with_the_code(gw_factory, transport):
    gw = gw_factory(jwt_secret=SECRET)
    rc, _, err = await run("pub", "--url", gw.base, "--transport", transport, "--token", "garbage", "c", "1")
    assert rc == 3 and "error: unauthorized" in err
    token = token_for(publish=["room:*"])
    rc, _, err = await run("pub", "--url", gw.base, "--transport", transport, "--token", token, "other", "1")
    assert rc == 3 and "error: forbidden" in err
    rc, out, err = await run("pub", "--url", gw.base, "--transport", transport, "room:1", "1", GATEWAY_TOKEN=token)
    assert rc == 0, err
    assert json.loads(out)["seq"] == 1


async def test_pub_to_an_unreachable_gateway_exits_1():
    rc, out, err = await run("pub", "--url", f"http://127.0.0.1:{free_port()}/", "--timeout", "1", "c", "1")
    assert (rc, out) == (1, "")
    assert "error: timeout" in err


async def test_tail_of_an_unreachable_gateway_exits_1():
    rc, out, err = await run("tail", "--url", f"http://127.0.0.1:{free_port()}/", "c")
    assert (rc, out) == (1, "")
    assert "error: unavailable" in err


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_sub_refused_exits_3(gw_factory, procs, transport):
    gw = gw_factory(jwt_secret=SECRET)
    sub = await procs("sub", "--url", gw.base, "--transport", transport, "--token", "garbage", "c")
    rc, err = await sub.finished()
    assert rc == 3 and "error: unauthorized" in err
    token = token_for(subscribe=["room:*"])
    sub = await procs("sub", "--url", gw.base, "--transport", transport, "room:1", "secret", GATEWAY_TOKEN=token)
    rc, err = await sub.finished()
    assert rc == 3 and "error: forbidden" in err
    assert "secret" in err


async def test_tail_refused_exits_3(gw_factory):
    gw = gw_factory(jwt_secret=SECRET)
    rc, _, err = await run("tail", "--url", gw.base, "--token", "garbage", "c")
    assert rc == 3 and "error: unauthorized" in err
