"""The scoring recorder and its sketch: exact extremes, honest counts, bounded error."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from capture.stats import ScoringRecorder, Sketch

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
