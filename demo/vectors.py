"""Deterministic test vectors: one event of each payload type and one model descriptor, for a
producer in another language (a JVM stream job) to compare its bytes with.

``scripts/make_test_vectors.py`` writes them to ``schemas/vectors/`` and
``tests/test_vectors.py`` checks the stored files against them; both build them here, since
neither may import the other. The events tell one story of a Flink job's scoring operator:
instance A loads version 2 from a descriptor (replacing 1, with a changed output schema),
sends a scoring window, refuses version 3, and is cancelled; instance B, restored from a
checkpoint, serves version 2 again.

Every figure is a literal, the sketches included: the bytes must not depend on a platform's
``log`` or ``pow``. ``SCORED_LATENCIES``, ``SCORED_FEATURES`` and ``TRAINING_COLUMNS`` are the
raw values the literals summarise (a test recomputes them with ``capture.stats``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastavro import parse_schema

from capture import contract
from capture.dataschema import compatibility, data_schema
from capture.encoding import EventEncoder, micros
from capture.events import (
    Artifact,
    DataSource,
    Deployment,
    Envelope,
    FeatureSketch,
    FeatureSummary,
    FieldSpec,
    LatencySummary,
    LogSketch,
    Metric,
    ModelEvent,
    ModelIdentity,
    ModelLoaded,
    ModelLoadFailed,
    ModelType,
    ModelUnloaded,
    Payload,
    Producer,
    Runtime,
    SchemaChanged,
    SchemaSide,
    ScoringStats,
    Training,
    plain,
)
from capture.framing import single_object_header
from demo import descriptor as descriptors
from demo.descriptor import ArtifactFormat, ModelDescriptor

VECTOR_DIR = Path(__file__).resolve().parent.parent / "schemas" / "vectors"
DESCRIPTOR_VECTOR = "model_descriptor"

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEPLOYMENT = Deployment(
    server_kind="flink", server_name="wine-scoring-job", cluster="prod-eu", environment="prod"
)
# Written as the emitter writes its random ones (uuid4().hex): one per operator instance.
INSTANCE_A = "3f2a9c1e5b7d4e8fa0c4d6e8f0a2b4c6"
INSTANCE_B = "7c1e3a5b9d2f4c6e8a0b2d4f6a8c0e1f"
MODEL_NAME = "wine-classifier"
# A placeholder, not a loadable model: only its hash matters to the vectors.
ARTIFACT_BYTES = b"servemeta test vector artifact: not a loadable model\n"
CONTENT_HASH = descriptors.content_hash(ARTIFACT_BYTES)
SERVED = ModelIdentity(name=MODEL_NAME, version="2", content_hash=CONTENT_HASH)
REFUSED = ModelIdentity(
    name=MODEL_NAME,
    version="3",
    content_hash="sha256:" + "5a" * 32,
)

INPUT = data_schema(
    [
        FieldSpec(name="alcohol", type="double", doc="% by volume"),
        FieldSpec(name="color_intensity", type="double", nullable=True),
    ]
)
OUTPUT_V1 = data_schema([FieldSpec(name="cultivar", type="long", doc="predicted class")])
OUTPUT_V2 = data_schema(
    [
        FieldSpec(name="cultivar", type="long", doc="predicted class"),
        FieldSpec(name="probability", type="double"),
    ]
)

TRAINING_COLUMNS: dict[str, list[float]] = {
    "alcohol": [12.37, 13.05, 14.23, 13.64, 12.08, 13.48, 12.85, 14.06, 11.96, 13.71],
    "color_intensity": [3.52, 5.6, 7.3, 4.38, 2.76, 5.1, 3.9, 8.9, 2.45, 6.2],
}
# (latency in seconds, error kind or None), in the order they were recorded.
SCORED_LATENCIES: list[tuple[float, str | None]] = [
    *((s, None) for s in (0.0041, 0.0043, 0.0047, 0.0052, 0.0049, 0.0058, 0.0061, 0.0044, 0.0075)),
    (0.009, "TimeoutError"),
]
# One mapping per scored record. color_intensity's values are schemas/README.md's worked
# example of a feature sketch (negatives too, unlike real wine data), so the README's sketch
# can be checked in this vector.
SCORED_FEATURES: list[dict[str, float | None]] = [
    {"alcohol": a, "color_intensity": c}
    for a, c in zip(
        (13.2, 12.4, 14.1, None, 13.8, 12.9, 13.5, 13.0),
        (-2.0, -0.5, 0.0, 1e-10, 0.5, 3.0, 3.1, None),
        strict=True,
    )
] + [{"alcohol": 12.7}, {"alcohol": 14.3}]


def _sketch(accuracy: float, buckets: dict[int, int], zero_count: int = 0) -> LogSketch:
    """The dense ``LogSketch`` of occupied buckets given as {index: count}."""
    if not buckets:
        return LogSketch(relative_accuracy=accuracy, counts=[], zero_count=zero_count)
    first, last = min(buckets), max(buckets)
    return LogSketch(
        relative_accuracy=accuracy,
        first_index=first,
        counts=[buckets.get(i, 0) for i in range(first, last + 1)],
        zero_count=zero_count,
    )


def _feature(
    name: str,
    count: int,
    null_count: int,
    figures: tuple[float, float, float],
    positive: dict[int, int],
    negative: dict[int, int],
    zero_count: int = 0,
) -> FeatureSummary:
    low, high, mean = figures
    return FeatureSummary(
        name=name,
        count=count,
        null_count=null_count,
        min=low,
        max=high,
        mean=mean,
        distribution=FeatureSketch(
            positive=_sketch(0.05, positive, zero_count), negative=_sketch(0.05, negative)
        ),
    )


def training_profile() -> list[FeatureSummary]:
    """``TRAINING_COLUMNS`` summarised."""
    return [
        _feature("alcohol", 10, 0, (11.96, 14.23, 13.143), {25: 2, 26: 4, 27: 4}, {}),
        _feature(
            "color_intensity",
            10,
            0,
            (2.45, 8.9, 5.011),
            {9: 1, 11: 1, 13: 1, 14: 1, 15: 1, 17: 1, 18: 1, 19: 1, 20: 1, 22: 1},
            {},
        ),
    ]


def _scoring_window() -> ScoringStats:
    """``SCORED_LATENCIES`` and ``SCORED_FEATURES`` summarised as one window."""
    latencies = {-274: 1, -272: 1, -271: 1, -268: 1, -265: 1, -262: 1, -257: 1, -254: 1}
    latencies |= {-244: 1, -235: 1}
    return ScoringStats(
        window_start=T0,
        window_end=T0 + timedelta(seconds=60),
        request_count=10,
        error_count=1,
        errors_by_kind={"TimeoutError": 1},
        latency=LatencySummary(
            min=0.0041,
            max=0.009,
            mean=0.0056,
            p50=0.004940804962803729,
            p95=0.007519820490263952,
            p99=0.007519820490263952,
            sketch=_sketch(0.01, latencies),
        ),
        features=[
            _feature("alcohol", 10, 1, (12.4, 14.3, 13.322222222222223), {26: 5, 27: 4}, {}),
            # schemas/README.md's example: 0.5 in bucket -6, 3.0 in 11, 3.1 in 12; the
            # magnitudes 0.5 in -6 and 2.0 in 7; 0.0 and 1e-10 as zeros.
            _feature(
                "color_intensity",
                8,
                1,
                (-2.0, 3.1, 0.5857142857285714),
                {-6: 1, 11: 1, 12: 1},
                {-6: 1, 7: 1},
                zero_count=2,
            ),
        ],
    )


def descriptor() -> ModelDescriptor:
    """Version 2 as published on the control topic; the runtime is the publisher's, which a
    server replaces by its own when it announces the load."""
    return ModelDescriptor(
        name=MODEL_NAME,
        version="2",
        description="Random forest on the wine data, 200 trees",
        artifact_format=ArtifactFormat.JOBLIB,
        artifact_bytes=ARTIFACT_BYTES,
        content_hash=CONTENT_HASH,
        announcement=ModelLoaded(
            model_type=ModelType(
                framework="sklearn",
                framework_version="1.5.2",
                algorithm="RandomForestClassifier",
                task="classification",
            ),
            artifact=Artifact(
                uri="s3://models/wine-classifier/2/model.joblib",
                scheme="s3",
                encrypted_at_rest=True,
                access_mode="private",
                size_bytes=len(ARTIFACT_BYTES),
                content_hash=CONTENT_HASH,
            ),
            training=Training(
                sources=[
                    DataSource(
                        uri="s3://data/wine/train.csv",
                        name="wine-train",
                        format="csv",
                        schema=INPUT,
                    )
                ],
                run_id="run-0002",
                hyper_parameters={"n_estimators": "200", "max_depth": "8"},
            ),
            metrics=[Metric(name="accuracy", value=0.96, split="test")],
            input_schema=INPUT,
            output_schema=OUTPUT_V2,
            runtime=Runtime(language="python", language_version="3.11", host="model-publisher"),
            owner="data-science",
            tags=["wine"],
            properties={"team": "ml"},
            training_profile=training_profile(),
        ),
    )


_RUNTIME = Runtime(
    language="java",
    language_version="17",
    host="taskmanager-1",
    container_image="registry.example/wine-scoring-job:1.4.0",
    replicas=4,
)


def _announced(*, replaces_version: str | None, restored: bool) -> ModelLoaded:
    """What a server sends when it applies the descriptor: its announcement with the facts only
    the server knows filled in."""
    return dataclasses.replace(
        descriptor().announcement,
        runtime=_RUNTIME,
        inputs=["kafka://wine-requests"],
        outputs=["kafka://wine-scores"],
        replaces_version=replaces_version,
        restored=restored,
    )


@dataclass(frozen=True)
class EventVector:
    name: str
    about: str
    event: ModelEvent


def _event(
    instance: str, sequence: int, seconds: int, model: ModelIdentity, payload: Payload
) -> ModelEvent:
    producer = Producer(
        emitter_name="wine-scoring-job-capture",
        emitter_version="0.1.0",
        host="taskmanager-1",
        pid=4242,
        instance_id=instance,
    )
    envelope = Envelope(
        event_id=f"5e7e0000-0000-4000-8000-{instance[:4]}{sequence:08d}",
        event_time=T0 + timedelta(seconds=seconds),
        producer=producer,
        sequence=sequence,
        deployment=DEPLOYMENT,
        model=model,
    )
    return ModelEvent(envelope=envelope, payload=payload)


def event_vectors() -> list[EventVector]:
    schema_changed = SchemaChanged(
        side=SchemaSide.OUTPUT,
        new_fingerprint=OUTPUT_V2.fingerprint,
        new_schema=OUTPUT_V2,
        previous_fingerprint=OUTPUT_V1.fingerprint,
        compatibility=compatibility(OUTPUT_V1, OUTPUT_V2),
        previous_schema=OUTPUT_V1,
    )
    load_failed = ModelLoadFailed(
        reason=f"the artifact's bytes hash to {CONTENT_HASH}, the descriptor says "
        f"{REFUSED.content_hash}: corrupt or tampered with, not loaded",
        error_kind="ContentHashMismatch",
        artifact_uri="file:///models/wine-classifier/3/model.joblib",
    )
    a, b = INSTANCE_A, INSTANCE_B
    return [
        EventVector(
            "model_loaded",
            "instance A applies the descriptor: version 2 replaces 1, with a training profile",
            _event(a, 1, 0, SERVED, _announced(replaces_version="1", restored=False)),
        ),
        EventVector(
            "schema_changed",
            "instance A: version 2's output schema differs from version 1's",
            _event(a, 2, 0, SERVED, schema_changed),
        ),
        EventVector(
            "scoring_stats",
            "instance A's scoring window of version 2: latency sketch, two features",
            _event(a, 3, 60, SERVED, _scoring_window()),
        ),
        EventVector(
            "model_load_failed",
            "instance A refuses version 3 (hash mismatch); version 2 serves on",
            _event(a, 4, 90, REFUSED, load_failed),
        ),
        EventVector(
            "model_unloaded",
            "instance A is closed: the job is cancelled",
            _event(a, 5, 120, SERVED, ModelUnloaded(reason="job cancelled")),
        ),
        EventVector(
            "model_loaded_restored",
            "instance B, restored from a checkpoint, serves version 2 again (contract v4)",
            _event(b, 1, 180, SERVED, _announced(replaces_version=None, restored=True)),
        ),
    ]


def kafka_key(event: ModelEvent) -> str:
    """The key ``capture.emitter.Emitter`` gives the event's message."""
    return f"{event.envelope.deployment.cluster}/{event.envelope.model.name}"


def event_value(event: ModelEvent) -> bytes:
    """The message value, framed and encoded as the emitter does (single-object encoding)."""
    envelope = event.envelope
    fields = {
        "event_id": envelope.event_id,
        "event_time": micros(envelope.event_time),
        "producer": plain(envelope.producer),
        "sequence": envelope.sequence,
        "deployment": plain(envelope.deployment),
        "model": plain(envelope.model),
    }
    encoder = EventEncoder(fields["producer"], fields["deployment"])
    header = single_object_header(contract.current().fingerprint)
    return header + encoder.encode(fields, event.payload)


def values() -> dict[str, bytes]:
    """Every vector's message value by name (the file stem in ``VECTOR_DIR``)."""
    out = {vector.name: event_value(vector.event) for vector in event_vectors()}
    out[DESCRIPTOR_VECTOR] = descriptors.encode(descriptor())
    return out


def body_schemas() -> tuple[Any, Any]:
    """The parsed event and descriptor schemas with their logical types left out, so that a
    reader returns what the bytes hold: uuids as strings, timestamps as microseconds (the
    descriptor's have none)."""
    event = parse_schema(contract.without_logical_types(json.loads(contract.current().text)))
    return event, descriptors.parsed_schema()
