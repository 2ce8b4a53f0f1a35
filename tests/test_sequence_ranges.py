"""The sequences a producer's events have been applied with: exact, bounded, and readable back
from what the catalog stores."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from atlas_sink.core import sequence_ranges as sr


def test_in_order_sequences_stay_one_range() -> None:
    ranges: sr.Ranges = ()
    for sequence in range(1, 1001):
        ranges = sr.add(ranges, sequence)
    assert ranges == ((1, 1000),)


def test_a_gap_closes_when_the_late_event_arrives() -> None:
    ranges = sr.add(sr.add(sr.add((), 1), 3), 5)
    assert ranges == ((1, 1), (3, 3), (5, 5))
    assert not sr.contains(ranges, 2) and not sr.contains(ranges, 4)
    ranges = sr.add(sr.add(ranges, 4), 2)
    assert ranges == ((1, 5),)
    assert sr.contains(ranges, 4) and not sr.contains(ranges, 6)


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200), st.integers(2, 20))
def test_ranges_hold_exactly_the_sequences_added_until_gaps_are_given_up(
    sequences: list[int], max_ranges: int
) -> None:
    ranges: sr.Ranges = ()
    for sequence in sequences:
        ranges = sr.add(ranges, sequence, max_ranges)
    assert len(ranges) <= max_ranges
    assert list(ranges) == sorted(ranges)
    assert all(lo <= hi for lo, hi in ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))
    for sequence in sequences:
        assert sr.contains(ranges, sequence)  # nothing applied is ever forgotten
    given_up = ranges[0][1] if ranges and ranges[0][0] == 0 else 0
    for sequence in range(given_up + 1, 302):
        assert sr.contains(ranges, sequence) == (sequence in set(sequences))
    assert sr.from_text(sr.to_text(ranges)) == ranges


def test_past_the_bound_the_oldest_gaps_are_given_up_and_marked() -> None:
    ranges: sr.Ranges = ()
    for sequence in range(1, 40, 2):  # 20 open gaps
        ranges = sr.add(ranges, sequence, max_ranges=8)
    assert len(ranges) == 8
    assert ranges[0][0] == 0
    assert sr.beyond_window(ranges, 2)  # a late event there is not a plain duplicate
    assert not sr.beyond_window(ranges, 38)
    assert sr.contains(ranges, 39) and not sr.contains(ranges, 38)


def test_an_older_sink_s_high_watermark_reads_as_everything_up_to_it() -> None:
    assert sr.from_text("41") == ((0, 41),)
    assert sr.beyond_window(sr.from_text("41"), 7)
    assert sr.from_text("1-41,43-43") == ((1, 41), (43, 43))
    assert sr.from_text("") == ()


def test_a_shuffled_stream_ends_in_one_range() -> None:
    order = list(range(1, 501))
    random.Random(3).shuffle(order)
    ranges: sr.Ranges = ()
    for sequence in order:
        ranges = sr.add(ranges, sequence, max_ranges=10_000)
    assert ranges == ((1, 500),)
