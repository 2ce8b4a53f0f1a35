"""Avro binary of a ModelEvent, with the envelope's constant parts encoded once.

An Avro record is the concatenation of its fields' encodings, and a union is the branch
index followed by the branch. The producer and deployment of an emitter never change and a
model's identity rarely does, so their bytes are made once by fastavro and reused; per event
only the id, time and sequence are encoded here and the payload by fastavro. This halves the
background thread's cost per event. ``tests/test_encoding.py`` proves the bytes equal
fastavro's encoding of the whole record for every payload type.
"""

from __future__ import annotations

import io
import json
from typing import Any

from fastavro import parse_schema, schemaless_writer

from capture.contract import Contract, current
from capture.events import AVRO_NAMESPACE

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

    def encode(self, record: dict[str, Any]) -> bytes:
        """The record as ``capture.events.to_avro`` shapes it, with event_time in micros."""
        envelope = record["envelope"]
        name, payload = record["payload"]
        index, schema = self._payloads[name]
        return b"".join(
            (
                avro_string(envelope["event_id"]),
                zigzag_long(envelope["event_time"]),
                self._producer,
                zigzag_long(envelope["sequence"]),
                self._deployment,
                self._model(envelope["model"]),
                index,
                _write(schema, payload),
            )
        )
