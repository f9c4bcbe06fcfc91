"""Token buckets for --publish-rate (gateway.core.ratelimit), on plain `now` values."""

from __future__ import annotations

import math

import pytest

from gateway.core.auth import OPEN, Identity, api_key_identity
from gateway.core.ratelimit import (
    BucketSet,
    TokenBucket,
    http_rate_key,
    retry_after_header,
)

# -- one bucket -------------------------------------------------------------------


def test_bucket_starts_full_and_allows_a_burst():
    """A new bucket allows `burst` takes at once, then refuses."""
    b = TokenBucket(rate=5, burst=5, now=100.0)
    assert [b.take(100.0) for _ in range(5)] == [0.0] * 5
    assert b.take(100.0) == pytest.approx(0.2)


def test_refused_take_takes_nothing_and_says_when():
    """A refused take leaves the tokens as they were; the wait shrinks as time passes."""
    b = TokenBucket(rate=2, burst=2, now=0.0)
    b.take(0.0)
    b.take(0.0)
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.0) == pytest.approx(0.5)  # the refusal took nothing
    assert b.take(0.3) == pytest.approx(0.2)
    assert b.take(0.5) == 0.0
    assert b.take(0.5) == pytest.approx(0.5)


def test_refill_arithmetic():
    """rate tokens a second, fractions included, never above burst."""
    b = TokenBucket(rate=10, burst=4, now=0.0)
    for _ in range(4):
        assert b.take(0.0) == 0.0
    # 0.25 s later: 2.5 tokens; two takes pass, the third waits for the missing half.
    assert b.take(0.25) == 0.0
    assert b.take(0.25) == 0.0
    assert b.take(0.25) == pytest.approx(0.05)
    # A long pause refills to burst only.
    assert b.tokens == pytest.approx(0.5)
    results = [b.take(1000.0) for _ in range(5)]
    assert results[:4] == [0.0] * 4
    assert results[4] == pytest.approx(0.1)


def test_sustained_rate_is_the_rate():
    """Taking every 1/rate seconds after the burst always succeeds; faster does not."""
    b = TokenBucket(rate=4, burst=4, now=0.0)
    for _ in range(4):
        b.take(0.0)
    for i in range(1, 41):
        assert b.take(i * 0.25) == 0.0, i
    assert b.take(10.0 + 0.1) > 0


def test_clock_step_back_refills_nothing():
    """A clock that goes back gives no tokens (and no error)."""
    b = TokenBucket(rate=1, burst=1, now=50.0)
    assert b.take(50.0) == 0.0
    assert b.take(10.0) == pytest.approx(1.0)
    assert b.take(10.5) == pytest.approx(0.5)
    assert b.take(11.0) == 0.0


def test_cost_above_burst_never_fits():
    """A take larger than the burst can never succeed: inf, and nothing taken."""
    b = TokenBucket(rate=1, burst=2, now=0.0)
    assert b.take(0.0, cost=3) == math.inf
    assert b.take(0.0, cost=2) == 0.0


def test_full_at():
    """full_at is when the bucket holds `burst` again."""
    b = TokenBucket(rate=2, burst=4, now=10.0)
    assert b.full_at() == 10.0
    b.take(10.0)
    b.take(10.0)
    assert b.full_at() == pytest.approx(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_rejects_non_positive(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# -- a set of buckets -----------------------------------------------------------------


def test_keys_have_separate_buckets():
    """One key's burst does not spend another's."""
    s = BucketSet(rate=2)
    assert [s.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    assert s.take("b", 0.0) == 0.0


def test_burst_defaults_to_rate_and_at_least_one():
    """--publish-rate N: bursts of N; a rate below 1 still allows one publication."""
    assert BucketSet(rate=7).burst == 7
    s = BucketSet(rate=0.5)
    assert s.burst == 1
    assert s.take("a", 0.0) == 0.0
    assert s.take("a", 0.0) == pytest.approx(2.0)
    assert s.take("a", 2.0) == 0.0


def test_idle_full_buckets_are_forgotten():
    """A bucket untouched for burst/rate seconds is full, and is dropped on the next take."""
    s = BucketSet(rate=10, burst=10)
    s.take("a", 0.0)
    s.take("b", 0.5)
    assert len(s) == 2
    s.take("c", 1.0)  # a was last touched 1.0 s ago = burst/rate: full, forgotten
    assert "a" not in s
    assert "b" in s and "c" in s
    s.take("c", 1.6)
    assert "b" not in s
    assert len(s) == 1


def test_forgetting_an_idle_bucket_changes_nothing_for_its_key():
    """A forgotten idle bucket comes back full, which is what it held anyway."""
    s = BucketSet(rate=2, burst=2)
    s.take("a", 0.0)
    s.take("a", 0.0)
    s.take("x", 5.0)
    assert "a" not in s
    assert [s.take("a", 5.0), s.take("a", 5.0)] == [0.0, 0.0]
    assert s.take("a", 5.0) == pytest.approx(0.5)


def test_busy_bucket_is_not_forgotten():
    """A key still within its refill time keeps its (empty) bucket: no free burst."""
    s = BucketSet(rate=1, burst=1)
    s.take("a", 0.0)
    s.take("b", 0.9)
    assert s.take("a", 0.9) == pytest.approx(0.1)


def test_key_cap_evicts_least_recently_used():
    """Past max_keys the least recently used bucket goes, whatever its state."""
    s = BucketSet(rate=1, burst=1, max_keys=3)
    s.take("a", 0.0)
    s.take("b", 0.0)
    s.take("c", 0.0)
    s.take("a", 0.1)  # a is now the most recent
    s.take("d", 0.2)
    assert len(s) == 3
    assert "b" not in s
    assert {"a", "c", "d"} <= {k for k in "abcd" if k in s}


def test_flood_of_distinct_keys_stays_bounded():
    """100,000 distinct addresses within one refill period: memory stays at max_keys."""
    s = BucketSet(rate=1, burst=1, max_keys=1000)
    for i in range(100_000):
        assert s.take(f"addr:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.0) == 0.0
    assert len(s) == 1000


def test_forget():
    """forget drops a key's bucket (a closed connection); unknown keys are fine."""
    s = BucketSet(rate=1)
    s.take("ws:1", 0.0)
    s.forget("ws:1")
    s.forget("ws:2")
    assert len(s) == 0
    assert s.take("ws:1", 0.0) == 0.0


def test_bucket_set_rejects_bad_arguments():
    with pytest.raises(ValueError):
        BucketSet(rate=0)
    with pytest.raises(ValueError):
        BucketSet(rate=1, max_keys=0)


# -- keys and headers ---------------------------------------------------------------


def test_http_rate_key_per_identity_api_key_or_address():
    """A token's sub, an API key's digest (never the key), else the client address."""
    alice = Identity(sub="alice", kind="token")
    assert http_rate_key(alice, "10.0.0.1") == "sub:alice"
    key = http_rate_key(api_key_identity(), "10.0.0.1", api_key="s3cret")
    assert key.startswith("key:") and "s3cret" not in key
    assert key != http_rate_key(api_key_identity(), "10.0.0.1", api_key="other")
    assert http_rate_key(OPEN, "10.0.0.1") == "addr:10.0.0.1"
    assert http_rate_key(None, "::1") == "addr:::1"


@pytest.mark.parametrize(("seconds", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (7.2, 8), (math.inf, 1)])
def test_retry_after_header_rounds_up_to_at_least_one(seconds, header):
    assert retry_after_header(seconds) == header
