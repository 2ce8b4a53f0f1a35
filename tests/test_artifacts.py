"""Model facts read from real artifacts made here: MLflow models saved by mlflow, PMML exported
by nyoka, ONNX converted by skl2onnx, each trained on scikit-learn's bundled wine data."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import nyoka
import pandas as pd
import pytest
import sklearn
import yaml
from fastavro import schemaless_reader
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array, Map, Object, Property
from sklearn.datasets import load_wine
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from capture import contract
from capture.artifacts import (
    ArtifactError,
    ModelFacts,
    artifact_facts,
    content_digest,
    from_mlflow,
    from_pmml,
    posix_access_mode,
    read_mlflow,
    read_onnx,
    read_pmml,
)
from capture.events import (
    FeatureSummary,
    FieldSpec,
    Metric,
    ModelEvent,
    ModelType,
    Runtime,
    to_avro,
)
from capture.framing import encode_body
from capture.profile import profile_features
from tests.conftest import envelope

WINE = load_wine(as_frame=True)
X: pd.DataFrame = WINE.data
Y: pd.Series[int] = WINE.target
FEATURES: list[str] = list(WINE.feature_names)
RUN_ID = "4f6c1e2a9b3d4e5f8a7b6c5d4e3f2a1b"
RUNTIME = Runtime(language="python", language_version="3.11", host="test-host")
# What mlflow.sklearn would pin; naming them skips its ~2 s look through installed packages.
SKLEARN_REQUIREMENTS = [f"scikit-learn=={sklearn.__version__}", "cloudpickle"]

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_tree(top: Path) -> str:
    """The documented directory hash, written out independently of the implementation."""
    digest = hashlib.sha256()
    files = sorted((p.relative_to(top).as_posix().encode(), p) for p in top.rglob("*"))
    for rel, path in files:
        if path.is_file():
            data = path.read_bytes()
            digest.update(rel + b"\0" + len(data).to_bytes(8, "big") + data)
    return "sha256:" + digest.hexdigest()


def tree_size(top: Path) -> int:
    return sum(p.stat().st_size for p in top.rglob("*") if p.is_file())


def fields(facts: ModelFacts, side: str) -> list[tuple[str, str, bool]]:
    schema = facts.input_schema if side == "input" else facts.output_schema
    return [(f.name, f.type, f.nullable) for f in schema.fields]


@pytest.fixture(scope="module")
def wine_tree() -> DecisionTreeClassifier:
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)


# --- MLflow -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory, wine_tree: Any) -> Path:
    path = tmp_path_factory.mktemp("mlflow") / "wine"
    signature = infer_signature(X, wine_tree.predict(X), params={"threshold": 0.5})
    with warnings.catch_warnings():
        # MLflow's own pandas call warns under pandas 3; nothing this test can change.
        warnings.filterwarnings("ignore", "Operation with range is deprecated")
        mlflow.sklearn.save_model(
            wine_tree,
            str(path),
            signature=signature,
            input_example=X.head(2),
            # What log_model hands save_model inside a run: records the run and artifact
            # path without a tracking server.
            mlflow_model=Model(run_id=RUN_ID, artifact_path="wine-model"),
            # The default (skops) needs the skops package, which mlflow-skinny lacks.
            serialization_format="cloudpickle",
            pip_requirements=SKLEARN_REQUIREMENTS,
        )
    return path


def test_mlflow_sklearn_model(mlflow_dir: Path) -> None:
    facts = read_mlflow(mlflow_dir)
    saved = Model.load(str(mlflow_dir))
    written = yaml.safe_load((mlflow_dir / "MLmodel").read_text())

    assert facts.model_type == ModelType(
        framework="sklearn", framework_version=sklearn.__version__, flavor="sklearn"
    )
    assert fields(facts, "input") == [(name, "double", False) for name in FEATURES]
    assert facts.input_schema.schema_text == written["signature"]["inputs"]
    # infer_signature records the predicted labels as an unnamed int64 tensor
    assert fields(facts, "output") == [("output_0", "tensor<int64>[-1]", False)]
    assert facts.output_schema.fields[0].doc == "unnamed in the MLflow signature; position 0"
    assert facts.training.run_id == RUN_ID

    props = facts.properties
    assert props["artifact.format"] == "mlflow"
    assert props["mlflow.flavors"] == "python_function,sklearn"
    assert props["mlflow.loader_module"] == "mlflow.sklearn"
    assert props["mlflow.artifact_path"] == "wine-model"
    assert props["mlflow.model_uuid"] == saved.model_uuid
    assert props["mlflow.utc_time_created"] == saved.utc_time_created
    assert props["mlflow.version"] == mlflow.__version__
    assert props["mlflow.saved_input_example_info.artifact_path"] == "input_example.json"
    params = json.loads(props["mlflow.signature.params"])
    assert [(p["name"], p["type"], p["default"]) for p in params] == [("threshold", "double", 0.5)]

    artifact = facts.artifact
    assert artifact.uri == mlflow_dir.resolve().as_uri()
    assert artifact.scheme == "file"
    assert artifact.content_hash == sha256_tree(mlflow_dir)
    assert artifact.size_bytes == tree_size(mlflow_dir)
    assert artifact.encrypted_at_rest is None


def test_mlflow_accepts_the_mlmodel_file_itself(mlflow_dir: Path) -> None:
    assert read_mlflow(mlflow_dir / "MLmodel") == read_mlflow(mlflow_dir)


def test_mlflow_tensor_signature(tmp_path: Path) -> None:
    features = X.to_numpy(dtype="float32")
    model = DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, Y)
    path = tmp_path / "tensor-model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, model.predict_proba(features)),
        serialization_format="cloudpickle",
        pip_requirements=SKLEARN_REQUIREMENTS,
    )
    facts = read_mlflow(path)
    assert fields(facts, "input") == [("input_0", "tensor<float32>[-1,13]", False)]
    assert fields(facts, "output") == [("output_0", "tensor<float64>[-1,3]", False)]
    assert facts.training.run_id is None
    assert "mlflow.artifact_path" not in facts.properties


class Echo(PythonModel):
    # A DataFrame hint keeps MLflow 3 from replacing the given signature with one it infers
    # from the type hints.
    def predict(
        self, context: object, model_input: pd.DataFrame, params: object = None
    ) -> pd.DataFrame:
        return model_input


@pytest.mark.filterwarnings("ignore:.*An input example was not provided")
def test_mlflow_pyfunc_column_types(tmp_path: Path) -> None:
    inputs = Schema(
        [
            ColSpec("integer", "n"),
            ColSpec("long", "l"),
            ColSpec("float", "f"),
            ColSpec("double", "d"),
            ColSpec("boolean", "ok"),
            ColSpec("string", "s"),
            ColSpec("binary", "b"),
            ColSpec("datetime", "t", required=False),
            ColSpec(Array("double"), "arr"),
            ColSpec(Map("long"), "counts"),
            ColSpec(Object([Property("city", "string"), Property("zip", "integer")]), "addr"),
        ]
    )
    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=Echo(),
        signature=ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", "score")])),
        pip_requirements=["mlflow-skinny"],  # else inferred in a subprocess
    )
    facts = read_mlflow(path)
    assert facts.model_type == ModelType(
        framework="mlflow", framework_version=mlflow.__version__, flavor="python_function"
    )
    assert fields(facts, "input") == [
        ("n", "int", False),
        ("l", "long", False),
        ("f", "float", False),
        ("d", "double", False),
        ("ok", "boolean", False),
        ("s", "string", False),
        ("b", "bytes", False),
        ("t", "timestamp", True),
        ("arr", "array<double>", False),
        ("counts", "map<string,long>", False),
        ("addr", "record<city:string,zip:int>", False),
    ]
    assert fields(facts, "output") == [("score", "double", False)]
    assert facts.properties["mlflow.loader_module"] == "mlflow.pyfunc.model"


def test_mlflow_without_signature(tmp_path: Path, wine_tree: Any) -> None:
    path = tmp_path / "unsigned"
    mlflow.sklearn.save_model(
        wine_tree,
        str(path),
        serialization_format="cloudpickle",
        pip_requirements=SKLEARN_REQUIREMENTS,
    )
    facts = read_mlflow(path)
    assert facts.input_schema.fields == [] and facts.input_schema.schema_text is None
    assert facts.output_schema.fields == []


def write_mlmodel(target: Path, text: str) -> Path:
    target.mkdir()
    (target / "MLmodel").write_text(text)
    return target


def test_mlflow_errors_name_file_and_key(tmp_path: Path, mlflow_dir: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no such file or directory; expected an MLflow"):
        read_mlflow(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty: no MLmodel file in this directory"):
        read_mlflow(tmp_path / "empty")
    with pytest.raises(ArtifactError, match=r"got a file named 'model.pkl'"):
        read_mlflow(mlflow_dir / "model.pkl")

    bad = write_mlmodel(tmp_path / "bad-yaml", "flavors: [sklearn\nrun_id: x\n")
    with pytest.raises(ArtifactError, match=r"bad-yaml/MLmodel: malformed YAML \(.*line 2"):
        read_mlflow(bad)
    listed = write_mlmodel(tmp_path / "list", "- flavors\n")
    with pytest.raises(ArtifactError, match=r"expected a YAML mapping .* got list"):
        read_mlflow(listed)
    no_flavors = write_mlmodel(tmp_path / "no-flavors", "run_id: abc\n")
    with pytest.raises(ArtifactError, match=r"no-flavors/MLmodel: missing key 'flavors'"):
        read_mlflow(no_flavors)

    doc = yaml.safe_load((mlflow_dir / "MLmodel").read_text())
    doc["signature"]["inputs"] = '[{"type": "double", "name": "alcohol"'
    broken = write_mlmodel(tmp_path / "bad-json", yaml.safe_dump(doc))
    with pytest.raises(ArtifactError, match=r"key 'signature.inputs' is not valid JSON"):
        read_mlflow(broken)
    doc["signature"]["inputs"] = '[{"name": "alcohol"}]'
    untyped = write_mlmodel(tmp_path / "untyped", yaml.safe_dump(doc))
    with pytest.raises(ArtifactError, match=r"signature.inputs\[0\] must be a column or tensor"):
        read_mlflow(untyped)


def test_mlflow_without_pyyaml(mlflow_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` fail
    with pytest.raises(ImportError, match=r"needs PyYAML.*pip install PyYAML"):
        read_mlflow(mlflow_dir)


# --- PMML ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pmml_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pmml") / "wine-tree.pmml"
    pipeline = Pipeline([("clf", DecisionTreeClassifier(max_depth=3, random_state=0))])
    nyoka.skl_to_pmml(pipeline.fit(X, Y), FEATURES, "cultivar", str(path))
    return path


def test_pmml_tree_from_nyoka(pmml_tree: Path) -> None:
    facts = read_pmml(pmml_tree)
    assert facts.training_profile == []  # nyoka writes no ModelStats
    assert facts.model_type == ModelType(
        framework="Nyoka",
        framework_version=nyoka.__version__,
        flavor="pmml",
        algorithm="TreeModel",
        task="classification",
    )
    # PMML scores records with missing values unless told otherwise: inputs are nullable
    assert fields(facts, "input") == [(name, "double", True) for name in FEATURES]
    assert facts.input_schema.fields[0].doc == "optype continuous"
    assert fields(facts, "output") == [
        ("cultivar", "int", False),
        ("probability_0", "double", False),
        ("probability_1", "double", False),
        ("probability_2", "double", False),
        ("predicted_cultivar", "int", False),
    ]
    assert facts.output_schema.fields[0].doc == "optype categorical; values 0, 1, 2"
    assert facts.output_schema.fields[1].doc == "feature probability; value 0"
    assert facts.artifact.content_hash == sha256_file(pmml_tree)
    assert facts.artifact.size_bytes == pmml_tree.stat().st_size
    assert facts.artifact.uri == pmml_tree.resolve().as_uri()
    assert facts.properties["pmml.model_name"] == "DecisionTreeClassifier"
    assert facts.properties["pmml.version"].startswith("4.")


def test_pmml_regression_from_nyoka(tmp_path: Path) -> None:
    features = [name for name in FEATURES if name != "alcohol"]
    pipeline = Pipeline([("reg", LinearRegression())]).fit(X[features], X["alcohol"])
    path = tmp_path / "alcohol.pmml"
    nyoka.skl_to_pmml(pipeline, features, "alcohol", str(path))
    facts = read_pmml(path)
    assert (facts.model_type.algorithm, facts.model_type.task) == ("RegressionModel", "regression")
    assert [f.name for f in facts.input_schema.fields] == features
    assert fields(facts, "output") == [
        ("alcohol", "double", False),
        ("predicted_alcohol", "double", False),
    ]


# Written per the DMG PMML 4.x schema; exercises what the nyoka export does not.
HAND_WRITTEN = """<?xml version="1.0" encoding="UTF-8"?>
<PMML {xmlns} version="{version}">
  <Header description="hand-written wine scorer"><Timestamp> 2026-11-28 </Timestamp></Header>
  <DataDictionary numberOfFields="4">
    <DataField name="alcohol" optype="continuous" dataType="double"/>
    <DataField name="harvest" optype="continuous" dataType="dateDaysSince[1970]"/>
    <DataField name="region" optype="categorical" dataType="string">
      <Value value="north"/><Value value="south"/>
    </DataField>
    <DataField name="premium" optype="categorical" dataType="boolean"/>
  </DataDictionary>
  <TransformationDictionary>
    <DerivedField name="alcohol_x10" optype="continuous" dataType="float">
      <Apply function="*"><FieldRef field="alcohol"/><Constant>10</Constant></Apply>
    </DerivedField>
  </TransformationDictionary>
  <MiningModel modelName="ensemble" functionName="classification" algorithmName="boosting">
    <MiningSchema>
      <MiningField name="alcohol"/>
      <MiningField name="harvest" missingValueTreatment="returnInvalid"/>
      <MiningField name="region" usageType="supplementary"/>
      <MiningField name="alcohol_x10" usageType="active"/>
      <MiningField name="premium" usageType="predicted"/>
    </MiningSchema>
    <Output>
      <OutputField name="p_true" feature="probability" value="true"/>
      <OutputField name="label" feature="predictedValue"/>
      <OutputField name="premium" feature="predictedValue"/>
    </Output>
    <ModelStats>
      <UnivariateStats field="alcohol">
        <Counts totalFreq="178" missingFreq="2" invalidFreq="0"/>
        <NumericInfo minimum="11.03" maximum="14.83" mean="13.0" standardDeviation="0.81"/>
      </UnivariateStats>
      <UnivariateStats field="alcohol"><Counts totalFreq="1"/></UnivariateStats>
      <UnivariateStats field="harvest" weighted="1"><Counts totalFreq="177.6"/></UnivariateStats>
      <UnivariateStats field="alcohol_x10">
        <Counts totalFreq="178"/><NumericInfo minimum="110.3" mean="INF"/>
      </UnivariateStats>
      <UnivariateStats field="region"><Counts totalFreq="178"/></UnivariateStats>
      <UnivariateStats field="premium"><Counts totalFreq="178"/></UnivariateStats>
    </ModelStats>
    <Segmentation multipleModelMethod="majorityVote"/>
  </MiningModel>
  <RegressionModel modelName="linear" functionName="regression" isScorable="false">
    <MiningSchema><MiningField name="alcohol" usageType="target"/></MiningSchema>
    <RegressionTable intercept="13.0"/>
  </RegressionModel>
</PMML>
"""


@pytest.mark.parametrize(
    ("xmlns", "version"),
    [
        ('xmlns="http://www.dmg.org/PMML-4_4"', "4.4"),
        ('xmlns="http://www.dmg.org/PMML-4_2"', "4.2"),
        ('xmlns:p="http://www.dmg.org/PMML-4_3"', "4.3"),  # prefixed root, unqualified body
        ("", "4.1"),
    ],
)
def test_pmml_any_namespace(tmp_path: Path, xmlns: str, version: str) -> None:
    path = tmp_path / "hand.pmml"
    text = HAND_WRITTEN.format(xmlns=xmlns, version=version)
    if xmlns.startswith("xmlns:p"):
        text = text.replace("<PMML ", "<p:PMML ").replace("</PMML>", "</p:PMML>")
    path.write_text(text)
    facts = read_pmml(path)
    assert facts.model_type == ModelType(
        framework="pmml", flavor="pmml", algorithm="boosting", task="classification"
    )
    assert fields(facts, "input") == [
        ("alcohol", "double", True),
        ("harvest", "int", False),
        ("alcohol_x10", "float", True),
    ]
    assert facts.input_schema.fields[1].doc == "optype continuous; days since 1970-01-01"
    assert fields(facts, "output") == [
        ("premium", "boolean", False),
        ("p_true", "double", False),
        ("label", "boolean", False),
    ]
    assert facts.properties["pmml.version"] == version
    assert facts.properties["pmml.header.timestamp"] == "2026-11-28"
    # ModelStats of the active inputs with Counts (the first of a field's): no sketch in PMML.
    assert facts.training_profile == [
        FeatureSummary(name="alcohol", count=178, null_count=2, min=11.03, max=14.83, mean=13.0),
        FeatureSummary(name="alcohol_x10", count=178, min=110.3),  # an INF mean says nothing
        FeatureSummary(name="harvest", count=178),  # weighted: 177.6, rounded
    ]
    assert facts.model_loaded(runtime=RUNTIME).training_profile == facts.training_profile

    second = read_pmml(path, model_name="linear")
    assert second.model_type.algorithm == "RegressionModel"
    assert second.model_type.task == "regression"
    assert second.properties["pmml.is_scorable"] == "false"
    assert fields(second, "output") == [("alcohol", "double", False)]


def test_pmml_errors(tmp_path: Path, pmml_tree: Path) -> None:
    with pytest.raises(ArtifactError, match=r"absent.pmml: no such file; expected a PMML"):
        read_pmml(tmp_path / "absent.pmml")

    truncated = tmp_path / "truncated.pmml"
    truncated.write_bytes(pmml_tree.read_bytes()[:1500])
    with pytest.raises(ArtifactError, match=r"truncated.pmml: malformed XML at line \d+, column"):
        read_pmml(truncated)

    html = tmp_path / "page.pmml"
    html.write_text("<html><body>not a model</body></html>")
    with pytest.raises(ArtifactError, match=r"root element is <html>, expected <PMML>"):
        read_pmml(html)

    hand = tmp_path / "hand.pmml"
    hand.write_text(HAND_WRITTEN.format(xmlns="", version="4.4"))
    with pytest.raises(ArtifactError, match=r"no model with modelName='forest'; found \['ens"):
        read_pmml(hand, model_name="forest")

    undeclared = tmp_path / "undeclared.pmml"
    undeclared.write_text(
        HAND_WRITTEN.format(xmlns="", version="4.4").replace(
            '<MiningField name="alcohol"/>', '<MiningField name="acidity"/>'
        )
    )
    with pytest.raises(ArtifactError, match=r"MiningField 'acidity' is declared neither"):
        read_pmml(undeclared)

    for counts, message in (
        ('totalFreq="5" missingFreq="9"', r"missingFreq 9 > totalFreq 5; expected the total to"),
        ('missingFreq="1"', r"UnivariateStats 'alcohol' <Counts> has no 'totalFreq'; PMML requ"),
        ('totalFreq="many"', r"<Counts> has totalFreq='many'; expected a number"),
        ('totalFreq="-1"', r"<Counts> has totalFreq=-1.0; expected a count, at least 0"),
    ):
        broken = tmp_path / "stats.pmml"
        broken.write_text(
            HAND_WRITTEN.format(xmlns="", version="4.4").replace(
                'totalFreq="178" missingFreq="2" invalidFreq="0"', counts
            )
        )
        with pytest.raises(ArtifactError, match=message):
            read_pmml(broken)


# --- ONNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    onnx = pytest.importorskip("onnx")
    skl2onnx = pytest.importorskip("skl2onnx")
    features = X.to_numpy(dtype="float32")
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(features, Y)
    path = tmp_path_factory.mktemp("onnx") / "wine.onnx"
    onnx.save(skl2onnx.to_onnx(model, features[:1]), str(path))
    return path


def test_onnx_from_skl2onnx(onnx_file: Path) -> None:
    onnx = pytest.importorskip("onnx")
    skl2onnx = pytest.importorskip("skl2onnx")
    opset = {o.domain or "ai.onnx": o.version for o in onnx.load(str(onnx_file)).opset_import}

    facts = read_onnx(onnx_file)
    assert facts.model_type == ModelType(
        framework="onnx",
        framework_version=str(opset["ai.onnx"]),
        algorithm="TreeEnsembleClassifier",
        task="classification",
    )
    assert fields(facts, "input") == [("X", "tensor<float32>[-1,13]", False)]
    assert fields(facts, "output") == [
        ("output_label", "tensor<int64>[-1]", False),
        ("output_probability", "sequence<map<int64,tensor<float32>>>", False),
    ]
    assert facts.properties["onnx.producer_name"] == "skl2onnx"
    assert facts.properties["onnx.producer_version"] == skl2onnx.__version__
    assert facts.properties["onnx.opset"] == ",".join(f"{d}={v}" for d, v in sorted(opset.items()))
    assert facts.artifact.content_hash == sha256_file(onnx_file)
    assert facts.artifact.size_bytes == onnx_file.stat().st_size


def test_onnx_weights_listed_as_inputs_and_external_data(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    # from_array stores raw bytes, which is what save_model moves to external data
    weights = numpy_helper.from_array(np.full((13, 1), 0.1, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["score"])],
        "linear",
        # IR 3 style: the weight is an initializer and a graph input
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 13]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [13, 1]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, producer_name="hand", opset_imports=[helper.make_opsetid("", 13)]
    )
    folder = tmp_path / "linear"
    folder.mkdir()
    onnx.save_model(
        model,
        str(folder / "linear.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )

    alone = read_onnx(folder / "linear.onnx")
    assert fields(alone, "input") == [("X", "tensor<float32>[-1,13]", False)]
    assert alone.input_schema.fields[0].doc == "symbolic dims 0=batch"
    assert (alone.model_type.algorithm, alone.model_type.task) == (None, None)
    assert alone.properties["onnx.external_data"] == "weights.bin"
    assert alone.artifact.content_hash == sha256_file(folder / "linear.onnx")

    whole = read_onnx(folder)
    assert whole.artifact.content_hash == sha256_tree(folder)
    assert whole.artifact.size_bytes == tree_size(folder)
    assert "onnx.external_data" not in whole.properties


def test_onnx_errors(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model \x00\xff\xfe")
    with pytest.raises(ArtifactError, match=r"garbage.onnx: not an ONNX model"):
        read_onnx(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty.onnx: not an ONNX model \(no graph"):
        read_onnx(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ArtifactError, match=r"nothing: a directory with 0 .onnx files"):
        read_onnx(tmp_path / "nothing")


def test_onnx_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"needs the onnx package.*servemeta\[onnx\]"):
        read_onnx(tmp_path / "model.onnx")


# --- artifact facts -----------------------------------------------------------------------


def test_file_digest_is_plain_sha256(pmml_tree: Path) -> None:
    digest = content_digest(pmml_tree)
    assert digest.content_hash == sha256_file(pmml_tree)
    assert (digest.size_bytes, digest.file_count) == (pmml_tree.stat().st_size, 1)


def test_directory_digest_covers_names_and_boundaries(tmp_path: Path) -> None:
    one = tmp_path / "one"
    (one / "sub").mkdir(parents=True)
    (one / "a").write_bytes(b"ab")
    (one / "sub" / "b").write_bytes(b"c")
    (one / "empty-dir").mkdir()
    digest = content_digest(one)
    assert digest.content_hash == sha256_tree(one)
    assert (digest.size_bytes, digest.file_count) == (3, 2)

    (one / "a").write_bytes(b"a")  # same bytes overall, moved across the file boundary
    (one / "sub" / "b").write_bytes(b"bc")
    moved = content_digest(one).content_hash
    assert moved != digest.content_hash
    (one / "sub" / "b").rename(one / "sub" / "renamed")  # same bytes, another name
    renamed = content_digest(one).content_hash
    assert renamed != moved
    assert renamed == sha256_tree(one)


@posix_only
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o600, "posix 0600 owner-only"),
        (0o640, "posix 0640 group-readable"),
        (0o644, "posix 0644 world-readable"),
        (0o664, "posix 0664 world-readable group-writable"),
        (0o666, "posix 0666 world-readable world-writable"),
    ],
)
def test_file_access_mode(tmp_path: Path, mode: int, expected: str) -> None:
    path = tmp_path / "model.pmml"
    path.write_text("x")
    path.chmod(mode)
    assert posix_access_mode(path) == expected
    assert artifact_facts(path).access_mode == expected


@posix_only
def test_directory_access_mode(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights").write_text("w")
    (folder / "weights").chmod(0o644)
    folder.chmod(0o700)  # others cannot reach the readable file
    assert posix_access_mode(folder) == "posix dir 0700 files 0644 owner-only"
    folder.chmod(0o757)
    assert posix_access_mode(folder) == "posix dir 0757 files 0644 world-readable world-writable"


def test_artifact_uri_override(pmml_tree: Path) -> None:
    remote = artifact_facts(pmml_tree, uri="s3://models/wine/3/wine.pmml", encrypted_at_rest=True)
    assert (remote.scheme, remote.access_mode, remote.encrypted_at_rest) == ("s3", None, True)
    assert remote.content_hash == sha256_file(pmml_tree)
    told = artifact_facts(pmml_tree, uri="s3://models/wine.pmml", access_mode="iam-role")
    assert told.access_mode == "iam-role"
    with pytest.raises(ArtifactError, match=r"artifact uri 'models/wine.pmml' has no scheme"):
        artifact_facts(pmml_tree, uri="models/wine.pmml")
    with pytest.raises(ArtifactError, match=r"gone: no such file or directory"):
        artifact_facts(pmml_tree.parent / "gone")


@posix_only
def test_special_files_and_link_loops_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "loop").symlink_to(folder)
    with pytest.raises(ArtifactError, match=r"loops back to a directory that contains it"):
        content_digest(folder)
    (folder / "loop").unlink()
    os.mkfifo(folder / "pipe")
    with pytest.raises(ArtifactError, match=r"pipe: neither a regular file nor a directory"):
        content_digest(folder)


# --- ModelLoaded --------------------------------------------------------------------------


def test_model_loaded_overrides_merge_properties(mlflow_dir: Path) -> None:
    facts = read_mlflow(mlflow_dir)
    loaded = facts.model_loaded(
        runtime=RUNTIME,
        owner="team-wine",
        metrics=[Metric(name="accuracy", value=0.97, split="test")],
        training=dataclasses.replace(facts.training, run_url=f"https://mlflow/runs/{RUN_ID}"),
        properties={"team": "wine", "mlflow.artifact_path": "renamed"},
    )
    assert loaded.owner == "team-wine"
    assert loaded.training.run_id == RUN_ID
    assert loaded.properties["team"] == "wine"
    assert loaded.properties["mlflow.artifact_path"] == "renamed"  # the caller wins
    assert loaded.properties["mlflow.model_uuid"] == facts.properties["mlflow.model_uuid"]
    assert loaded.input_schema == facts.input_schema and loaded.runtime == RUNTIME
    assert from_mlflow(mlflow_dir, runtime=RUNTIME).artifact == facts.artifact
    # An MLflow model directory keeps no statistics of its training data: the trainer's pass.
    assert facts.training_profile == []
    profile = profile_features({"alcohol": X["alcohol"]})
    assert from_mlflow(mlflow_dir, runtime=RUNTIME, training_profile=profile).training_profile == (
        profile
    )

    with pytest.raises(TypeError, match=r"unexpected ModelLoaded override\(s\) \['ownr'\]"):
        facts.model_loaded(runtime=RUNTIME, ownr="x")  # type: ignore[call-arg]


@pytest.mark.parametrize("source", ["mlflow_dir", "pmml_tree", "onnx_file"])
def test_events_fit_the_avro_contract(request: pytest.FixtureRequest, source: str) -> None:
    path: Path = request.getfixturevalue(source)
    readers = {"mlflow_dir": read_mlflow, "pmml_tree": read_pmml, "onnx_file": read_onnx}
    # What none of these artifacts keeps, the trainer passes: its training data's profile.
    profile = profile_features({name: X[name] for name in FEATURES})
    loaded = readers[source](path).model_loaded(
        runtime=RUNTIME, tags=["wine"], training_profile=profile
    )
    assert loaded.training_profile == profile
    event = ModelEvent(envelope=envelope(), payload=loaded)
    parsed = contract.current().parsed
    record = to_avro(event)
    decoded = schemaless_reader(io.BytesIO(encode_body(parsed, record)), parsed)
    assert isinstance(decoded, dict)
    assert decoded["payload"]["artifact"]["content_hash"] == loaded.artifact.content_hash
    assert len(decoded["payload"]["input_schema"]["fields"]) == len(loaded.input_schema.fields)
    decoded_profile = decoded["payload"]["training_profile"]
    assert [f["name"] for f in decoded_profile] == sorted(FEATURES)
    assert decoded_profile == [dataclasses.asdict(f) for f in profile]


def test_from_pmml_builds_the_event(pmml_tree: Path) -> None:
    loaded = from_pmml(pmml_tree, runtime=RUNTIME, uri="s3://models/wine.pmml")
    assert loaded.artifact.uri == "s3://models/wine.pmml"
    assert loaded.input_schema.fields[0] == FieldSpec(
        name="alcohol", type="double", nullable=True, doc="optype continuous"
    )
