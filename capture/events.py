"""Typed mirror of the Avro contract in ``schemas/model_event.avsc``.

Plain frozen dataclasses keep the emitter free of heavy dependencies; the sink validates the
same classes with pydantic. ``tests/test_contract.py`` fails when these and the schema drift.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from capture.typecheck import check_fields, check_names, types_were_checked

AVRO_NAMESPACE = "servemeta.events"


class SchemaSide(enum.StrEnum):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class Compatibility(enum.StrEnum):
    FULL = "FULL"
    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    NONE = "NONE"
    UNKNOWN = "UNKNOWN"


# Records that people build (identities, ModelLoaded, schemas, ...) are frozen: they are
# checked when built, and freezing keeps them as checked. Records only this library builds
# (envelopes, scoring windows) are not frozen: the sink builds several per event and a frozen
# dataclass pays for every field it sets.
class _Checked:
    """Every event dataclass checks its own fields when built (see ``capture.typecheck``)."""

    __slots__ = ()

    def __post_init__(self) -> None:
        if not types_were_checked():
            check_fields(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Producer(_Checked):
    emitter_name: str
    emitter_version: str
    host: str
    pid: int
    instance_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment(_Checked):
    server_kind: str
    server_name: str
    cluster: str
    environment: str = ""

    def __post_init__(self) -> None:
        check_fields(self)
        check_names(self, "server_kind", "server_name", "cluster")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelIdentity(_Checked):
    name: str
    version: str
    content_hash: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        check_names(self, "name", "version")


@dataclass(slots=True, kw_only=True)
class Envelope(_Checked):
    event_id: str
    event_time: datetime
    producer: Producer
    sequence: int
    deployment: Deployment
    model: ModelIdentity


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec(_Checked):
    name: str
    type: str
    nullable: bool = False
    doc: str | None = None
    classifications: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSchema(_Checked):
    fields: list[FieldSpec]
    fingerprint: str
    schema_text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSource(_Checked):
    uri: str
    name: str | None = None
    format: str | None = None
    schema: DataSchema | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelType(_Checked):
    framework: str
    framework_version: str | None = None
    flavor: str | None = None
    algorithm: str | None = None
    task: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact(_Checked):
    uri: str
    scheme: str
    encrypted_at_rest: bool | None = None
    access_mode: str | None = None
    size_bytes: int | None = None
    content_hash: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Training(_Checked):
    sources: list[DataSource] = field(default_factory=list)
    run_id: str | None = None
    run_url: str | None = None
    hyper_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric(_Checked):
    name: str
    value: float
    split: str = "validation"


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime(_Checked):
    language: str
    language_version: str
    host: str
    container_image: str | None = None
    endpoint: str | None = None
    replicas: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoaded(_Checked):
    AVRO_NAME: ClassVar[str] = f"{AVRO_NAMESPACE}.ModelLoaded"
    model_type: ModelType
    artifact: Artifact
    input_schema: DataSchema
    output_schema: DataSchema
    runtime: Runtime
    training: Training = field(default_factory=Training)
    replaces_version: str | None = None
    metrics: list[Metric] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    owner: str | None = None
    tags: list[str] = field(default_factory=list)
    classifications: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    training_profile: list[FeatureSummary] = field(default_factory=list)
    restored: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoadFailed(_Checked):
    AVRO_NAME: ClassVar[str] = f"{AVRO_NAMESPACE}.ModelLoadFailed"
    reason: str
    error_kind: str
    artifact_uri: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelUnloaded(_Checked):
    AVRO_NAME: ClassVar[str] = f"{AVRO_NAMESPACE}.ModelUnloaded"
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaChanged(_Checked):
    AVRO_NAME: ClassVar[str] = f"{AVRO_NAMESPACE}.SchemaChanged"
    side: SchemaSide
    new_fingerprint: str
    new_schema: DataSchema
    previous_fingerprint: str | None = None
    compatibility: Compatibility = Compatibility.UNKNOWN
    previous_schema: DataSchema | None = None


@dataclass(slots=True, kw_only=True)
class LogSketch(_Checked):
    relative_accuracy: float
    counts: list[int]
    first_index: int = 0
    zero_count: int = 0


@dataclass(slots=True, kw_only=True)
class LatencySummary(_Checked):
    min: float
    max: float
    mean: float
    p50: float
    p95: float
    p99: float
    sketch: LogSketch


@dataclass(slots=True, kw_only=True)
class FeatureSketch(_Checked):
    """Values above zero in ``positive``, magnitudes of values below zero in ``negative``."""

    positive: LogSketch
    negative: LogSketch


@dataclass(slots=True, kw_only=True)
class FeatureSummary(_Checked):
    name: str
    count: int
    null_count: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    distribution: FeatureSketch | None = None


@dataclass(slots=True, kw_only=True)
class ScoringStats(_Checked):
    AVRO_NAME: ClassVar[str] = f"{AVRO_NAMESPACE}.ScoringStats"
    window_start: datetime
    window_end: datetime
    request_count: int
    error_count: int
    latency: LatencySummary
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    features: list[FeatureSummary] = field(default_factory=list)


Payload = ModelLoaded | ModelLoadFailed | ModelUnloaded | SchemaChanged | ScoringStats

PAYLOAD_TYPES: dict[str, type[Payload]] = {
    cls.AVRO_NAME: cls
    for cls in (ModelLoaded, ModelLoadFailed, ModelUnloaded, SchemaChanged, ScoringStats)
}


@dataclass(slots=True, kw_only=True)
class ModelEvent(_Checked):
    envelope: Envelope
    payload: Payload

    @property
    def kind(self) -> str:
        return type(self.payload).__name__


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        is_record = dataclasses.is_dataclass(cls)
        names = _FIELD_NAMES[cls] = (
            tuple(f.name for f in dataclasses.fields(cls)) if is_record else ()
        )
    return names


def plain(value: Any) -> Any:
    """The value as fastavro writes it: dataclasses become dicts, enums their values."""
    cls = type(value)
    names = _field_names(cls)
    if names:
        return {name: plain(getattr(value, name)) for name in names}
    if cls is list:
        # Lists of scalars (sketch buckets, tags) are copied without a call per item.
        if value and _field_names(type(value[0])):
            return [plain(v) for v in value]
        return list(value)
    if cls is dict:
        return dict(value)  # every map in the contract has scalar values
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_avro(event: ModelEvent) -> dict[str, Any]:
    """The event as the dict fastavro writes; the payload is tagged with its record name
    because several payload records share only optional fields and would be ambiguous."""
    payload = event.payload
    return {
        "envelope": plain(event.envelope),
        "payload": (payload.AVRO_NAME, plain(payload)),
    }
