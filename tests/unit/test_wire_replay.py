"""ReplayGuard on its own: incarnations, the 64-wide window, the age bound, the u32 wrap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafailover.wire.replay import WINDOW, ReplayGuard, Verdict

ACCEPT, REPLAY, STALE = Verdict.ACCEPT, Verdict.REPLAY, Verdict.STALE


def test_first_packet_is_accepted_and_a_duplicate_is_not() -> None:
    g = ReplayGuard()
    assert g.incarnation is None
    assert g.admit(5, 10, 0) is ACCEPT
    assert g.incarnation == 5
    assert g.admit(5, 10, 0) is REPLAY


def test_lower_incarnation_is_replay_higher_resets_the_window() -> None:
    g = ReplayGuard()
    assert g.admit(5, 1000, 50_000) is ACCEPT
    assert g.admit(4, 1001, 50_000) is REPLAY
    # A restart: sequence and timestamps start over and must be accepted.
    assert g.admit(6, 1, 0) is ACCEPT
    assert g.admit(6, 2, 10) is ACCEPT
    assert g.incarnation == 6
    assert g.admit(5, 1001, 50_000) is REPLAY


def test_window_edges() -> None:
    g = ReplayGuard()
    assert g.admit(1, 100, 0) is ACCEPT
    assert g.admit(1, 100 - WINDOW, 0) is REPLAY  # 64 behind: outside
    assert g.admit(1, 100 - WINDOW + 1, 0) is ACCEPT  # 63 behind: last slot
    assert g.admit(1, 100 - WINDOW + 1, 0) is REPLAY
    assert g.admit(1, 99, 0) is ACCEPT


def test_window_slides_keeping_what_was_seen() -> None:
    g = ReplayGuard()
    for seq in range(1, 11):
        assert g.admit(1, seq, 0) is ACCEPT
    assert g.admit(1, 10 + 63, 0) is ACCEPT  # slide by 63: sequence 10 is in the last slot
    assert g.admit(1, 10, 0) is REPLAY
    assert g.admit(1, 11, 0) is ACCEPT  # never seen, still inside
    assert g.admit(1, 9, 0) is REPLAY  # slid out


def test_a_big_jump_forgets_the_old_window() -> None:
    g = ReplayGuard()
    assert g.admit(1, 1, 0) is ACCEPT
    assert g.admit(1, 1000, 0) is ACCEPT
    assert g.admit(1, 999, 0) is ACCEPT  # unseen and inside the new window
    assert g.admit(1, 1, 0) is REPLAY  # far outside


def test_late_packet_older_than_max_age_is_stale_and_leaves_no_trace() -> None:
    g = ReplayGuard(max_age=0.5)
    assert g.admit(1, 1, 1000) is ACCEPT
    assert g.admit(1, 3, 1600) is ACCEPT
    assert g.admit(1, 2, 1099) is STALE  # 501 ms older than the newest
    assert g.admit(1, 2, 1099) is STALE  # not marked as seen by the rejection
    assert g.admit(1, 2, 1100) is ACCEPT  # exactly 500 ms: fresh
    assert g.admit(1, 2, 1100) is REPLAY


def test_newest_timestamp_follows_the_highest_sequence() -> None:
    g = ReplayGuard(max_age=1.0)
    assert g.admit(1, 5, 5000) is ACCEPT
    assert g.admit(1, 2, 4500) is ACCEPT  # late, 500 ms older: fine
    assert g.admit(1, 3, 9999) is STALE  # "newer" than the newest on a late packet: wrapped age
    assert g.admit(1, 6, 8000) is ACCEPT
    assert g.admit(1, 4, 5000) is STALE  # now 3000 ms behind sequence 6


def test_timestamps_wrapping_past_2_32() -> None:
    g = ReplayGuard(max_age=2.0)
    assert g.admit(1, 10, 2**32 - 100) is ACCEPT
    assert g.admit(1, 11, 50) is ACCEPT  # the sender's u32 wrapped
    assert g.admit(1, 9, 2**32 - 150) is ACCEPT  # 200 ms older, across the wrap
    assert g.admit(1, 8, 2**32 - 3000) is STALE  # 3050 ms older, across the wrap


def test_in_order_packets_after_a_long_silence_are_accepted() -> None:
    # 30 days of partition: more than half the u32 ms range, which a pure timestamp comparison
    # would take for "older". The sequence says it is newer.
    g = ReplayGuard()
    assert g.admit(1, 1, 1000) is ACCEPT
    assert g.admit(1, 2, (1000 + 30 * 86_400_000) % 2**32) is ACCEPT
    assert g.admit(1, 3, (1100 + 30 * 86_400_000) % 2**32) is ACCEPT


@pytest.mark.parametrize("max_age", [-0.1, math.nan])
def test_max_age_must_be_non_negative(max_age: float) -> None:
    with pytest.raises(ValueError, match="max_age"):
        ReplayGuard(max_age)


class Model:
    """The rules written the obvious way: a set of seen sequences instead of a bitmap."""

    def __init__(self, max_age_ms: int) -> None:
        self.max_age_ms = max_age_ms
        self.inc: int | None = None
        self.highest = 0
        self.newest_ts = 0
        self.seen: set[int] = set()

    def admit(self, inc: int, seq: int, ts: int) -> Verdict:
        if self.inc is None or inc > self.inc:
            self.inc, self.highest, self.newest_ts, self.seen = inc, seq, ts, {seq}
            return ACCEPT
        if inc < self.inc:
            return REPLAY
        if seq > self.highest:
            self.highest, self.newest_ts = seq, ts
            self.seen.add(seq)
            return ACCEPT
        if self.highest - seq >= 64 or seq in self.seen:
            return REPLAY
        if (self.newest_ts - ts) % 2**32 > self.max_age_ms:
            return STALE
        self.seen.add(seq)
        return ACCEPT


u64 = st.integers(0, 2**64 - 1)
packets = st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 6000))


@given(st.lists(packets, max_size=300))
def test_matches_the_reference_model(stream: list[tuple[int, int, int]]) -> None:
    guard, model = ReplayGuard(max_age=2.0), Model(2000)
    for inc, seq, ts in stream:
        assert guard.admit(inc, seq, ts) is model.admit(inc, seq, ts), (inc, seq, ts)


@given(
    st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1 - WINDOW), st.permutations(range(WINDOW))
)
def test_any_order_inside_the_window_is_accepted_once(
    inc: int, base: int, order: list[int]
) -> None:
    g = ReplayGuard()
    for i in order:
        assert g.admit(inc, base + i, 0) is ACCEPT
    for i in order:
        assert g.admit(inc, base + i, 0) is REPLAY
