"""The Avro contract, parsed once per process.

The schema files live in ``schemas/`` (reached through the ``capture/schemas`` link so they
ship inside the package). ``released/`` keeps every released version: the sink resolves old
writer schemas against them and a test checks that each new version reads them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
CURRENT_SCHEMA_FILE = SCHEMA_DIR / "model_event.avsc"
RELEASED_DIR = SCHEMA_DIR / "released"


@dataclass(frozen=True)
class Contract:
    """One version of the event schema with the two identities the framings need."""

    source: Path
    text: str
    parsed: Any
    canonical_form: str
    fingerprint: bytes  # CRC-64-AVRO, little-endian, as single-object encoding writes it

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def fingerprint_of(parsed: Any) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, in single-object encoding's byte order."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def without_logical_types(schema: Any) -> Any:
    """A schema's JSON with every ``logicalType`` left out: read with it, fastavro returns what
    the bytes hold (uuids as strings, timestamps as microseconds), which the bytes do not
    change."""
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


def load_contract(path: Path) -> Contract:
    text = path.read_text(encoding="utf-8")
    parsed = parse_schema(json.loads(text))
    return Contract(
        source=path,
        text=text,
        parsed=parsed,
        canonical_form=to_parsing_canonical_form(parsed),
        fingerprint=fingerprint_of(parsed),
    )


@cache
def current() -> Contract:
    return load_contract(CURRENT_SCHEMA_FILE)


@cache
def released() -> tuple[Contract, ...]:
    """Released versions, oldest first (files are named ``model_event.vN.avsc``)."""
    files = sorted(
        RELEASED_DIR.glob("model_event.v*.avsc"), key=lambda p: int(p.stem.split(".v")[1])
    )
    return tuple(load_contract(p) for p in files)


@cache
def by_fingerprint() -> dict[bytes, Contract]:
    """Every known writer schema (released and current) by its single-object fingerprint."""
    known = {c.fingerprint: c for c in released()}
    known[current().fingerprint] = current()
    return known
