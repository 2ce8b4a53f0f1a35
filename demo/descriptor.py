"""Model descriptors on the model control topic: the typed mirror of
``schemas/model_descriptor.avsc``, and its bytes (Avro single-object encoding).

A descriptor publishes one model version for serving jobs to apply (the streaming
model-serving shape: a control stream beside the data stream). It carries the artifact, or
where to read it, with the hash its bytes must have, and the ``ModelLoaded`` facts the catalog
is told when a server applies it. Decoding trusts nothing: any failure is a
``DescriptorError`` naming what was wrong, for the server to report as ``ModelLoadFailed``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import TypeAdapter, ValidationError

from capture import contract
from capture.events import ModelIdentity, ModelLoaded, plain
from capture.framing import FramingError, parse_frame, single_object_header

DESCRIPTOR_SCHEMA_FILE = contract.SCHEMA_DIR / "model_descriptor.avsc"


class ArtifactFormat(enum.StrEnum):
    JOBLIB = "JOBLIB"
    PMML = "PMML"
    ONNX = "ONNX"
    OTHER = "OTHER"


@dataclass(frozen=True, kw_only=True)
class ModelDescriptor:
    name: str
    version: str
    artifact_format: ArtifactFormat
    content_hash: str
    announcement: ModelLoaded
    description: str | None = None
    artifact_bytes: bytes | None = None
    artifact_location: str | None = None

    def identity(self) -> ModelIdentity:
        """What the catalog names the version by. Raises the contract's ValueError for a name
        or version it refuses (empty, too long, control characters)."""
        return ModelIdentity(name=self.name, version=self.version, content_hash=self.content_hash)


class DescriptorError(ValueError):
    """A control message that is not a descriptor this server can apply; ``kind`` is the
    ``ModelLoadFailed.error_kind`` it is reported with."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class _Schema:
    parsed: Any
    fingerprint: bytes


def _self_contained(event_contract: str) -> _Schema:
    """The descriptor schema as Avro Java's Schema.Parser holds it after parsing that event
    contract and then this file: the contract's ModelLoaded written out where ``announcement``
    names it. The fingerprint is of that whole schema, so a JVM job's single-object header
    (Avro's BinaryMessageEncoder) and this one agree (schemas/vectors/)."""
    event = json.loads(event_contract)
    payload = next(f for f in event["fields"] if f["name"] == "payload")
    loaded = next(b for b in payload["type"] if b["name"] == "ModelLoaded")
    # The full name keeps the types defined inside ModelLoaded in the contract's namespace.
    loaded = {**loaded, "name": ModelLoaded.AVRO_NAME}
    schema = json.loads(DESCRIPTOR_SCHEMA_FILE.read_text(encoding="utf-8"))
    for field in schema["fields"]:
        if field["type"] == ModelLoaded.AVRO_NAME:
            field["type"] = loaded
    parsed = parse_schema(schema)
    return _Schema(parsed, contract.fingerprint_of(parsed))


@cache
def _schema() -> _Schema:
    return _self_contained(contract.current().text)


def parsed_schema() -> Any:
    """The current descriptor schema, parsed, whole (what ``encode`` writes with)."""
    return _schema().parsed


@cache
def _writers() -> dict[bytes, _Schema]:
    """Every descriptor schema a publisher may have written with, by fingerprint: one per
    released event contract, since the announcement is that contract's ModelLoaded. A
    descriptor published before a contract release stays readable after it."""
    known = {s.fingerprint: s for s in map(_self_contained, (c.text for c in contract.released()))}
    known[_schema().fingerprint] = _schema()
    return known


_ANNOUNCEMENT = TypeAdapter(ModelLoaded)


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode(descriptor: ModelDescriptor) -> bytes:
    schema = _schema()
    record = {
        field.name: plain(getattr(descriptor, field.name))
        for field in dataclasses.fields(descriptor)
    }
    body = io.BytesIO()
    schemaless_writer(body, schema.parsed, record)
    return single_object_header(schema.fingerprint) + body.getvalue()


def decode(value: bytes | None) -> ModelDescriptor:
    schema = _schema()
    if not value:
        raise DescriptorError(
            "EmptyDescriptor", "expected a model descriptor, got an empty message"
        )
    try:
        frame = parse_frame(value)
    except FramingError as exc:
        raise DescriptorError(
            "DescriptorFraming", f"not an Avro-framed descriptor: {exc}"
        ) from None
    writer = _writers().get(frame.fingerprint or b"")
    if writer is None:
        got = frame.fingerprint.hex() if frame.fingerprint else f"registry id {frame.schema_id}"
        raise DescriptorError(
            "UnknownDescriptorSchema",
            f"expected a descriptor of schema fingerprint {schema.fingerprint.hex()} "
            f"(schemas/model_descriptor.avsc; or of an earlier contract's), got {got}: "
            "publish with this project's schema, or upgrade this server",
        )
    body = io.BytesIO(value)
    body.seek(frame.body_offset)
    try:
        record = schemaless_reader(body, writer.parsed, None if writer is schema else schema.parsed)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DescriptorError(
            "CorruptDescriptor", f"the descriptor's Avro body is corrupt: {type(exc).__name__}"
        ) from None
    if body.tell() != len(value):
        raise DescriptorError(
            "CorruptDescriptor",
            f"{len(value) - body.tell()} bytes follow the descriptor's Avro body",
        )
    assert isinstance(record, dict)
    try:
        announcement = _ANNOUNCEMENT.validate_python(record["announcement"])
    except ValidationError as exc:
        raise DescriptorError(
            "InvalidDescriptor", f"the descriptor's announcement is not a valid ModelLoaded: {exc}"
        ) from None
    descriptor = ModelDescriptor(
        name=record["name"],
        version=record["version"],
        description=record["description"],
        artifact_format=ArtifactFormat(record["artifact_format"]),
        artifact_bytes=record["artifact_bytes"],
        artifact_location=record["artifact_location"],
        content_hash=record["content_hash"],
        announcement=announcement,
    )
    try:
        descriptor.identity()
    except ValueError as exc:  # the contract's own checks of a model's name and version
        raise DescriptorError("InvalidDescriptor", f"the descriptor's identity: {exc}") from None
    if (descriptor.artifact_bytes is None) == (descriptor.artifact_location is None):
        raise DescriptorError(
            "InvalidDescriptor",
            f"descriptor of {descriptor.name} {descriptor.version}: expected exactly one of "
            "artifact_bytes and artifact_location",
        )
    return descriptor
