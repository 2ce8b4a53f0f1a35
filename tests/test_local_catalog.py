"""The embedded local catalog on a real SQLite file, fed through the real pipeline."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from atlas_sink.catalog.model import Direction, LineageGraph, StoredEntity, parse_key
from atlas_sink.catalog.model import entity_key as key
from atlas_sink.core import naming
from atlas_sink.core.decode import Decoder
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.target import Rejection, Target, TargetUnavailable
from atlas_sink.core.translate import (
    DATA_SCHEMA,
    DEPLOYMENT,
    FS_PATH,
    KAFKA_TOPIC,
    MODEL,
    MODEL_VERSION,
    SCHEMA_CHANGE,
    SERVING_STATS,
    TRAINING,
    ClassificationRule,
    Rules,
    micros,
)
from atlas_sink.targets.local import EntityNotFound, LocalCatalog
from capture.dataschema import data_schema
from capture.events import ModelEvent, ModelUnloaded, Payload, ScoringStats, to_avro
from capture.framing import single_object_framer
from tests.conftest import INPUT, OUTPUT, T0, all_payloads, envelope, model_loaded, scoring_stats

TYPEDEFS = Path(__file__).resolve().parents[1] / "deploy" / "atlas" / "servemeta_typedefs.json"

VERSION = Ref(MODEL_VERSION, "wine.1@local")
DEPLOY = Ref(DEPLOYMENT, "wine-scorer.wine@local")
# The live figures of version 1 on that deployment.
STATS = Ref(SERVING_STATS, naming.serving_stats("wine-scorer", "wine", "1", "local"))
TRAIN = Ref(TRAINING, "wine.1.training@local")
SOURCE = Ref(FS_PATH, "file:///data/wine.csv@local")
REQUESTS = Ref(KAFKA_TOPIC, "wine-requests@local")
SCORES = Ref(KAFKA_TOPIC, "wine-scores@local")
INPUT_SCHEMA = Ref(DATA_SCHEMA, naming.data_schema(INPUT.fingerprint, "local"))
OUTPUT_SCHEMA = Ref(DATA_SCHEMA, naming.data_schema(OUTPUT.fingerprint, "local"))
# The training source's own copy of its schema (same fields as the model's input schema).
SOURCE_SCHEMA = Ref(
    DATA_SCHEMA, naming.source_schema(INPUT.fingerprint, SOURCE.qualified_name, "local")
)

PII_RULES = Rules((ClassificationRule("PII", dataset_pattern=re.compile(r"/wine\.csv$")),))
FRAME = single_object_framer()


def get(catalog: LocalCatalog, ref: Ref) -> StoredEntity:
    stored = catalog.entity(ref.type_name, ref.qualified_name)
    assert stored is not None, f"{ref} is not in the catalog"
    return stored


def lineage(
    catalog: LocalCatalog, ref: Ref, direction: Direction = "BOTH", depth: int = 3
) -> LineageGraph:
    return catalog.lineage(ref.type_name, ref.qualified_name, direction, depth)


def _event(
    payload: Payload,
    sequence: int,
    *,
    instance: str = "i1",
    version: str = "1",
    at: datetime | None = None,
) -> ModelEvent:
    base = envelope(sequence, version=version)
    return ModelEvent(
        envelope=dataclasses.replace(
            base,
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{instance}/{sequence}")),
            event_time=at or base.event_time,
            producer=dataclasses.replace(base.producer, instance_id=instance),
        ),
        payload=payload,
    )


def _stats(requests: int, errors: int) -> ScoringStats:
    return dataclasses.replace(
        scoring_stats(),
        request_count=requests,
        error_count=errors,
        errors_by_kind={"timeout": errors} if errors else {},
    )


def messages(events: Sequence[ModelEvent]) -> list[RawMessage]:
    return [RawMessage("servemeta.events", 0, i, FRAME(to_avro(e))) for i, e in enumerate(events)]


def pipeline(target: Target, rules: Rules = PII_RULES) -> Pipeline:
    # The sample events are dated T0; validation compares them with this clock.
    return Pipeline(target, Decoder(), rules, clock=lambda: T0 + timedelta(days=1))


def open_catalog(path: Path, typedefs: Path = TYPEDEFS) -> LocalCatalog:
    catalog = LocalCatalog(path, typedefs=typedefs)
    catalog.ensure_types()
    return catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[LocalCatalog]:
    with open_catalog(tmp_path / "catalog.db") as opened:
        yield opened


@pytest.fixture
def sample_messages(sample_events: list[ModelEvent]) -> list[RawMessage]:
    return messages(sample_events)


def _stream() -> list[ModelEvent]:
    """Two replicas whose clocks disagree: loads, stats windows, a schema change, an unload."""
    events = [_event(model_loaded(), 1), _event(all_payloads()[3], 2)]
    late = T0 - timedelta(seconds=30)
    for n in range(3, 23):
        events.append(_event(_stats(n, n % 3), n))
        events.append(_event(_stats(2 * n, 1), n, instance="i2", at=late + timedelta(seconds=n)))
    events.append(_event(ModelUnloaded(reason="scaled down"), 30, instance="i2"))
    events.append(_event(model_loaded("2", replaces="1"), 40, version="2"))
    return events


# -- written through the pipeline, read back --------------------------------------------------


def test_pipeline_writes_entities_readable_with_their_attributes(
    catalog: LocalCatalog, sample_messages: list[RawMessage]
) -> None:
    outcome = pipeline(catalog).process(sample_messages)
    # Ten entities of the load and its lineage, the schema change, the version's live figures.
    assert (outcome.decoded, outcome.dead, outcome.entities_written) == (5, [], 12)
    assert outcome.write_requests == 1
    version = get(catalog, VERSION)
    assert version.attributes["framework"] == "sklearn"
    assert version.attributes["artifactUri"] == "s3://models/wine/1/model.pkl"
    assert version.attributes["metrics"] == {"test.accuracy": 0.97}
    # Loaded, failed, unloaded: the newest event decides the status.
    assert (version.attributes["status"], version.attributes["statusReason"]) == (
        "UNLOADED",
        "shutdown",
    )
    assert version.references == {
        "inputSchema": INPUT_SCHEMA,
        "model": Ref(MODEL, "wine@local"),
        "outputSchema": OUTPUT_SCHEMA,
    }
    assert version.classifications == ("Confidential",)
    deployment = get(catalog, DEPLOY)
    assert deployment.attributes["status"] == "STOPPED"
    assert deployment.references == {"inputs": [REQUESTS, VERSION], "outputs": [SCORES]}
    # The window is the version's: its live figures hold it, the deployment none of it.
    assert not {"latestWindow", "lifetimeTotals"} & set(deployment.attributes)
    live = get(catalog, STATS)
    lifetime = live.attributes["lifetime"]
    assert (lifetime["requests"], lifetime["errors"], lifetime["windows"]) == (10, 1, 1)
    assert (
        live.attributes["latestWindow"]["requests"],
        live.attributes["latestWindow"]["errors"],
    ) == (10, 1)
    assert live.references == {"deployment": DEPLOY}
    assert [e.ref for e in catalog.find(SERVING_STATS)] == [STATS]
    assert [e.ref for e in outcome.live_figures] == [STATS]
    assert catalog.entity(KAFKA_TOPIC, "no-such-topic@local") is None
    assert [e.ref for e in catalog.find(KAFKA_TOPIC)] == [REQUESTS, SCORES]
    data_sets = [e.ref for e in catalog.find("DataSet")]
    assert data_sets == sorted(
        [
            SOURCE,
            REQUESTS,
            SCORES,
            SOURCE_SCHEMA,
            INPUT_SCHEMA,
            OUTPUT_SCHEMA,
            VERSION,
            Ref(MODEL, "wine@local"),
        ]
    )
    assert [e.ref for e in catalog.find("DataSet", include_subtypes=False)] == []
    assert [e.ref for e in catalog.find("Process")] == [DEPLOY, TRAIN]


def test_lineage_of_the_model_version_reaches_sources_and_serving_outputs(
    catalog: LocalCatalog, sample_messages: list[RawMessage]
) -> None:
    pipeline(catalog).process(sample_messages)
    graph = lineage(catalog, VERSION)
    assert sorted(graph.nodes) == sorted(map(key, [SOURCE, TRAIN, VERSION, DEPLOY, SCORES]))
    assert [(r.from_entity_id, r.to_entity_id) for r in graph.relations] == sorted(
        [
            (key(SOURCE), key(TRAIN)),
            (key(TRAIN), key(VERSION)),
            (key(VERSION), key(DEPLOY)),
            (key(DEPLOY), key(SCORES)),
        ]
    )
    # As in Atlas, a process's other inputs are not part of a data set's lineage: the input
    # topic shows in the deployment's lineage.
    assert key(REQUESTS) not in graph.nodes
    serving = lineage(catalog, DEPLOY, direction="INPUT")
    assert sorted(serving.nodes) == sorted(map(key, [REQUESTS, VERSION, DEPLOY, TRAIN, SOURCE]))
    assert (key(REQUESTS), key(DEPLOY)) in [
        (r.from_entity_id, r.to_entity_id) for r in serving.relations
    ]
    upstream = lineage(catalog, VERSION, direction="INPUT")
    assert sorted(upstream.nodes) == sorted(map(key, [SOURCE, TRAIN, VERSION]))
    downstream = lineage(catalog, VERSION, direction="OUTPUT")
    assert sorted(downstream.nodes) == sorted(map(key, [VERSION, DEPLOY, SCORES]))
    atlas = graph.to_atlas()
    assert atlas["baseEntityGuid"] == key(VERSION)
    assert (atlas["lineageDirection"], atlas["lineageDepth"]) == ("BOTH", 3)
    assert atlas["guidEntityMap"][key(DEPLOY)]["attributes"] == {
        "qualifiedName": DEPLOY.qualified_name,
        "name": "wine-scorer serving wine",
    }
    assert {"fromEntityId": key(VERSION), "toEntityId": key(DEPLOY)} in atlas["relations"]
    assert parse_key(key(SOURCE)) == SOURCE


def test_pii_on_a_training_source_propagates_along_lineage(
    catalog: LocalCatalog, sample_messages: list[RawMessage]
) -> None:
    pipeline(catalog).process(sample_messages)
    source = get(catalog, SOURCE)
    assert (source.classifications, source.propagated_classifications) == (("PII",), {})
    from_source = (key(SOURCE),)
    from_version = (key(VERSION),)
    expected = {
        TRAIN: {"PII": from_source},
        VERSION: {"PII": from_source},
        DEPLOY: {"Confidential": from_version, "PII": from_source},
        SCORES: {"Confidential": from_version, "PII": from_source},
        REQUESTS: {},
        INPUT_SCHEMA: {},
    }
    for ref, propagated in expected.items():
        stored = get(catalog, ref)
        assert stored.propagated_classifications == propagated, ref
    assert [e.ref for e in catalog.find(classification="PII")] == sorted(
        [SOURCE, TRAIN, VERSION, DEPLOY, SCORES]
    )
    assert [e.ref for e in catalog.find(classification="PII", include_propagated=False)] == [SOURCE]
    assert [e.ref for e in catalog.find(KAFKA_TOPIC, classification="PII")] == [SCORES]
    node = lineage(catalog, VERSION).nodes[key(SCORES)]
    assert node.propagated_classifications == ("Confidential", "PII")
    assert node.classifications == ()
    # find() and entity() compute propagation the same way.
    assert {e.ref: e for e in catalog.find()}[DEPLOY] == get(catalog, DEPLOY)


def test_a_classified_field_of_a_training_source_propagates_like_the_data_set_s_own(
    catalog: LocalCatalog,
) -> None:
    """No data-set rule: only the source's schema says a field holds personal data."""
    fields = [
        dataclasses.replace(f, classifications=["PII"]) if f.name == "alcohol" else f
        for f in INPUT.fields
    ]
    schema = data_schema(fields)
    loaded = model_loaded()
    source = dataclasses.replace(loaded.training.sources[0], schema=schema)
    loaded = dataclasses.replace(
        loaded, training=dataclasses.replace(loaded.training, sources=[source])
    )
    outcome = pipeline(catalog, Rules()).process(messages([_event(loaded, 1)]))
    assert outcome.dead == []
    assert get(catalog, SOURCE).classifications == ("PII",)
    for ref in (TRAIN, VERSION, DEPLOY, SCORES):
        assert get(catalog, ref).propagated_classifications["PII"] == (key(SOURCE),), ref
    assert "PII" not in get(catalog, REQUESTS).propagated_classifications


def test_propagation_does_not_depend_on_write_order(catalog: LocalCatalog) -> None:
    source = Ref(KAFKA_TOPIC, "customers@local")
    topics = [Ref(KAFKA_TOPIC, f"t{i}@local") for i in range(3)]
    steps = [Ref(TRAINING, f"p{i}@local") for i in range(3)]
    chain = [source, *topics]
    # Downstream first, the classified source last.
    for i in reversed(range(3)):
        catalog.write(
            [
                Entity(
                    TRAINING,
                    steps[i].qualified_name,
                    {"name": f"p{i}"},
                    {"inputs": [chain[i]], "outputs": [chain[i + 1]]},
                ),
                Entity(KAFKA_TOPIC, chain[i + 1].qualified_name, {"name": f"t{i}"}),
            ]
        )
    catalog.write([Entity(KAFKA_TOPIC, source.qualified_name, {"name": "c"}, {}, ["PII"])])
    for ref in [*steps, *topics]:
        stored = get(catalog, ref)
        assert stored.propagated_classifications == {"PII": (key(source),)}, ref


# -- restarts and batch boundaries -------------------------------------------------------------


def test_reprocessing_a_batch_after_a_restart_leaves_the_live_figures_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalog.db"
    events = [_event(model_loaded(), 1)] + [_event(_stats(10 * n, n), n) for n in range(2, 5)]
    batch = messages(events)
    with open_catalog(path) as catalog:
        outcome = pipeline(catalog).process(batch)
        assert outcome.dead == []
        before = catalog.find()
    live = {e.ref: e for e in before}[STATS].attributes
    assert (live["lifetime"]["requests"], live["lifetime"]["errors"]) == (90, 9)
    assert (live["lifetime"]["windows"], live["latestWindow"]["requests"]) == (3, 40)
    # Killed before committing offsets: a new process re-reads the same messages.
    with open_catalog(path) as catalog:
        outcome = pipeline(catalog).process(batch)
        # 3 entities of the load + 3 windows to the serving stats (a window's deployment
        # update is not keyed: it is no duplicate, it only names the deployment again).
        assert (outcome.dead, outcome.duplicates) == ([], 6)
        assert catalog.find() == before


def _dump_after(
    path: Path, events: list[ModelEvent], sizes: Sequence[int], restart: bool
) -> list[StoredEntity]:
    batch = messages(events)
    with open_catalog(path) as catalog:
        runner = pipeline(catalog)
        start = 0
        for size in sizes:
            if restart:
                runner = pipeline(catalog)
            outcome = runner.process(batch[start : start + size])
            assert outcome.dead == []
            start += size
        assert start >= len(batch)
        return catalog.find()


def test_batch_sizes_and_restarts_do_not_change_the_catalog(tmp_path: Path) -> None:
    events = _stream()
    whole = _dump_after(tmp_path / "whole.db", events, [len(events)], restart=False)
    # Version 2 and its training join the ten entities of version 1 and its live figures.
    assert len(whole) == 14
    for name, sizes, restart in (
        ("ones", [1] * len(events), False),
        ("sevens", [7] * 7, False),
        ("restarts", [5] * 10, True),
    ):
        assert _dump_after(tmp_path / f"{name}.db", events, sizes, restart) == whole, name
    deployment = {e.ref: e for e in whole}[DEPLOY].attributes
    # The newest status is i2's unload until version 2 was loaded.
    assert (deployment["status"], deployment["currentVersion"]) == ("IN_SERVICE", "2")
    replaced = {e.ref: e for e in whole}[VERSION].attributes
    assert (replaced["status"], replaced["statusReason"]) == ("REPLACED", "replaced by version 2")
    # Version 1's live figures (every window was of it): every window of both replicas merged
    # once. The newest window is i1's last (i2's clock lags by 30 s).
    assert [e.ref for e in whole if e.type_name == SERVING_STATS] == [STATS]
    live = {e.ref: e for e in whole}[STATS].attributes
    assert live["lifetime"]["requests"] == sum(3 * n for n in range(3, 23))
    assert live["lifetime"]["errors"] == sum(n % 3 for n in range(3, 23)) + 20
    assert live["lifetime"]["windows"] == 40
    assert live["latestWindow"]["requests"] == 22
    assert sorted(live["replicas"]) == ["i1", "i2"]


# -- the Target contract ---------------------------------------------------------------------


def test_unknown_entity_type_is_rejected_and_the_others_written(catalog: LocalCatalog) -> None:
    result = catalog.write(
        [
            Entity("hive_table", "db.t@local", {"name": "t"}),
            Entity(KAFKA_TOPIC, "ok@local", {"name": "ok"}),
        ]
    )
    assert (result.written, result.requests) == (1, 1)
    assert list(result.rejected) == [Ref("hive_table", "db.t@local")]
    rejection = result.rejected[Ref("hive_table", "db.t@local")]
    assert rejection.code == "UNKNOWN_TYPE"
    assert "'hive_table'" in rejection.message
    assert "ensure_types()" in rejection.message
    assert catalog.entity(KAFKA_TOPIC, "ok@local") is not None
    assert catalog.entity("hive_table", "db.t@local") is None


def test_a_rejected_entity_dead_letters_its_event_and_the_rest_is_written(
    tmp_path: Path, sample_messages: list[RawMessage]
) -> None:
    defs = json.loads(TYPEDEFS.read_text())
    defs["entityDefs"] = [d for d in defs["entityDefs"] if d["name"] != SCHEMA_CHANGE]
    defs["relationshipDefs"] = [
        r
        for r in defs["relationshipDefs"]
        if SCHEMA_CHANGE not in (r["endDef1"]["type"], r["endDef2"]["type"])
    ]
    typedefs = tmp_path / "typedefs.json"
    typedefs.write_text(json.dumps(defs))
    with open_catalog(tmp_path / "catalog.db", typedefs) as catalog:
        outcome = pipeline(catalog).process(sample_messages)
        assert [(d.message.offset, d.reason) for d in outcome.dead] == [(3, "target_rejected")]
        assert "UNKNOWN_TYPE" in outcome.dead[0].detail
        assert SCHEMA_CHANGE in outcome.dead[0].detail
        assert outcome.entities_written == 11
        assert catalog.find(SCHEMA_CHANGE) == []
        assert get(catalog, VERSION) is not None
        assert get(catalog, OUTPUT_SCHEMA) is not None
        assert get(catalog, STATS) is not None


def test_nothing_is_written_before_types_are_registered(tmp_path: Path) -> None:
    with LocalCatalog(tmp_path / "catalog.db") as catalog:
        result = catalog.write([Entity(KAFKA_TOPIC, "t@local", {"name": "t"})])
        assert result.written == 0
        assert "call ensure_types() first" in result.rejected[Ref(KAFKA_TOPIC, "t@local")].message


def test_non_json_values_are_rejected_not_stored(catalog: LocalCatalog) -> None:
    figures = Ref(SERVING_STATS, "d.m.1.stats@local")
    result = catalog.write(
        [
            Entity(
                figures.type_name,
                figures.qualified_name,
                {"name": "m 1 on d", "latestWindow": {"requests": float("nan")}},
            ),
            Entity(KAFKA_TOPIC, "t@local", {"name": "t"}),
        ]
    )
    assert result.written == 1
    assert result.rejected[figures].code == "INVALID_VALUE"
    assert catalog.entity(figures.type_name, figures.qualified_name) is None


def test_upsert_merges_attributes_replaces_references_and_accumulates_classifications(
    catalog: LocalCatalog,
) -> None:
    a, b, c = (Ref(KAFKA_TOPIC, f"{n}@local") for n in "abc")
    schema = Ref(DATA_SCHEMA, "s@local")
    process = Entity(
        TRAINING,
        "p@local",
        {"name": "p", "runId": "r1", "hyperParameters": {"x": "1", "y": "2"}},
        {"inputs": [a, b], "outputs": [c]},
        ["PII"],
    )
    catalog.write([process])
    catalog.write(
        [
            Entity(
                TRAINING,
                "p@local",
                {"runId": "r2", "hyperParameters": {"x": "3"}, "runUrl": None},
                {"inputs": [c]},
                ["Public", "PII"],
            )
        ]
    )
    stored = catalog.entity(TRAINING, "p@local")
    assert stored is not None
    # Maps are attribute values: replaced whole, as Atlas replaces them.
    assert stored.attributes == {
        "name": "p",
        "runId": "r2",
        "hyperParameters": {"x": "3"},
        "runUrl": None,
    }
    assert stored.references == {"inputs": [c], "outputs": [c]}
    assert stored.classifications == ("PII", "Public")
    catalog.write([Entity(MODEL_VERSION, "v@local", {"name": "v"}, {"inputSchema": schema})])
    catalog.write([Entity(TRAINING, "p@local", {}, {"inputs": []})])
    version = catalog.entity(MODEL_VERSION, "v@local")
    assert version is not None
    assert version.references == {"inputSchema": schema}  # a single reference stays single
    emptied = catalog.entity(TRAINING, "p@local")
    assert emptied is not None
    assert emptied.references == {"outputs": [c]}


def test_fetch_returns_the_named_attributes_of_entities_that_exist(catalog: LocalCatalog) -> None:
    catalog.write(
        [Entity(KAFKA_TOPIC, f"t{i}@local", {"name": f"t{i}", "uri": "u"}) for i in range(900)]
    )
    refs = [Ref(KAFKA_TOPIC, f"t{i}@local") for i in range(0, 1000, 3)]
    fetched = catalog.fetch(refs, ["name", "missing"])
    assert len(fetched) == 300
    assert fetched[Ref(KAFKA_TOPIC, "t3@local")] == {"name": "t3"}
    assert Ref(KAFKA_TOPIC, "t999@local") not in fetched


def test_referrers_list_who_points_at_an_entity(
    catalog: LocalCatalog, sample_messages: list[RawMessage]
) -> None:
    pipeline(catalog).process(sample_messages)
    change = Ref(
        SCHEMA_CHANGE,
        naming.schema_change("wine", "1", "output", micros(T0 + timedelta(seconds=4)), "local"),
    )
    assert [
        (r.attribute, r.entity.ref)
        for r in catalog.referrers(VERSION.type_name, VERSION.qualified_name)
    ] == [
        ("inputs", DEPLOY),
        ("modelVersion", change),
        ("outputs", TRAIN),
    ]
    assert [
        (r.attribute, r.entity.ref)
        for r in catalog.referrers(SOURCE.type_name, SOURCE.qualified_name)
    ] == [
        ("describes", SOURCE_SCHEMA),
        ("inputs", TRAIN),
    ]
    only = catalog.referrers(VERSION.type_name, VERSION.qualified_name, attribute="modelVersion")
    assert [r.entity.attributes["side"] for r in only] == ["OUTPUT"]


# -- lineage as Atlas computes it --------------------------------------------------------------


def _chain(catalog: LocalCatalog, length: int) -> tuple[list[Ref], list[Ref]]:
    """t0 -> p1 -> t1 -> p2 -> ... -> t<length>."""
    topics = [Ref(KAFKA_TOPIC, f"t{i}@local") for i in range(length + 1)]
    steps = [Ref(TRAINING, f"p{i}@local") for i in range(1, length + 1)]
    catalog.write(
        [Entity(KAFKA_TOPIC, t.qualified_name, {"name": t.qualified_name}) for t in topics]
        + [
            Entity(
                TRAINING,
                p.qualified_name,
                {"name": p.qualified_name},
                {"inputs": [topics[i]], "outputs": [topics[i + 1]]},
            )
            for i, p in enumerate(steps)
        ]
    )
    return topics, steps


def test_depth_counts_process_hops_and_zero_means_unlimited(catalog: LocalCatalog) -> None:
    topics, steps = _chain(catalog, 5)
    two = lineage(catalog, topics[0], direction="OUTPUT", depth=2)
    assert sorted(two.nodes) == sorted(map(key, topics[:3] + steps[:2]))
    everything = lineage(catalog, topics[0], direction="OUTPUT", depth=0)
    assert len(everything.nodes) == 11
    assert len(everything.relations) == 10
    # From a process, its own data sets are the first hop.
    around = lineage(catalog, steps[2], depth=1)
    assert sorted(around.nodes) == sorted(map(key, [topics[2], steps[2], topics[3]]))
    upstream = lineage(catalog, topics[5], direction="INPUT", depth=1)
    assert [(r.from_entity_id, r.to_entity_id) for r in upstream.relations] == [
        (key(topics[4]), key(steps[4])),
        (key(steps[4]), key(topics[5])),
    ]


def test_a_process_without_outputs_is_not_in_lineage_but_still_receives_classifications(
    catalog: LocalCatalog,
) -> None:
    # Atlas's traverseEdges adds a data set -> process edge only with the process's far side.
    topic = Ref(KAFKA_TOPIC, "requests@local")
    catalog.write(
        [
            Entity(KAFKA_TOPIC, topic.qualified_name, {"name": "r"}, {}, ["PII"]),
            Entity(DEPLOYMENT, "rest.wine@local", {"name": "rest"}, {"inputs": [topic]}),
        ]
    )
    assert lineage(catalog, topic).relations == []
    deployment = catalog.entity(DEPLOYMENT, "rest.wine@local")
    assert deployment is not None
    assert deployment.propagated_classifications == {"PII": (key(topic),)}
    assert [r.from_entity_id for r in catalog.lineage(DEPLOYMENT, "rest.wine@local").relations] == [
        key(topic)
    ]


def test_only_references_held_by_processes_make_lineage(catalog: LocalCatalog) -> None:
    # A data set's own reference named like a process's is no lineage relationship in Atlas.
    source, copy = Ref(KAFKA_TOPIC, "s@local"), Ref(KAFKA_TOPIC, "copy@local")
    catalog.write(
        [
            Entity(KAFKA_TOPIC, source.qualified_name, {"name": "s"}, {"outputs": [copy]}, ["PII"]),
            Entity(KAFKA_TOPIC, copy.qualified_name, {"name": "c"}, {"inputs": [source]}),
        ]
    )
    assert lineage(catalog, source).relations == []
    assert lineage(catalog, copy).relations == []
    assert get(catalog, copy).propagated_classifications == {}


def test_lineage_refuses_what_atlas_refuses(catalog: LocalCatalog) -> None:
    with pytest.raises(EntityNotFound, match="no kafka_topic with qualifiedName 'nope@local'"):
        catalog.lineage(KAFKA_TOPIC, "nope@local")
    catalog.write([Entity(SCHEMA_CHANGE, "c@local", {"name": "c", "side": "INPUT"})])
    with pytest.raises(ValueError, match="lineage is defined for DataSet and Process types"):
        catalog.lineage(SCHEMA_CHANGE, "c@local")
    catalog.write([Entity(KAFKA_TOPIC, "t@local", {"name": "t"})])
    with pytest.raises(ValueError, match="direction must be one of"):
        catalog.lineage(KAFKA_TOPIC, "t@local", direction="UP")  # type: ignore[arg-type]


def test_a_shell_entity_referenced_but_never_written_is_marked_incomplete(
    catalog: LocalCatalog,
) -> None:
    ghost = Ref(KAFKA_TOPIC, "ghost@local")
    catalog.write(
        [
            Entity(KAFKA_TOPIC, "in@local", {"name": "in"}),
            Entity(
                TRAINING,
                "p@local",
                {"name": "p"},
                {"inputs": [Ref(KAFKA_TOPIC, "in@local")], "outputs": [ghost]},
            ),
        ]
    )
    nodes = catalog.lineage(KAFKA_TOPIC, "in@local").nodes
    assert (nodes[key(ghost)].incomplete, nodes[key(ghost)].name) == (True, None)
    assert nodes["kafka_topic:in@local"].incomplete is False


# -- storage ---------------------------------------------------------------------------------


def test_one_wal_file_one_transaction_per_write_and_indexed_lookups(
    catalog: LocalCatalog, sample_messages: list[RawMessage]
) -> None:
    statements: list[str] = []
    # The statements themselves are the evidence: one transaction per write, none per row.
    catalog._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
    pipeline(catalog).process(sample_messages)
    catalog._db.set_trace_callback(None)  # type: ignore[union-attr]
    assert statements.count("COMMIT") == 2  # fetching states, then the write
    assert sum(s.startswith("BEGIN IMMEDIATE") for s in statements) == 1
    with sqlite3.connect(catalog.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        plan = " ".join(
            row[-1]
            for row in other.execute(
                "EXPLAIN QUERY PLAN SELECT from_type, from_qn FROM edges "
                "WHERE to_type = ? AND to_qn IN (?, ?) AND attribute = ?",
                ("a", "b", "c", "d"),
            )
        )
        assert "edges_by_target" in plan
        # A second reader sees committed data while the catalog stays open.
        assert other.execute("SELECT count(*) FROM entities").fetchone() == (12,)


def test_a_locked_file_makes_the_target_unavailable_not_the_batch_dead(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    open_catalog(path).close()
    with LocalCatalog(path, busy_timeout_seconds=0) as catalog:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(TargetUnavailable, match="cannot be written now"):
                catalog.write([Entity(KAFKA_TOPIC, "t@local", {"name": "t"})])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert catalog.write([Entity(KAFKA_TOPIC, "t@local", {"name": "t"})]).written == 1


def test_reopening_keeps_everything(tmp_path: Path, sample_messages: list[RawMessage]) -> None:
    with open_catalog(tmp_path / "c.db") as catalog:
        pipeline(catalog).process(sample_messages)
        before = catalog.find()
    with LocalCatalog(tmp_path / "c.db") as reopened:
        assert reopened.find() == before
        assert len(before) == 12


def test_a_file_from_a_newer_sink_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "data" / "servemeta" / "catalog.db"  # directories made on first use
    LocalCatalog(path).close()
    with sqlite3.connect(path) as newer:
        newer.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99, this sink reads up to 1"):
        LocalCatalog(path)


def test_ensure_types_refuses_unknown_super_types(tmp_path: Path) -> None:
    typedefs = tmp_path / "typedefs.json"
    typedefs.write_text(json.dumps({"entityDefs": [{"name": "x", "superTypes": ["hive_table"]}]}))
    catalog = LocalCatalog(tmp_path / "c.db", typedefs=typedefs)
    with pytest.raises(ValueError, match=r"super types \['hive_table'\].*deploy/atlas/builtin"):
        catalog.ensure_types()
    with pytest.raises(FileNotFoundError, match=r"servemeta_typedefs\.json"):
        LocalCatalog(tmp_path / "d.db", typedefs=tmp_path / "missing.json").ensure_types()
    catalog.close()
    with pytest.raises(RuntimeError, match="is closed"):
        catalog.entity(KAFKA_TOPIC, "t@local")


def test_rejection_is_the_target_contract_type(catalog: LocalCatalog) -> None:
    rejected = catalog.write([Entity("nope", "n@local")]).rejected
    assert isinstance(rejected[Ref("nope", "n@local")], Rejection)


def test_a_restored_instance_serves_again_without_a_new_load_in_any_order(tmp_path: Path) -> None:
    """A stream job loads version 1, replaces it with 2, is cancelled (unloaded), and its new
    instances resume version 2 from a checkpoint: version 2 serves again, and its load time
    and what it replaced stay those of the load itself, whatever order the events come in."""
    v2 = Ref(MODEL_VERSION, "wine.2@local")
    loaded_at = T0 + timedelta(seconds=40)
    events = [
        _event(model_loaded(), 1),
        _event(model_loaded("2", replaces="1"), 2, version="2", at=loaded_at),
        _event(ModelUnloaded(reason="job cancelled"), 3, version="2"),
        _event(
            dataclasses.replace(model_loaded("2"), restored=True),
            1,
            instance="restored-0",
            version="2",
            at=T0 + timedelta(seconds=90),
        ),
    ]
    for n, order in enumerate((events, list(reversed(events)))):
        with open_catalog(tmp_path / f"{n}.db") as catalog:
            outcome = pipeline(catalog).process(messages(order))
            assert not outcome.dead, outcome.dead
            version = get(catalog, v2).attributes
            assert version["status"] == "LOADED"
            assert version["loadedAt"] == micros(loaded_at) // 1000
            assert version["replacesVersion"] == "1"
            assert get(catalog, VERSION).attributes["status"] == "REPLACED"
            deployment = get(catalog, DEPLOY).attributes
            assert (deployment["status"], deployment["currentVersion"]) == ("IN_SERVICE", "2")


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "reversed"])
def test_a_version_resumed_after_a_restart_is_the_one_served(tmp_path: Path, reverse: bool) -> None:
    """Restored from a checkpoint older than the last load, the job serves version 1 again;
    and a version whose own load the catalog never saw serves once it is resumed."""
    older_checkpoint = [
        _event(model_loaded(), 1),
        _event(model_loaded("2", replaces="1"), 2, version="2"),
        _event(ModelUnloaded(reason="job cancelled"), 3, version="2"),
        _event(
            dataclasses.replace(model_loaded(), restored=True),
            1,
            instance="restored-0",
            at=T0 + timedelta(seconds=90),
        ),
    ]
    load_never_seen = [
        _event(model_loaded(), 1),
        _event(ModelUnloaded(reason="job cancelled"), 2),
        _event(
            dataclasses.replace(model_loaded("2"), restored=True),
            1,
            instance="restored-0",
            version="2",
            at=T0 + timedelta(seconds=90),
        ),
    ]
    for name, events, serving in (
        ("older", older_checkpoint, "1"),
        ("unseen", load_never_seen, "2"),
    ):
        order = list(reversed(events)) if reverse else events
        with open_catalog(tmp_path / f"{name}.db") as catalog:
            assert not pipeline(catalog).process(messages(order)).dead
            deployment = get(catalog, DEPLOY).attributes
            assert (deployment["status"], deployment["currentVersion"]) == ("IN_SERVICE", serving)
            assert deployment["statusReason"] == "resumed after a restart"
