"""Input/output data definitions of a model: fingerprints and compatibility verdicts.

A model's schema is a list of fields (name, type, nullable). Two schemas are the same when
their fingerprints are equal: docs and classifications do not change what data fits.
Compatibility follows Avro's resolution rules as if every nullable field had a null default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from capture.events import Compatibility, DataSchema, FieldSpec

# writer type -> reader types that can read it (Avro's promotions)
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}


def fingerprint(fields: Iterable[FieldSpec]) -> str:
    canonical = json.dumps(
        [[f.name, f.type, f.nullable] for f in fields], separators=(",", ":"), ensure_ascii=True
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def data_schema(fields: Iterable[FieldSpec], schema_text: str | None = None) -> DataSchema:
    field_list = list(fields)
    names = [f.name for f in field_list]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"schema fields must have unique names, got duplicates {duplicates}")
    return DataSchema(
        fields=field_list, fingerprint=fingerprint(field_list), schema_text=schema_text
    )


def _readable(writer: FieldSpec, reader: FieldSpec) -> bool:
    if writer.nullable and not reader.nullable:
        return False
    return reader.type in _PROMOTIONS.get(writer.type, frozenset({writer.type}))


def _reads(reader: DataSchema, writer: DataSchema) -> bool:
    """Can a consumer expecting ``reader`` read data written with ``writer``?"""
    written = {f.name: f for f in writer.fields}
    for field in reader.fields:
        source = written.get(field.name)
        if source is None:
            if not field.nullable:
                return False
        elif not _readable(source, field):
            return False
    return True


def compatibility(previous: DataSchema, new: DataSchema) -> Compatibility:
    backward = _reads(new, previous)
    forward = _reads(previous, new)
    if backward and forward:
        return Compatibility.FULL
    if backward:
        return Compatibility.BACKWARD
    if forward:
        return Compatibility.FORWARD
    return Compatibility.NONE
