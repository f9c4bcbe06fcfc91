"""gateway/broker/_resp.py: the pub/sub connection's RESP2 reader, with plain values.
It must give what txredisapi's reader gives with charset=None and convertNumbers=False."""

from __future__ import annotations

import pytest

from gateway.broker._resp import RespError, RespReader


class Err(Exception):
    pass


MESSAGE = b"*3\r\n$7\r\nmessage\r\n$6\r\nch:one\r\n$11\r\n{\"a\":\"b\r\n\"}\r\n"


def test_every_reply_kind():
    reader = RespReader(Err)
    replies = reader.feed(
        b"+OK\r\n-ERR wrong\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n"
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n*1\r\n:1\r\n+x\r\n"
    )
    assert replies[0] == "OK"
    assert isinstance(replies[1], Err) and replies[1].args == ("ERR wrong",)
    assert replies[2:] == [42, b"abc", None, None, [], [b"subscribe", b"c", 1], [b"pong", b""], [[1], "x"]]


def test_a_message_split_anywhere_comes_out_once_complete():
    """Bulk strings may hold CRLF; every split point gives the same single reply."""
    for cut in range(1, len(MESSAGE)):
        reader = RespReader(Err)
        assert reader.feed(MESSAGE[:cut]) == []
        assert reader.feed(MESSAGE[cut:]) == [[b"message", b"ch:one", b'{"a":"b\r\n"}']]


def test_many_messages_in_one_read_in_order():
    reader = RespReader(Err)
    data = b"".join(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(1000))
    replies = reader.feed(data[:5000]) + reader.feed(data[5000:])
    assert [int(r[2]) for r in replies] == list(range(1000))


@pytest.mark.parametrize(
    "data",
    [b"?x\r\n", b"$abc\r\n", b":1.5\r\n", b"$3\r\nabcXY", b"*x\r\n", b"$999999999999\r\n", b"+" + b"a" * 70000],
)
def test_invalid_input_is_a_resp_error(data):
    with pytest.raises(RespError):
        RespReader(Err, max_bulk=10**9).feed(data)
