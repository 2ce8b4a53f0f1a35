"""Schema fingerprints and compatibility verdicts for models' inputs and outputs."""

from __future__ import annotations

import pytest

from capture.dataschema import compatibility, data_schema
from capture.events import Compatibility, FieldSpec


def schema(*fields: tuple[str, str, bool]):  # type: ignore[no-untyped-def]
    return data_schema([FieldSpec(name=n, type=t, nullable=nullable) for n, t, nullable in fields])


def test_fingerprint_ignores_docs_and_classifications_but_not_types() -> None:
    a = data_schema([FieldSpec(name="x", type="double")])
    b = data_schema([FieldSpec(name="x", type="double", doc="d", classifications=["PII"])])
    c = data_schema([FieldSpec(name="x", type="long")])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.fingerprint.startswith("sha256:")


def test_duplicate_field_names_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"duplicates \['x'\]"):
        schema(("x", "double", False), ("x", "long", False))


@pytest.mark.parametrize(
    ("old", "new", "verdict"),
    [
        ([("x", "double", False)], [("x", "double", False)], Compatibility.FULL),
        # A new optional field: old data reads (null) and old readers ignore it.
        ([("x", "double", False)], [("x", "double", False), ("y", "long", True)], "FULL"),
        # A new required field: new readers cannot read old data.
        ([("x", "double", False)], [("x", "double", False), ("y", "long", False)], "FORWARD"),
        # A removed required field: old readers cannot read new data.
        ([("x", "double", False), ("y", "long", False)], [("x", "double", False)], "BACKWARD"),
        # Promotion int -> long reads old data; the reverse does not.
        ([("x", "int", False)], [("x", "long", False)], "BACKWARD"),
        ([("x", "long", False)], [("x", "int", False)], "FORWARD"),
        # Nullable to required: old nulls cannot be read.
        ([("x", "double", True)], [("x", "double", False)], "FORWARD"),
        ([("x", "string", False)], [("x", "double", False)], "NONE"),
    ],
)
def test_compatibility_verdicts(old: list, new: list, verdict: str) -> None:  # type: ignore[type-arg]
    assert compatibility(schema(*old), schema(*new)) == Compatibility(verdict)
