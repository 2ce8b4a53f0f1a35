"""The stored test vectors (schemas/vectors/) are what the project writes and reads today.

Producers in other languages compare their bytes with these files, so a change of the contract
or of an encoder that changes a single byte must fail here, not in their pipelines.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader

from atlas_sink.core.decode import Decoder
from atlas_sink.core.validate import Limits, check_event
from capture import contract
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import (
    AVRO_NAMESPACE,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    SchemaChanged,
    ScoringStats,
    to_avro,
)
from capture.framing import single_object_framer
from capture.profile import profile_features
from capture.stats import ScoringRecorder
from demo import descriptor as descriptors
from demo import vectors
from tests.hostile import CapturingProducer

EVENTS = {vector.name: vector for vector in vectors.event_vectors()}
NAMES = [*EVENTS, vectors.DESCRIPTOR_VECTOR]
REGENERATE = (
    "If and only if this is a deliberate new contract version (schemas/README.md, evolution "
    "rules), re-run `.venv/bin/python scripts/make_test_vectors.py` and tell the producers in "
    "other languages; otherwise this change breaks every producer checking its bytes against "
    "schemas/vectors/."
)


def _stored(name: str, suffix: str = ".bin") -> bytes:
    return (vectors.VECTOR_DIR / f"{name}{suffix}").read_bytes()


def _document(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_stored(name, ".json"))
    return document


def test_the_directory_holds_every_vector_and_nothing_else() -> None:
    expected = {f"{n}{s}" for n in NAMES for s in (".bin", ".json")} | {"README.md"}
    assert {p.name for p in vectors.VECTOR_DIR.iterdir()} == expected, REGENERATE


@pytest.mark.parametrize("name", NAMES)
def test_regenerated_bytes_equal_the_stored_vector(name: str) -> None:
    stored, made = _stored(name), vectors.values()[name]
    if made != stored:
        first = next(
            (i for i, (a, b) in enumerate(zip(made, stored, strict=False)) if a != b),
            min(len(made), len(stored)),
        )
        pytest.fail(
            f"schemas/vectors/{name}.bin is not what the project writes now: first difference "
            f"at byte {first} (stored {len(stored)} bytes, now {len(made)}). {REGENERATE}"
        )


@pytest.mark.parametrize("name", list(EVENTS))
def test_the_emitters_encoder_writes_what_avro_itself_writes(name: str) -> None:
    # The vectors come from the emitter's own field-by-field encoder; a JVM producer writes
    # with a generic Avro writer, which fastavro's whole-record writer stands for here.
    event = EVENTS[name].event
    assert vectors.event_value(event) == single_object_framer()(to_avro(event))


@pytest.mark.parametrize("name", list(EVENTS))
def test_the_sink_decodes_each_event_vector_into_its_event(name: str) -> None:
    event = EVENTS[name].event
    decoded = Decoder().decode(_stored(name))
    assert decoded == event
    # Accepted too, not dead-lettered: a producer matching the vector is read by the sink.
    check_event(decoded, Limits(), now=vectors.T0 + timedelta(days=1))


def test_the_descriptor_vector_decodes_into_its_descriptor() -> None:
    decoded = descriptors.decode(_stored(vectors.DESCRIPTOR_VECTOR))
    assert decoded == vectors.descriptor()
    assert decoded.artifact_bytes is not None
    assert descriptors.content_hash(decoded.artifact_bytes) == decoded.content_hash


def _fastavro_record(value: Any) -> Any:
    """A JSON record back to what fastavro reads: the payload union {name: record} to
    (name, record); artifact bytes, written as hex, are converted by the caller."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith(f"{AVRO_NAMESPACE}."):
            ((name, record),) = value.items()
            return (name, _fastavro_record(record))
        return {k: _fastavro_record(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fastavro_record(v) for v in value]
    return value


@pytest.mark.parametrize("name", NAMES)
def test_the_json_agrees_with_the_bytes(name: str) -> None:
    value, document = _stored(name), _document(name)
    event_schema, descriptor_schema = vectors.body_schemas()
    is_descriptor = name == vectors.DESCRIPTOR_VECTOR
    body = io.BytesIO(value[10:])
    read = schemaless_reader(
        body,
        descriptor_schema if is_descriptor else event_schema,
        None,
        return_record_name=True,
        return_record_name_override=True,
    )
    assert body.tell() == len(value) - 10
    expected = _fastavro_record(document["record"])
    if is_descriptor:
        expected["artifact_bytes"] = bytes.fromhex(expected["artifact_bytes"])
        assert document["schema"] == "schemas/model_descriptor.avsc"
        assert document["kafka_key"] == vectors.descriptor().name
    else:
        assert document["schema"] == "schemas/model_event.avsc"
        assert document["fingerprint"] == contract.current().fingerprint_hex
        assert document["kafka_key"] == vectors.kafka_key(EVENTS[name].event)
    assert read == expected
    assert value[:2] == b"\xc3\x01"
    assert document["fingerprint"] == value[2:10].hex()


def test_the_descriptor_header_is_the_one_avro_java_writes() -> None:
    # Avro Java 1.7.7's SchemaNormalization.parsingFingerprint64 of model_descriptor.avsc
    # parsed after model_event.avsc (v4) is 0x1825e19d219415bb; the header holds it
    # little-endian. The event contract's is checked the same way in its vectors.
    assert _stored(vectors.DESCRIPTOR_VECTOR)[2:10] == bytes.fromhex("bb1594219de12518")


def test_a_real_emitter_keys_frames_and_writes_the_payloads_as_the_vectors() -> None:
    kafka = CapturingProducer()
    config = EmitterConfig(bootstrap_servers="127.0.0.1:9", close_timeout_seconds=5)
    emitter = Emitter(config, vectors.DEPLOYMENT, producer=kafka, clock=lambda: vectors.T0)
    lifecycle = [v for v in EVENTS.values() if not isinstance(v.event.payload, ScoringStats)]
    for vector in lifecycle:
        model, payload = vector.event.envelope.model, vector.event.payload
        if isinstance(payload, ModelLoaded):
            emitter.model_loaded(model, payload)
        elif isinstance(payload, ModelLoadFailed):
            emitter.model_load_failed(
                model, payload.reason, payload.error_kind, payload.artifact_uri
            )
        elif isinstance(payload, ModelUnloaded):
            emitter.model_unloaded(model, payload.reason)
        elif isinstance(payload, SchemaChanged):
            # The emitter judges compatibility itself: the vector's verdict must be its own.
            emitter.schema_changed(model, payload.side, payload.new_schema, payload.previous_schema)
    emitter.close()
    assert len(kafka.sent) == len(lifecycle)
    decoder = Decoder()
    for vector, (value, key) in zip(lifecycle, kafka.sent, strict=True):
        assert key == vectors.kafka_key(vector.event).encode(), vector.name
        assert value[:10] == _stored(vector.name)[:10], vector.name
        assert decoder.decode(value).payload == vector.event.payload, vector.name


def test_the_literal_figures_are_what_capture_computes_from_the_raw_values() -> None:
    window = EVENTS["scoring_stats"].event.payload
    assert isinstance(window, ScoringStats)
    recorder = ScoringRecorder(60, now=window.window_start)
    for latency, error in vectors.SCORED_LATENCIES:
        recorder.record(latency, error=error)
    for row in vectors.SCORED_FEATURES:
        recorder.record_features(row)
    computed = recorder.close_window(window.window_end)
    assert computed is not None
    for quantile in ("p50", "p95", "p99"):
        # pow() of another libm may differ in the last bit; the vector keeps one value.
        assert getattr(computed.latency, quantile) == pytest.approx(
            getattr(window.latency, quantile), rel=1e-12
        )
        setattr(computed.latency, quantile, getattr(window.latency, quantile))
    assert computed == window
    assert profile_features(vectors.TRAINING_COLUMNS) == vectors.training_profile()


def test_running_the_script_twice_writes_the_stored_files(tmp_path: Path) -> None:
    script = vectors.VECTOR_DIR.parent.parent / "scripts" / "make_test_vectors.py"
    for args in ([], [], ["--check"]):
        run = subprocess.run(
            [sys.executable, str(script), "--dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
    for path in tmp_path.iterdir():
        assert path.read_bytes() == (vectors.VECTOR_DIR / path.name).read_bytes(), (
            f"schemas/vectors/{path.name} differs from what the script writes. {REGENERATE}"
        )
