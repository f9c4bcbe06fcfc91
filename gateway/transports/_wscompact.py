"""Less memory per open WebSocket: Autobahn's per-connection state, trimmed.

Why
---
An idle subscribed WebSocket cost about 15 KB of Python objects, and 3.3 KB of
that was the Autobahn protocol's instance dictionary: ``_connectionMade`` copies
about 30 options from the factory onto every connection and the handshake leaves
another 70 attributes behind (the request's headers and bytes, the response, the
offered extensions, close-handshake flags, ...).  A dict of 108 keys is a 3.3 KB
table; one of at most 21 keys is 464 bytes and one of at most 10 is 272.

What
----
* :func:`protocol_class` gives each factory a subclass of its protocol that holds
  the factory's options as *class* attributes.  ``_connectionMade`` copies an
  option only ``if not hasattr(self, name)``, so with the class holding it the
  connection reads the same value without a copy of its own.  The factory's
  ``setProtocolOptions`` refreshes them (:func:`bind_options`).
* :func:`compact` runs once the opening handshake is over and after every
  received frame.  It drops what only the handshake used (:data:`HANDSHAKE_ONLY`;
  Autobahn reads those only while answering the upgrade), the state of the frame
  and message just finished (:data:`PER_MESSAGE`; Autobahn writes each of those
  at the start of the next frame or message before reading it), and every
  attribute whose value equals the class default it would then read
  (:data:`IDLE_DEFAULTS`: the same value, so nothing observable changes; a later
  assignment simply puts the attribute back).  Then it rebuilds the dictionary at
  the size its remaining keys need: a dict never shrinks by itself.
* ``trafficStats`` (per-connection byte and frame counters nobody reads here) is
  one shared object that ignores what it is told (:class:`UncountedTraffic`);
  ``send_queue`` (a 760-byte ``deque`` that stays empty unless something sends
  with ``sync=True`` or a chop size, which the gateway never does) is an empty
  tuple on the class until then (:func:`ensure_send_queue`).

This module is the one place that knows Autobahn's attribute names;
tests/unit/test_wscompact.py pins what it relies on (the names, the idle values,
``_connectionMade``'s ``hasattr`` test, and full sessions over a compacted
connection).
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

__all__ = [
    "HANDSHAKE_ONLY",
    "IDLE_DEFAULTS",
    "PER_MESSAGE",
    "UncountedTraffic",
    "bind_options",
    "compact",
    "ensure_send_queue",
    "frame_done",
    "protocol_class",
]

# Read by Autobahn only while it handles the opening handshake (server side):
# dropped once the connection is open; the class holds None (or an empty tuple
# for the lists) in their place.
HANDSHAKE_ONLY: dict[str, Any] = {
    "http_headers": None,
    "http_request_data": None,
    "http_response_data": None,
    "http_status_line": None,
    "http_request_uri": None,
    "http_request_path": None,
    "http_request_params": None,
    "http_request_host": None,
    "websocket_version": None,
    "websocket_protocols": (),
    "websocket_extensions": (),
    "websocket_origin": None,
    "websocket_extensions_in_use": (),
    "_wskey": None,
    # WAMP's transport details (peer, headers), filled in at connectionMade.
    "_transport_details": None,
    # ObservableMixin: "message" is the only event; _results is only written by
    # fire() once .on() has added a listener (see GatewayWebSocketProtocol.on).
    "_valid_events": ("message",),
    "_results": None,
}

# The frame and message just received: Autobahn assigns each of these when the
# next frame (or message) begins, before it reads it.  Between frames they are
# stale; the class holds these values instead.
PER_MESSAGE: dict[str, Any] = {
    "current_frame_masker": None,
    "frame_length": 0,
    "frame_data": None,
    "control_frame_data": None,
    "message_data": None,
    "message_data_total_length": 0,
    "message_is_binary": False,
    "utf8validateIncomingCurrentMessage": False,
    "utf8validateLast": (True, True, 0, 0),
}

# What an open, idle connection holds in these attributes.  An attribute is
# dropped only when its value *is equal* (same type) to this, so the connection
# reads the same value from the class afterwards.
IDLE_DEFAULTS: dict[str, Any] = {
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "inside_message": False,
    "current_frame": None,
    "_isMessageCompressed": False,
    "_perMessageCompress": None,
    "trackedTimings": None,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "websocket_protocol_in_use": None,
}


class UncountedTraffic:
    """Autobahn's ``TrafficStats``, shared and counting nothing: every counter reads 0."""

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0

    def __setattr__(self, name: str, value: Any) -> None:
        pass

    def reset(self) -> None:
        pass


UNCOUNTED = UncountedTraffic()


def ensure_send_queue(proto: Any) -> None:
    """Give ``proto`` a deque of its own before Autobahn may append to ``send_queue``."""
    if "send_queue" not in proto.__dict__:
        proto.send_queue = deque()


def bind_options(cls: type, factory: Any) -> None:
    """Hold ``factory``'s current options (``CONFIG_ATTRS``) as class attributes of ``cls``."""
    for name in cls.CONFIG_ATTRS:  # type: ignore[attr-defined]
        value = getattr(factory, name)
        if inspect.isfunction(value):
            # A plain function (perMessageCompressionAccept) would become a
            # method of the connection; the instance copy never was one.
            value = staticmethod(value)
        setattr(cls, name, value)


def protocol_class(base: type, factory: Any) -> type:
    """A subclass of ``base`` for ``factory``'s connections, holding its options,
    the idle defaults and the shared traffic counters."""
    attrs: dict[str, Any] = {"__module__": base.__module__, "__qualname__": base.__qualname__}
    attrs.update(HANDSHAKE_ONLY)
    attrs.update(PER_MESSAGE)
    attrs.update(IDLE_DEFAULTS)
    attrs["trafficStats"] = UNCOUNTED
    attrs["send_queue"] = ()
    attrs["factory"] = factory
    cls = type(base.__name__, (base,), attrs)
    bind_options(cls, factory)
    return cls


_DROP = (*HANDSHAKE_ONLY, *PER_MESSAGE, "trafficStats")


def frame_done(proto: Any) -> None:
    """A frame was handled: forget its state (and its message's, once complete)."""
    d = proto.__dict__
    if d.get("current_frame") is not None:
        return
    if d.get("inside_message"):
        # Between the frames of a fragmented message: its data and validator
        # state are still needed; only the finished frame's masker is not.
        d.pop("current_frame_masker", None)
        return
    compact(proto)


def compact(proto: Any) -> None:
    """Drop what an open connection between messages does not need, and shrink
    its dictionary (see the module docstring)."""
    d = proto.__dict__
    if d.get("state") != WebSocketProtocol.STATE_OPEN:
        return
    kept = {}
    factory = type(proto).__dict__.get("factory")
    for name, value in d.items():
        if name in _DROP:
            continue
        default = IDLE_DEFAULTS.get(name, _MISSING)
        if default is not _MISSING and type(value) is type(default) and value == default:
            continue
        if name == "factory" and value is factory:
            continue
        if name == "send_queue" and not value:
            continue
        kept[name] = value
    proto.__dict__ = kept


_MISSING = object()
