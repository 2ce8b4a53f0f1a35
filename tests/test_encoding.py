"""The emitter's fast encoder writes exactly the bytes fastavro writes for the whole record."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer

from capture import contract
from capture.encoding import EventEncoder, avro_string, zigzag_long
from capture.events import ModelEvent, plain, to_avro
from tests.conftest import envelope


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
        record["envelope"]["event_time"] = int(event.envelope.event_time.timestamp() * 1_000_000)
        assert encoder.encode(record) == reference.getvalue(), event.kind


def test_model_identities_are_cached_but_each_is_encoded_right() -> None:
    first = to_avro(ModelEvent(envelope=envelope(1, model="a", version="1"), payload=_unloaded()))
    second = to_avro(ModelEvent(envelope=envelope(2, model="b", version="7"), payload=_unloaded()))
    encoder = EventEncoder(first["envelope"]["producer"], first["envelope"]["deployment"])
    for record in (first, second, first):
        reference = io.BytesIO()
        schemaless_writer(reference, contract.current().parsed, record)
        event_time = record["envelope"]["event_time"]
        record = {**record, "envelope": {**record["envelope"]}}
        record["envelope"]["event_time"] = int(event_time.timestamp() * 1_000_000)
        assert encoder.encode(record) == reference.getvalue()


def _unloaded():  # type: ignore[no-untyped-def]
    from capture.events import ModelUnloaded

    return ModelUnloaded(reason="x")


def test_plain_keeps_payload_shape() -> None:
    assert plain(_unloaded()) == {"reason": "x"}
