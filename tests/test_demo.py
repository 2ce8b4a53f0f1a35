"""The demo: its pure parts (rows, requests, training, the ModelLoaded it builds) and a short
run of the whole pipeline against the real broker: server, traffic and sink into a tmp catalog.

Nothing sleeps: the pipeline polls consumer-group lag and readiness with deadlines.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atlas_sink.catalog.model import StoredEntity, entity_key
from atlas_sink.core import naming
from atlas_sink.core.entities import Ref
from atlas_sink.core.translate import (
    DATA_SCHEMA,
    DEPLOYMENT,
    FS_PATH,
    KAFKA_TOPIC,
    MODEL,
    MODEL_VERSION,
    SCHEMA_CHANGE,
    TRAINING,
)
from atlas_sink.targets.local import LocalCatalog
from capture.artifacts import content_digest
from capture.dataschema import compatibility
from capture.events import Compatibility, Runtime
from capture.profile import profile_features
from capture.stats import population_stability_index
from demo import model as wine
from demo.run import (
    DemoOptions,
    DemoRun,
    Progress,
    options_from_args,
    picture_option,
    prepare_work_dir,
    show_report,
    sink_environment,
)
from demo.run import build_parser as run_parser
from demo.server import RequestError, parse_request
from demo.traffic import MALFORMED_KINDS, FeatureProfile, RequestFactory, planned_count
from local_services.harness import create_topics

RUNTIME = Runtime(language="python", language_version="3.11", host="test-host")


@pytest.fixture(scope="module")
def data() -> wine.WineData:
    return wine.load_data()


@pytest.fixture(scope="module")
def profile() -> FeatureProfile:
    return FeatureProfile.from_wine()


@pytest.fixture(scope="module")
def v1(data: wine.WineData) -> wine.TrainedModel:
    return wine.train("1", wine.V1_PARAMS, seed=42, data=data)


# -- traffic -----------------------------------------------------------------------------------


def test_feature_rows_are_deterministic_for_a_seed_and_within_the_data_range(
    profile: FeatureProfile,
) -> None:
    rows_a = _rows(RequestFactory(profile, seed=3), 200)
    assert rows_a == _rows(RequestFactory(profile, seed=3), 200)
    assert rows_a != _rows(RequestFactory(profile, seed=4), 200)
    for cultivar, row in rows_a:
        assert cultivar in (0, 1, 2)
        assert list(row) == list(profile.names)
        for i, name in enumerate(profile.names):
            assert profile.lows[i] <= row[name] <= profile.highs[i]
    # All three cultivars come up, roughly as often as in the data (59/71/48 of 178).
    counts = np.bincount([c for c, _ in rows_a], minlength=3)
    assert all(count >= 30 for count in counts), counts


def test_generated_rows_are_scored_as_the_cultivar_they_were_drawn_from(
    profile: FeatureProfile, v1: wine.TrainedModel
) -> None:
    drawn = _rows(RequestFactory(profile, seed=11), 300)
    matrix = np.array([[row[n] for n in v1.feature_names] for _, row in drawn])
    predicted = [cultivar for cultivar, _ in v1.score(matrix)]
    agreement = np.mean([p == c for p, (c, _) in zip(predicted, drawn, strict=True)])
    assert agreement > 0.85, agreement


def test_requests_parse_into_rows_and_malformed_ones_are_rejected_by_kind(
    profile: FeatureProfile,
) -> None:
    good = RequestFactory(profile, seed=5, error_rate=0.0)
    key, value, kind = good.request(0, sent_at=1.0)
    assert kind is None and key == b"req-5-0"
    request_id, row = parse_request(value, profile.names)
    body = json.loads(value)
    assert request_id == "req-5-0"
    assert row == [body["features"][n] for n in profile.names]

    bad = RequestFactory(profile, seed=5, error_rate=1.0)
    seen = set()
    for number in range(60):
        _, value, kind = bad.request(number, sent_at=1.0)
        assert kind in MALFORMED_KINDS
        with pytest.raises(RequestError) as caught:
            parse_request(value, profile.names)
        assert caught.value.kind == kind
        seen.add(kind)
    assert seen == set(MALFORMED_KINDS)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"features": {"alcohol": true}}', "not_a_number"),
        (b'{"features": {"alcohol": NaN}}', "not_a_number"),
        (b'{"features": {}}', "missing_feature"),
    ],
)
def test_parse_request_says_what_is_wrong(value: bytes, kind: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(value, ["alcohol"])
    assert caught.value.kind == kind


def test_planned_count_is_rate_times_duration() -> None:
    assert planned_count(20, 40) == 800
    assert planned_count(0.5, 1) == 1
    with pytest.raises(ValueError, match="must be positive"):
        planned_count(0, 10)
    with pytest.raises(ValueError, match="error_rate"):
        RequestFactory(FeatureProfile((), (), (), (), (), ()), error_rate=1.5)


# -- training and the ModelLoaded --------------------------------------------------------------


def test_training_is_deterministic_for_a_seed(data: wine.WineData, v1: wine.TrainedModel) -> None:
    again = wine.train("1", wine.V1_PARAMS, seed=42, data=data)
    assert again.run_id == v1.run_id
    assert again.metrics == v1.metrics
    np.testing.assert_array_equal(
        again.estimator.predict_proba(data.features), v1.estimator.predict_proba(data.features)
    )
    other_seed = wine.train("1", wine.V1_PARAMS, seed=43, data=data)
    assert other_seed.run_id != v1.run_id
    v2 = wine.train("2", wine.V2_PARAMS, seed=42, data=data)
    assert v2.hyper_parameters["n_estimators"] == "120"
    assert v1.hyper_parameters["n_estimators"] == "20"
    assert {(m.name, m.split) for m in v1.metrics} == {
        ("accuracy", "train"),
        ("accuracy", "test"),
        ("f1_macro", "train"),
        ("f1_macro", "test"),
    }
    test_accuracy = next(m.value for m in v1.metrics if m.split == "test" and m.name == "accuracy")
    assert test_accuracy > 0.85


@pytest.mark.parametrize("fmt", ["joblib", "mlflow"])
def test_model_loaded_describes_the_saved_artifact(
    fmt: wine.ArtifactFormat, data: wine.WineData, v1: wine.TrainedModel, tmp_path: Path
) -> None:
    if fmt == "mlflow":
        pytest.importorskip("mlflow")
    source = wine.write_training_csv(data, tmp_path / "data" / "wine.csv")
    facts = wine.save_artifact(v1, tmp_path / "models" / "1", fmt)
    loaded = wine.model_loaded(
        v1,
        facts,
        source=source,
        runtime=RUNTIME,
        inputs=["kafka://wine-requests"],
        outputs=["kafka://wine-scores"],
        owner="team",
        with_probability=False,
    )
    artifact = loaded.artifact
    assert artifact.uri == (tmp_path / "models" / "1").resolve().as_uri()
    assert artifact.content_hash == content_digest(tmp_path / "models" / "1").content_hash
    assert artifact.access_mode == "posix dir 0700 files 0600 owner-only"
    assert loaded.model_type.framework == "sklearn"
    assert loaded.model_type.algorithm == "RandomForestClassifier"
    assert loaded.properties["artifact.format"] == fmt
    assert [f.name for f in loaded.input_schema.fields] == list(data.feature_names)
    assert [f.name for f in loaded.output_schema.fields] == [
        "request_id",
        "cultivar",
        "model_version",
    ]
    assert loaded.training.sources == [source]
    assert source.uri == (tmp_path / "data" / "wine.csv").resolve().as_uri()
    assert source.schema is not None and source.schema.fields[-1].name == "cultivar"
    lines = (tmp_path / "data" / "wine.csv").read_text().splitlines()
    assert len(lines) == 1 + len(data.target)
    assert loaded.training.run_id == v1.run_id
    assert loaded.training.hyper_parameters == v1.hyper_parameters
    assert loaded.metrics == v1.metrics
    assert loaded.inputs == ["kafka://wine-requests"]
    assert loaded.outputs == ["kafka://wine-scores"]
    assert loaded.classifications == ["Confidential"]
    assert loaded.replaces_version is None
    assert loaded.training_profile == v1.training_profile


def test_the_training_profile_describes_the_training_split(
    data: wine.WineData, v1: wine.TrainedModel, profile: FeatureProfile
) -> None:
    trained_on = len(data.target) - math.ceil(wine.TEST_FRACTION * len(data.target))
    assert [f.name for f in v1.training_profile] == sorted(data.feature_names)
    for feature in v1.training_profile:
        column = data.feature_names.index(feature.name)
        assert (feature.count, feature.null_count) == (trained_on, 0)
        assert feature.min is not None and feature.max is not None
        assert profile.lows[column] <= feature.min <= feature.max <= profile.highs[column]
        assert feature.distribution is not None
        assert sum(feature.distribution.positive.counts) == trained_on  # all positive
    again = wine.train("1", wine.V1_PARAMS, seed=42, data=data)
    assert again.training_profile == v1.training_profile
    # The requests the demo sends are the same data's rows, nudged: every feature is stable.
    rows = [row for _, row in _rows(RequestFactory(profile), 2000)]
    served = {f.name: f.distribution for f in profile_features(rows)}
    stable = []
    for feature in v1.training_profile:
        serving = served[feature.name]
        assert feature.distribution is not None and serving is not None
        psi = population_stability_index(feature.distribution, serving)
        assert psi is not None
        if psi < 0.1:
            stable.append(feature.name)
    assert sorted(stable) == sorted(data.feature_names)


def test_the_output_change_of_version_2_is_forward_compatible() -> None:
    old, new = wine.output_schema(False), wine.output_schema(True)
    assert new.fields[-1].name == "probability"
    # Readers of the old output can read the new one; not the other way round.
    assert compatibility(old, new) == Compatibility.FORWARD


# -- the driver's pure parts -------------------------------------------------------------------


def test_the_picture_option_is_found_when_a_command_offers_one() -> None:
    with_picture = argparse.ArgumentParser()
    with_picture.add_argument("--json", action="store_true")
    with_picture.add_argument("--picture", metavar="FILE.html")
    assert picture_option(with_picture) == "--picture"
    flags_only = argparse.ArgumentParser()
    flags_only.add_argument("--html", action="store_true")
    assert picture_option(flags_only) is None


def test_sink_environment_targets_the_catalog_or_atlas(tmp_path: Path) -> None:
    options = DemoOptions(work_dir=tmp_path, sink_group="g")
    local = sink_environment(options, "127.0.0.1:9092")
    assert local["SINK_TARGET"] == "local"
    assert local["SINK_CATALOG_PATH"] == str(tmp_path / "catalog.sqlite")
    assert local["SINK_GROUP_ID"] == "g"
    remote = sink_environment(
        options, "127.0.0.1:9092", registry_url="http://r", atlas=("http://a:21000", "u", "p")
    )
    assert remote["SINK_TARGET"] == "atlas-rest"
    assert (remote["ATLAS_URL"], remote["ATLAS_USERNAME"], remote["ATLAS_PASSWORD"]) == (
        "http://a:21000",
        "u",
        "p",
    )
    assert remote["SCHEMA_REGISTRY_URL"] == "http://r"
    assert "SINK_CATALOG_PATH" not in remote


def test_driver_options_are_checked() -> None:
    parser = run_parser()
    options = options_from_args(parser.parse_args(["--duration", "10"]))
    assert options.swap_after == 5.0
    for bad in (
        ["--duration", "0"],
        ["--error-rate", "2"],
        ["--duration", "10", "--swap-after", "10"],
    ):
        with pytest.raises(ValueError):
            options_from_args(parser.parse_args(bad))


# -- the pipeline against the real broker ------------------------------------------------------


def _rows(factory: RequestFactory, count: int) -> list[tuple[int, dict[str, float]]]:
    return [factory.row() for _ in range(count)]


def _get(catalog: LocalCatalog, type_name: str, qualified_name: str) -> StoredEntity:
    found = catalog.entity(type_name, qualified_name)
    assert found is not None, f"no {type_name} {qualified_name} in the catalog"
    return found


def _short_demo(tmp_path: Path, **settings: Any) -> DemoOptions:
    """A few seconds of the demo on topics and groups of its own."""
    run = uuid.uuid4().hex[:8]
    defaults: dict[str, Any] = {
        "rate": 20.0,
        "error_rate": 0.1,
        "window_seconds": 1.0,
        "work_dir": tmp_path,
        "input_topic": f"demo-requests.{run}",
        "output_topic": f"demo-scores.{run}",
        "control_topic": f"demo-models.{run}",
        "events_topic": f"demo-events.{run}",
        "dlq_topic": f"demo-events.{run}.dlq",
        "server_group": f"demo-scorer-{run}",
        "sink_group": f"demo-sink-{run}",
        "start_timeout": 60.0,
        "drain_timeout": 30.0,
    }
    return DemoOptions(**{**defaults, **settings})


@pytest.mark.integration
def test_a_short_demo_fills_the_catalog_with_versions_stats_schemas_and_lineage(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _short_demo(tmp_path, duration=5.0, swap_after_seconds=2.0, cluster="it")
    prepare_work_dir(options)
    create_topics(
        kafka_bootstrap,
        [
            options.input_topic,
            options.output_topic,
            options.control_topic,
            options.events_topic,
            options.dlq_topic,
        ],
    )
    progress = Progress(out=io.StringIO())
    sink_env = sink_environment(options, kafka_bootstrap)
    demo_run = DemoRun(options, kafka_bootstrap, progress, sink_env)
    result = demo_run.run()
    assert result.requests_sent == 100
    assert result.dead_letters == 0

    cluster, model = "it", options.model_name
    with LocalCatalog(options.catalog_path) as catalog:
        v1 = _get(catalog, MODEL_VERSION, naming.model_version(model, "1", cluster))
        v2 = _get(catalog, MODEL_VERSION, naming.model_version(model, "2", cluster))
        assert v1.attributes["status"] == "REPLACED"
        assert v1.attributes["statusReason"] == "replaced by version 2"
        assert v2.attributes["status"] == "LOADED"
        assert v2.attributes["replacesVersion"] == "1"
        assert v2.attributes["algorithm"] == "RandomForestClassifier"
        assert v2.attributes["hyperParameters"]["n_estimators"] == "120"
        assert v1.attributes["hyperParameters"]["n_estimators"] == "20"
        assert 0.85 < v2.attributes["metrics"]["test.accuracy"] <= 1.0
        assert v2.attributes["artifactUri"] == (
            (tmp_path / "publisher" / "models" / model / "2").resolve().as_uri()
        )
        assert v2.attributes["accessMode"].endswith("owner-only")
        assert v2.attributes["contentHash"].startswith("sha256:")
        assert "Confidential" in v2.classifications
        assert _get(catalog, MODEL, naming.model(model, cluster)).attributes["latestVersion"] == "2"

        # The training source, with its schema.
        csv_uri = (tmp_path / "publisher" / "data" / "wine.csv").resolve().as_uri()
        source = _get(catalog, FS_PATH, naming.uri_dataset(csv_uri, cluster))
        described = catalog.referrers(FS_PATH, source.qualified_name, "describes")
        assert [r.entity.type_name for r in described] == [DATA_SCHEMA]
        source_fields = [f["name"] for f in described[0].entity.attributes["fields"]]
        assert source_fields[-1] == "cultivar" and len(source_fields) == 14

        # The deployment, with live statistics of every request (the malformed ones as errors).
        deployment = _get(catalog, DEPLOYMENT, naming.deployment("wine-scorer", model, cluster))
        attrs = deployment.attributes
        assert attrs["status"] == "IN_SERVICE"
        assert attrs["currentVersion"] == "2"
        # Its live figures per version: every request counted once, in one version or the other.
        figures = [
            r.entity.attributes
            for r in catalog.referrers(DEPLOYMENT, deployment.qualified_name, "deployment")
        ]
        assert sorted(f["version"] for f in figures) == ["1", "2"]
        assert sum(f["lifetime"]["requests"] for f in figures) == result.requests_sent > 0
        assert sum(f["lifetime"]["errors"] for f in figures) == result.requests_malformed
        assert all(f["latestWindow"]["requests"] > 0 for f in figures)
        assert all(f["lifetime"]["latencyP50Seconds"] > 0 for f in figures)
        # The demo's ModelLoaded carries the training profile: every input feature is judged.
        assert all(len(f["features"]) == 13 for f in figures)
        assert all(f["driftVerdict"] != "no training profile" for f in figures)

        # The output schema change, announced by version 2.
        changes = catalog.find(SCHEMA_CHANGE)
        assert len(changes) == 1
        change = changes[0]
        assert change.attributes["side"] == "OUTPUT"
        assert change.attributes["compatibility"] == "FORWARD"
        assert change.references["modelVersion"] == v2.ref
        new_schema = change.references["newSchema"]
        assert isinstance(new_schema, Ref) and v2.references["outputSchema"] == new_schema
        fields = _get(catalog, DATA_SCHEMA, new_schema.qualified_name).attributes["fields"]
        assert [f["name"] for f in fields][-1] == "probability"

        # Lineage: source -> training -> model version -> deployment -> output topic.
        graph = catalog.lineage(MODEL_VERSION, v2.qualified_name, "BOTH", 3)
        training = Ref(TRAINING, naming.training(model, "2", cluster))
        output = Ref(KAFKA_TOPIC, naming.kafka_topic(options.output_topic, cluster))
        requests = Ref(KAFKA_TOPIC, naming.kafka_topic(options.input_topic, cluster))
        edges = {(r.from_entity_id, r.to_entity_id) for r in graph.relations}
        chain = [source.ref, training, v2.ref, deployment.ref, output]
        for upstream, downstream in itertools.pairwise(chain):
            assert (entity_key(upstream), entity_key(downstream)) in edges, (
                upstream,
                downstream,
                sorted(edges),
            )
        # The requests topic is the deployment's other input (a sibling of the model version).
        assert requests in deployment.references["inputs"]

    # The driver's last step answers from the same catalog.
    capsys.readouterr()
    picture, _ = show_report(options, sink_env, demo_run.base_env, progress)
    report = capsys.readouterr().out
    assert model in report
    if picture is not None:
        assert picture.is_file() and picture.stat().st_size > 0


@pytest.mark.integration
def test_the_demo_on_flink_serves_from_two_replicas_and_reports_both(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyflink")
    options = _short_demo(
        tmp_path,
        duration=8.0,
        swap_after_seconds=3.0,
        cluster="itf",
        engine="flink",
        start_timeout=300.0,
        drain_timeout=60.0,
    )
    prepare_work_dir(options)
    # Two request partitions: each of the job's two instances reads one.
    create_topics(kafka_bootstrap, [options.input_topic], partitions=2)
    create_topics(
        kafka_bootstrap,
        [options.output_topic, options.control_topic, options.events_topic, options.dlq_topic],
    )
    sink_env = sink_environment(options, kafka_bootstrap)
    demo_run = DemoRun(options, kafka_bootstrap, Progress(out=io.StringIO()), sink_env)
    result = demo_run.run()
    assert result.dead_letters == 0
    assert "replacing version 1" in result.swap_line

    model = options.model_name
    with LocalCatalog(options.catalog_path) as catalog:
        deployment = _get(catalog, DEPLOYMENT, naming.deployment("wine-scorer-flink", model, "itf"))
        # Cancelled at the end: every instance unloaded what it served.
        assert deployment.attributes["status"] == "STOPPED"
        assert deployment.attributes["serverKind"] == "flink"
        figures = {
            r.entity.attributes["version"]: r.entity.attributes
            for r in catalog.referrers(DEPLOYMENT, deployment.qualified_name, "deployment")
        }
        assert sorted(figures) == ["1", "2"]
        assert sum(f["lifetime"]["requests"] for f in figures.values()) == result.requests_sent
        assert all(len(f["replicas"]) == 2 for f in figures.values())
        v2 = _get(catalog, MODEL_VERSION, naming.model_version(model, "2", "itf"))
        assert v2.attributes["replacesVersion"] == "1"

    capsys.readouterr()
    show_report(options, sink_env, demo_run.base_env, Progress(out=io.StringIO()))
    report = capsys.readouterr().out
    assert "wine-scorer-flink" in report
    assert re.search(r"^\s+2\s+\d+\s+[\d.]+%.*\s2\s+\w+", report, re.M), report
