"""Bytes from Kafka to a typed ``ModelEvent``, or a ``DecodeError`` naming what is wrong.

Both framings are read: Confluent's (writer schema fetched from the registry by id) and Avro
single-object encoding (writer schema found by fingerprint among ``schemas/`` and, failing
that, among the versions registered for the topic). Older writer schemas are resolved to the
current reader schema. The decoded record is then validated into the capture dataclasses by
pydantic, which runs their own field checks too.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader
from pydantic import TypeAdapter, ValidationError

from capture import contract
from capture.events import (
    PAYLOAD_TYPES,
    Deployment,
    Envelope,
    FeatureSketch,
    FeatureSummary,
    LatencySummary,
    LogSketch,
    ModelEvent,
    ModelIdentity,
    Payload,
    Producer,
    ScoringStats,
)
from capture.framing import FramingError, parse_frame, subject_for
from capture.typecheck import types_already_checked


class DecodeError(Exception):
    """``reason`` is a stable class for metrics and dead-letter headers."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SchemaSource(Protocol):
    """The part of confluent_kafka's SchemaRegistryClient the decoder uses."""

    def get_schema(self, schema_id: int) -> Any: ...
    def get_versions(self, subject_name: str) -> list[int]: ...
    def get_version(self, subject_name: str, version: int) -> Any: ...


@dataclass(frozen=True)
class _Writer:
    parsed: Any
    # Read without resolving against the current schema: the contract's own versions, which
    # only ever added fields with defaults, so that what they lack is the events' own defaults
    # (tests/test_contract.py checks every released version decodes the same either way).
    # Resolution costs fastavro more than twice the read; a new release must not slow every
    # event of the emitters not yet upgraded. A registry schema of another shape is resolved.
    resolve: bool


_PAYLOADS = {name: TypeAdapter(cls) for name, cls in PAYLOAD_TYPES.items()}

# Unknown fingerprints are looked up in the registry at most this often.
_REGISTRY_REFRESH_SECONDS = 30.0


class Decoder:
    def __init__(self, registry: SchemaSource | None = None, topics: tuple[str, ...] = ()) -> None:
        self._registry = registry
        self._topics = topics
        self._reader = contract.current()
        self._reader_parsed = _without_logical_types(self._reader.text)
        self._by_fingerprint: dict[bytes, _Writer] = {
            fp: self._writer(_without_logical_types(c.text), fp)
            for fp, c in contract.by_fingerprint().items()
        }
        self._by_id: dict[int, _Writer] = {}
        self._lock = threading.Lock()
        self._last_registry_scan = 0.0

    def _writer(self, parsed: Any, fingerprint: bytes) -> _Writer:
        return _Writer(parsed, fingerprint not in contract.by_fingerprint())

    def decode(self, value: bytes | None) -> ModelEvent:
        if not value:
            raise DecodeError("empty", "expected an Avro-framed event, got an empty message value")
        try:
            frame = parse_frame(value)
        except FramingError as exc:
            raise DecodeError("framing", str(exc)) from None
        if frame.schema_id is not None:
            writer = self._writer_by_id(frame.schema_id)
        else:
            assert frame.fingerprint is not None
            writer = self._writer_by_fingerprint(frame.fingerprint)
        record = self._read(value, frame.body_offset, writer)
        return _to_event(record)

    def _read(self, value: bytes, offset: int, writer: _Writer) -> dict[str, Any]:
        body = io.BytesIO(value)
        body.seek(offset)
        try:
            record = schemaless_reader(
                body,
                writer.parsed,
                self._reader_parsed if writer.resolve else None,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise DecodeError(
                "avro",
                f"the Avro body does not match its writer schema: {type(exc).__name__}: {exc}",
            ) from None
        if body.tell() != len(value):
            raise DecodeError(
                "avro",
                f"the Avro body has {len(value) - body.tell()} bytes after the end of the record: "
                "corrupt or wrongly framed message",
            )
        if not isinstance(record, dict):
            raise DecodeError("avro", f"expected a record, got {type(record).__name__}")
        return record

    def _writer_by_id(self, schema_id: int) -> _Writer:
        writer = self._by_id.get(schema_id)
        if writer is not None:
            return writer
        if self._registry is None:
            raise DecodeError(
                "unknown_schema_id",
                f"message names registry schema id {schema_id} but no schema registry is "
                "configured: set SCHEMA_REGISTRY_URL",
            )
        try:
            schema = self._registry.get_schema(schema_id)
        except Exception as exc:
            raise DecodeError(
                "unknown_schema_id", f"schema id {schema_id} is not in the registry: {exc}"
            ) from None
        writer = self._parse_registered(schema.schema_str, f"schema id {schema_id}")
        with self._lock:
            self._by_id[schema_id] = writer
        return writer

    def _parse_registered(self, text: str, what: str) -> _Writer:
        try:
            fp = contract.fingerprint_of(parse_schema(json.loads(text)))
            parsed = _without_logical_types(text)
        except Exception as exc:
            raise DecodeError(
                "unknown_schema_id", f"{what} is not a valid Avro schema: {exc}"
            ) from None
        return self._writer(parsed, fp)

    def _writer_by_fingerprint(self, fp: bytes) -> _Writer:
        writer = self._by_fingerprint.get(fp)
        if writer is None and self._registry is not None:
            self._scan_registry()
            writer = self._by_fingerprint.get(fp)
        if writer is None:
            raise DecodeError(
                "unknown_fingerprint",
                f"no known schema has fingerprint {fp.hex()}: expected one of "
                f"{sorted(f.hex() for f in self._by_fingerprint)} (schemas/ and the registry); "
                "upgrade the sink if a newer emitter wrote it",
            )
        return writer

    def _scan_registry(self) -> None:
        now = time.monotonic()
        if self._registry is None or now - self._last_registry_scan < _REGISTRY_REFRESH_SECONDS:
            return
        self._last_registry_scan = now
        for topic in self._topics:
            subject = subject_for(topic)
            try:
                versions = self._registry.get_versions(subject)
                for version in versions:
                    registered = self._registry.get_version(subject, version)
                    text = registered.schema.schema_str
                    fp = contract.fingerprint_of(parse_schema(json.loads(text)))
                    self._by_fingerprint.setdefault(
                        fp, self._writer(_without_logical_types(text), fp)
                    )
            except Exception:  # an unreachable registry leaves the fingerprint unknown
                continue


def _without_logical_types(text: str) -> Any:
    """The schema read as its underlying types (uuid as string, timestamps as long).

    Logical types do not change the bytes, so reading with them stripped is exact; it spares
    fastavro a UUID object and three datetimes per event that ``_to_event`` would only turn
    back into a string and microseconds. Timestamps become datetimes once, in ``_to_event``.
    """
    return parse_schema(contract.without_logical_types(json.loads(text)))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(micros: int) -> datetime:
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise DecodeError(
            "timestamp",
            f"a timestamp of {micros} microseconds since the epoch is outside the years "
            "1 .. 9999: check the producer's clock",
        ) from None


# Identities repeat on every event of a producer: each distinct one is validated once (all
# its checks, names included) and then reused. Bounded: cleared when full.
_IDENTITIES: dict[type, dict[tuple[Any, ...], Any]] = {
    Producer: {},
    Deployment: {},
    ModelIdentity: {},
}
_MAX_IDENTITIES = 10_000
_IDENTITY_ADAPTERS: dict[type, TypeAdapter[Any]] = {cls: TypeAdapter(cls) for cls in _IDENTITIES}


def _identity(cls: type, data: dict[str, Any]) -> Any:
    known = _IDENTITIES[cls]
    key = tuple(data.values())
    found = known.get(key)
    if found is None:
        found = _IDENTITY_ADAPTERS[cls].validate_python(data)
        if len(known) >= _MAX_IDENTITIES:
            known.clear()
        known[key] = found
    return found


def _to_event(record: dict[str, Any]) -> ModelEvent:
    try:
        envelope_data = record["envelope"]
        name, payload_data = record["payload"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("shape", f"expected envelope and a tagged payload: {exc}") from None
    adapter = _PAYLOADS.get(name)
    if adapter is None:
        raise DecodeError(
            "unknown_payload",
            f"payload type {name!r} is not one of {sorted(PAYLOAD_TYPES)}: upgrade the sink",
        )
    try:
        producer = _identity(Producer, envelope_data["producer"])
        deployment = _identity(Deployment, envelope_data["deployment"])
        model = _identity(ModelIdentity, envelope_data["model"])
        # The Avro schema has typed every scalar already; pydantic checks the nested payloads,
        # so the dataclasses' own type checks would only repeat the work.
        with types_already_checked():
            envelope = Envelope(
                event_id=envelope_data["event_id"],
                event_time=_moment(envelope_data["event_time"]),
                producer=producer,
                sequence=envelope_data["sequence"],
                deployment=deployment,
                model=model,
            )
            payload: Payload = (
                _scoring_stats(payload_data)
                if name == ScoringStats.AVRO_NAME
                else adapter.validate_python(payload_data)
            )
            return ModelEvent(envelope=envelope, payload=payload)
    except ValidationError as exc:
        raise DecodeError("validation", _summarise(exc)) from None
    except (KeyError, TypeError) as exc:
        raise DecodeError("shape", f"the record lacks {exc}") from None


def _scoring_stats(data: dict[str, Any]) -> ScoringStats:
    """The high-volume payload, built directly: its fields are all scalars, lists and maps
    that Avro has typed, so pydantic would add a copy and nothing it could catch."""
    latency = data["latency"]
    return ScoringStats(
        window_start=_moment(data["window_start"]),
        window_end=_moment(data["window_end"]),
        request_count=data["request_count"],
        error_count=data["error_count"],
        errors_by_kind=data["errors_by_kind"],
        latency=LatencySummary(
            min=latency["min"],
            max=latency["max"],
            mean=latency["mean"],
            p50=latency["p50"],
            p95=latency["p95"],
            p99=latency["p99"],
            sketch=LogSketch(**latency["sketch"]),
        ),
        features=[_feature(feature) for feature in data["features"]],
    )


def _feature(data: dict[str, Any]) -> FeatureSummary:
    # The decoded record is ours to change. Writers before v3 have no distribution: read with
    # their own schema the field is absent; resolved against the current one, it is None.
    sketch = data.get("distribution")
    if sketch is not None:
        data["distribution"] = FeatureSketch(
            positive=LogSketch(**sketch["positive"]), negative=LogSketch(**sketch["negative"])
        )
    return FeatureSummary(**data)


def _summarise(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}"
        for err in exc.errors()[:5]
    ]
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(problems) + more
