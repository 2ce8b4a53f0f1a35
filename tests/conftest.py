"""Shared fixtures: sample events of every type, and the real services for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from capture.dataschema import data_schema
from capture.events import (
    Artifact,
    DataSource,
    Deployment,
    Envelope,
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
    ScoringStats,
    Training,
)

if TYPE_CHECKING:
    from tests import services

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

INPUT = data_schema(
    [FieldSpec(name="alcohol", type="double"), FieldSpec(name="color_intensity", type="double")]
)
OUTPUT = data_schema([FieldSpec(name="cultivar", type="long", doc="predicted class")])


def model_loaded(version: str = "1", replaces: str | None = None) -> ModelLoaded:
    return ModelLoaded(
        model_type=ModelType(
            framework="sklearn", framework_version="1.5.0", algorithm="RandomForestClassifier"
        ),
        artifact=Artifact(
            uri=f"s3://models/wine/{version}/model.pkl",
            scheme="s3",
            encrypted_at_rest=True,
            access_mode="private",
        ),
        training=Training(
            sources=[
                DataSource(uri="file:///data/wine.csv", name="wine", format="csv", schema=INPUT)
            ],
            run_id="run-42",
            hyper_parameters={"n_estimators": "50"},
        ),
        metrics=[Metric(name="accuracy", value=0.97, split="test")],
        input_schema=INPUT,
        output_schema=OUTPUT,
        runtime=Runtime(language="python", language_version="3.11", host="h1", replicas=2),
        replaces_version=replaces,
        inputs=["kafka://wine-requests"],
        outputs=["kafka://wine-scores"],
        owner="data-science",
        tags=["demo"],
        classifications=["Confidential"],
        properties={"team": "ml"},
    )


def scoring_stats() -> ScoringStats:
    return ScoringStats(
        window_start=T0,
        window_end=T0 + timedelta(seconds=60),
        request_count=10,
        error_count=1,
        errors_by_kind={"timeout": 1},
        latency=LatencySummary(
            min=0.001,
            max=0.02,
            mean=0.005,
            p50=0.004,
            p95=0.015,
            p99=0.02,
            sketch=LogSketch(relative_accuracy=0.01, first_index=-301, counts=[4, 0, 6]),
        ),
    )


def envelope(sequence: int = 1, model: str = "wine", version: str = "1") -> Envelope:
    return Envelope(
        event_id=f"00000000-0000-4000-8000-{sequence:012d}",
        event_time=T0 + timedelta(seconds=sequence),
        producer=Producer(
            emitter_name="test", emitter_version="0", host="h1", pid=1, instance_id="i1"
        ),
        sequence=sequence,
        deployment=Deployment(server_kind="python", server_name="wine-scorer", cluster="local"),
        model=ModelIdentity(name=model, version=version),
    )


def all_payloads() -> list[Payload]:
    return [
        model_loaded(),
        ModelLoadFailed(reason="file not found", error_kind="FileNotFoundError"),
        ModelUnloaded(reason="shutdown"),
        SchemaChanged(
            side="OUTPUT",  # type: ignore[arg-type]
            new_fingerprint=OUTPUT.fingerprint,
            new_schema=OUTPUT,
            previous_fingerprint=INPUT.fingerprint,
            compatibility="NONE",  # type: ignore[arg-type]
        ),
        scoring_stats(),
    ]


@pytest.fixture
def sample_events() -> list[ModelEvent]:
    return [ModelEvent(envelope=envelope(i + 1), payload=p) for i, p in enumerate(all_payloads())]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from tests import services

    with services.kafka() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def atlas_server(kafka_bootstrap: str) -> Iterator[services.AtlasServer]:
    """One Atlas for the whole session (a start takes about a minute): ATLAS_URL when set, else
    the project's own, consuming its own hook topic on ``kafka_bootstrap``."""
    from tests import services

    with services.atlas(kafka_bootstrap) as server:
        yield server


@pytest.fixture(scope="session")
def atlas_url(atlas_server: services.AtlasServer) -> str:
    return atlas_server.url


@pytest.fixture(scope="session")
def registry_url() -> Iterator[str]:
    from tests import services

    with services.registry() as url:
        yield url
