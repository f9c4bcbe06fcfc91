"""gateway.broker.redis.command_bytes: the command connections' RESP encoder must give the
bytes txredisapi's own builder gives (with ``charset=None``), argument for argument."""

from __future__ import annotations

import pytest

from gateway.broker.redis import command_bytes


def txredisapi_bytes(*args):
    import txredisapi

    proto = txredisapi.RedisProtocol(charset=None)
    return proto._build_command(*args)


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("EVALSHA", "0" * 40, 2, "gw:{c}:meta", "gw:{c}:hist", "gw:0:pub:c", b'{"c":"c","d":1}', "e", "1000"),
        ("SET", "k", "caf\u00e9 \U0001f600", "PX", 300000),
        ("X", b"", "", 0, -5, 2**70, 1.5, 0.1, bytearray(b"ab\r\n"), True),
    ],
)
def test_same_bytes_as_txredisapi(args):
    assert command_bytes(args) == txredisapi_bytes(*args)


def test_text_that_is_not_utf8_is_refused_as_txredisapi_does():
    import txredisapi

    with pytest.raises(txredisapi.InvalidData):
        txredisapi_bytes("SET", "k", "\ud800")
    with pytest.raises(txredisapi.InvalidData):
        command_bytes(("SET", "k", "\ud800"))
