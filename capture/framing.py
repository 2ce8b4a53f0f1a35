"""Wire framings of an Avro body: Confluent's and the Avro spec's single-object encoding.

Confluent wire format: ``0x00`` + 4-byte big-endian schema id + body; the id belongs to a
schema registry. Single-object encoding: ``0xC3 0x01`` + 8-byte little-endian CRC-64-AVRO
fingerprint + body; it needs nothing but the schema files, so the emitter works with Kafka
alone.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from fastavro import schemaless_writer

from capture.contract import Contract, current

if TYPE_CHECKING:
    from capture.config import EmitterConfig

CONFLUENT_MAGIC = b"\x00"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_CONFLUENT_HEADER = struct.Struct(">bI")


class FramingError(ValueError):
    """The bytes carry neither framing; names what was expected and what came."""


class Frame(NamedTuple):
    """A parsed header: exactly one of ``schema_id`` and ``fingerprint`` is set (a named
    tuple: one is made per message on the sink's hot path)."""

    schema_id: int | None
    fingerprint: bytes | None
    body_offset: int


def encode_body(parsed_schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def confluent_header(schema_id: int) -> bytes:
    return _CONFLUENT_HEADER.pack(0, schema_id)


def single_object_header(fingerprint: bytes) -> bytes:
    if len(fingerprint) != 8:
        raise ValueError(f"a CRC-64-AVRO fingerprint has 8 bytes, got {len(fingerprint)}")
    return SINGLE_OBJECT_MAGIC + fingerprint


def parse_frame(data: bytes) -> Frame:
    if data[:2] == SINGLE_OBJECT_MAGIC:
        if len(data) < 10:
            raise FramingError(
                f"single-object frame needs 10 header bytes, got {len(data)}: truncated message"
            )
        return Frame(schema_id=None, fingerprint=bytes(data[2:10]), body_offset=10)
    if data[:1] == CONFLUENT_MAGIC:
        if len(data) < 5:
            raise FramingError(
                f"Confluent frame needs 5 header bytes, got {len(data)}: truncated message"
            )
        _, schema_id = _CONFLUENT_HEADER.unpack_from(data)
        return Frame(schema_id=schema_id, fingerprint=None, body_offset=5)
    raise FramingError(
        "expected Confluent wire format (first byte 0x00) or Avro single-object encoding "
        f"(0xC3 0x01), got first bytes {bytes(data[:4]).hex() or '<empty>'}"
    )


Framer = Callable[[dict[str, Any]], bytes]
Encoder = Callable[[dict[str, Any]], bytes]


def _framer(header: bytes, encode: Encoder) -> Framer:
    def frame(record: dict[str, Any]) -> bytes:
        return header + encode(record)

    return frame


def _generic_encoder(contract: Contract) -> Encoder:
    parsed = contract.parsed
    return lambda record: encode_body(parsed, record)


def single_object_framer(encode: Encoder | None = None) -> Framer:
    """A framer over whole records (``capture.events.to_avro``), for readers and tests; the
    emitter frames with its own faster ``EventEncoder``, which writes the same bytes."""
    contract = current()
    return _framer(single_object_header(contract.fingerprint), encode or _generic_encoder(contract))


def subject_for(topic: str) -> str:
    """Confluent's TopicNameStrategy, which its own deserializers expect by default."""
    return f"{topic}-value"


def register_schema(config: EmitterConfig) -> int:
    """Register the current schema for the topic; idempotent (an existing id comes back)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    conf: dict[str, str] = {"url": config.registry_url or ""}
    if config.registry_auth:
        conf["basic.auth.user.info"] = config.registry_auth
    client = SchemaRegistryClient(conf)
    return int(client.register_schema(subject_for(config.topic), Schema(current().text, "AVRO")))
