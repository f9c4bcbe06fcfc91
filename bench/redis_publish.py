"""Publish throughput of RedisBroker against a redis-server of its own, by pool size.

Measures what the pool buys now that a channel's publishes share one connection
(publisher order): N publications spread over C channels, at most W in flight at
once, for each --poolsize given.  Prints publications/s and the node's CPU per
publication.  Not part of the test suite; no assertions.

    python bench/redis_publish.py                       # pools 1 and 2, 100 channels
    python bench/redis_publish.py --channels 1 --count 20000 --poolsize 1 2 4
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from procs import free_port  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(poolsize: int, url: str, count: int, channels: int, window: int) -> tuple[float, float]:
    from twisted.internet import defer, reactor, task

    from gateway.broker.redis import RedisBroker

    class Listener:
        def publication_received(self, pub):
            pass

        def broker_reconnected(self):
            pass

    async def main():
        broker = RedisBroker(url, reactor=reactor, poolsize=poolsize)
        await broker.start(Listener())
        while not broker.is_ready():
            await task.deferLater(reactor, 0.01, lambda: None)
        names = [f"bench{i}" for i in range(channels)]
        sem = defer.DeferredSemaphore(window)
        t0, c0 = time.perf_counter(), cpu()
        await defer.gatherResults(
            [sem.run(broker.publish, names[i % channels], {"i": i, "pad": "x" * 64}) for i in range(count)]
        )
        elapsed, used = time.perf_counter() - t0, cpu() - c0
        await broker.stop()
        return count / elapsed, used / count * 1e6

    out: list = []
    d = defer.ensureDeferred(main())
    d.addBoth(out.append)
    d.addBoth(lambda _: reactor.callLater(0, reactor.stop))
    reactor.run()
    if isinstance(out[0], BaseException) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--window", type=int, default=200, help="publishes in flight at once")
    parser.add_argument("--poolsize", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        rate, us = run(args.child, args.url, args.count, args.channels, args.window)
        print(f"{rate:.0f} {us:.1f}")
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            print(f"{args.count} publications over {args.channels} channel(s), {args.window} in flight")
            print("| poolsize | publications/s | node CPU µs/publication |")
            print("|---|---|---|")
            for size in args.poolsize:
                # A fresh process per pool size: a reactor runs once.
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(size), "--url", f"redis://127.0.0.1:{port}/0",
                     "--count", str(args.count), "--channels", str(args.channels), "--window", str(args.window)],
                    check=True, capture_output=True, text=True,
                ).stdout.split()
                print(f"| {size} | {float(out[0]):,.0f} | {float(out[1]):.1f} |")
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
