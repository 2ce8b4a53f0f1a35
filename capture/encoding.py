"""Avro binary of a ModelEvent, with the envelope's constant parts encoded once.

An Avro record is the concatenation of its fields' encodings, and a union is the branch
index followed by the branch. The producer and deployment of an emitter never change and a
model's identity rarely does, so their bytes are made once by fastavro and reused; per event
only the id, time and sequence are encoded here. Payloads go through fastavro, except
ScoringStats: the one high-volume type is written straight from its dataclass, which is
about three times cheaper than building a dict for fastavro. ``tests/test_encoding.py``
proves the bytes equal fastavro's encoding of the whole record for every payload type, so a
schema change that this module misses fails there.
"""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from fastavro import parse_schema, schemaless_writer

from capture.contract import Contract, current
from capture.events import (
    AVRO_NAMESPACE,
    FeatureSketch,
    LogSketch,
    Payload,
    ScoringStats,
    plain,
)

_MAX_CACHED_MODELS = 1024


def zigzag_long(value: int) -> bytes:
    """Avro's long: zig-zag then base-128 varint, least significant group first."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(value: str) -> bytes:
    data = value.encode("utf-8")
    return zigzag_long(len(data)) + data


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SIX_DOUBLES = struct.Struct("<6d")
_DOUBLE = struct.Struct("<d")
_END = b"\x00"  # an empty block ends an array or a map


def micros(moment: datetime) -> int:
    """Exact microseconds since the epoch, as Avro's timestamp-micros holds them."""
    return (moment - _EPOCH) // _MICROSECOND


# Sketch counts are mostly small. 0 .. 63 encode as one byte, 2n: bytes() and translate()
# do a whole array in C. Up to 2^14 a table lookup mapped in C still beats encoding each.
_TIMES_TWO = bytes((2 * n) & 0xFF for n in range(256))
_SMALL_LONGS = tuple(zigzag_long(n) for n in range(1 << 14))


def _longs(values: list[int]) -> bytes:
    if not values:
        return _END
    try:
        raw = bytes(values)  # ValueError unless every value is within 0 .. 255
    except (ValueError, TypeError):
        raw = b"\xff"
    if max(raw) < 64:
        items = raw.translate(_TIMES_TWO)
    elif min(values) >= 0 and max(values) < len(_SMALL_LONGS):
        items = b"".join(map(_SMALL_LONGS.__getitem__, values))
    else:
        items = b"".join(map(zigzag_long, values))
    return zigzag_long(len(values)) + items + _END


def _optional_double(value: float | None) -> bytes:
    return b"\x00" if value is None else b"\x02" + _DOUBLE.pack(value)


def _log_sketch(sketch: LogSketch) -> tuple[bytes, ...]:
    return (
        _DOUBLE.pack(sketch.relative_accuracy),
        zigzag_long(sketch.zero_count),
        zigzag_long(sketch.first_index),
        _longs(sketch.counts),
    )


def _distribution(sketch: FeatureSketch | None) -> tuple[bytes, ...]:
    if sketch is None:
        return (b"\x00",)
    return (b"\x02", *_log_sketch(sketch.positive), *_log_sketch(sketch.negative))


def encode_scoring_stats(stats: ScoringStats) -> bytes:
    """The ScoringStats record, field by field in schema order."""
    latency = stats.latency
    parts = [
        zigzag_long(micros(stats.window_start)),
        zigzag_long(micros(stats.window_end)),
        zigzag_long(stats.request_count),
        zigzag_long(stats.error_count),
    ]
    if stats.errors_by_kind:
        parts.append(zigzag_long(len(stats.errors_by_kind)))
        for kind, count in stats.errors_by_kind.items():
            parts += (avro_string(kind), zigzag_long(count))
    parts.append(_END)
    parts += (
        _SIX_DOUBLES.pack(
            latency.min, latency.max, latency.mean, latency.p50, latency.p95, latency.p99
        ),
        *_log_sketch(latency.sketch),
    )
    if stats.features:
        parts.append(zigzag_long(len(stats.features)))
        for feature in stats.features:
            parts += (
                avro_string(feature.name),
                zigzag_long(feature.count),
                zigzag_long(feature.null_count),
                _optional_double(feature.min),
                _optional_double(feature.max),
                _optional_double(feature.mean),
                *_distribution(feature.distribution),
            )
    parts.append(_END)
    return b"".join(parts)


def _write(parsed: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


class EventEncoder:
    def __init__(
        self,
        producer: dict[str, Any],
        deployment: dict[str, Any],
        contract: Contract | None = None,
    ) -> None:
        contract = contract or current()
        named: dict[str, Any] = {}
        parse_schema(json.loads(contract.text), named_schemas=named)

        def parsed(name: str) -> Any:
            return parse_schema(named[f"{AVRO_NAMESPACE}.{name}"], named_schemas=named)

        self._producer = _write(parsed("Producer"), producer)
        self._deployment = _write(parsed("Deployment"), deployment)
        self._model_schema = parsed("ModelIdentity")
        self._models: dict[tuple[str, str, str | None], bytes] = {}
        union = next(
            f for f in named[f"{AVRO_NAMESPACE}.ModelEvent"]["fields"] if f["name"] == "payload"
        )
        self._payloads: dict[str, tuple[bytes, Any]] = {}
        for index, branch in enumerate(union["type"]):
            full_name = branch["name"] if isinstance(branch, dict) else branch
            short = full_name.rsplit(".", 1)[-1]
            self._payloads[f"{AVRO_NAMESPACE}.{short}"] = (zigzag_long(index), parsed(short))

    def _model(self, model: dict[str, Any]) -> bytes:
        key = (model["name"], model["version"], model.get("content_hash"))
        encoded = self._models.get(key)
        if encoded is None:
            if len(self._models) >= _MAX_CACHED_MODELS:
                self._models.clear()
            encoded = self._models[key] = _write(self._model_schema, model)
        return encoded

    def encode(self, envelope: dict[str, Any], payload: Payload) -> bytes:
        """``envelope`` as ``plain`` shapes it, with event_time in micros; producer and
        deployment are the ones this encoder was made with."""
        index, schema = self._payloads[payload.AVRO_NAME]
        if isinstance(payload, ScoringStats):
            body = encode_scoring_stats(payload)
        else:
            body = _write(schema, plain(payload))
        return b"".join(
            (
                avro_string(envelope["event_id"]),
                zigzag_long(envelope["event_time"]),
                self._producer,
                zigzag_long(envelope["sequence"]),
                self._deployment,
                self._model(envelope["model"]),
                index,
                body,
            )
        )
