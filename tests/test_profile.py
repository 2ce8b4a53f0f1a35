"""Training profiles: the same summaries a scoring window gives the same values, from columns or
rows, of Python or numpy numbers; what is not a number is refused naming the feature."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from capture.profile import profile_features
from capture.stats import ScoringRecorder

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS: dict[str, list[float | None]] = {
    "alcohol": [13.2, 12.4, None, 14.1, math.nan, 11.0],
    "delta": [-3.5, 0.0, 2.25, -1e-12, 7.0, math.inf],
    "empty": [None, math.nan],
}


def _rows(columns: dict[str, list[float | None]]) -> list[dict[str, float | None]]:
    rows: list[dict[str, float | None]] = []
    for name, values in columns.items():
        for i, value in enumerate(values):
            if i == len(rows):
                rows.append({})
            rows[i][name] = value
    return rows


def test_a_profile_is_what_a_scoring_window_of_the_same_values_says() -> None:
    recorder = ScoringRecorder(60, now=T0)
    recorder.record(0.01)
    for row in _rows(COLUMNS):
        recorder.record_features(row)
    window = recorder.close_window(T0 + timedelta(seconds=60))
    assert window is not None
    profile = profile_features(COLUMNS)
    assert profile == window.features == profile_features(_rows(COLUMNS))
    alcohol, delta, empty = profile
    assert (alcohol.name, alcohol.count, alcohol.null_count) == ("alcohol", 6, 2)
    assert (alcohol.min, alcohol.max) == (11.0, 14.1)
    assert alcohol.mean == pytest.approx(12.675)
    assert (delta.count, delta.null_count, delta.min, delta.max) == (6, 1, -3.5, 7.0)
    assert delta.distribution is not None
    assert delta.distribution.positive.zero_count == 2  # 0.0 and -1e-12
    assert sum(delta.distribution.negative.counts) == 1
    assert (empty.count, empty.null_count, empty.min, empty.distribution) == (2, 2, None, None)


def test_numpy_columns_and_other_real_numbers() -> None:
    columns: dict[str, Iterable[object]] = {
        "f32": np.array([1.5, np.nan, -2.0], dtype=np.float32),
        "i64": np.arange(3, dtype=np.int64),
        "mixed": [Fraction(1, 2), Decimal("2.5"), Decimal("NaN"), 10**400],
    }
    f32, i64, mixed = profile_features(columns)
    assert (f32.count, f32.null_count, f32.min, f32.max) == (3, 1, -2.0, 1.5)
    assert (i64.count, i64.min, i64.max, i64.mean) == (3, 0.0, 2.0, 1.0)
    # A Decimal NaN and an int beyond a double are nulls, as in record_features.
    assert (mixed.count, mixed.null_count, mixed.min, mixed.max) == (4, 2, 0.5, 2.5)


def test_rows_count_only_the_features_they_carry_and_accuracy_is_chosen() -> None:
    profile = profile_features([{"a": 1.0}, {"a": 2.0, "b": None}], relative_accuracy=0.01)
    assert [(f.name, f.count, f.null_count) for f in profile] == [("a", 2, 0), ("b", 1, 1)]
    assert profile[0].distribution is not None
    assert profile[0].distribution.negative.relative_accuracy == 0.01
    assert profile_features({}) == profile_features([]) == []
    with pytest.raises(ValueError, match=r"relative_accuracy must be in \[1e-06, 1\)"):
        profile_features({}, relative_accuracy=0.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"color": ["red"]}, "feature 'color', row 0: str 'red'; expected a number, None or NaN"),
        ({"flag": [1.0, True]}, "feature 'flag', row 1: bool True; expected a number"),
        ({"x": [np.bool_(True)]}, "feature 'x', row 0: bool np.True_; expected a number"),
        ([{"x": 1.0}, {"x": b"1"}], "feature 'x', row 1: bytes b'1'; expected a number"),
        ({7: [1.0]}, "feature name 7 is int; expected a string"),
        ([{"x": 1.0}, [("x", 1.0)]], "row 1 is list [('x', 1.0)]; expected a mapping"),
    ],
)
def test_what_is_not_a_number_is_refused_naming_the_feature(data: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        profile_features(data)  # type: ignore[call-overload]
    assert message in str(raised.value)
