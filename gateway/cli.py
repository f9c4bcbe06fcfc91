"""``python -m gateway``: watch and publish from a shell, on :mod:`gateway.client`.

::

    python -m gateway sub room:1 room:2          # one JSON event per line, resumes across reconnects
    python -m gateway pub room:1 '{"text":"hi"}' # prints the ack
    python -m gateway tail room:1 -n 20          # the last 20 publications, then follow

Events go to stdout, one JSON object per line; connection state and errors go to
stderr. Exit status: 0 done (or stopped with Ctrl-C / SIGTERM), 1 the server or the
network failed (``unavailable``, ``internal``, ``timeout``, ...), 2 bad input (usage,
a bad URL, ``DATA`` that is not JSON, ``bad_request``, ``too_large``), 3 refused
(``unauthorized``, ``forbidden``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_REFUSED", "exit_status", "main"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3

_BAD_INPUT = {"bad_request", "too_large", "not_found"}
_REFUSED = {"unauthorized", "forbidden"}

DEFAULT_URL = "http://127.0.0.1:8080/"


def exit_status(code: str) -> int:
    """The exit status for a :class:`~gateway.client.ClientError` code."""
    if code in _BAD_INPUT:
        return EXIT_BAD_INPUT
    if code in _REFUSED:
        return EXIT_REFUSED
    return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's base URL (default {DEFAULT_URL})")
    common.add_argument("--token", default=None, help="a JWT or API key (default: $GATEWAY_TOKEN; none: anonymous)")
    common.add_argument(
        "--transport",
        choices=("websocket", "sse"),
        default=None,
        help="use only this transport (default: WebSocket, falling back to SSE)",
    )
    common.add_argument(
        "--heartbeat", type=float, default=20.0, help="the server's --heartbeat, for dead-connection detection (default 20)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Watch and publish on a gateway from the shell.",
        epilog=(
            "Events are printed to stdout as one JSON object per line; connection state and errors go to stderr. "
            "Exit status: 0 ok (also after Ctrl-C or SIGTERM), 1 server or network failure (unavailable, internal, "
            "timeout), 2 bad input (usage, bad URL, DATA not JSON, bad_request, too_large), 3 refused "
            "(unauthorized, forbidden)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("sub", parents=[common], help="print every event of the channels, resuming across reconnects")
    sub.add_argument("channels", nargs="+", metavar="CHANNEL")
    pub = commands.add_parser("pub", parents=[common], help="publish one JSON value and print the ack")
    pub.add_argument("channel", metavar="CHANNEL")
    pub.add_argument("data", metavar="JSON", help="the data to publish, as JSON text ('{\"text\": \"hi\"}', '42', '\"hi\"')")
    pub.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ack (default 10)")
    tail = commands.add_parser("tail", parents=[common], help="print the last N publications from history, then follow")
    tail.add_argument("channel", metavar="CHANNEL")
    tail.add_argument("-n", type=int, default=10, metavar="N", help="how many past publications (default 10)")
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"gateway: {message}\n")
    sys.stderr.flush()


def _print_event(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _state(info: dict[str, Any]) -> None:
    state = info["state"]
    if state == "reconnecting":
        _error(f"reconnecting over {info['transport']} in {info['delay']:.2f} s")
    elif state == "closed" and info.get("error") is not None:
        _error(f"closed: {info['error']}")
    else:
        _error(f"{state} ({info['transport']})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "pub":
        try:
            args.data = json.loads(args.data)
        except ValueError as e:
            _error(f"error: bad_request: the JSON argument is not valid JSON ({e})")
            return EXIT_BAD_INPUT
    if args.command == "tail" and args.n < 0:
        _error("error: bad_request: -n must be 0 or more")
        return EXIT_BAD_INPUT
    token = args.token if args.token is not None else os.environ.get("GATEWAY_TOKEN") or None
    from gateway.client import Client

    try:
        Client(args.url)  # validates the URL before the reactor starts
    except ValueError as e:
        _error(f"error: bad_request: {e}")
        return EXIT_BAD_INPUT

    from twisted.internet import defer, task

    status = [0]

    def run(reactor: Any) -> Any:
        transports = (args.transport,) if args.transport else ("websocket", "sse")
        options: dict[str, Any] = {"transports": transports, "heartbeat": args.heartbeat, "reactor": reactor}
        if args.command == "pub":
            options["publish_timeout"] = args.timeout
        client = Client(args.url, token, **options)
        reactor.addSystemEventTrigger("before", "shutdown", client.close)
        if args.command == "pub":
            return defer.ensureDeferred(_pub(client, args, status))
        client.on_state(_state)
        return defer.ensureDeferred(_follow(client, args, status))

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return status[0]


async def _pub(client: Any, args: Any, status: list[int]) -> None:
    from gateway.client import ClientError

    try:
        ack = await client.publish(args.channel, args.data)
    except ClientError as e:
        _error(f"error: {e.code}: {e.message}")
        status[0] = exit_status(e.code)
    else:
        _print_event(ack)
    await client.close()


async def _follow(client: Any, args: Any, status: list[int]) -> None:
    from gateway.client import ClientError
    from gateway.core.model import Position

    try:
        if args.command == "tail":
            latest = await client.latest(args.channel)
            since = Position(latest.epoch, max(0, latest.seq - args.n))
            subs = [client.subscribe(args.channel, _print_event, since=since)]
        else:
            subs = [client.subscribe(channel, _print_event) for channel in args.channels]
        done = client.when_closed()
        for sub in subs:
            sub.when_ready().addErrback(_sub_failed, client, status)
        await done
    except ClientError as e:
        if e.code != "closed":
            _error(f"error: {e.code}: {e.message}")
            status[0] = exit_status(e.code)
    await client.close()


def _sub_failed(failure: Any, client: Any, status: list[int]) -> None:
    from gateway.client import ClientError

    error = failure.trap(ClientError) and failure.value
    if error.code == "closed":
        return
    _error(f"error: {error.code}: {error.message}")
    status[0] = exit_status(error.code)
    client.close()
