"""Less memory per held connection: smaller instance dicts, and what a streaming
twisted.web request no longer needs once it is under way.

Why
---
An idle SSE stream or held poll is a twisted.web ``Request`` on an
``HTTPChannel`` on a ``tcp.Server``, held for minutes.  The request's and the
channel's instance dictionaries grew while the request arrived and never shrink
(a dict of 30 keys that grew is a 1.5 KB table; rebuilt with the 19 still
needed it is 464 bytes), and many of their keys only repeat their class's
default (``_transferDecoder = None``...).  The request keeps what only its
arrival needed: all its headers, parsed cookies and query, empty lists and
dicts twisted.web made for it, and, once the head is on the wire, the response
headers.

CPython 3.11
------------
An instance keeps its attributes in a values array (keys shared with its
class's other instances) until something asks for its ``__dict__`` or adds an
attribute its class's shared keys cannot take; then it has a dictionary of its
own.  Asking for ``__dict__`` of one that has none *makes* a dictionary (64 more
bytes), and on 3.11 attribute reads through a dictionary made that way are
never specialized: every read of every attribute of that object takes the slow
path (slimming that way cost an SSE delivery 12% more instructions).  So a
values array is left as it is (dropping attributes from it frees no room),
attributes are deleted with ``delattr`` (which makes no dictionary), and only a
dictionary that exists already is rebuilt (:func:`existing_dict`), into an
ordinary one, which 3.11 reads fast.

What
----
* :func:`shrink` drops every instance attribute whose value equals (same type,
  an immutable scalar) the class attribute of that name, which the object then
  reads in its place, and rebuilds the dictionary at the size its keys need, if
  it has one.  Nothing observable changes: each attribute reads the same value
  as before, and a later assignment puts it back in the instance.
* :func:`slim_request` applies it to a request that is being held, its channel
  and its transport, drops the request's body file (twisted.web closes it only
  ``if self.content is not None``), and, when the response head is already on
  the wire, the response headers: twisted.web reads ``responseHeaders`` only
  while writing the head (``Request.write`` before ``startedWriting``, and
  ``finish`` of a request that wrote nothing).
* Attributes declared :class:`LazyEmpty` on the class
  (:class:`~gateway.transports._http.GatewayRequest`'s ``cookies``,
  ``received_cookies``, ``_adapterCache``, ``requestHeaders``,
  ``responseHeaders``; :class:`~gateway.transports._http.GatewayHTTPChannel`'s
  ``_dataBuffer``) are dropped while they are empty (:func:`drop_empty`) and
  made again, empty, by whoever reads them next: nothing reads a different value.
* The request headers of a held request are cut down to those read once it is
  under way (:data:`KEPT_REQUEST_HEADERS`: the access log's ``Referer``,
  ``User-Agent`` and ``X-Forwarded-For``, and ``Connection``, which twisted.web
  reads when the response starts); everything else was read while the request
  was rendered and authenticated.
* The request's ``host`` (the server's own address, the same for every request
  on a listening port) is one shared, equal address object.

* :class:`LaterSlimming` does that to a held poll or an open SSE stream only
  once it has been held a while: most polls under load are answered within
  milliseconds, and slimming each of them as it started cost about a tenth of a
  poll's CPU for memory that was about to be freed anyway; and by then
  twisted.web has finished with the request's arrival (it sets a few attributes
  back after the resource rendered it).

* :func:`on_finish` is ``notifyFinish().addBoth(fn)`` without the Deferred.

tests/unit/test_compact.py pins what this relies on.
"""

from __future__ import annotations

import gc
import sys
from types import MethodType
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web import http
from twisted.web.http_headers import Headers

__all__ = [
    "KEPT_REQUEST_HEADERS",
    "LaterSlimming",
    "LazyEmpty",
    "drop_empty",
    "existing_dict",
    "lazy_attributes",
    "on_finish",
    "shrink",
    "slim_request",
]

KEPT_REQUEST_HEADERS = (b"referer", b"user-agent", b"x-forwarded-for", b"connection")
"""The request headers a held request keeps (see the module docstring)."""

_SCALARS = (type(None), bool, int, float, str, bytes)


def existing_dict(obj: Any) -> dict[str, Any] | None:
    """``obj``'s instance dictionary if it exists already, else None (without making one).

    CPython 3.11 keeps a new instance's attributes in a values array shared-key
    style and makes a dictionary object only when something asks for
    ``__dict__`` (or an attribute does not fit its class's shared keys).  Asking
    makes one: 64 more bytes, and on 3.11 an attribute read through a dictionary
    made that way is never specialized (every read of every attribute takes the
    slow path).  The garbage collector's view tells the two apart: it visits the
    dictionary when there is one, else each attribute's value.
    """
    refs = [ref for ref in gc.get_referents(obj) if not isinstance(ref, type)]
    if len(refs) == 1 and type(refs[0]) is dict:
        d = getattr(obj, "__dict__", None)
        if d is refs[0]:
            return d
    return None


def shrink(obj: Any) -> None:
    """Drop ``obj``'s instance attributes that equal their class default and rebuild
    its dictionary at the size its keys need, if it has one already (see
    :func:`existing_dict`: attributes still in CPython's values array take no
    less room when some are dropped)."""
    d = existing_dict(obj)
    if d is None:
        return
    cls = type(obj)
    kept = {}
    for name, value in d.items():
        if type(value) in _SCALARS:
            default = getattr(cls, name, _MISSING)
            if type(default) is type(value) and default == value:
                continue
        kept[name] = value
    if len(kept) < len(d) or sys.getsizeof(kept) < sys.getsizeof(d):
        obj.__dict__ = kept


class LazyEmpty:
    """A class attribute standing for an instance attribute dropped while empty
    (:func:`drop_empty`): read on an instance that does not hold it, it makes an
    empty one (``factory()``), gives it to the instance and returns it.  An
    instance that holds the attribute reads its own (a descriptor without
    ``__set__``), so only attributes that the base class assigns in its
    ``__init__`` and holds no class attribute for are declared this way: nothing
    reads a different value than before."""

    __slots__ = ("factory", "name")

    def __init__(self, factory: type) -> None:
        self.factory = factory
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = self.factory()
        setattr(obj, self.name, value)
        return value


def lazy_attributes(cls: type) -> tuple[tuple[str, type], ...]:
    """The (name, factory) of ``cls``'s :class:`LazyEmpty` attributes."""
    found = _LAZY.get(cls)
    if found is None:
        names: dict[str, type] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, LazyEmpty):
                    names[name] = value.factory
        found = _LAZY[cls] = tuple(names.items())
    return found


_LAZY: dict[type, tuple[tuple[str, type], ...]] = {}


def _empty(value: Any) -> bool:
    if isinstance(value, Headers):
        return next(iter(value.getAllRawHeaders()), None) is None
    return type(value) in (list, dict) and not value


def drop_empty(obj: Any) -> None:
    """Drop ``obj``'s :class:`LazyEmpty` attributes while they are empty: read
    again, they are made afresh."""
    for name, factory in lazy_attributes(type(obj)):
        value = getattr(obj, name)
        if type(value) is factory and _empty(value):
            delattr(obj, name)


def _kept_headers(headers: Headers) -> Headers | None:
    """``headers`` cut down to :data:`KEPT_REQUEST_HEADERS`, or None when that is all of them."""
    kept = Headers()
    count = 0
    for name in KEPT_REQUEST_HEADERS:
        values = headers.getRawHeaders(name)
        if values is not None:
            kept.setRawHeaders(name, values)
            count += 1
    if count == sum(1 for _ in headers.getAllRawHeaders()):
        return None
    return kept


# One address object per listening address (request.host): at most this many kept.
_HOSTS: dict[Any, Any] = {}
_MAX_HOSTS = 256


def _shared_host(host: Any) -> Any:
    if type(host) not in (IPv4Address, IPv6Address):
        return host
    shared = _HOSTS.get(host)
    if shared is None:
        if len(_HOSTS) >= _MAX_HOSTS:
            return host
        shared = _HOSTS[host] = host
    return shared


def slim_request(request: Any) -> None:
    """Shrink a held request (see the module docstring); call it when it starts waiting."""
    if getattr(request, "content", None) is not None and request.method in (b"GET", b"HEAD"):
        content, request.content = request.content, None
        content.close()
    if request.args:
        # The query string was parsed when the request was rendered; the access
        # log uses request.uri.
        request.args = {}
    if getattr(request, "gateway_params", None) is not None:
        del request.gateway_params
    if getattr(request, "startedWriting", False) and not request.finished:
        # The head is out: nothing reads these again (an empty set for anyone who looks).
        request.responseHeaders = Headers()
    headers = getattr(request, "requestHeaders", None)
    if isinstance(headers, Headers):
        kept = _kept_headers(headers)
        if kept is not None:
            request.requestHeaders = kept
    host = getattr(request, "host", None)
    if host is not None:
        request.host = _shared_host(host)
    channel = getattr(request, "channel", None)
    drop_empty(request)
    shrink(request)
    if channel is not None:
        drop_empty(channel)
        shrink(channel)
        transport = getattr(channel, "transport", None)
        if transport is not None:
            shrink(transport)


class LaterSlimming:
    """Slims held requests (:func:`slim_request`) that are still held after a while.

    One timer for every request waiting to be slimmed, armed by the first and
    cancelled when the last is released; a request released before it fires is
    never slimmed (it is about to be freed).  So the reactor holds no timer of
    this while no request is waiting.

    Args:
        clock: the reactor (``callLater``).
        delay: seconds until the requests held meanwhile are slimmed.
    """

    def __init__(self, clock: Any, delay: float = 1.0) -> None:
        self._clock = clock
        self.delay = delay
        self._held: dict[Any, Any] = {}
        self._timer: Any = None

    @property
    def waiting(self) -> int:
        """How many requests wait to be slimmed."""
        return len(self._held)

    def hold(self, key: Any, request: Any) -> None:
        """``request`` (of ``key``, e.g. its poll) is being held: slim it in a while."""
        self._held[key] = request
        if self._timer is None:
            self._timer = self._clock.callLater(self.delay, self._due)

    def release(self, key: Any) -> None:
        """``key``'s request is no longer held (answered, gone): never slim it."""
        if self._held.pop(key, None) is not None and not self._held and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        held, self._held = self._held, {}
        for request in held.values():
            if not (getattr(request, "finished", False) or getattr(request, "_disconnected", False)):
                slim_request(request)


class _FinishNotice:
    """Stands in Request.notifications for the Deferred of ``notifyFinish()``:
    twisted.web calls ``callback(None)`` when the response finished and
    ``errback(reason)`` when the connection was lost, each at most once.  It
    holds a bound method as its object and function (a bound method object of its
    own is 64 bytes more, held as long as the request)."""

    __slots__ = ("fn", "obj")

    def __init__(self, fn: Any) -> None:
        obj = getattr(fn, "__self__", None)
        if obj is not None and isinstance(fn, MethodType):
            self.obj, self.fn = obj, fn.__func__
        else:
            self.obj, self.fn = _NO_SELF, fn

    def callback(self, result: Any) -> None:
        if self.obj is _NO_SELF:
            self.fn(result)
        else:
            self.fn(self.obj, result)

    errback = callback


_NO_SELF = object()


def on_finish(request: Any, fn: Any) -> None:
    """``request.notifyFinish().addBoth(fn)`` without a Deferred and its callback
    chain per request (about 0.4 KB): ``fn(None)`` once the response finished,
    ``fn(failure)`` once the client went away."""
    if isinstance(request, http.Request) and isinstance(getattr(request, "notifications", None), list):
        request.notifications.append(_FinishNotice(fn))  # type: ignore[arg-type]
    else:
        # Not twisted.web's own Request (a test double): its notifyFinish.
        request.notifyFinish().addBoth(fn)


_MISSING = object()
