"""The governance report and the lineage picture, from a real embedded catalog."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlas_sink.catalog.atlas_reader import propagation_pending
from atlas_sink.catalog.lineage_picture import render_html, render_svg
from atlas_sink.catalog.model import LineageGraph, Referrer, StoredEntity
from atlas_sink.catalog.reader import ModelNotFound, find_model
from atlas_sink.catalog.report import build_report, live_notes, render_text, storage_assessment
from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import MODEL, ClassificationRule, Rules
from atlas_sink.service.cli import main
from atlas_sink.targets.local import LocalCatalog
from capture.dataschema import data_schema
from capture.events import (
    Artifact,
    Envelope,
    FieldSpec,
    ModelEvent,
    ModelLoaded,
    ModelType,
    Payload,
    Runtime,
    SchemaChanged,
    Training,
    to_avro,
)
from capture.framing import single_object_framer
from tests.conftest import INPUT, OUTPUT, envelope, model_loaded, scoring_stats

NOW = datetime.now(UTC) - timedelta(hours=1)
RULES = Rules((ClassificationRule("PII", dataset_pattern=re.compile(r"wine\.csv$")),))
NEW_OUTPUT = data_schema([*OUTPUT.fields, FieldSpec(name="probability", type="double")])


def _events() -> list[Payload]:
    stats = scoring_stats()
    stats.window_start = NOW
    stats.window_end = NOW + timedelta(seconds=60)
    return [
        model_loaded("1"),
        stats,
        SchemaChanged(
            side="OUTPUT",  # type: ignore[arg-type]
            new_fingerprint=NEW_OUTPUT.fingerprint,
            new_schema=NEW_OUTPUT,
            previous_fingerprint=OUTPUT.fingerprint,
            compatibility="FULL",  # type: ignore[arg-type]
        ),
        model_loaded("2", replaces="1"),
    ]


@pytest.fixture
def catalog(tmp_path: Path) -> LocalCatalog:
    catalog = LocalCatalog(tmp_path / "catalog.sqlite")
    catalog.ensure_types()
    frame = single_object_framer()
    batch = []
    for i, payload in enumerate(_events()):
        base = envelope(i + 1, version="2" if i == 3 else "1")
        env = Envelope(
            event_id=base.event_id,
            event_time=NOW + timedelta(seconds=i),
            producer=base.producer,
            sequence=base.sequence,
            deployment=base.deployment,
            model=base.model,
        )
        value = frame(to_avro(ModelEvent(envelope=env, payload=payload)))
        batch.append(RawMessage("t", 0, i, value))
    outcome = Pipeline(catalog, Decoder(), RULES).process(batch)
    assert outcome.dead == []
    return catalog


def test_report_answers_every_question(catalog: LocalCatalog) -> None:
    report = build_report(catalog, "wine")
    d = report.data
    assert d["model"]["latestVersion"] == "2"
    assert [(v["version"], v["status"]) for v in d["model"]["versions"]] == [
        ("1", "REPLACED"),
        ("2", "LOADED"),
    ]
    assert d["version"]["qualifiedName"] == "wine.2@local"
    # 1, 2: sources and parameters
    assert [s["qualifiedName"] for s in d["training"]["sources"]] == ["file:///data/wine.csv@local"]
    assert d["training"]["sources"][0]["classifications"] == ["PII"]
    assert d["training"]["runId"] == "run-42"
    assert d["training"]["hyperParameters"] == {"n_estimators": "50"}
    # 3: storage and its safety
    assert d["artifact"]["uri"] == "s3://models/wine/2/model.pkl"
    assert d["artifact"]["storage"]["verdict"] == "secure"
    # 4, 5: type and quality
    assert d["type"]["algorithm"] == "RandomForestClassifier"
    assert d["quality"]["trained"] == {"test.accuracy": 0.97}
    # 8: the source's schema (the model's input schema describes it)
    assert [f["name"] for f in d["training"]["sources"][0]["schemas"][0]["fields"]] == [
        "alcohol",
        "color_intensity",
    ]
    # 7: taxonomy, with PII propagated from the training source along lineage
    assert d["taxonomy"]["classifications"] == ["Confidential"]
    assert "PII" in d["taxonomy"]["propagatedClassifications"]
    # 9, 10: the deployment, its flow, its live stats and what may be seen
    (deployment,) = d["processes"]
    assert deployment["qualifiedName"] == "wine-scorer.wine@local"
    assert deployment["inputs"] == ["wine-requests@local"]
    assert deployment["outputs"] == ["wine-scores@local"]
    assert "PII" in deployment["classifications"]
    assert deployment["live"]["totalRequests"] == 10
    assert deployment["live"]["errorRate"] == pytest.approx(0.1)
    # The picture's graph shows the data flowing through serving, input topic included.
    relations = d["lineage"]["relations"]
    assert (
        "servemeta_model_version:wine.2@local",
        "servemeta_deployment:wine-scorer.wine@local",
    ) in relations
    assert (
        "kafka_topic:wine-requests@local",
        "servemeta_deployment:wine-scorer.wine@local",
    ) in relations
    assert (
        "servemeta_deployment:wine-scorer.wine@local",
        "kafka_topic:wine-scores@local",
    ) in relations


def test_schema_history_belongs_to_its_version(catalog: LocalCatalog) -> None:
    first = build_report(catalog, "wine", version="1").data
    (change,) = first["schemas"]["history"]
    # The producer claimed FULL; a new required field leaves old data unreadable by the new
    # schema's readers, so the sink's own verdict is FORWARD, and the claim is kept beside it.
    assert (change["side"], change["compatibility"]) == ("OUTPUT", "FORWARD")
    assert change["claimedCompatibility"] == "FULL"
    assert "(FORWARD, the producer claimed FULL)" in render_text(
        build_report(catalog, "wine", version="1")
    )
    assert change["newFingerprint"] == NEW_OUTPUT.fingerprint
    assert [f["name"] for f in first["schemas"]["output"]["fields"]] == ["cultivar", "probability"]
    assert build_report(catalog, "wine", version="2").data["schemas"]["history"] == []


def test_text_report_has_every_section(catalog: LocalCatalog) -> None:
    text = render_text(build_report(catalog, "wine"))
    for heading in (
        "1. Training sources",
        "2. Parameters",
        "3. Artifact storage",
        "4. Model type",
        "5. Quality",
        "6. Data definitions",
        "7. Taxonomy and classifications",
        "8. Schemas of the sources",
        "9. Processes using the model",
        "10. Who may see it",
    ):
        assert heading in text
    assert "wine-requests@local + model -> wine-scores@local" in text
    assert "PII (propagated)" in text


def test_unknown_model_and_version_are_clear_errors(catalog: LocalCatalog) -> None:
    with pytest.raises(ModelNotFound, match=r"no model 'beer' in the catalog.*\['wine'\]"):
        build_report(catalog, "beer")
    with pytest.raises(ModelNotFound, match=r"no version '9'"):
        build_report(catalog, "wine", version="9")


def test_a_model_is_found_by_its_exact_name_among_lookalikes(catalog: LocalCatalog) -> None:
    base = envelope(1)
    batch = []
    for i, (name, cluster) in enumerate(
        [("Wine", "local"), ("wine-2", "local"), ("wine 2", "local"), ("wine", "edge")]
    ):
        env = dataclasses.replace(
            base,
            event_id=f"00000000-0000-4000-9000-{i:012d}",
            producer=dataclasses.replace(base.producer, instance_id=f"other-{i}"),
            deployment=dataclasses.replace(base.deployment, cluster=cluster),
            model=dataclasses.replace(base.model, name=name),
        )
        value = single_object_framer()(to_avro(ModelEvent(envelope=env, payload=model_loaded())))
        batch.append(RawMessage("t", 0, i, value))
    assert Pipeline(catalog, Decoder(), RULES).process(batch).dead == []

    assert catalog.qualified_names(MODEL, "wine") == ["wine@edge", "wine@local"]
    assert catalog.qualified_names(MODEL, "Wine") == ["Wine@local"]
    assert find_model(catalog, "wine-2").qualified_name == "wine-2@local"
    assert find_model(catalog, "wine", "edge").qualified_name == "wine@edge"
    with pytest.raises(ModelNotFound, match=r"clusters \['edge', 'local'\]"):
        find_model(catalog, "wine")
    with pytest.raises(
        ModelNotFound, match=r"models known: \['Wine', 'wine', 'wine 2', 'wine-2'\]"
    ):
        find_model(catalog, "WINE")


def test_a_model_reported_with_the_least_the_contract_allows_prints_no_none(
    tmp_path: Path,
) -> None:
    """Nothing optional reported and no window yet: unknown reads as unknown ('-' or said in
    words), never as Python's None nor as a zero nobody measured."""
    loaded = ModelLoaded(
        model_type=ModelType(framework="sklearn"),
        artifact=Artifact(uri="file:///m.pkl", scheme="file"),
        training=Training(sources=[]),
        input_schema=INPUT,
        output_schema=OUTPUT,
        runtime=Runtime(language="python", language_version="3.11", host="h1"),
    )
    with LocalCatalog(tmp_path / "least.sqlite") as least:
        least.ensure_types()
        value = single_object_framer()(to_avro(ModelEvent(envelope=envelope(1), payload=loaded)))
        assert Pipeline(least, Decoder(), RULES).process([RawMessage("t", 0, 0, value)]).dead == []
        report = build_report(least, "wine")
    text = render_text(report)
    assert "None" not in text
    assert "live on wine-scorer.wine@local: no scoring window reported yet" in text
    (live,) = report.data["quality"]["live"]
    assert (live["requests"], live["totalRequests"], live["windowEnd"]) == (None, None, None)


@pytest.mark.parametrize(
    ("attributes", "verdict"),
    [
        (
            {
                "artifactEncryption": "ENCRYPTED_AT_REST",
                "accessMode": "private",
                "artifactScheme": "s3",
            },
            "secure",
        ),
        ({"artifactEncryption": "NOT_ENCRYPTED_AT_REST", "accessMode": "private"}, "at risk"),
        (
            {"artifactEncryption": "ENCRYPTED_AT_REST", "accessMode": "posix 0644 world-readable"},
            "at risk",
        ),
        (
            {
                "artifactScheme": "http",
                "artifactEncryption": "ENCRYPTED_AT_REST",
                "accessMode": "x",
            },
            "at risk",
        ),
        ({"artifactScheme": "file"}, "unknown"),
    ],
)
def test_storage_assessment(attributes: dict[str, object], verdict: str) -> None:
    assert storage_assessment(attributes)["verdict"] == verdict


def test_lineage_picture_is_valid_svg_with_every_node(catalog: LocalCatalog) -> None:
    report = build_report(catalog, "wine", version="1")
    svg = render_svg(report.lineage, "Lineage of wine 1")
    root = ET.fromstring(svg)
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {
        "file:///data/wine.csv@local",
        "wine.1.training@local",
        "wine.1@local",
    } <= titles
    paths = root.iter("{http://www.w3.org/2000/svg}path")
    edges = [p for p in paths if p.get("class") == "edge"]
    assert len(edges) == len(report.lineage.relations) == 2
    page = render_html(report.lineage, "Lineage <of> wine")
    assert page.startswith("<!DOCTYPE html>") and "Lineage &lt;of&gt; wine" in page
    assert "<script" not in page


def test_cli_report_json_and_picture(
    catalog: LocalCatalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "lineage.html"
    code = main(
        [
            "report",
            "wine",
            "--target",
            "local",
            "--catalog",
            str(catalog.path),
            "--json",
            "--picture",
            str(picture),
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"]["version"] == "2"
    assert data["picture"] == str(picture.resolve())
    assert "wine.2@local" in picture.read_text()
    assert main(["report", "beer", "--target", "local", "--catalog", str(catalog.path)]) == 2


class _PendingInAtlas:
    """The catalog as an Atlas 2.2+ answers while its propagation tasks still run: every entity
    carries pending tasks. No server of those releases can be had here; the reading of
    ``pendingTasks`` itself is tested on Atlas's JSON below."""

    def __init__(self, catalog: LocalCatalog) -> None:
        self.catalog = catalog

    def _pending(self, entity: StoredEntity) -> StoredEntity:
        return dataclasses.replace(entity, propagation_pending=True)

    def entity(self, type_name: str, qualified_name: str) -> StoredEntity | None:
        found = self.catalog.entity(type_name, qualified_name)
        return None if found is None else self._pending(found)

    def qualified_names(self, type_name: str, name: str | None = None) -> list[str]:
        return self.catalog.qualified_names(type_name, name)

    def referrers(self, *args: Any, **kwargs: Any) -> list[Referrer]:
        return [
            Referrer(r.attribute, self._pending(r.entity))
            for r in self.catalog.referrers(*args, **kwargs)
        ]

    def lineage(self, *args: Any, **kwargs: Any) -> LineageGraph:
        return self.catalog.lineage(*args, **kwargs)


def test_the_report_says_when_propagation_is_still_running(catalog: LocalCatalog) -> None:
    settled = build_report(catalog, "wine")
    assert settled.data["taxonomy"]["propagationPending"] is False
    assert "propagation" not in render_text(settled)
    pending = build_report(_PendingInAtlas(catalog), "wine")
    assert pending.data["taxonomy"]["propagationPending"] is True
    assert all(p["propagationPending"] for p in pending.data["processes"])
    assert "still running in Atlas (pending tasks)" in render_text(pending)


def test_pending_tasks_are_read_from_atlas_s_entity_json() -> None:
    # AtlasEntity of Atlas 2.2+: "pendingTasks" lists the guids of classification tasks.
    assert propagation_pending({"typeName": "t", "pendingTasks": ["6f1c-task"]})
    assert not propagation_pending({"typeName": "t", "pendingTasks": []})
    assert not propagation_pending({"typeName": "t"})  # Atlas 2.1: no such field


def test_reading_a_catalog_path_that_does_not_exist_stops_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "elsewhere" / "catalog.sqlite"
    for command in (["report", "wine"], ["lineage", "wine"]):
        assert main([*command, "--target", "local", "--catalog", str(missing)]) == 2
        error = capsys.readouterr().err
        assert f"no catalog at {missing}" in error
    assert not missing.exists() and not missing.parent.exists()


def test_lineage_and_report_show_the_same_graph_with_the_deployments_inputs(
    catalog: LocalCatalog, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lineage` used to leave out what else feeds the deployments (their input topics),
    which its help promises and `report` shows: both now draw catalog.reader.model_lineage."""
    report = build_report(catalog, "wine")  # version 2, the one the deployment serves
    capsys.readouterr()
    command = ["lineage", "wine", "--depth", "0", "--json"]
    assert main([*command, "--target", "local", "--catalog", str(catalog.path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == report.lineage.to_atlas()
    deployments = [k for k in shown["guidEntityMap"] if k.startswith("servemeta_deployment:")]
    assert deployments
    edges = {(r["fromEntityId"], r["toEntityId"]) for r in shown["relations"]}
    assert ("kafka_topic:wine-requests@local", deployments[0]) in edges


def test_the_lineage_picture_shows_each_version_s_live_figures(catalog: LocalCatalog) -> None:
    report = build_report(catalog, "wine")  # version 2, which the deployment serves now
    notes = live_notes(report)
    (deployment,) = [k for k in report.lineage.nodes if k.startswith("servemeta_deployment:")]
    # Version 1 scored the one window (10 requests, 1 error); version 2 none yet. The p99 is
    # read from the window's sketch (10 values near 2.5 ms), not taken from its own claim.
    assert notes[deployment] == ["v1: 10 req, 10.0% err, p99 2.5 ms, 1 replicas"]
    root = ET.fromstring(render_svg(report.lineage, "Lineage of wine 1", notes))
    shown = [
        t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "note"
    ]
    assert shown == notes[deployment]


def test_a_schema_change_announced_by_every_replica_is_one_entry_but_a_later_one_is_not() -> None:
    from atlas_sink.catalog.report import schema_history

    def change(at: int, previous: str, new: str) -> dict[str, object]:
        return {
            "changedAt": at,
            "side": "OUTPUT",
            "previousFingerprint": previous,
            "newFingerprint": new,
            "compatibility": "FORWARD",
        }

    history = schema_history(
        [
            change(1000, "a", "b"),
            change(1001, "a", "b"),
            change(2000, "b", "a"),
            change(3000, "a", "b"),
        ]
    )
    assert [
        (h["previousFingerprint"], h["newFingerprint"], h["announcements"]) for h in history
    ] == [
        ("a", "b", 2),
        ("b", "a", 1),
        ("a", "b", 1),
    ]
