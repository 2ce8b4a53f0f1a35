"""The emitter's fast encoder writes exactly the bytes fastavro writes for the whole record."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest
from fastavro import schemaless_writer

from capture import contract
from capture.encoding import EventEncoder, avro_string, micros, zigzag_long
from capture.events import (
    FeatureSketch,
    FeatureSummary,
    LogSketch,
    ModelEvent,
    ModelUnloaded,
    ScoringStats,
    plain,
    to_avro,
)
from capture.stats import ScoringRecorder, SignedSketch
from tests.conftest import envelope, model_loaded, scoring_stats


@pytest.mark.parametrize(
    ("value", "encoded"),
    # From the Avro specification's table of zig-zag encodings.
    [
        (0, b"\x00"),
        (-1, b"\x01"),
        (1, b"\x02"),
        (-2, b"\x03"),
        (2, b"\x04"),
        (-64, b"\x7f"),
        (64, b"\x80\x01"),
    ],
)
def test_zigzag_matches_the_avro_spec(value: int, encoded: bytes) -> None:
    assert zigzag_long(value) == encoded


def test_zigzag_extremes_and_strings_round_trip_through_fastavro() -> None:
    from fastavro import schemaless_reader

    for value in (2**63 - 1, -(2**63), 1_764_000_000_000_000):
        assert schemaless_reader(io.BytesIO(zigzag_long(value)), "long", None) == value
    for text in ("", "wine", "名前 @/\"'"):
        assert schemaless_reader(io.BytesIO(avro_string(text)), "string", None) == text


def test_fast_encoding_equals_fastavro_for_every_payload(sample_events: list[ModelEvent]) -> None:
    for event in sample_events:
        record = to_avro(event)
        encoder = EventEncoder(record["envelope"]["producer"], record["envelope"]["deployment"])
        reference = io.BytesIO()
        schemaless_writer(reference, contract.current().parsed, record)
        record["envelope"]["event_time"] = micros(event.envelope.event_time)
        assert encoder.encode(record["envelope"], event.payload) == reference.getvalue(), event.kind


def test_model_identities_are_cached_but_each_is_encoded_right() -> None:
    first = ModelEvent(envelope=envelope(1, model="a", version="1"), payload=_unloaded())
    second = ModelEvent(envelope=envelope(2, model="b", version="7"), payload=_unloaded())
    producer = to_avro(first)["envelope"]["producer"]
    encoder = EventEncoder(producer, to_avro(first)["envelope"]["deployment"])
    for event in (first, second, first):
        record = to_avro(event)
        reference = io.BytesIO()
        schemaless_writer(reference, contract.current().parsed, record)
        record["envelope"]["event_time"] = micros(event.envelope.event_time)
        assert encoder.encode(record["envelope"], event.payload) == reference.getvalue()


def _assert_fast_equals_fastavro(event: ModelEvent) -> None:
    record = to_avro(event)
    reference = io.BytesIO()
    schemaless_writer(reference, contract.current().parsed, record)
    record["envelope"]["event_time"] = micros(event.envelope.event_time)
    encoder = EventEncoder(record["envelope"]["producer"], record["envelope"]["deployment"])
    assert encoder.encode(record["envelope"], event.payload) == reference.getvalue()


def _with_features(*features: FeatureSummary) -> ScoringStats:
    base = scoring_stats()
    return ScoringStats(
        window_start=base.window_start,
        window_end=base.window_end,
        request_count=2**40,
        error_count=3,
        errors_by_kind={"timeout": 2, "名前": 1},
        latency=base.latency,
        features=list(features),
    )


def _sketched(values: list[float]) -> FeatureSketch:
    sketch = SignedSketch()
    for value in values:
        sketch.add(value)
    return sketch.to_event()


def test_scoring_stats_with_features_errors_and_extremes() -> None:
    stats = _with_features(
        FeatureSummary(name="alcohol", count=5, null_count=1, min=-1.5, max=2e300, mean=0.0),
        FeatureSummary(name="hue", count=0),
    )
    _assert_fast_equals_fastavro(ModelEvent(envelope=envelope(3), payload=stats))


@pytest.mark.parametrize(
    "distribution",
    [
        _sketched([1.0, 2.5, 300.0]),
        _sketched([-1.0, -2.5, -3e5]),  # only the negative side, negative and positive indexes
        _sketched([0.0, -0.0, 1e-12, -1e-12]),  # only zeros: both sides without buckets
        _sketched([-1e300, -1e-8, 0.0, 1e-8, 1e300]),  # thousands of mostly empty buckets
        FeatureSketch(  # counts on every path of the long encoder, written by another producer
            positive=LogSketch(
                relative_accuracy=0.05, zero_count=2**40, first_index=-5, counts=[0, 64, 2**33]
            ),
            negative=LogSketch(relative_accuracy=0.05, first_index=2**31 - 1, counts=[16384]),
        ),
    ],
    ids=["positive", "negative", "zeros", "wide", "large-counts"],
)
def test_feature_distributions_are_written_as_fastavro_writes_them(
    distribution: FeatureSketch,
) -> None:
    stats = _with_features(
        FeatureSummary(name="a", count=9, null_count=2, min=-1.0, max=1.0, mean=0.5),
        FeatureSummary(name="b", count=4, distribution=distribution),
        FeatureSummary(name="c", count=1, null_count=1),
    )
    _assert_fast_equals_fastavro(ModelEvent(envelope=envelope(4), payload=stats))


def test_a_recorded_window_and_a_training_profile_encode_as_fastavro_does() -> None:
    recorder = ScoringRecorder(60, now=scoring_stats().window_start)
    rng = random.Random(17)
    for _ in range(500):
        recorder.record(rng.expovariate(100))
        recorder.record_features(
            {
                "alcohol": rng.gauss(13, 1),
                "delta": rng.gauss(0, 5),
                "sparse": rng.choice([None, 0.0]),
            }
        )
    stats = recorder.close_window(scoring_stats().window_end)
    assert stats is not None and all(f.distribution is not None for f in stats.features[:2])
    _assert_fast_equals_fastavro(ModelEvent(envelope=envelope(5), payload=stats))
    loaded = dataclasses.replace(model_loaded(), training_profile=stats.features)
    _assert_fast_equals_fastavro(ModelEvent(envelope=envelope(6), payload=loaded))


def _unloaded() -> ModelUnloaded:
    return ModelUnloaded(reason="x")


def test_plain_keeps_payload_shape() -> None:
    assert plain(_unloaded()) == {"reason": "x"}


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0],
        [63],
        [64],
        [0, 63, 64, 255, 256],
        [5, 100, 16383, 16384, 2**40],
        [-3, 4],
        list(range(300)),
    ],
)
def test_long_arrays_match_fastavro_on_every_path(values: list[int]) -> None:
    from capture.encoding import _longs

    reference = io.BytesIO()
    schemaless_writer(reference, {"type": "array", "items": "long"}, values)
    assert _longs(values) == reference.getvalue()
