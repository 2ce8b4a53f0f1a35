"""The scoring recorder and its sketch: exact extremes, honest counts, bounded error."""

from __future__ import annotations

import itertools
import math
import random
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.stats import (
    DEFAULT_FEATURE_RELATIVE_ACCURACY,
    PSI_FLOOR,
    ZERO_THRESHOLD,
    ScoringRecorder,
    SignedSketch,
    Sketch,
    population_stability_index,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _close(recorder: ScoringRecorder, seconds: float = 60):  # type: ignore[no-untyped-def]
    return recorder.close_window(T0 + timedelta(seconds=seconds))


def test_min_and_max_are_right_from_the_first_request() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.25)
    stats = _close(recorder)
    assert stats is not None
    assert (stats.latency.min, stats.latency.max, stats.latency.mean) == (0.25, 0.25, 0.25)
    assert stats.request_count == 1


def test_min_falls_and_max_rises() -> None:
    # The classic bug: min initialised to 0 never falls, max compared against min.
    recorder = ScoringRecorder(60, now=T0)
    for value in (0.5, 0.9, 0.1, 0.7):
        recorder.record(value)
    stats = _close(recorder)
    assert stats is not None
    assert stats.latency.min == 0.1
    assert stats.latency.max == 0.9
    assert stats.latency.mean == pytest.approx(0.55)


def test_empty_window_sends_nothing_and_next_window_starts_fresh() -> None:
    recorder = ScoringRecorder(60, now=T0)
    assert _close(recorder) is None
    recorder.record(0.3)
    stats = _close(recorder, 120)
    assert stats is not None
    assert stats.window_start == T0 + timedelta(seconds=60)
    assert stats.window_end == T0 + timedelta(seconds=120)
    assert stats.latency.min == 0.3


def test_windows_do_not_leak_into_each_other() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(5.0)
    assert _close(recorder) is not None
    recorder.record(0.1)
    stats = _close(recorder, 120)
    assert stats is not None
    assert stats.latency.max == 0.1
    assert stats.request_count == 1


def test_errors_count_by_kind_and_are_timed() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.1)
    recorder.record(0.4, error="timeout")
    recorder.record(0.2, error=ValueError("bad input"))
    recorder.record(0.3, error="timeout")
    stats = _close(recorder)
    assert stats is not None
    assert stats.request_count == 4
    assert stats.error_count == 3
    assert stats.errors_by_kind == {"timeout": 2, "ValueError": 1}
    assert stats.latency.max == 0.4


@pytest.mark.parametrize("bad", ["fast", None, float("nan"), -1.0, float("inf"), [1]])
def test_record_never_raises_on_bad_latency(bad: object) -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(bad)  # type: ignore[arg-type]
    recorder.record(bad, error="boom")  # type: ignore[arg-type]
    recorder.record(0.2)
    stats = _close(recorder)
    assert stats is not None
    assert recorder.rejected == 1
    assert stats.error_count == 1
    assert stats.latency.min == 0.2


def test_pending_buffer_is_bounded() -> None:
    recorder = ScoringRecorder(60, now=T0, max_pending=10)
    for _ in range(25):
        recorder.record(0.1)
    assert recorder.overflowed == 15
    stats = _close(recorder)
    assert stats is not None
    assert stats.request_count == 10


def test_concurrent_records_lose_nothing_while_draining() -> None:
    recorder = ScoringRecorder(60, now=T0)
    per_thread, threads = 20_000, 4
    stop = threading.Event()

    def drainer() -> None:
        while not stop.is_set():
            recorder.drain()

    def writer() -> None:
        for i in range(per_thread):
            recorder.record(0.001 * (1 + i % 7))

    draining = threading.Thread(target=drainer)
    draining.start()
    writers = [threading.Thread(target=writer) for _ in range(threads)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    draining.join()
    stats = _close(recorder)
    assert stats is not None
    assert stats.request_count == per_thread * threads
    assert stats.latency.min == 0.001
    assert stats.latency.max == pytest.approx(0.007)


def test_feature_summaries() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.1)
    recorder.record_features({"alcohol": 13.0, "hue": None})
    recorder.record_features({"alcohol": 11.0, "hue": 1.5})
    recorder.record_features({"alcohol": "x"})  # type: ignore[dict-item]
    stats = _close(recorder)
    assert stats is not None
    by_name = {f.name: f for f in stats.features}
    assert (by_name["alcohol"].min, by_name["alcohol"].max) == (11.0, 13.0)
    assert by_name["alcohol"].mean == 12.0
    assert (by_name["hue"].count, by_name["hue"].null_count, by_name["hue"].mean) == (2, 1, 1.5)
    assert recorder.rejected == 1


def test_sketch_quantiles_within_relative_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-4, 1) for _ in range(20_000)]
    sketch = Sketch(0.01)
    sketch.add_many(values)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert sketch.quantile(q) == pytest.approx(exact, rel=0.0101)


def test_sketch_merge_equals_sketch_of_union_and_survives_the_wire() -> None:
    a, b, both = Sketch(), Sketch(), Sketch()
    a.add_many([0.1, 0.2, 0.0])
    b.add_many([0.3, 5.0])
    both.add_many([0.1, 0.2, 0.0, 0.3, 5.0])
    a.merge(b)
    assert a.buckets == both.buckets
    assert (a.count, a.zero_count) == (5, 1)
    restored = Sketch.from_event(a.to_event())
    assert restored.buckets == a.buckets
    assert restored.count == 5
    assert restored.quantile(1.0) == pytest.approx(5.0, rel=0.01)
    assert restored.quantile(0.0) == 0.0
    with pytest.raises(ValueError, match="different accuracy"):
        a.merge(Sketch(0.05))
    assert math.isnan(Sketch().quantile(0.5))


# -- the signed feature sketch and the population stability index -----------------------------


def _signed(
    values: list[float], accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY
) -> SignedSketch:
    sketch = SignedSketch(accuracy)
    for value in values:
        sketch.add(value)
    return sketch


def _mixed(rng: random.Random, n: int) -> list[float]:
    """Both signs, several decades, and exact zeros."""
    return [rng.choice([0.0, 1.0, -1.0, 1.0]) * rng.lognormvariate(0, 3) for _ in range(n)]


def test_signed_quantiles_are_within_the_relative_accuracy_on_both_sides_of_zero() -> None:
    values = _mixed(random.Random(3), 20_000)
    sketch = _signed(values)
    ordered = sorted(values)
    for q in (0.0, 0.01, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert sketch.quantile(q) == pytest.approx(exact, rel=0.0501, abs=1e-9), q
    assert sketch.positive.zero_count == values.count(0.0)
    assert sketch.negative.zero_count == 0
    assert sketch.count == len(values)


def test_signed_distribution_function_brackets_the_exact_one() -> None:
    values = _mixed(random.Random(5), 5_000)
    sketch = _signed(values)
    gamma = sketch.positive.gamma

    def exact(x: float) -> float:
        return sum(v <= x for v in values) / len(values)

    for x in (-1e4, -50.0, -1.0, -0.01, 0.0, 0.01, 1.0, 50.0, 1e4):
        # Only the values in the bucket holding x can be misplaced: those within a factor gamma.
        low, high = sorted((x / gamma, x * gamma))
        assert exact(low) - 1e-12 <= sketch.fraction_at_or_below(x) <= exact(high) + 1e-12, x
    assert sketch.fraction_at_or_below(-math.inf) == 0.0
    assert sketch.fraction_at_or_below(math.inf) == 1.0
    assert math.isnan(SignedSketch().fraction_at_or_below(1.0))
    assert math.isnan(SignedSketch().quantile(0.5))


def test_signed_merge_equals_the_sketch_of_the_union_and_survives_the_wire() -> None:
    rng = random.Random(9)
    first, second = _mixed(rng, 500), _mixed(rng, 700)
    merged = _signed(first)
    merged.merge(_signed(second))
    assert merged.to_event() == _signed(first + second).to_event()
    restored = SignedSketch.from_event(merged.to_event())
    assert restored.to_event() == merged.to_event()
    assert restored.count == 1200
    with pytest.raises(ValueError, match="different accuracy"):
        merged.merge(SignedSketch(0.01))


def test_values_near_zero_count_as_zero_and_the_negative_side_holds_magnitudes() -> None:
    sketch = _signed([-1e-10, 1e-10, 0.0, -0.0, -2.0, 3.0])
    event = sketch.to_event()
    assert event.positive.zero_count == 4 and event.negative.zero_count == 0
    assert sum(event.negative.counts) == 1 and sum(event.positive.counts) == 1
    assert sketch.quantile(0.0) == pytest.approx(-2.0, rel=0.05)
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == pytest.approx(3.0, rel=0.05)


def _psi(training: list[float], serving: list[float]) -> float | None:
    return population_stability_index(_signed(training).to_event(), _signed(serving).to_event())


def test_psi_is_about_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    rng = random.Random(11)
    training = [rng.gauss(0, 1) for _ in range(20_000)]
    same = [rng.gauss(0, 1) for _ in range(20_000)]
    slight = [rng.gauss(0.2, 1) for _ in range(20_000)]
    shifted = [rng.gauss(1, 1) for _ in range(20_000)]
    wider = [rng.gauss(0, 2) for _ in range(20_000)]
    assert _psi(training, training) == 0.0
    same_psi, slight_psi, shifted_psi = (_psi(training, s) for s in (same, slight, shifted))
    assert same_psi is not None and slight_psi is not None and shifted_psi is not None
    assert same_psi < 0.01
    assert 0.02 < slight_psi < 0.1
    assert shifted_psi > 0.25
    wider_psi = _psi(training, wider)
    assert wider_psi is not None and wider_psi > 0.25
    # Scale-free: the same figures for a feature measured in other units.
    assert _psi([v * 1000 for v in training], [v * 1000 for v in slight]) == pytest.approx(
        slight_psi, rel=0.2
    )


def test_psi_of_point_masses_empty_sides_and_other_accuracies() -> None:
    assert _psi([5.0] * 100, [5.0] * 40) == 0.0
    assert _psi([], [1.0]) is None and _psi([1.0], []) is None
    moved = _psi([5.0] * 100, [50.0] * 100)
    # Every serving value where training had none: large, but bounded by the floor.
    assert moved is not None and 1 < moved < 2 * (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR)
    rng = random.Random(13)
    training = [rng.gauss(10, 2) for _ in range(10_000)]
    serving = [rng.gauss(10, 2) for _ in range(10_000)]
    finer = population_stability_index(
        _signed(training).to_event(), _signed(serving, 0.01).to_event()
    )
    assert finer is not None and finer < 0.02
    with pytest.raises(ValueError, match="bins must be at least 2"):
        population_stability_index(_signed([1.0]).to_event(), _signed([1.0]).to_event(), bins=1)


def test_a_bucket_beyond_the_doubles_reads_as_infinity_and_indexes_stay_in_range() -> None:
    sketch = Sketch(DEFAULT_FEATURE_RELATIVE_ACCURACY)
    sketch.add_many([sys.float_info.max, 1.0000001 * ZERO_THRESHOLD])
    lowest, highest = sketch.index_range()
    assert (min(sketch.buckets), max(sketch.buckets)) == (lowest, highest)
    assert highest - lowest < 10_000  # a feature never passes the sink's bucket limit
    # The top bucket's midpoint is past the largest double: infinity, not an OverflowError.
    assert sketch.quantile(1.0) == math.inf
    with pytest.raises(ValueError, match=r"relative_accuracy must be in \[1e-06, 1\)"):
        Sketch(1e-300)


def test_feature_windows_carry_their_distribution() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.1)
    for value in (-2.0, 0.0, 3.0, None, math.inf):
        recorder.record_features({"x": value, "empty": None})
    stats = _close(recorder)
    assert stats is not None
    empty, x = stats.features
    assert (empty.name, empty.count, empty.null_count, empty.distribution) == ("empty", 5, 5, None)
    assert (x.count, x.null_count, x.min, x.max) == (5, 2, -2.0, 3.0)
    assert x.distribution is not None
    assert x.distribution.positive.relative_accuracy == DEFAULT_FEATURE_RELATIVE_ACCURACY
    assert x.distribution == _signed([-2.0, 0.0, 3.0]).to_event()


# -- properties ---------------------------------------------------------------------------------

FEATURE_VALUES = st.lists(
    st.one_of(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1e-10, -1e-10, 1.0, -1.0]),
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(values=FEATURE_VALUES, q=st.floats(min_value=0.0, max_value=1.0))
def test_any_quantile_is_within_the_relative_accuracy(values: list[float], q: float) -> None:
    exact = sorted(values)[int(q * (len(values) - 1))]
    estimate = _signed(values).quantile(q)
    if abs(exact) <= ZERO_THRESHOLD:
        assert estimate == 0.0
    else:
        assert abs(estimate - exact) <= DEFAULT_FEATURE_RELATIVE_ACCURACY * abs(exact) * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(first=FEATURE_VALUES, second=FEATURE_VALUES)
def test_merging_is_the_sketch_of_the_union_and_psi_is_never_negative(
    first: list[float], second: list[float]
) -> None:
    merged = _signed(first)
    merged.merge(_signed(second))
    assert merged.to_event() == _signed(first + second).to_event()
    psi = _psi(first, second)
    assert psi is not None and psi >= 0.0 and math.isfinite(psi)
    assert _psi(first, first) == 0.0


@settings(max_examples=100, deadline=None)
@given(values=FEATURE_VALUES, cuts=st.lists(st.floats(allow_nan=False), min_size=2))
def test_the_distribution_function_is_a_distribution_function(
    values: list[float], cuts: list[float]
) -> None:
    sketch = _signed(values)
    shares = [sketch.fraction_at_or_below(x) for x in sorted(cuts)]
    assert all(0.0 <= s <= 1.0 + 1e-12 for s in shares)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(shares))


def test_a_feature_sum_past_the_largest_double_leaves_its_mean_unknown_not_the_window_lost() -> (
    None
):
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.01)
    recorder.record_features({"f": 1e308})
    recorder.record_features({"f": 1e308})
    stats = recorder.close_window(T0 + timedelta(seconds=60))
    assert stats is not None and stats.request_count == 1
    (feature,) = stats.features
    assert (feature.count, feature.min, feature.max, feature.mean) == (2, 1e308, 1e308, None)
