"""What one idle connection holds: every Python object only it refers to, by owner.

    python bench/connobjects.py --transport sse     # or poll, ws
    python bench/connobjects.py --transport poll --connections 300

One process runs a gateway node (memory broker, real TCP sockets) and N idle
subscribers of one channel (polls held long enough to be slimmed).  Then, from one
connection's objects (its transport-level object, e.g. the ``SSEStream``, and what
the bus, the sequencer and the reactor hold for it), every object reachable without
passing through anything that existed before the connections opened (the gateway,
its Site, the reactor, modules, classes, functions) is listed with its size
(``sys.getsizeof``, rounded up to pymalloc's 16 bytes), grouped by the attribute
path that first reached it.  An instance whose attributes are still in CPython's
values array (no dictionary object: see gateway/transports/_compact.py's
``existing_dict``) is shown with that array ("values") in place of a dictionary.  Objects a second connection reaches too (shared
constants, cached strings) are left out.  Not counted: the entries in shared
containers (the reactor's fd map, the bus's and sequencer's dicts, the gateway's
connection set), about 30-100 bytes a connection each, amortized.

For the allocation sites instead, ``bench/hotpath.py --tracemalloc``; for RSS,
``bench/memory.py``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import types
from collections import defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_STOP_TYPES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
)


def _size(obj: Any) -> int:
    n = sys.getsizeof(obj)
    return (n + 15) & ~15 if n <= 512 else n


def _children(obj: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    d = getattr(obj, "__dict__", None) if not isinstance(obj, _STOP_TYPES) else None
    if isinstance(d, dict):
        out.append((".__dict__", d))
        seen.add(id(d))
        for k, v in d.items():
            out.append((f".{k}", v))
            seen.add(id(v))
    for cls in type(obj).__mro__:
        for name in cls.__dict__.get("__slots__", ()):
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                v = getattr(obj, name)
            except AttributeError:
                continue
            out.append((f".{name}", v))
            seen.add(id(v))
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((f"[{k!r}]"[:40], v))
            out.append(("<key>", k))
            seen.add(id(v))
            seen.add(id(k))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            out.append((f"[{i}]", v))
            seen.add(id(v))
    for v in gc.get_referents(obj):
        if id(v) not in seen and v is not d:
            out.append((f"->{type(v).__name__}", v))
    return out


def reach(roots: list[tuple[str, Any]], stop: set[int]) -> dict[int, tuple[str, Any]]:
    """id -> (first path, object) of everything reachable from ``roots`` short of ``stop``."""
    found: dict[int, tuple[str, Any]] = {}
    queue = list(roots)
    while queue:
        path, obj = queue.pop(0)
        if id(obj) in found or id(obj) in stop or isinstance(obj, _STOP_TYPES):
            continue
        found[id(obj)] = (path, obj)
        for name, child in _children(obj):
            queue.append((path + name, child))
    return found


def _inline_objects(roots: list[tuple[str, Any]], stop: set[int]) -> set[int]:
    """ids of the objects reachable from ``roots`` whose attributes are still in a
    values array (walking with gc.get_referents, which makes no dictionary)."""
    from gateway.transports._compact import existing_dict

    seen: set[int] = set()
    inline: set[int] = set()
    queue = [obj for _, obj in roots]
    while queue:
        obj = queue.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, _STOP_TYPES):
            continue
        seen.add(id(obj))
        if type(obj).__dictoffset__ and not isinstance(obj, (dict, list, tuple)) and existing_dict(obj) is None:
            inline.add(id(obj))
        queue.extend(gc.get_referents(obj))
    return inline


def roots_of(conn: Any, running: Any) -> list[tuple[str, Any]]:
    """The connection's objects, and what the node holds for it elsewhere."""
    roots: list[tuple[str, Any]] = [("conn", conn)]
    sequencer = running.bus._sequencer
    for i, sub in enumerate(getattr(conn, "_subscriptions", ()) or ()):
        inner = sequencer._subscriptions.get(sub)
        if inner is not None:
            roots.append((f"sequencer[sub{i}]", inner))
    return roots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transport", choices=["ws", "sse", "poll"], default="sse")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--gateway-src", help="put this source tree first on sys.path")
    p.add_argument("--keys", action="store_true", help="the instance attributes of the connection's objects")
    p.add_argument("--all", action="store_true", help="list every object, not only the groups")
    args = p.parse_args()
    if args.gateway_src:
        sys.path.insert(0, os.path.abspath(args.gateway_src))
    from twisted.internet import epollreactor

    epollreactor.install()
    from hotpath import _Client
    from twisted.internet import reactor

    from gateway.testing import start_gateway

    running = start_gateway(access_log=False)

    def turn(times: int = 1) -> None:
        for _ in range(times):
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
            reactor.doIteration(0)  # type: ignore[attr-defined]

    turn(3)
    gc.collect()
    before = gc.get_objects()
    stop = {id(o) for o in before}
    stop.add(id(before))
    channel = "idle"
    clients: list[Any] = []
    while len(clients) < args.connections:
        clients += [_Client(args.transport, running.port, channel) for _ in range(min(20, args.connections - len(clients)))]
        turn(3)
    deadline = time.monotonic() + 60
    while running.bus.subscriber_count(channel) < args.connections or any(not c.ready for c in clients):
        turn()
        for c in clients:
            c.read_setup()
        if time.monotonic() > deadline:
            raise SystemExit("not all subscribed")
    # Held polls are slimmed after 0.25 s; let every timer of the opening run.
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        turn()
        time.sleep(0.01)
    turn(5)
    gc.collect()
    key = {"ws": "websocket"}.get(args.transport, args.transport)
    conns = list(running.gateway._connections[key])
    a, b = conns[len(conns) // 2], conns[len(conns) // 2 + 1]
    stop.add(id(conns))
    # What the node holds for every connection (the sequencer's channel, the SSE
    # fan-out...): reachable from the node without entering any connection.
    per_conn = {id(c) for c in conns}
    for c in conns:
        for _, obj in roots_of(c, running):
            per_conn.add(id(obj))
        for sub in getattr(c, "_subscriptions", ()) or ():
            per_conn.add(id(sub))
        for value in gc.get_referents(c):  # (vars() would make a dictionary: see below)
            if type(value).__name__ == "DelayedCall" or (type(value) is list and len(value) == 3 and value[2] is c):
                # Its own reactor call, or its entry in gateway.deadlines.
                per_conn.add(id(value))
        request = getattr(c, "request", None) or getattr(c, "transport", None)
        channel = getattr(request, "channel", None)
        for obj in (request, channel, getattr(channel, "transport", None)):
            if obj is not None:
                per_conn.add(id(obj))
    shared = reach([("node", running.service), ("reactor", reactor)], per_conn)
    stop |= set(shared)
    # Which of a's objects keep their attributes in CPython's values array (no
    # dictionary object yet): found before the named walk below makes one for each.
    inline = _inline_objects(roots_of(a, running), stop)
    found_b = reach(roots_of(b, running), stop)
    found_a = reach(roots_of(a, running), stop | set(found_b))
    values = {id(vars(found_a[i][1])) for i in inline if i in found_a}
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    rows = []
    for path, obj in found_a.values():
        size = _size(obj)
        name = type(obj).__name__
        if isinstance(obj, (dict, list, tuple, set)):
            name += f" ({len(obj)})"
        if id(obj) in values:
            # The values array: the made dictionary's size less its 48-byte object
            # and 16-byte GC header, plus the array's own header.
            size -= 32
            name = f"values ({len(obj)})"
        total += size
        rows.append((path, name, size))
        owner = _owner(path)
        groups[owner][0] += size
        groups[owner][1] += 1
    print(f"{args.transport}: {total} bytes in {len(found_a)} objects held by one idle connection ({args.connections} open)")
    for owner, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"  {size:6d} B {count:4d} objects  {owner}")
    if args.keys:
        req = getattr(a, "request", None)
        for label, obj in (("conn", a), ("request", req), ("channel", getattr(req, "channel", None)), ("transport", getattr(getattr(req, "channel", None), "transport", None))):
            if obj is not None and hasattr(obj, "__dict__"):
                print(f"  {label} keys: " + ", ".join(f"{k}={v!r}"[:60] for k, v in vars(obj).items()))
    if args.all:
        for path, name, size in sorted(rows):
            print(f"  {size:6d} {name:24s} {path}")
    os._exit(0)


def _owner(path: str) -> str:
    """The object a path's item belongs to: the path up to its last attribute."""
    parts = path.replace("->", ".->").split(".")
    # Up to and including the last attribute whose value is an instance (heuristic:
    # keep at most four steps, which names request/channel/transport/headers).
    return ".".join(parts[:4])


if __name__ == "__main__":
    main()
