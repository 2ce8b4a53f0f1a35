"""A training profile: per-feature summaries of the training data, for ``ModelLoaded``.

The sink compares what a model is served with what it was trained on (the population
stability index per feature, ``capture.stats.population_stability_index``), so the profile is
built by the very aggregates that summarise the served inputs of a scoring window: counts,
nulls, extremes and mean, and the signed sketch of every finite number::

    profile = profile_features({"alcohol": x_train[:, 0], "hue": x_train[:, 10]})
    event = facts.model_loaded(runtime=runtime, training_profile=profile)

Only the standard library is used; numpy arrays and pandas columns are iterables of numbers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import overload

from capture.events import FeatureSummary
from capture.stats import DEFAULT_FEATURE_RELATIVE_ACCURACY, FeatureAggregates

Columns = Mapping[str, Iterable[object]]
Rows = Iterable[Mapping[str, object]]


# One signature per form, so that a type checker infers a literal argument in its form's context.
@overload
def profile_features(
    data: Columns, *, relative_accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY
) -> list[FeatureSummary]: ...


@overload
def profile_features(
    data: Rows, *, relative_accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY
) -> list[FeatureSummary]: ...


def profile_features(
    data: Columns | Rows, *, relative_accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY
) -> list[FeatureSummary]:
    """One ``FeatureSummary`` per feature, by name, from columns or rows of training data.

    ``data`` is a mapping of feature name to its values (columns), or an iterable of mappings
    of feature name to value (rows; a feature missing from a row is not counted, as in
    ``ScoringRecorder.record_features``). None, NaN and the infinities are nulls: counted in
    ``count`` and ``null_count``, left out of min, max, mean and the sketch. Any other value
    must be a real number (numpy's and Decimal included, bool excluded): a text column
    raises ``ValueError`` naming it, since a profile of numbers cannot describe it.
    """
    aggregates = FeatureAggregates(relative_accuracy)
    if isinstance(data, Mapping):
        for name, values in data.items():
            _check_name(name)
            for row, value in enumerate(values):
                aggregates.add(name, _number(value, name, row))
    else:
        for row, record in enumerate(data):
            if not isinstance(record, Mapping):
                raise ValueError(
                    f"row {row} is {type(record).__name__} {record!r:.80}; expected a mapping "
                    "of feature name to value — pass rows as dicts, or columns as one mapping "
                    "of name to values (e.g. {name: frame[name] for name in frame})"
                )
            for name, value in record.items():
                _check_name(name)
                aggregates.add(name, _number(value, name, row))
    return aggregates.summaries()


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ValueError(
            f"feature name {name!r:.80} is {type(name).__name__}; expected a string, the name "
            "the model's input schema gives the feature"
        )


def _number(value: object, name: str, row: int) -> numbers.Real | Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Decimal):
        raise ValueError(
            f"feature {name!r}, row {row}: {type(value).__name__} {value!r:.80}; expected a "
            "number, None or NaN — profile only numeric features (leave this one out, or "
            "encode it as numbers first)"
        )
    return value
