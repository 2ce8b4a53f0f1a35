"""Translation and coalescing, pure: events in, entities and lineage references out, no I/O."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.typedefs import load_project_typedefs
from atlas_sink.core import naming
from atlas_sink.core.coalesce import Coalesced, coalesce, refs_needing_state
from atlas_sink.core.entities import (
    MAX_WATERMARKS,
    SINK_STATE,
    Entity,
    EntityState,
    Ref,
    Served,
    Update,
)
from atlas_sink.core.translate import (
    ATLAS_RELATIONSHIPS_WRITTEN,
    ATLAS_TYPES_WRITTEN,
    DATA_SCHEMA,
    DATASET,
    DEPLOYMENT,
    FS_PATH,
    HDFS_PATH,
    KAFKA_TOPIC,
    MODEL,
    MODEL_VERSION,
    MUTABLE_TYPES,
    S3_BUCKET,
    S3_OBJECT,
    SCHEMA_CHANGE,
    SERVING_STATS,
    TRAINING,
    ClassificationRule,
    Rules,
    micros,
    translate,
)
from capture.dataschema import data_schema
from capture.events import (
    DataSchema,
    DataSource,
    FeatureSummary,
    FieldSpec,
    ModelEvent,
    ModelLoadFailed,
    ModelUnloaded,
    Payload,
    SchemaChanged,
    ScoringStats,
    Training,
)
from capture.stats import SignedSketch
from tests.conftest import INPUT, OUTPUT, T0, envelope, model_loaded, scoring_stats

REPO = Path(__file__).resolve().parents[1]
TYPEDEFS = REPO / "deploy" / "atlas" / "servemeta_typedefs.json"

VERSION = Ref(MODEL_VERSION, "wine.1@local")
MODEL_REF = Ref(MODEL, "wine@local")
DEPLOY = Ref(DEPLOYMENT, "wine-scorer.wine@local")
# The live figures of version 1 on that deployment.
STATS = Ref(SERVING_STATS, "wine-scorer.wine.1.stats@local")
# All a scoring window writes of the deployment: what its qualified name and the event's
# deployment say, so the figures can refer to it. No state: the update is not keyed.
# What a window writes on its deployment: only what the deployment's qualifiedName fixes.
DEPLOY_IDENTITY = {
    "name": "wine-scorer serving wine",
    "serverName": "wine-scorer",
    "cluster": "local",
    "modelName": "wine",
}
TRAIN = Ref(TRAINING, "wine.1.training@local")
SOURCE = Ref(FS_PATH, "file:///data/wine.csv@local")
REQUESTS = Ref(KAFKA_TOPIC, "wine-requests@local")
SCORES = Ref(KAFKA_TOPIC, "wine-scores@local")
INPUT_SCHEMA = Ref(DATA_SCHEMA, naming.data_schema(INPUT.fingerprint, "local"))
OUTPUT_SCHEMA = Ref(DATA_SCHEMA, naming.data_schema(OUTPUT.fingerprint, "local"))
SOURCE_SCHEMA = Ref(
    DATA_SCHEMA, naming.source_schema(INPUT.fingerprint, SOURCE.qualified_name, "local")
)

NO_RULES = Rules()


def event(
    payload: Payload,
    sequence: int = 1,
    *,
    instance: str = "i1",
    model: str = "wine",
    version: str = "1",
    server: str = "wine-scorer",
    cluster: str = "local",
    at: datetime | None = None,
) -> ModelEvent:
    base = envelope(sequence, model, version)
    env = dataclasses.replace(
        base,
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{instance}/{sequence}")),
        event_time=at or base.event_time,
        producer=dataclasses.replace(base.producer, instance_id=instance),
        deployment=dataclasses.replace(base.deployment, server_name=server, cluster=cluster),
    )
    return ModelEvent(envelope=env, payload=payload)


def stats(requests: int = 10, errors: int = 1) -> ScoringStats:
    sample = scoring_stats()
    return dataclasses.replace(
        sample,
        request_count=requests,
        error_count=errors,
        errors_by_kind={"timeout": errors} if errors else {},
    )


def by_ref(updates: Iterable[Update]) -> dict[Ref, list[Update]]:
    found: dict[Ref, list[Update]] = {}
    for update in updates:
        found.setdefault(update.ref, []).append(update)
    return found


def one(updates: Iterable[Update], ref: Ref) -> Update:
    matching = by_ref(updates).get(ref, [])
    assert len(matching) == 1, f"expected one update of {ref}, got {len(matching)}"
    return matching[0]


def run(
    updates: Sequence[Update], states: dict[Ref, EntityState] | None = None
) -> tuple[Coalesced, dict[Ref, EntityState]]:
    """Coalesce one batch with the stored states fed forward, as the pipeline does."""
    states = dict(states or {})
    result = coalesce(
        updates, {r: states.get(r, EntityState()) for r in refs_needing_state(updates)}
    )
    assert result.missing_states == set()
    states.update(result.states)
    return result, states


def entities_of(result: Coalesced) -> dict[Ref, Entity]:
    return {e.ref: e for e in result.entities}


# -- every event type ------------------------------------------------------------------------


def test_model_loaded_builds_training_and_serving_lineage() -> None:
    updates = translate(event(model_loaded()), NO_RULES)
    assert set(by_ref(updates)) == {
        SOURCE,
        SOURCE_SCHEMA,
        INPUT_SCHEMA,
        OUTPUT_SCHEMA,
        VERSION,
        MODEL_REF,
        TRAIN,
        REQUESTS,
        SCORES,
        DEPLOY,
    }
    training = one(updates, TRAIN)
    assert training.references == {"inputs": [SOURCE], "outputs": [VERSION]}
    assert training.values["runId"] == "run-42"
    assert training.values["hyperParameters"] == {"n_estimators": "50"}
    assert training.key is None
    deployment = one(updates, DEPLOY)
    assert deployment.references == {"inputs": [REQUESTS, VERSION], "outputs": [SCORES]}
    # The status is derived when coalescing, from every version's newest word.
    assert "status" not in deployment.values
    assert deployment.served == Served("1", "IN_SERVICE", None, loaded=True)
    assert deployment.values["currentVersion"] == "1"
    assert deployment.values["replicas"] == 2
    version = one(updates, VERSION)
    assert version.references == {
        "model": MODEL_REF,
        "inputSchema": INPUT_SCHEMA,
        "outputSchema": OUTPUT_SCHEMA,
    }
    assert version.classifications == ("Confidential",)
    values = version.values
    assert (values["modelName"], values["version"], values["status"]) == ("wine", "1", "LOADED")
    assert (values["framework"], values["frameworkVersion"]) == ("sklearn", "1.5.0")
    assert values["algorithm"] == "RandomForestClassifier"
    assert values["artifactUri"] == "s3://models/wine/1/model.pkl"
    assert (values["artifactEncryption"], values["accessMode"]) == ("ENCRYPTED_AT_REST", "private")
    assert values["metrics"] == {"test.accuracy": 0.97}
    assert values["trainingRunId"] == "run-42"
    assert (values["owner"], values["tags"], values["properties"]) == (
        "data-science",
        ["demo"],
        {"team": "ml"},
    )
    assert one(updates, MODEL_REF).values == {
        "name": "wine",
        "latestVersion": "1",
        "owner": "data-science",
    }
    # The source has its own copy of the schema, even when the model's input schema is the same:
    # one schema shared by two data sets would have two contending `describes` links.
    assert one(updates, SOURCE_SCHEMA).references == {"describes": [SOURCE]}
    assert one(updates, SOURCE_SCHEMA).values["fingerprint"] == INPUT.fingerprint
    assert one(updates, INPUT_SCHEMA).references == {}
    assert one(updates, SOURCE).values == {
        "name": "wine.csv",
        "path": "/data/wine.csv",
        "description": "training source wine",
    }
    assert {u.ref for u in updates if u.key is not None} == {VERSION, MODEL_REF, DEPLOY}


def test_model_loaded_marks_the_replaced_version() -> None:
    updates = translate(event(model_loaded("2", replaces="1"), version="2"), NO_RULES)
    old = one(updates, VERSION)
    assert old.values == {
        "name": "wine 1",
        "modelName": "wine",
        "version": "1",
        "status": "REPLACED",
        "statusReason": "replaced by version 2",
    }
    assert one(updates, Ref(MODEL_VERSION, "wine.2@local")).values["status"] == "LOADED"
    assert one(updates, DEPLOY).references["inputs"] == [
        REQUESTS,
        Ref(MODEL_VERSION, "wine.2@local"),
    ]


def test_model_load_failed_marks_version_and_deployment_failed() -> None:
    failed = ModelLoadFailed(
        reason="file not found", error_kind="FileNotFoundError", artifact_uri="s3://m/w/1"
    )
    updates = translate(event(failed), NO_RULES)
    assert set(by_ref(updates)) == {VERSION, MODEL_REF, DEPLOY}
    version = one(updates, VERSION)
    assert version.values["status"] == "FAILED"
    assert version.values["statusReason"] == "FileNotFoundError: file not found"
    assert version.values["artifactUri"] == "s3://m/w/1"
    assert one(updates, DEPLOY).served == Served(
        "1", "FAILED", "FileNotFoundError: file not found", loaded=False
    )


def test_model_unloaded_stops_the_deployment() -> None:
    updates = translate(event(ModelUnloaded(reason="shutdown")), NO_RULES)
    assert set(by_ref(updates)) == {VERSION, DEPLOY}
    assert one(updates, VERSION).values["status"] == "UNLOADED"
    assert one(updates, DEPLOY).served == Served("1", "STOPPED", "shutdown", loaded=False)


def test_schema_changed_records_the_change_and_the_new_schema() -> None:
    changed = SchemaChanged(
        side="OUTPUT",  # type: ignore[arg-type]
        new_fingerprint=OUTPUT.fingerprint,
        new_schema=OUTPUT,
        previous_fingerprint=INPUT.fingerprint,
        compatibility="NONE",  # type: ignore[arg-type]
    )
    at = T0 + timedelta(seconds=7)
    updates = translate(event(changed, 7), NO_RULES)
    change = Ref(SCHEMA_CHANGE, naming.schema_change("wine", "1", "output", micros(at), "local"))
    assert set(by_ref(updates)) == {OUTPUT_SCHEMA, VERSION, change}
    assert one(updates, VERSION).references == {"outputSchema": OUTPUT_SCHEMA, "model": MODEL_REF}
    record = one(updates, change)
    assert record.references == {"modelVersion": VERSION, "newSchema": OUTPUT_SCHEMA}
    assert record.values == {
        "name": "output schema of wine 1 changed",
        "side": "OUTPUT",
        "previousFingerprint": INPUT.fingerprint,
        "newFingerprint": OUTPUT.fingerprint,
        # Without the previous schema the sink cannot judge; the claim is kept beside.
        "compatibility": "UNKNOWN",
        "claimedCompatibility": "NONE",
        "changedAt": micros(at) // 1000,
    }
    assert one(updates, OUTPUT_SCHEMA).values["fields"] == [
        {
            "name": "cultivar",
            "type": "long",
            "nullable": False,
            "doc": "predicted class",
            "classifications": [],
        }
    ]


@pytest.mark.parametrize(
    ("claimed", "previous", "new", "judged"),
    [
        # A new required field: old data lacks it, so only old readers read new data.
        (
            "FULL",
            OUTPUT,
            data_schema([*OUTPUT.fields, FieldSpec(name="p", type="double")]),
            "FORWARD",
        ),
        # A new optional field reads both ways.
        (
            "NONE",
            OUTPUT,
            data_schema([*OUTPUT.fields, FieldSpec(name="p", type="double", nullable=True)]),
            "FULL",
        ),
        # int -> long is a promotion for new readers only.
        (
            "FULL",
            data_schema([FieldSpec(name="n", type="int")]),
            data_schema([FieldSpec(name="n", type="long")]),
            "BACKWARD",
        ),
        ("UNKNOWN", INPUT, OUTPUT, "NONE"),
    ],
)
def test_the_sink_judges_compatibility_itself_and_keeps_the_claim_beside(
    claimed: str, previous: DataSchema, new: DataSchema, judged: str
) -> None:
    changed = SchemaChanged(
        side="OUTPUT",  # type: ignore[arg-type]
        new_fingerprint=new.fingerprint,
        new_schema=new,
        previous_fingerprint=previous.fingerprint,
        compatibility=claimed,  # type: ignore[arg-type]
        previous_schema=previous,
    )
    (record,) = [u for u in translate(event(changed, 7), NO_RULES) if u.type_name == SCHEMA_CHANGE]
    assert (record.values["compatibility"], record.values["claimedCompatibility"]) == (
        judged,
        claimed,
    )


def test_scoring_stats_update_the_version_s_live_figures_and_only_name_the_deployment() -> None:
    sample = scoring_stats()
    updates = translate(event(sample, 5), NO_RULES)
    assert set(by_ref(updates)) == {DEPLOY, STATS}
    # The deployment only has to exist for the figures to refer to: its identity, unkeyed (no
    # state, no dedup), and no figures of its own. A first window makes a valid one alone.
    deployment = one(updates, DEPLOY)
    assert (deployment.key, deployment.values) == (None, DEPLOY_IDENTITY)
    assert (deployment.references, deployment.served, deployment.stats) == ({}, None, None)
    # The window: the version's latest, and merged into its live figures once per event.
    live = one(updates, STATS)
    assert live.key == (micros(T0 + timedelta(seconds=5)), "i1/wine", 5)
    window = live.values["latestWindow"]
    assert (window["requests"], window["errors"]) == (10, 1)
    latency = (
        window["latencyMinSeconds"],
        window["latencyMaxSeconds"],
        window["latencyP99Seconds"],
    )
    assert latency == (0.001, 0.02, 0.02)
    assert window["errorsByKind"] == {"timeout": 1}
    assert window["start"] == micros(T0) // 1000
    assert window["end"] == micros(T0 + timedelta(seconds=60)) // 1000
    assert window["modelVersion"] == "1"
    assert live.values == {
        "name": "wine 1 on wine-scorer",
        "modelName": "wine",
        "version": "1",
        "serverName": "wine-scorer",
        "latestWindow": window,
    }
    assert live.references == {"deployment": DEPLOY}
    assert live.stats is not None
    assert (live.stats.window, live.stats.training) == (sample, None)
    assert (live.stats.instance, live.stats.host) == ("i1", "h1")
    assert live.stats.policy == NO_RULES.stats


# -- naming and data set types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "type_name", "qualified_name", "values"),
    [
        (
            "kafka://Wine-Requests",
            KAFKA_TOPIC,
            "wine-requests@prod",
            {"name": "Wine-Requests", "topic": "Wine-Requests", "uri": "kafka://Wine-Requests"},
        ),
        (
            "kafka://broker:9092/Scores",
            KAFKA_TOPIC,
            "scores@prod",
            {"name": "Scores", "topic": "Scores", "uri": "kafka://broker:9092/Scores"},
        ),
        (
            "s3://bucket/path/data.parquet",
            S3_OBJECT,
            "s3://bucket/path/data.parquet@prod",
            {"name": "data.parquet", "bucketName": "bucket"},
        ),
        (
            "s3a://bucket/k.csv",
            S3_OBJECT,
            "s3a://bucket/k.csv@prod",
            {"name": "k.csv", "bucketName": "bucket"},
        ),
        (
            "file:///data/wine.csv",
            FS_PATH,
            "file:///data/wine.csv@prod",
            {"name": "wine.csv", "path": "/data/wine.csv"},
        ),
        (
            "/data/plain.csv",
            FS_PATH,
            "/data/plain.csv@prod",
            {"name": "plain.csv", "path": "/data/plain.csv"},
        ),
        (
            "hdfs://nn:8020/warehouse/t",
            HDFS_PATH,
            "hdfs://nn:8020/warehouse/t@prod",
            {"name": "t", "path": "hdfs://nn:8020/warehouse/t", "clusterName": "prod"},
        ),
        (
            "https://api.example.com/v1/score",
            DATASET,
            "https://api.example.com/v1/score@prod",
            {
                "name": "https://api.example.com/v1/score",
                "uri": "https://api.example.com/v1/score",
                "scheme": "https",
            },
        ),
    ],
)
def test_data_set_uris_map_to_atlas_types(
    uri: str, type_name: str, qualified_name: str, values: dict[str, Any]
) -> None:
    loaded = dataclasses.replace(model_loaded(), training=Training(), inputs=[uri], outputs=[])
    updates = translate(event(loaded, cluster="prod"), NO_RULES)
    ref = Ref(type_name, qualified_name)
    assert one(updates, ref).values == values
    assert one(updates, Ref(DEPLOYMENT, "wine-scorer.wine@prod")).references["inputs"] == [
        ref,
        Ref(MODEL_VERSION, "wine.1@prod"),
    ]


def test_kafka_namespace_rule_names_topics_in_atlas_kafka_namespace() -> None:
    updates = translate(event(model_loaded()), Rules(kafka_namespace="kafka-east"))
    assert Ref(KAFKA_TOPIC, "wine-requests@kafka-east") in by_ref(updates)
    assert Ref(KAFKA_TOPIC, "wine-scores@kafka-east") in by_ref(updates)
    # Everything else keeps the deployment's cluster.
    assert VERSION in by_ref(updates)


def test_names_with_separators_stay_distinct_and_reversible() -> None:
    first = naming.model_version("a.b", "1", "c")
    second = naming.model_version("a", "b.1", "c")
    assert first != second
    assert naming.split(first) == (["a.b", "1"], "c")
    assert naming.split(second) == (["a", "b.1"], "c")


# -- classification rules --------------------------------------------------------------------


def test_classification_rules_match_data_set_uris_and_field_names() -> None:
    rules = Rules(
        (
            ClassificationRule("PII", dataset_pattern=re.compile(r"^file:.*/wine\.csv$")),
            ClassificationRule("Sensitive", field_pattern=re.compile(r"(?i)^alcohol$")),
            ClassificationRule("Public", dataset_pattern=re.compile(r"^kafka://wine-scores$")),
        )
    )
    doc_schema = data_schema([FieldSpec(name="email", type="string", classifications=["PII"])])
    loaded = dataclasses.replace(
        model_loaded(),
        training=Training(
            sources=[
                DataSource(uri="file:///data/wine.csv", name="wine", schema=INPUT),
                DataSource(uri="s3://crm/customers.parquet", schema=doc_schema),
            ]
        ),
    )
    updates = translate(event(loaded), rules)
    classified = {
        ref: sorted({c for u in group for c in u.classifications})
        for ref, group in by_ref(updates).items()
    }
    crm = "s3://crm/customers.parquet@local"
    doc_ref = Ref(DATA_SCHEMA, naming.source_schema(doc_schema.fingerprint, crm, "local"))
    # A source's data set also takes its fields' classifications, to carry them downstream.
    assert classified == {
        SOURCE: ["PII", "Sensitive"],
        Ref(S3_OBJECT, crm): ["PII"],
        Ref(S3_BUCKET, "s3://crm@local"): [],
        SOURCE_SCHEMA: ["Sensitive"],
        INPUT_SCHEMA: ["Sensitive"],
        doc_ref: ["PII"],
        OUTPUT_SCHEMA: [],
        VERSION: ["Confidential"],
        MODEL_REF: [],
        TRAIN: [],
        REQUESTS: [],
        SCORES: ["Public"],
        DEPLOY: [],
    }
    fields = by_ref(updates)[INPUT_SCHEMA][0].values["fields"]
    assert [(f["name"], f["classifications"]) for f in fields] == [
        ("alcohol", ["Sensitive"]),
        ("color_intensity", []),
    ]


# -- duplicates, order, live figures ---------------------------------------------------------


def test_the_same_event_twice_in_one_batch_changes_nothing() -> None:
    loaded = event(model_loaded())
    once, _ = run(translate(loaded, NO_RULES))
    twice, _ = run(translate(loaded, NO_RULES) + translate(loaded, NO_RULES))
    assert twice.duplicates == 3  # model, version, deployment
    assert entities_of(twice) == entities_of(once)


def test_a_redelivered_batch_changes_no_mutable_entity() -> None:
    updates = translate(event(model_loaded()), NO_RULES) + translate(event(stats(), 2), NO_RULES)
    first, states = run(updates)
    again, after = run(updates, states)
    # Model, version, deployment; the serving stats (the window's deployment update is unkeyed).
    assert again.duplicates == 4
    assert after == states
    assert STATS not in entities_of(again)
    # The window names the deployment again (its identity-only update): any write of a mutable
    # entity holds only what the first run wrote of it.
    written = entities_of(first)
    for entity in again.entities:
        if entity.type_name in MUTABLE_TYPES:
            assert entity.attributes.items() <= written[entity.ref].attributes.items()
            assert entity.references.items() <= written[entity.ref].references.items()
    # Immutable entities are rewritten unchanged: harmless upserts.
    assert {e.ref: e for e in again.entities if e.type_name not in MUTABLE_TYPES} == {
        r: e for r, e in written.items() if r.type_name not in MUTABLE_TYPES
    }


def test_same_producer_and_sequence_is_a_duplicate_whatever_its_content() -> None:
    _, states = run(translate(event(stats(10, 1), 3), NO_RULES))
    resent = event(stats(99, 9), 3)
    result, after = run(translate(resent, NO_RULES), states)
    assert result.duplicates == 1  # the serving stats; the deployment's update is not keyed
    # Nothing applied: the figures are not written, the deployment only named again.
    assert [(e.ref, e.attributes) for e in result.entities] == [(DEPLOY, DEPLOY_IDENTITY)]
    assert after == states
    live = after[STATS].stats
    assert live is not None
    assert (live.lifetime.requests, live.lifetime.errors, live.windows) == (10, 1, 1)


def _store_after(batches: Iterable[Sequence[ModelEvent]]) -> dict[Ref, dict[str, Any]]:
    states: dict[Ref, EntityState] = {}
    store: dict[Ref, dict[str, Any]] = {}
    for batch in batches:
        result, states = run([u for e in batch for u in translate(e, NO_RULES)], states)
        for entity in result.entities:
            store.setdefault(entity.ref, {}).update(entity.attributes)
    return store


def test_an_older_event_never_overwrites_newer_values() -> None:
    newer = event(ModelUnloaded(reason="shutdown"), 1, instance="i2", at=T0 + timedelta(seconds=10))
    older = event(model_loaded(), 1, instance="i1", at=T0 + timedelta(seconds=5))
    for batches in ([[newer, older]], [[newer], [older]]):
        store = _store_after(batches)
        deployment = store[DEPLOY]
        assert (deployment["status"], deployment["statusReason"]) == ("STOPPED", "shutdown")
        # Values the newer event did not carry still come from the older one.
        assert (deployment["currentVersion"], deployment["host"]) == ("1", "h1")
        state = json.loads(deployment[SINK_STATE])
        assert state["lastEventTime"] == micros(T0 + timedelta(seconds=10))
        assert state["lastEventId"] == newer.envelope.event_id
        assert store[VERSION]["status"] == "UNLOADED"
        assert store[VERSION]["framework"] == "sklearn"
        marks = EntityState.from_attributes(deployment).applied_sequences
        assert marks == {"i1/wine": ((1, 1),), "i2/wine": ((1, 1),)}
        assert state["attributeTimes"]["host"] == micros(T0 + timedelta(seconds=5))
        assert deployment["statusSince"] == micros(T0 + timedelta(seconds=10)) // 1000


def test_a_deployment_status_follows_the_version_it_serves_in_any_arrival_order() -> None:
    def at(seconds: int) -> datetime:
        return T0 + timedelta(seconds=seconds)

    load_1 = event(model_loaded(), 1, at=at(1))
    load_2 = event(
        dataclasses.replace(model_loaded(), replaces_version="1"), 2, version="2", at=at(2)
    )
    unload_1 = event(ModelUnloaded(reason="replaced"), 3, at=at(3))
    fail_3 = event(
        ModelLoadFailed(reason="corrupt", error_kind="ValueError"), 4, version="3", at=at(4)
    )
    for order in itertools.permutations([load_1, load_2, unload_1, fail_3]):
        for batches in ([order], [[e] for e in order]):
            deployment = _store_after(batches)[DEPLOY]
            assert (deployment["status"], deployment["currentVersion"]) == ("IN_SERVICE", "2")
            assert deployment["statusSince"] == micros(at(2)) // 1000
            served = {v: r.split()[0] for v, r in deployment["servedVersions"].items()}
            assert served == {"1": "STOPPED", "2": "IN_SERVICE", "3": "FAILED"}
    # Unloading the version it serves does stop it.
    unload_2 = event(ModelUnloaded(reason="shutdown"), 5, version="2", at=at(5))
    deployment = _store_after([[unload_2], [fail_3, load_2, load_1]])[DEPLOY]
    assert (deployment["status"], deployment["statusReason"]) == ("STOPPED", "shutdown")


def test_a_first_load_that_fails_marks_the_deployment_failed() -> None:
    failed = event(ModelLoadFailed(reason="no file", error_kind="OSError"))
    deployment = _store_after([[failed]])[DEPLOY]
    assert (deployment["status"], deployment["statusReason"]) == ("FAILED", "OSError: no file")
    assert "currentVersion" not in deployment


def test_a_late_stats_window_adds_to_the_lifetime_but_not_to_the_latest_window() -> None:
    newer = event(stats(40, 4), 1, instance="i2", at=T0 + timedelta(seconds=120))
    late = event(stats(10, 1), 1, instance="i1", at=T0 + timedelta(seconds=60))
    result, _ = run(translate(newer, NO_RULES) + translate(late, NO_RULES))
    live = entities_of(result)[STATS].attributes
    window = live["latestWindow"]
    assert (window["requests"], window["errors"]) == (40, 4)
    lifetime = live["lifetime"]
    assert (lifetime["requests"], lifetime["errors"], lifetime["windows"]) == (50, 5, 2)


def test_windows_add_to_the_lifetime_once_per_event_and_redelivery_adds_nothing() -> None:
    first, second = event(stats(10, 1), 1), event(stats(30, 2), 2)
    result, states = run(translate(first, NO_RULES) + translate(second, NO_RULES))
    live = entities_of(result)[STATS].attributes
    assert (live["lifetime"]["requests"], live["lifetime"]["errors"]) == (40, 3)
    assert live["latestWindow"]["requests"] == 30
    # The deployment keeps no figures, and no state: nothing of a window is applied to it.
    assert entities_of(result)[DEPLOY].attributes == DEPLOY_IDENTITY
    assert DEPLOY not in states
    # Redelivered after a crash, alongside one new window.
    third = event(stats(5, 0), 3)
    updates = [u for e in (first, second, third) for u in translate(e, NO_RULES)]
    result, states = run(updates, states)
    assert result.duplicates == 2  # two windows, each to the serving stats
    live = entities_of(result)[STATS].attributes
    assert live["lifetime"]["requests"] == 45
    assert (live["lifetime"]["errors"], live["lifetime"]["windows"]) == (3, 3)
    assert live["latestWindow"]["requests"] == 5
    # The stored attributes restore exactly the state that guards the next batch.
    restored_live, kept_live = EntityState.from_attributes(live), states[STATS]
    # Merged sketches compare by what they hold (their state), not as objects.
    assert restored_live.stats is not None and kept_live.stats is not None
    assert restored_live.stats.to_state() == kept_live.stats.to_state()
    assert dataclasses.replace(restored_live, stats=None) == dataclasses.replace(
        kept_live, stats=None
    )


def test_an_event_arriving_after_a_higher_sequence_is_applied_once() -> None:
    """A producer that reorders (a retried batch, another emitter implementation): sequence 2
    after 3 is a distinct event, applied once and counted once, across a restart too."""
    first, second, third = (event(stats(10 * n, n), n) for n in (1, 2, 3))
    result, _ = run(translate(first, NO_RULES) + translate(third, NO_RULES))
    assert result.duplicates == 0
    written = entities_of(result)
    # A restarted sink.
    restored = {STATS: EntityState.from_attributes(written[STATS].attributes)}
    assert restored[STATS].applied_sequences == {"i1/wine": ((1, 1), (3, 3))}
    late, _ = run(translate(second, NO_RULES), restored)
    assert late.duplicates == 0
    live = entities_of(late)[STATS].attributes
    assert (live["lifetime"]["requests"], live["lifetime"]["errors"]) == (60, 6)
    assert live["lifetime"]["windows"] == 3
    # Older than the newest window applied: its window is not the latest, so not written.
    assert "latestWindow" not in live
    again, _ = run(
        translate(second, NO_RULES),
        {ref: EntityState.from_attributes(e.attributes) for ref, e in entities_of(late).items()},
    )
    assert again.duplicates == 1  # the serving stats; the deployment's update is not keyed
    assert [(e.ref, e.attributes) for e in again.entities] == [(DEPLOY, DEPLOY_IDENTITY)]


def test_the_newest_producer_keeps_its_watermark_when_old_ones_are_dropped() -> None:
    stored = EntityState(
        applied_sequences={f"gone-{n}/wine": ((1, 1000 + n),) for n in range(MAX_WATERMARKS)},
    )
    window = event(stats(10, 1), 1, instance="new-pod")
    written = coalesce(translate(window, NO_RULES), {STATS: stored}).entities
    assert [e.ref for e in written] == [DEPLOY, STATS]
    # After a restart the state comes back from what was written; the window is redelivered.
    restored = {STATS: EntityState.from_attributes({e.ref: e for e in written}[STATS].attributes)}
    assert len(restored[STATS].applied_sequences) == MAX_WATERMARKS
    assert restored[STATS].applied_sequences["new-pod/wine"] == ((1, 1),)
    again = coalesce(translate(window, NO_RULES), restored)
    assert again.duplicates == 1  # the serving stats; the deployment's update is not keyed
    assert [(e.ref, e.attributes) for e in again.entities] == [(DEPLOY, DEPLOY_IDENTITY)]


def test_thousand_stats_events_for_ten_deployments_coalesce_to_ten_entities() -> None:
    """Ten deployments and the live figures of the version each serves."""
    events = [
        event(stats(10, 1), sequence, instance=f"pod-{server}", server=f"scorer-{server}")
        for sequence in range(1, 101)
        for server in range(10)
    ]
    result, _ = run([u for e in events for u in translate(e, NO_RULES)])
    assert (result.updates, result.duplicates, len(result.entities)) == (2000, 0, 20)
    deployments = [e for e in result.entities if e.type_name == DEPLOYMENT]
    live = [e for e in result.entities if e.type_name == SERVING_STATS]
    assert sorted(e.qualified_name for e in deployments) == [
        f"scorer-{n}.wine@local" for n in range(10)
    ]
    assert sorted(e.qualified_name for e in live) == [
        f"scorer-{n}.wine.1.stats@local" for n in range(10)
    ]
    for entity in deployments:
        # Named, with no figures and no state of their own.
        server_name = entity.attributes["serverName"]
        assert entity.attributes == {
            **DEPLOY_IDENTITY,
            "name": f"{server_name} serving wine",
            "serverName": server_name,
        }
    for entity in live:
        lifetime = entity.attributes["lifetime"]
        assert (lifetime["requests"], lifetime["errors"], lifetime["windows"]) == (1000, 100, 100)
        assert entity.attributes["latestWindow"]["requests"] == 10
        assert entity.references == {
            "deployment": Ref(DEPLOYMENT, f"{entity.attributes['serverName']}.wine@local")
        }
        server = entity.qualified_name.split(".")[0].removeprefix("scorer-")
        marks = EntityState.from_attributes(entity.attributes).applied_sequences
        assert marks == {f"pod-{server}/wine": ((1, 100),)}


# -- batch boundaries do not matter ----------------------------------------------------------


def _random_stream(rng: random.Random, length: int) -> list[ModelEvent]:
    """Three replicas of one server serving two models; their clocks disagree, so arrival
    order is not event-time order, and some events are redelivered later."""
    offsets = {"i1": 0, "i2": -90_000_000, "i3": 45_000_000}  # microseconds
    clocks = dict.fromkeys(offsets, 0)
    sequences = dict.fromkeys(offsets, 0)
    stream: list[ModelEvent] = []
    while len(stream) < length:
        if stream and rng.random() < 0.1:
            stream.append(rng.choice(stream))
            continue
        instance = rng.choice(sorted(offsets))
        sequences[instance] += 1
        clocks[instance] += rng.randint(1, 5_000_000)
        at = T0 + timedelta(microseconds=offsets[instance] + clocks[instance])
        model = rng.choice(["wine", "beer"])
        version = rng.choice(["1", "2"])
        kind = rng.random()
        payload: Payload
        if kind < 0.55:
            requests = rng.randint(0, 50)
            payload = stats(requests, rng.randint(0, min(requests, 3)))
        elif kind < 0.75:
            payload = model_loaded(version, replaces=rng.choice([None, "1"]))
        elif kind < 0.85:
            payload = ModelUnloaded(reason=rng.choice(["shutdown", "replaced"]))
        elif kind < 0.9:
            payload = ModelLoadFailed(reason="oom", error_kind="MemoryError")
        else:
            new = rng.choice([INPUT, OUTPUT])
            payload = SchemaChanged(
                side=rng.choice(["INPUT", "OUTPUT"]),  # type: ignore[arg-type]
                new_fingerprint=new.fingerprint,
                new_schema=new,
            )
        stream.append(
            event(
                payload, sequences[instance], instance=instance, model=model, version=version, at=at
            )
        )
    return stream


def _replay(
    stream: Sequence[ModelEvent], sizes: Iterable[int], rules: Rules
) -> dict[Ref, tuple[dict[str, Any], dict[str, Any], list[str]]]:
    """Feed the stream in batches of the given sizes; upsert each batch's entities as a
    target does (attributes present overwrite, classifications accumulate)."""
    states: dict[Ref, EntityState] = {}
    store: dict[Ref, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
    start = 0
    for size in sizes:
        batch = stream[start : start + size]
        start += size
        result, states = run([u for e in batch for u in translate(e, rules)], states)
        for entity in result.entities:
            attributes, references, classifications = store.setdefault(entity.ref, ({}, {}, []))
            attributes.update(entity.attributes)
            references.update(entity.references)
            classifications[:] = sorted({*classifications, *entity.classifications})
    assert start >= len(stream)
    return store


def _cuts(rng: random.Random, total: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.randint(1, 40))
    return sizes


def test_any_batch_split_of_a_stream_yields_the_same_entities() -> None:
    rng = random.Random(20261128)
    stream = _random_stream(rng, 400)
    rules = Rules((ClassificationRule("PII", dataset_pattern=re.compile(r"wine\.csv$")),))
    whole = _replay(stream, [len(stream)], rules)
    for sizes in ([1] * len(stream), [7] * 58, [100] * 4, _cuts(rng, 400), _cuts(rng, 400)):
        assert _replay(stream, sizes, rules) == whole
    # The result is right, not merely stable: each version's live figures count each distinct
    # window of it once, and show its newest window; a deployment's totals are their sums.
    unique = {(e.envelope.producer.instance_id, e.envelope.sequence): e for e in stream}
    for model in ("wine", "beer"):
        windows = [
            e
            for e in unique.values()
            if isinstance(e.payload, ScoringStats) and e.envelope.model.name == model
        ]
        assert len(windows) > 20
        deployment = whole[Ref(DEPLOYMENT, f"wine-scorer.{model}@local")][0]
        assert not {"latestWindow", "lifetimeTotals"} & set(deployment)
        total = 0
        for version in ("1", "2"):
            of_version = [e for e in windows if e.envelope.model.version == version]
            assert of_version
            qualified_name = naming.serving_stats("wine-scorer", model, version, "local")
            live = whole[Ref(SERVING_STATS, qualified_name)][0]
            assert live["lifetime"]["requests"] == sum(
                e.payload.request_count for e in of_version if isinstance(e.payload, ScoringStats)
            )
            assert live["lifetime"]["windows"] == len(of_version)
            total += live["lifetime"]["requests"]
            newest = max(of_version, key=lambda e: e.envelope.event_time)
            assert isinstance(newest.payload, ScoringStats)
            assert live["latestWindow"]["requests"] == newest.payload.request_count
        assert total == sum(
            e.payload.request_count for e in windows if isinstance(e.payload, ScoringStats)
        )
    assert whole[SOURCE][2] == ["PII"]


# -- translation and type definitions stay in step -----------------------------------------


class _Registry:
    """Entity types' super types, attribute names (relationship ends included), required
    attribute names and struct fields, read from Atlas type definition files."""

    def __init__(self) -> None:
        self.supers: dict[str, tuple[str, ...]] = {}
        self.names: dict[str, set[str]] = {}
        self.required: dict[str, set[str]] = {}
        self.structs: dict[str, dict[str, bool]] = {}

    def load(self, defs: Mapping[str, Any]) -> None:
        for definition in defs.get("entityDefs", []):
            name = definition["name"]
            self.supers[name] = tuple(definition.get("superTypes") or ())
            attributes = definition.get("attributeDefs") or []
            self.names.setdefault(name, set()).update(a["name"] for a in attributes)
            self.required.setdefault(name, set()).update(
                a["name"] for a in attributes if not a.get("isOptional", True)
            )
        for definition in defs.get("structDefs", []):
            self.structs[definition["name"]] = {
                a["name"]: bool(a.get("isOptional", True)) for a in definition["attributeDefs"]
            }
        for relationship in defs.get("relationshipDefs", []):
            for end in ("endDef1", "endDef2"):
                self.names.setdefault(relationship[end]["type"], set()).add(
                    relationship[end]["name"]
                )

    def closure(self, type_name: str) -> list[str]:
        seen: list[str] = []
        todo = [type_name]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.append(name)
                todo.extend(self.supers.get(name, ()))
        return seen

    def declared(self, type_name: str) -> set[str]:
        return {n for t in self.closure(type_name) for n in self.names.get(t, ())}

    def required_names(self, type_name: str) -> set[str]:
        return {n for t in self.closure(type_name) for n in self.required.get(t, ())}


def _builtin_registry() -> _Registry:
    """Atlas's own types, as deploy/atlas/builtin defines them."""
    registry = _Registry()
    registry.load(builtin_typedefs())
    return registry


def _servemeta_registry() -> _Registry:
    """What an Atlas holds once the sink registered the project's types."""
    registry = _builtin_registry()
    registry.load(load_project_typedefs(TYPEDEFS))
    return registry


def _feature(values: Sequence[float]) -> FeatureSummary:
    sketch = SignedSketch(0.01)
    for value in values:
        sketch.add(value)
    return FeatureSummary(
        name="alcohol",
        count=len(values),
        min=min(values),
        max=max(values),
        mean=sum(values) / len(values),
        distribution=sketch.to_event(),
    )


def _every_kind_of_event() -> list[ModelEvent]:
    loaded = dataclasses.replace(
        model_loaded(),
        # With a training profile, and a window with its feature below: the serving stats
        # entity writes its drift figures too.
        training_profile=[_feature([11.0 + k / 25 for k in range(100)])],
        training=Training(
            sources=[
                DataSource(uri="file:///data/wine.csv", name="wine", schema=INPUT),
                DataSource(uri="hdfs://nn:8020/warehouse/wine"),
                DataSource(uri="https://api.example.com/wine"),
                # Named sources of every other kind: a name becomes the data set's description.
                DataSource(uri="hdfs://nn:8020/warehouse/grapes", name="grapes"),
                DataSource(uri="https://api.example.com/vintages", name="vintages"),
                DataSource(uri="kafka://wine-history", name="history"),
                DataSource(uri="s3://bucket/train/wine.parquet", name="wine-s3"),
            ],
            run_id="run-42",
        ),
        inputs=["kafka://wine-requests", "s3://bucket/requests/"],
        outputs=["kafka://wine-scores", "s3://bucket/scores/part-0.parquet"],
    )
    changed = SchemaChanged(
        side="INPUT",  # type: ignore[arg-type]
        new_fingerprint=OUTPUT.fingerprint,
        new_schema=OUTPUT,
    )
    payloads: list[Payload] = [
        loaded,
        model_loaded("2", replaces="1"),
        ModelLoadFailed(reason="oom", error_kind="MemoryError", artifact_uri="s3://m/w"),
        ModelUnloaded(reason="shutdown"),
        changed,
        dataclasses.replace(stats(), features=[_feature([14.5] * 10)]),
    ]
    return [event(p, n) for n, p in enumerate(payloads, start=1)]


def _emitted() -> dict[str, tuple[set[str], set[str]]]:
    """Per entity type, the attribute and reference names a coalesced batch writes."""
    updates = [u for e in _every_kind_of_event() for u in translate(e, NO_RULES)]
    result, _ = run(updates)
    emitted: dict[str, tuple[set[str], set[str]]] = {}
    for entity in result.entities:
        attributes, references = emitted.setdefault(entity.type_name, (set(), set()))
        attributes.update(entity.attributes)
        references.update(entity.references)
    return emitted


def test_the_sample_covers_every_entity_type_translate_writes() -> None:
    assert set(_emitted()) == {
        MODEL,
        MODEL_VERSION,
        TRAINING,
        DEPLOYMENT,
        SERVING_STATS,
        DATA_SCHEMA,
        SCHEMA_CHANGE,
        DATASET,
        KAFKA_TOPIC,
        FS_PATH,
        HDFS_PATH,
        S3_OBJECT,
        S3_BUCKET,
    }
    attributes, references = _emitted()[SERVING_STATS]
    assert {
        "latestWindow",
        "lifetime",
        "replicas",
        "rollups",
        "features",
        "driftVerdict",
        "driftedFeatures",
    } <= attributes
    assert references == {"deployment"}
    # The figures are the version's: the deployment is written none (type version 2.1).
    assert not {"latestWindow", "lifetimeTotals"} & _emitted()[DEPLOYMENT][0]


def test_servemeta_typedefs_declare_every_name_translate_writes() -> None:
    own = _Registry()
    own.load(load_project_typedefs(TYPEDEFS))
    registry = _servemeta_registry()
    undeclared = {}
    for type_name, (attributes, references) in _emitted().items():
        if type_name not in own.supers:
            continue  # one of Atlas's own types: checked below
        missing = (attributes | references) - registry.declared(type_name)
        if missing:
            undeclared[type_name] = sorted(missing)
    assert undeclared == {}, "add these attributes to deploy/atlas/servemeta_typedefs.json"


def test_every_entity_carries_its_required_attributes_on_first_write() -> None:
    """Atlas refuses a new entity without its required attributes (404 ATLAS-404-00-007),
    so each event alone, on an empty catalog, must produce complete entities."""
    registry = _servemeta_registry()
    for sample in _every_kind_of_event():
        result, _ = run(translate(sample, NO_RULES))
        for entity in result.entities:
            if entity.type_name not in registry.supers:
                continue
            required = registry.required_names(entity.type_name) - {"qualifiedName"}
            present = set(entity.attributes) | set(entity.references)
            assert required - present == set(), (sample.kind, entity.type_name)


def test_schema_fields_match_the_servemeta_field_struct() -> None:
    registry = _servemeta_registry()
    struct = registry.structs["servemeta_field"]
    required = {name for name, optional in struct.items() if not optional}
    updates = [u for e in _every_kind_of_event() for u in translate(e, NO_RULES)]
    fields = [f for u in updates if u.type_name == DATA_SCHEMA for f in u.values["fields"]]
    assert len(fields) > 3
    for spec in fields:
        assert set(spec) <= set(struct)
        assert required <= set(spec)


def test_the_built_in_types_the_sink_checks_for_are_what_translate_writes() -> None:
    """ATLAS_TYPES_WRITTEN (what the sink requires of an Atlas before it writes) names, per
    type of Atlas's own, every attribute translate sets on it or on a project type extending
    it, and nothing the project's own definitions of those types lack."""
    own = _Registry()
    own.load(load_project_typedefs(TYPEDEFS))
    builtin = _builtin_registry()
    needed: dict[str, set[str]] = {}
    for type_name, (attributes, references) in _emitted().items():
        inherited = (attributes | references | {"qualifiedName"}) - own.declared(type_name)
        if type_name in builtin.supers:
            needed.setdefault(type_name, set()).update(inherited)
            continue
        # A project type: what it inherits must be in the nearest of Atlas's types above it.
        supers = [t for t in own.closure(type_name) if t in builtin.supers]
        assert supers, f"{type_name} extends none of Atlas's own types"
        needed.setdefault(supers[0], set()).update(inherited)
    assert {t: set(a) for t, a in ATLAS_TYPES_WRITTEN.items()} == needed
    for type_name, written in ATLAS_TYPES_WRITTEN.items():
        assert set(written) <= builtin.declared(type_name), type_name
    relationships = {r["name"] for r in builtin_typedefs()["relationshipDefs"]}
    assert set(ATLAS_RELATIONSHIPS_WRITTEN) <= relationships


def test_a_late_event_s_write_still_names_the_entity() -> None:
    """Atlas refuses an upsert without its mandatory name, even of an existing entity."""
    newer = event(stats(40, 4), 2, at=T0 + timedelta(seconds=120))
    late = event(stats(10, 1), 1, at=T0 + timedelta(seconds=60))
    _, states = run(translate(newer, NO_RULES))
    result, _ = run(translate(late, NO_RULES), states)
    assert entities_of(result)[DEPLOY].attributes["name"] == "wine-scorer serving wine"
    live = entities_of(result)[STATS].attributes
    assert live["name"] == "wine 1 on wine-scorer"
    assert "latestWindow" not in live  # the late window's values lose to the newer
    assert live["lifetime"]["requests"] == 50


def test_a_catalog_written_before_the_sink_state_attribute_keeps_its_guard() -> None:
    """A deployment as servemeta wrote it before type version 2.0 (its bookkeeping in separate
    attributes): the upgraded sink reads it, so a redelivered event changes nothing and a new
    one applies. Its old totals are not read: live figures are per version now (2.1)."""
    at = micros(T0 + timedelta(seconds=1))
    legacy = {
        "attributeTimes": {"host": str(at)},
        "producerWatermarks": {"i1/wine": f"1-2@{at}"},
        "lastEventTime": at,
        "lastEventId": "e-2",
        "servedVersions": {
            "1": json.dumps({"status": "IN_SERVICE", "at": at, "loadedAt": at, "reason": None})
        },
        "totalRequests": 30,
        "totalErrors": 3,
    }
    state = EntityState.from_attributes(legacy)
    assert state.applied_sequences == {"i1/wine": ((1, 2),)}
    assert (state.last_event_time, state.last_event_id, state.times) == (at, "e-2", {"host": at})
    assert state.current_version() == "1"
    # The deployment's guard holds: an event it applied is a duplicate, and changes nothing.
    # (Its version is a new entity to the upgraded sink, which never saw the event.)
    redelivered = event(ModelUnloaded(reason="shutdown"), 2)
    again, after = run(translate(redelivered, NO_RULES), {DEPLOY: state})
    assert again.duplicates == 1
    assert [e.ref for e in again.entities] == [VERSION]
    assert after[DEPLOY] == state
    # A new event applies, and what it writes holds no totals, old or new.
    new, after = run(
        translate(event(ModelUnloaded(reason="shutdown"), 3), NO_RULES), {DEPLOY: state}
    )
    assert new.duplicates == 0
    assert after[DEPLOY].applied_sequences == {"i1/wine": ((1, 3),)}
    deployment = entities_of(new)[DEPLOY].attributes
    assert (deployment["status"], deployment["statusReason"]) == ("STOPPED", "shutdown")
    assert not {"lifetimeTotals", "totalRequests", "totalErrors"} & set(deployment)
    # A window to the old catalog: its version's live figures, a new entity, merge it once.
    window, _ = run(translate(event(stats(10, 1), 4), NO_RULES), {DEPLOY: state})
    assert entities_of(window)[STATS].attributes["lifetime"]["requests"] == 10
    assert entities_of(window)[DEPLOY].attributes == DEPLOY_IDENTITY


def test_an_older_window_never_overwrites_a_newer_load_s_deployment_facts() -> None:
    """A window names its deployment without an event time to guard with, so it carries only
    what the deployment's qualifiedName fixes: a changed environment stays the newest one's,
    whatever order the load and an older window arrive in."""
    loaded = event(model_loaded(), 1, at=T0 + timedelta(seconds=100))
    loaded.envelope.deployment = dataclasses.replace(loaded.envelope.deployment, environment="prod")
    window = event(stats(), 2, at=T0 + timedelta(seconds=10))
    window.envelope.deployment = dataclasses.replace(
        window.envelope.deployment, environment="staging"
    )
    for order in ((loaded, window), (window, loaded)):
        result, _ = run([u for e in order for u in translate(e, NO_RULES)])
        assert entities_of(result)[DEPLOY].attributes["environment"] == "prod"
