"""Stream: seq assignment, bounded history and recovery decisions (docs/protocol.md
sections 1 and 3), driven with explicit ``now`` values instead of a clock."""

from __future__ import annotations

from collections import deque

import pytest

from gateway.core.model import HistoryResult, Position
from gateway.core.stream import Stream, recover

T0 = 1_764_180_000.0  # a fixed "now", seconds since the Unix epoch
E = "e7Yq"


def stream(size: int = 1000, ttl: float = 300.0, epoch: str = E) -> Stream:
    return Stream("room:1", epoch, size, ttl)


def publish(s: Stream, n: int, now: float = T0) -> None:
    for i in range(n):
        s.append({"i": i}, now)


def seqs(result: HistoryResult) -> list[int] | None:
    return None if result.publications is None else [p.seq for p in result.publications]


# -- seq and history -------------------------------------------------------


def test_new_stream_is_at_seq_zero():
    """A channel that never had a publication is at seq 0 in its epoch."""
    assert Position(E, 0) == stream().top


def test_seq_starts_at_one_and_increases_by_one():
    """Appends get seq 1, 2, 3 in order and the top follows the latest."""
    s = stream()
    got = [s.append(x, T0).seq for x in "abc"]
    assert ([1, 2, 3], Position(E, 3)) == (got, s.top)


def test_publication_carries_channel_epoch_data_ts_and_sender():
    """An appended publication holds its channel, epoch, data, ms timestamp and sender."""
    pub = stream().append({"text": "hi"}, T0 + 0.123, "alice")
    assert ("room:1", E, {"text": "hi"}, 1_764_180_000_123, "alice") == (
        pub.channel,
        pub.epoch,
        pub.data,
        pub.ts,
        pub.sender,
    )


def test_history_is_trimmed_to_size():
    """With size 3, after 5 appends history keeps seqs 3, 4, 5."""
    s = stream(size=3)
    publish(s, 5)
    assert [3, 4, 5] == [p.seq for p in s.history(T0)]


def test_history_keeps_publication_exactly_ttl_old():
    """A publication exactly ttl seconds old is still kept."""
    s = stream(ttl=10)
    s.append("old", T0)
    s.append("new", T0 + 5)
    assert [1, 2] == [p.seq for p in s.history(T0 + 10)]


def test_history_drops_publications_older_than_ttl():
    """A publication more than ttl seconds old is dropped; newer ones stay."""
    s = stream(ttl=10)
    s.append("old", T0)
    s.append("new", T0 + 5)
    assert [2] == [p.seq for p in s.history(T0 + 10.5)]


def test_history_ages_out_completely_but_seq_continues():
    """When every publication has aged out, history is empty and the next seq still follows on."""
    s = stream(ttl=10)
    publish(s, 3)
    empty = s.history(T0 + 60)
    assert ([], 4) == (empty, s.append("x", T0 + 60).seq)


# -- recovery ----------------------------------------------------------------


def _via_stream(s: Stream, since: Position | None, now: float) -> HistoryResult:
    return s.recover(since, now)


def _via_function_list(s: Stream, since: Position | None, now: float) -> HistoryResult:
    return recover(s.top, s.history(now), since)


def _via_function_deque(s: Stream, since: Position | None, now: float) -> HistoryResult:
    return recover(s.top, deque(s.history(now)), since)


@pytest.fixture(params=[_via_stream, _via_function_list, _via_function_deque], ids=["Stream.recover", "recover-list", "recover-deque"])
def recovery(request):
    """Ask a recovery question through Stream.recover or through recover() (list/deque history)."""
    return request.param


def test_since_none_is_now(recovery):
    """Without a position the answer is "now": the top and no publications, not a reset."""
    s = stream()
    publish(s, 5)
    assert HistoryResult(Position(E, 5), ()) == recovery(s, None, T0)


def test_since_equal_to_top_recovers_nothing(recovery):
    """A client already at the top is recovered with no publications."""
    s = stream()
    publish(s, 5)
    assert HistoryResult(Position(E, 5), ()) == recovery(s, Position(E, 5), T0)


def test_since_zero_on_empty_channel_recovers_nothing(recovery):
    """A client at seq 0 of a channel that never had a publication is recovered with nothing."""
    assert HistoryResult(Position(E, 0), ()) == recovery(stream(), Position(E, 0), T0)


def test_since_in_the_middle_recovers_the_rest(recovery):
    """A client at seq 3 of 5 gets seqs 4 and 5."""
    s = stream()
    publish(s, 5)
    assert [4, 5] == seqs(recovery(s, Position(E, 3), T0))


def test_since_ahead_of_top_is_reset(recovery):
    """A position ahead of the latest seq is a reset (publications None)."""
    s = stream()
    publish(s, 5)
    assert HistoryResult(Position(E, 5), None) == recovery(s, Position(E, 6), T0)


def test_since_ahead_on_empty_channel_is_reset(recovery):
    """A position past seq 0 on an empty channel of the same epoch is a reset."""
    assert HistoryResult(Position(E, 0), None) == recovery(stream(), Position(E, 1), T0)


def test_wrong_epoch_is_reset(recovery):
    """A position in another epoch is a reset even when its seq exists in this one."""
    s = stream()
    publish(s, 5)
    assert HistoryResult(Position(E, 5), None) == recovery(s, Position("other", 3), T0)


def test_negative_seq_is_reset(recovery):
    """A negative seq (never valid) is a reset."""
    s = stream()
    publish(s, 5)
    assert None == recovery(s, Position(E, -1), T0).publications  # noqa: E711


def test_seq_zero_with_full_history_recovers_everything(recovery):
    """A client at seq 0 of the same epoch gets every publication when history holds seq 1."""
    s = stream()
    publish(s, 5)
    assert [1, 2, 3, 4, 5] == seqs(recovery(s, Position(E, 0), T0))


def test_seq_zero_without_seq_one_in_history_is_reset(recovery):
    """A client at seq 0 is reset when history no longer holds seq 1."""
    s = stream(size=3)
    publish(s, 5)
    assert None == seqs(recovery(s, Position(E, 0), T0))  # noqa: E711


def test_gap_older_than_size_trimmed_history_is_reset(recovery):
    """With history 3..5 (trimmed by size), a client at seq 1 (missing 2) is reset."""
    s = stream(size=3)
    publish(s, 5)
    assert HistoryResult(Position(E, 5), None) == recovery(s, Position(E, 1), T0)


def test_gap_older_than_age_trimmed_history_is_reset(recovery):
    """With seqs 1-2 aged out, a client at seq 1 (missing 2) is reset."""
    s = stream(ttl=10)
    publish(s, 2, T0)
    publish(s, 2, T0 + 8)
    assert HistoryResult(Position(E, 4), None) == recovery(s, Position(E, 1), T0 + 12)


def test_everything_aged_out_is_reset(recovery):
    """When all history has aged out, a client behind the top is reset."""
    s = stream(ttl=10)
    publish(s, 3)
    assert HistoryResult(Position(E, 3), None) == recovery(s, Position(E, 2), T0 + 60)


def test_everything_aged_out_but_client_at_top_recovers(recovery):
    """When all history has aged out, a client already at the top is still recovered."""
    s = stream(ttl=10)
    publish(s, 3)
    assert HistoryResult(Position(E, 3), ()) == recovery(s, Position(E, 3), T0 + 60)


def test_edge_of_size_trimmed_history_recovers(recovery):
    """With history 3..5 (trimmed by size), a client at seq 2 (oldest kept == 2 + 1) gets 3, 4, 5."""
    s = stream(size=3)
    publish(s, 5)
    assert [3, 4, 5] == seqs(recovery(s, Position(E, 2), T0))


def test_edge_of_age_trimmed_history_recovers(recovery):
    """With seqs 1-2 aged out, a client at seq 2 (oldest kept == 2 + 1) gets 3, 4."""
    s = stream(ttl=10)
    publish(s, 2, T0)
    publish(s, 2, T0 + 8)
    assert [3, 4] == seqs(recovery(s, Position(E, 2), T0 + 12))


def test_recovered_publications_are_the_same_objects_as_published():
    """Recovered publications are the ones appended (same seq, data and ts), in order."""
    s = stream()
    pubs = [s.append(i, T0 + i) for i in range(4)]
    assert tuple(pubs[2:]) == s.recover(Position(E, 2), T0 + 4).publications


def test_recover_reports_top_after_trimming():
    """Stream.recover trims by age at the given now before deciding."""
    s = stream(ttl=10)
    publish(s, 3)
    # At T0 the client at seq 1 recovers 2, 3; sixty seconds later it is reset.
    assert ([2, 3], None) == (seqs(s.recover(Position(E, 1), T0)), seqs(s.recover(Position(E, 1), T0 + 60)))
