"""The Avro contract and its Python mirror stay in step; every schema version reads the last."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from capture import contract, events
from capture.framing import (
    FramingError,
    parse_frame,
    single_object_framer,
    single_object_header,
)
from capture.stats import DEFAULT_FEATURE_RELATIVE_ACCURACY, SignedSketch, Sketch

_PRIMITIVES = {"string": str, "long": int, "int": int, "double": float, "boolean": bool}


def _records(schema: Any, found: dict[str, dict[str, Any]]) -> None:
    """Every named record in the schema, by short name."""
    if isinstance(schema, list):
        for branch in schema:
            _records(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            found[schema["name"].rsplit(".", 1)[-1]] = schema
            for f in schema["fields"]:
                _records(f["type"], found)
        elif kind == "array":
            _records(schema["items"], found)
        elif kind == "map":
            _records(schema["values"], found)


def _expected_hint(avro_type: Any) -> Any:
    if isinstance(avro_type, list):
        rest = [_expected_hint(t) for t in avro_type if t != "null"]
        union = functools.reduce(operator.or_, rest)
        return union | None if "null" in avro_type else union
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type]
        return getattr(events, avro_type.rsplit(".", 1)[-1])
    kind = avro_type["type"]
    if avro_type.get("logicalType") == "timestamp-micros":
        return datetime
    if avro_type.get("logicalType") == "uuid":
        return str
    if kind == "array":
        return list[_expected_hint(avro_type["items"])]  # type: ignore[misc]
    if kind == "map":
        return dict[str, _expected_hint(avro_type["values"])]  # type: ignore[misc]
    if kind in ("record", "enum"):
        return getattr(events, avro_type["name"].rsplit(".", 1)[-1])
    return _PRIMITIVES[kind]


def _same_hint(actual: Any, expected: Any) -> bool:
    if typing.get_origin(actual) in (types.UnionType, typing.Union):
        expected_args = set(typing.get_args(expected)) if typing.get_args(expected) else {expected}
        return set(typing.get_args(actual)) == expected_args
    return bool(actual == expected)


def _schema_json() -> dict[str, Any]:
    return typing.cast(dict[str, Any], json.loads(contract.current().text))


RECORDS: dict[str, dict[str, Any]] = {}
_records(_schema_json(), RECORDS)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_dataclass_mirrors_record(name: str) -> None:
    record = RECORDS[name]
    cls = getattr(events, name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == {f["name"] for f in record["fields"]}, name
    for avro_field in record["fields"]:
        py_field = fields[avro_field["name"]]
        where = f"{name}.{avro_field['name']}"
        assert _same_hint(hints[py_field.name], _expected_hint(avro_field["type"])), where
        has_default = (
            py_field.default is not dataclasses.MISSING
            or py_field.default_factory is not dataclasses.MISSING
        )
        assert has_default == ("default" in avro_field), f"{where}: default differs"
        if "default" in avro_field:
            default = (
                py_field.default
                if py_field.default is not dataclasses.MISSING
                else cast(Callable[[], Any], py_field.default_factory)()
            )
            default = events.plain(default)
            assert default == avro_field["default"], f"{where}: default differs"


def test_enums_mirror_symbols() -> None:
    text = contract.current().text
    for cls in (events.SchemaSide, events.Compatibility):
        for member in cls:
            assert f'"{member.value}"' in text
    assert list(events.SchemaSide) == ["INPUT", "OUTPUT"]


def test_payload_union_matches_payload_types() -> None:
    union = _schema_json()["fields"][1]["type"]
    names = {f"{events.AVRO_NAMESPACE}.{branch['name']}" for branch in union}
    assert names == set(events.PAYLOAD_TYPES)


@pytest.mark.parametrize("old", contract.released(), ids=lambda c: c.source.name)
def test_current_schema_reads_every_released_version(old: contract.Contract) -> None:
    """BACKWARD compatibility: data written with any released schema reads with the current."""
    reader = contract.current().parsed
    for datum in generate_many(old.parsed, 50):
        buf = io.BytesIO()
        schemaless_writer(buf, old.parsed, datum)
        buf.seek(0)
        decoded = schemaless_reader(buf, old.parsed, reader)
        assert isinstance(decoded, dict)
        assert decoded["envelope"]["sequence"] == datum["envelope"]["sequence"]


def test_released_versions_are_immutable_and_current_is_latest_or_new() -> None:
    released = contract.released()
    assert released, "schemas/released must hold at least v1"
    fingerprints = [c.fingerprint for c in released]
    assert len(set(fingerprints)) == len(fingerprints), "two released versions are identical"
    assert set(contract.by_fingerprint()) >= set(fingerprints)


def test_single_object_frame_round_trip(sample_events: list[events.ModelEvent]) -> None:
    frame = single_object_framer()
    for event in sample_events:
        data = frame(events.to_avro(event))
        header = parse_frame(data)
        assert header.fingerprint == contract.current().fingerprint
        decoded = schemaless_reader(
            io.BytesIO(data[header.body_offset :]),
            contract.current().parsed,
            None,
            return_record_name=True,
            return_record_name_override=True,
        )
        assert isinstance(decoded, dict)
        name, payload = decoded["payload"]
        assert name == type(event.payload).AVRO_NAME
        assert payload == events.to_avro(event)["payload"][1]
        assert decoded["envelope"]["model"]["name"] == event.envelope.model.name


def _readme_recipe(values: list[float], a: float) -> dict[str, dict[str, Any]]:
    """schemas/README.md's recipe for a FeatureSketch, followed to the letter."""
    inv = 1 / math.log((1 + a) / (1 - a))
    zero_count = 0
    buckets: dict[str, dict[int, int]] = {"positive": {}, "negative": {}}
    for v in values:
        if abs(v) <= 1e-9:
            zero_count += 1
        else:
            side = buckets["positive" if v > 0 else "negative"]
            i = math.ceil(math.log(abs(v)) * inv)
            side[i] = side.get(i, 0) + 1
    sketch = {}
    for name, side in buckets.items():
        first = min(side, default=0)
        sketch[name] = {
            "relative_accuracy": a,
            "zero_count": zero_count if name == "positive" else 0,
            "first_index": first,
            "counts": [side.get(i, 0) for i in range(first, max(side, default=-1) + 1)],
        }
    return sketch


def test_the_readme_s_feature_sketch_recipe_and_example_give_the_emitter_s_sketch() -> None:
    """schemas/README.md is what a producer in another language follows (contract v3)."""
    text = (contract.SCHEMA_DIR / "README.md").read_text(encoding="utf-8")
    example = re.search(
        r"For a = (0\.\d+) and the values ([-\d., e]+) the sketch is\s+`(\{.*?\}\})`", text, re.S
    )
    assert example is not None
    accuracy = float(example.group(1))
    values = [float(v) for v in example.group(2).split(", ")]
    written = json.loads(" ".join(example.group(3).split()))
    sketch = SignedSketch(accuracy)
    for value in values:
        sketch.add(value)
    assert written == dataclasses.asdict(sketch.to_event()) == _readme_recipe(values, accuracy)
    assert "buckets -207 .. 7,092" in text
    assert Sketch(DEFAULT_FEATURE_RELATIVE_ACCURACY).index_range() == (-207, 7092)


def test_fingerprint_matches_avro_spec_vector() -> None:
    from fastavro.schema import fingerprint

    # From the Avro specification: the CRC-64-AVRO fingerprint of "int" is 0x7275d51a3f395c8f.
    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (0x7275D51A3F395C8F).to_bytes(
        8, "little"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "<empty>"),
        (b"\xc3\x01\x00", "truncated"),
        (b"\x00\x00", "truncated"),
        (b"{json", "7b6a736f"),
    ],
)
def test_parse_frame_rejects_with_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        parse_frame(data)


@pytest.mark.parametrize("old", contract.released(), ids=lambda c: c.source.name)
def test_a_released_writer_read_alone_decodes_as_if_resolved_against_the_current_schema(
    old: contract.Contract,
) -> None:
    """The sink reads the contract's own versions without schema resolution (its cost is more
    than the read's): what an older writer lacks must come out as the events' defaults, the
    same as resolution gives, for every payload type with every field it can carry."""
    from atlas_sink.core import decode
    from capture.profile import profile_features
    from tests.conftest import all_payloads, envelope, model_loaded, scoring_stats

    profile = profile_features({"alcohol": [12.5, -1.0, None]})
    payloads: list[events.Payload] = [
        *all_payloads(),
        dataclasses.replace(model_loaded(), training_profile=profile, restored=True),
        dataclasses.replace(scoring_stats(), features=profile),
    ]
    stripped = decode._without_logical_types(old.text)
    for sequence, payload in enumerate(payloads, start=1):
        body = io.BytesIO()
        # The fields this version lacks are left out, as its emitter wrote them.
        schemaless_writer(
            body,
            old.parsed,
            events.to_avro(events.ModelEvent(envelope=envelope(sequence), payload=payload)),
        )
        alone = decode.Decoder().decode(single_object_header(old.fingerprint) + body.getvalue())
        resolved_record = schemaless_reader(
            io.BytesIO(body.getvalue()),
            stripped,
            decode._without_logical_types(contract.current().text),
            return_record_name=True,
            return_record_name_override=True,
        )
        assert isinstance(resolved_record, dict)
        assert alone == decode._to_event(resolved_record), (old.source.name, type(payload))
