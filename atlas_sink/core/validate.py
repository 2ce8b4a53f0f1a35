"""Semantic checks a decoded event must pass before it may reach the catalog. Pure.

Decoding proves the bytes fit the schema; these prove the values make sense: timestamps in
a sane range, sizes bounded (Atlas rejects or chokes on huge entities), counts consistent.
Identity names were already checked by the event dataclasses themselves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sized
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from atlas_sink.core.entities import Update
from capture.dataschema import fingerprint
from capture.events import (
    DataSchema,
    FeatureSummary,
    LogSketch,
    ModelEvent,
    ModelLoaded,
    SchemaChanged,
    ScoringStats,
)
from capture.stats import MAX_LATENCY_SECONDS, MIN_RELATIVE_ACCURACY, Sketch
from capture.typecheck import has_control_characters


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1_000_000
    max_future: timedelta = timedelta(hours=1)
    earliest: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_fields: int = 5_000
    max_list_items: int = 1_000
    max_text: int = 256 * 1024
    # 10,000 buckets at 1% accuracy span a factor of 10^86: more means a corrupt sketch.
    max_sketch_buckets: int = 10_000


class InvalidEvent(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_size(value: bytes | None, limits: Limits) -> None:
    if value is not None and len(value) > limits.max_message_bytes:
        raise InvalidEvent(
            "oversized",
            f"message has {len(value)} bytes, more than the limit {limits.max_message_bytes}: "
            "split the schema text or raise SINK_MAX_MESSAGE_BYTES",
        )


def check_event(event: ModelEvent, limits: Limits, now: datetime) -> None:
    env = event.envelope
    _check_time("envelope.event_time", env.event_time, limits, now)
    if env.sequence < 1:
        raise InvalidEvent("sequence", f"envelope.sequence must be >= 1, got {env.sequence}")
    payload = event.payload
    if isinstance(payload, ModelLoaded):
        _check_loaded(payload, limits)
    elif isinstance(payload, SchemaChanged):
        _check_schema("new_schema", payload.new_schema, limits)
        if payload.new_fingerprint != payload.new_schema.fingerprint:
            raise InvalidEvent(
                "inconsistent",
                f"new_fingerprint {payload.new_fingerprint!r} differs from the new schema's "
                f"own {payload.new_schema.fingerprint!r}",
            )
        previous = payload.previous_schema
        if previous is not None:
            _check_schema("previous_schema", previous, limits)
            if payload.previous_fingerprint != previous.fingerprint:
                raise InvalidEvent(
                    "inconsistent",
                    f"previous_fingerprint {payload.previous_fingerprint!r} differs from the "
                    f"previous schema's own {previous.fingerprint!r}: send the fingerprint of "
                    "the schema sent as previous_schema",
                )
    elif isinstance(payload, ScoringStats):
        _check_stats(payload, limits, now)


def _check_time(where: str, moment: datetime, limits: Limits, now: datetime) -> None:
    if moment < limits.earliest or moment > now + limits.max_future:
        raise InvalidEvent(
            "timestamp",
            f"{where} is {moment.isoformat()}, outside {limits.earliest.date()} .. now + "
            f"{limits.max_future}: check the producer's clock",
        )


def _check_list(where: str, items: Sized, limit: int) -> None:
    if len(items) > limit:
        raise InvalidEvent("oversized", f"{where} has {len(items)} items, more than {limit}")


def _check_text(where: str, text: str | None, limits: Limits) -> None:
    if text is not None and len(text) > limits.max_text:
        raise InvalidEvent(
            "oversized", f"{where} has {len(text)} characters, more than {limits.max_text}"
        )


def _check_schema(where: str, schema: DataSchema, limits: Limits) -> None:
    _check_list(f"{where}.fields", schema.fields, limits.max_fields)
    _check_text(f"{where}.schema_text", schema.schema_text, limits)
    names = [f.name for f in schema.fields]
    if len(set(names)) != len(names):
        raise InvalidEvent("inconsistent", f"{where} has duplicate field names")
    # Schemas are named by fingerprint: one taken as sent could claim another model's schema
    # and overwrite its fields. So the sink computes it from the fields itself.
    computed = fingerprint(schema.fields)
    if schema.fingerprint != computed:
        raise InvalidEvent(
            "fingerprint_mismatch",
            f"{where}.fingerprint is {schema.fingerprint!r}, but its fields give {computed!r}; "
            "expected the fingerprint of the fields as schemas/README.md defines it: compute "
            "it from the fields the event carries",
        )


def _check_loaded(loaded: ModelLoaded, limits: Limits) -> None:
    _check_schema("input_schema", loaded.input_schema, limits)
    _check_schema("output_schema", loaded.output_schema, limits)
    for i, source in enumerate(loaded.training.sources):
        if source.schema is not None:
            _check_schema(f"training.sources[{i}].schema", source.schema, limits)
    for where, items in (
        ("training.sources", loaded.training.sources),
        ("training.hyper_parameters", loaded.training.hyper_parameters),
        ("metrics", loaded.metrics),
        ("inputs", loaded.inputs),
        ("outputs", loaded.outputs),
        ("tags", loaded.tags),
        ("classifications", loaded.classifications),
        ("properties", loaded.properties),
        ("training_profile", loaded.training_profile),
    ):
        _check_list(where, items, limits.max_list_items)
    _check_features("training_profile", loaded.training_profile, limits)
    for where, text in (
        ("artifact.uri", loaded.artifact.uri),
        *((f"properties[{k!r}]", v) for k, v in loaded.properties.items()),
        *(
            (f"training.hyper_parameters[{k!r}]", v)
            for k, v in loaded.training.hyper_parameters.items()
        ),
    ):
        _check_text(where, text, limits)
    if loaded.runtime.replicas < 0:
        raise InvalidEvent("inconsistent", f"runtime.replicas is {loaded.runtime.replicas}")
    uris = [s.uri for s in loaded.training.sources] + loaded.inputs + loaded.outputs
    for uri in uris:
        # urlsplit drops tabs and line breaks silently: "kafka://a\nb" would name topic "ab".
        if has_control_characters(uri):
            raise InvalidEvent("name", f"data set URI {uri[:200]!r} has control characters")
    for metric in loaded.metrics:
        # Avro carries NaN and infinities; the emitter refuses them, and so do Atlas and JSON.
        if not math.isfinite(metric.value):
            raise InvalidEvent(
                "not_finite", f"metrics: {metric.split}.{metric.name} is {metric.value}"
            )


def _check_stats(stats: ScoringStats, limits: Limits, now: datetime) -> None:
    _check_time("window_start", stats.window_start, limits, now)
    _check_time("window_end", stats.window_end, limits, now)
    if stats.window_end < stats.window_start:
        raise InvalidEvent("inconsistent", "window_end is before window_start")
    if not 0 <= stats.error_count <= stats.request_count:
        raise InvalidEvent(
            "inconsistent",
            f"expected 0 <= error_count <= request_count, got {stats.error_count} errors "
            f"of {stats.request_count} requests",
        )
    if sum(stats.errors_by_kind.values()) != stats.error_count:
        raise InvalidEvent("inconsistent", "errors_by_kind does not add up to error_count")
    if stats.errors_by_kind and min(stats.errors_by_kind.values()) < 0:
        raise InvalidEvent("inconsistent", f"errors_by_kind has a negative count: {_brief(stats)}")
    _check_list("errors_by_kind", stats.errors_by_kind, limits.max_list_items)
    _check_list("features", stats.features, limits.max_list_items)
    _check_features("features", stats.features, limits)
    latency = stats.latency
    values = (latency.min, latency.max, latency.mean, latency.p50, latency.p95, latency.p99)
    # A NaN or an infinity makes the sum non-finite, so one check covers all six.
    if not (min(values) >= 0.0 and math.isfinite(sum(values)) and latency.min <= latency.max):
        raise InvalidEvent(
            "inconsistent", f"latency summary must be finite, >= 0 and min <= max: {values}"
        )
    if max(values) > MAX_LATENCY_SECONDS:
        raise InvalidEvent(
            "inconsistent",
            f"latency summary must stay within {MAX_LATENCY_SECONDS:g} s, the longest latency a "
            f"recorder keeps, got {values}",
        )
    _check_sketch("latency.sketch", latency.sketch, limits)
    sketch = latency.sketch
    if sketch.counts and sketch.first_index + len(sketch.counts) - 1 > _latency_top(
        sketch.relative_accuracy
    ):
        raise InvalidEvent(
            "inconsistent",
            f"latency.sketch has buckets above {MAX_LATENCY_SECONDS:g} s, the longest latency a "
            "recorder keeps: compute bucket indexes as schemas/README.md says",
        )


def _check_features(where: str, features: list[FeatureSummary], limits: Limits) -> None:
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise InvalidEvent(
            "inconsistent",
            f"{where} has duplicate feature names: expected one summary per feature",
        )
    for feature in features:
        at = f"{where}[{feature.name[:200]!r}]"
        if not 0 <= feature.null_count <= feature.count:
            raise InvalidEvent(
                "inconsistent",
                f"{at}: expected 0 <= null_count <= count (count includes the nulls), got "
                f"{feature.null_count} nulls of {feature.count}",
            )
        figures = (feature.min, feature.max, feature.mean)
        if any(v is not None and not math.isfinite(v) for v in figures):
            raise InvalidEvent(
                "not_finite",
                f"{at}: min, max and mean must be finite numbers or null, got {figures}: "
                "count NaN and infinite inputs as nulls",
            )
        if feature.min is not None and feature.max is not None and feature.min > feature.max:
            raise InvalidEvent("inconsistent", f"{at}: min {feature.min} > max {feature.max}")
        sketch = feature.distribution
        if sketch is None:
            continue
        _check_sketch(f"{at}.distribution.positive", sketch.positive, limits)
        _check_sketch(f"{at}.distribution.negative", sketch.negative, limits)
        if sketch.positive.relative_accuracy != sketch.negative.relative_accuracy:
            raise InvalidEvent(
                "inconsistent",
                f"{at}.distribution: positive and negative relative_accuracy differ "
                f"({sketch.positive.relative_accuracy} and {sketch.negative.relative_accuracy})"
                ": expected both sketches of a feature built with one accuracy",
            )


@functools.lru_cache(maxsize=64)
def _bucket_range(accuracy: float) -> tuple[int, int]:
    # Every window has a sketch per feature, and nearly all share one accuracy.
    return Sketch(accuracy).index_range()


@functools.lru_cache(maxsize=64)
def _latency_top(accuracy: float) -> int:
    """The bucket index holding ``MAX_LATENCY_SECONDS`` at this accuracy."""
    gamma = (1 + accuracy) / (1 - accuracy)
    return math.ceil(math.log(MAX_LATENCY_SECONDS) / math.log(gamma))


def _check_sketch(where: str, sketch: LogSketch, limits: Limits) -> None:
    """Whatever passes here, ``capture.stats`` can read: quantiles, merges, the PSI."""
    accuracy = sketch.relative_accuracy
    if not MIN_RELATIVE_ACCURACY <= accuracy < 1.0:
        raise InvalidEvent(
            "inconsistent" if math.isfinite(accuracy) else "not_finite",
            f"{where}.relative_accuracy is {accuracy}: expected a number in "
            f"[{MIN_RELATIVE_ACCURACY}, 1), e.g. 0.01",
        )
    _check_list(f"{where}.counts", sketch.counts, limits.max_sketch_buckets)
    if sketch.zero_count < 0 or (sketch.counts and min(sketch.counts) < 0):
        raise InvalidEvent(
            "inconsistent", f"{where} has a negative count: expected counts of values, >= 0"
        )
    if sketch.counts:
        lowest, highest = _bucket_range(accuracy)
        last = sketch.first_index + len(sketch.counts) - 1
        if sketch.first_index < lowest or last > highest:
            raise InvalidEvent(
                "inconsistent",
                f"{where} has buckets {sketch.first_index} .. {last}, but at relative accuracy "
                f"{accuracy} values above 1e-9 and within a double's range fall in buckets "
                f"{lowest} .. {highest}: compute bucket indexes as schemas/README.md says",
            )


def _brief(stats: ScoringStats) -> str:
    text = repr(stats.errors_by_kind)
    return text if len(text) <= 200 else text[:197] + "..."


def check_names(updates: list[Update]) -> None:
    """The names an event gives entities: printable, and a qualified name with a name before
    the ``@``. Identity names were checked when decoded; this catches the others (URIs of
    data sets and topics, schema fingerprints, a replaced version) however they are spelled."""
    for update in updates:
        qualified_name = update.qualified_name
        name = update.values.get("name")
        if (
            qualified_name.startswith("@")
            or has_control_characters(qualified_name)
            or (isinstance(name, str) and has_control_characters(name))
        ):
            raise InvalidEvent(
                "name",
                f"{update.type_name} would be named {qualified_name[:200]!r} "
                f"({str(name)[:200]!r}): expected a non-empty name without control characters",
            )
