"""Contract v3 at the sink: feature distributions and training profiles decode into the capture
dataclasses (and events of v1 and v2 with the defaults), and values that make no sense are
dead-lettered with the reason meant for them, before any figure is computed from them."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastavro import schemaless_writer

from atlas_sink.core.decode import Decoder
from atlas_sink.core.validate import InvalidEvent, Limits, check_event
from capture import contract
from capture.events import ModelEvent, ModelLoaded, ScoringStats, to_avro
from capture.framing import single_object_framer, single_object_header
from capture.profile import profile_features
from capture.stats import ScoringRecorder
from tests.conftest import T0, envelope, model_loaded, scoring_stats

FRAME = single_object_framer()
NOW = T0 + timedelta(minutes=5)


def _window() -> ScoringStats:
    recorder = ScoringRecorder(60, now=T0)
    for i in range(200):
        recorder.record(0.001 * (1 + i % 13))
        recorder.record_features({"alcohol": 11 + i % 4, "delta": i - 100.5, "hue": None})
    stats = recorder.close_window(T0 + timedelta(seconds=60))
    assert stats is not None
    return stats


def _loaded() -> ModelLoaded:
    profile = profile_features({"alcohol": [12.5, 13.1, None], "delta": [-2.0, 0.0, 3.5]})
    return dataclasses.replace(model_loaded(), training_profile=profile)


def _decoded(record: dict[str, Any]) -> ModelEvent:
    event = Decoder().decode(FRAME(record))
    check_event(event, Limits(), NOW)
    return event


@pytest.mark.parametrize("payload", [_window(), _loaded()], ids=["window", "loaded"])
def test_distributions_and_profiles_decode_into_what_was_sent(
    payload: ScoringStats | ModelLoaded,
) -> None:
    event = ModelEvent(envelope=envelope(2), payload=payload)
    decoded = _decoded(to_avro(event))
    assert decoded.payload == payload
    summaries = payload.features if isinstance(payload, ScoringStats) else payload.training_profile
    assert any(s.distribution is not None for s in summaries)


@pytest.mark.parametrize(
    "old",
    [
        c
        for c in contract.released()
        if c.source.name in ("model_event.v1.avsc", "model_event.v2.avsc")
    ],
    ids=lambda c: c.source.name,
)
def test_events_of_earlier_versions_decode_with_the_defaults(old: contract.Contract) -> None:
    """A v1 or v2 emitter knows neither distributions nor profiles: the sink reads none."""
    for sequence, payload in ((1, _window()), (2, _loaded())):
        record = to_avro(ModelEvent(envelope=envelope(sequence), payload=payload))
        body = io.BytesIO()
        schemaless_writer(body, old.parsed, record)  # the fields it lacks are left out
        event = Decoder().decode(single_object_header(old.fingerprint) + body.getvalue())
        check_event(event, Limits(), NOW)
        if isinstance(event.payload, ScoringStats):
            assert isinstance(payload, ScoringStats)
            assert [f.distribution for f in event.payload.features] == [None] * 3
            assert [f.name for f in event.payload.features] == ["alcohol", "delta", "hue"]
            assert event.payload.features[0].mean == payload.features[0].mean
        else:
            assert isinstance(event.payload, ModelLoaded)
            assert event.payload.training_profile == []


# -- what is refused, and why ------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _first_feature(where: str) -> Callable[[Mutation], Mutation]:
    """A change to the first feature summary of a window's features or of a training profile."""

    def wrap(change: Mutation) -> Mutation:
        def mutate(payload: dict[str, Any]) -> None:
            change(payload[where][0])

        return mutate

    return wrap


def _set(**values: Any) -> Mutation:
    return lambda feature: feature.update(values)


def _sketch(side: str, **values: Any) -> Mutation:
    return lambda feature: feature["distribution"][side].update(values)


FEATURE_ABUSE: list[tuple[str, Mutation, str, str]] = [
    ("nulls above count", _set(count=3, null_count=4), "inconsistent", "0 <= null_count <= count"),
    ("negative count", _set(count=-1, null_count=0), "inconsistent", "got 0 nulls of -1"),
    ("negative nulls", _set(null_count=-2), "inconsistent", "got -2 nulls"),
    ("NaN min", _set(min=math.nan), "not_finite", "count NaN and infinite inputs as nulls"),
    ("infinite mean", _set(mean=-math.inf), "not_finite", "must be finite numbers or null"),
    ("min above max", _set(min=5.0, max=1.0), "inconsistent", "min 5.0 > max 1.0"),
    (
        "too many buckets",
        _sketch("positive", counts=[1] * 10_001),
        "oversized",
        "distribution.positive.counts has 10001 items, more than 10000",
    ),
    (
        "a negative bucket",
        _sketch("negative", counts=[3, -1]),
        "inconsistent",
        "distribution.negative has a negative count",
    ),
    ("negative zeros", _sketch("positive", zero_count=-5), "inconsistent", "negative count"),
    (
        "sides of other accuracies",
        _sketch("negative", relative_accuracy=0.01),
        "inconsistent",
        "positive and negative relative_accuracy differ (0.05 and 0.01)",
    ),
    *(
        (
            f"accuracy {accuracy}",
            _sketch("positive", relative_accuracy=accuracy),
            reason,
            f"relative_accuracy is {accuracy}: expected a number in [1e-06, 1)",
        )
        for accuracy, reason in (
            (0.0, "inconsistent"),
            (1.0, "inconsistent"),
            (-0.05, "inconsistent"),
            (1e-300, "inconsistent"),
            (math.nan, "not_finite"),
            (math.inf, "not_finite"),
        )
    ),
    (
        "buckets past the largest double",
        _sketch("positive", first_index=7_090, counts=[1, 0, 0, 1]),
        "inconsistent",
        "buckets 7090 .. 7093, but at relative accuracy 0.05 values above 1e-9 and within a "
        "double's range fall in buckets -207 .. 7092",
    ),
    (
        "buckets below the zero threshold",
        _sketch("negative", first_index=-(2**31), counts=[1]),
        "inconsistent",
        "compute bucket indexes as schemas/README.md says",
    ),
]


@pytest.mark.parametrize("where", ["features", "training_profile"])
@pytest.mark.parametrize(
    ("mutate", "reason", "message"),
    [case[1:] for case in FEATURE_ABUSE],
    ids=[case[0] for case in FEATURE_ABUSE],
)
def test_a_senseless_feature_summary_is_dead_lettered_with_its_reason(
    where: str, mutate: Mutation, reason: str, message: str
) -> None:
    payload = _window() if where == "features" else _loaded()
    record = to_avro(ModelEvent(envelope=envelope(2), payload=payload))
    _first_feature(where)(mutate)(record["payload"][1])
    with pytest.raises(InvalidEvent) as raised:
        _decoded(record)
    assert raised.value.reason == reason
    assert message in raised.value.message
    assert f"{where}['alcohol']" in raised.value.message


def test_profiles_and_windows_are_bounded_and_name_each_feature_once() -> None:
    loaded = to_avro(ModelEvent(envelope=envelope(2), payload=_loaded()))
    profile = loaded["payload"][1]["training_profile"]
    profile[:] = [dict(profile[0], name=f"f{i}") for i in range(1001)]
    with pytest.raises(InvalidEvent, match="training_profile has 1001 items, more than 1000"):
        _decoded(loaded)
    window = to_avro(ModelEvent(envelope=envelope(2), payload=_window()))
    features = window["payload"][1]["features"]
    features[1]["name"] = features[0]["name"]
    with pytest.raises(InvalidEvent, match="features has duplicate feature names") as raised:
        _decoded(window)
    assert raised.value.reason == "inconsistent"


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ({"relative_accuracy": math.nan}, "not_finite", "latency.sketch.relative_accuracy is nan"),
        ({"relative_accuracy": 2.0}, "inconsistent", "expected a number in [1e-06, 1)"),
        ({"counts": [4, -1, 6]}, "inconsistent", "latency.sketch has a negative count"),
        ({"counts": [1] * 10_001}, "oversized", "latency.sketch.counts has 10001 items"),
        ({"first_index": 40_000}, "inconsistent", "fall in buckets -1036 .. 35488"),
    ],
)
def test_the_latency_sketch_passes_the_same_checks(
    change: dict[str, Any], reason: str, message: str
) -> None:
    record = to_avro(ModelEvent(envelope=envelope(2), payload=scoring_stats()))
    record["payload"][1]["latency"]["sketch"].update(change)
    with pytest.raises(InvalidEvent) as raised:
        _decoded(record)
    assert (raised.value.reason, message in raised.value.message) == (reason, True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda latency: latency.update(mean=1e306, max=1e306),
            "latency summary must stay within 1e+06 s",
        ),
        (
            lambda latency: latency["sketch"].update(first_index=35_000, counts=[1]),
            "latency.sketch has buckets above 1e+06 s",
        ),
    ],
    ids=["mean", "sketch"],
)
def test_latencies_past_what_a_recorder_keeps_are_refused(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    """A mean of 1e306 s over a thousand requests would overflow the sink's exact latency
    sums, and a bucket of 1e300 s its quantiles: refused before either, with the reason."""
    record = to_avro(ModelEvent(envelope=envelope(2), payload=scoring_stats()))
    mutate(record["payload"][1]["latency"])
    with pytest.raises(InvalidEvent) as raised:
        _decoded(record)
    assert raised.value.reason == "inconsistent"
    assert message in raised.value.message
