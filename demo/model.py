"""The demo's model: a random forest trained on scikit-learn's bundled wine data (no download).

Everything the catalog should learn about a version comes from here, from the real objects:
the training data written as a CSV (with its schema), the hyper-parameters, train and test
metrics, the profile of the training split (per feature: counts, extremes, mean and a sketch
of its distribution, which the sink compares the served inputs with), the saved artifact
(hash, size, permissions) and the input and output schemas. The same seed gives the same
split, the same forest and the same run id, so two runs of the demo describe the same model.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from capture.artifacts import ModelFacts, artifact_facts, read_mlflow
from capture.dataschema import data_schema
from capture.events import (
    DataSchema,
    DataSource,
    FeatureSummary,
    FieldSpec,
    Metric,
    ModelLoaded,
    ModelType,
    Runtime,
    Training,
)
from capture.profile import profile_features

ALGORITHM = "RandomForestClassifier"
TASK = "classification"
TARGET = "cultivar"
TEST_FRACTION = 0.25

# Two versions that differ only by hyper-parameters: the demo swaps the first for the second.
V1_PARAMS: dict[str, Any] = {"n_estimators": 20, "max_depth": 3, "min_samples_leaf": 3}
V2_PARAMS: dict[str, Any] = {"n_estimators": 120, "max_depth": None, "min_samples_leaf": 1}

ArtifactFormat = Literal["auto", "mlflow", "joblib"]

log = logging.getLogger("demo.model")


@dataclass(frozen=True)
class WineData:
    """The wine data set: 178 rows, 13 numeric features, three cultivars."""

    features: npt.NDArray[np.float64]
    target: npt.NDArray[np.int64]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]


def load_data() -> WineData:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return WineData(
        features=np.asarray(bunch.data, dtype=np.float64),
        target=np.asarray(bunch.target, dtype=np.int64),
        feature_names=tuple(str(n) for n in bunch.feature_names),
        class_names=tuple(str(n) for n in bunch.target_names),
    )


@dataclass(frozen=True)
class TrainedModel:
    version: str
    estimator: Any  # a fitted sklearn RandomForestClassifier (scikit-learn ships no types)
    hyper_parameters: dict[str, str]
    metrics: list[Metric]
    feature_names: tuple[str, ...]
    run_id: str
    seed: int
    training_profile: list[FeatureSummary]

    def score(self, rows: npt.NDArray[np.float64]) -> list[tuple[int, float]]:
        """(predicted cultivar, its probability) per row, columns in ``feature_names`` order."""
        return classify(self.estimator, rows)


def classify(estimator: Any, rows: npt.ArrayLike) -> list[tuple[int, float]]:
    """(predicted class, its probability) per row of a fitted classifier."""
    probabilities = estimator.predict_proba(np.asarray(rows, dtype=np.float64))
    best = np.argmax(probabilities, axis=1)
    classes = estimator.classes_
    return [(int(classes[i]), float(probabilities[row, i])) for row, i in enumerate(best.tolist())]


def run_id_of(version: str, params: Mapping[str, Any], seed: int, data: WineData) -> str:
    """A training run id derived from what determines the model, so reruns agree."""
    digest = hashlib.sha256()
    digest.update(json.dumps([version, dict(params), seed], sort_keys=True).encode())
    digest.update(data.features.tobytes())
    digest.update(data.target.tobytes())
    return digest.hexdigest()[:32]


def train(version: str, params: Mapping[str, Any], *, seed: int, data: WineData) -> TrainedModel:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        data.features, data.target, test_size=TEST_FRACTION, random_state=seed, stratify=data.target
    )
    # One job: parallel trees would make scoring latency depend on the machine's cores.
    estimator = RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    estimator.fit(x_train, y_train)
    metrics = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        predicted = estimator.predict(x)
        metrics.append(
            Metric(name="accuracy", value=float(accuracy_score(y, predicted)), split=split)
        )
        metrics.append(
            Metric(
                name="f1_macro", value=float(f1_score(y, predicted, average="macro")), split=split
            )
        )
    hyper_parameters = {k: str(v) for k, v in sorted(params.items())}
    hyper_parameters.update(random_state=str(seed), test_fraction=str(TEST_FRACTION))
    return TrainedModel(
        version=version,
        estimator=estimator,
        hyper_parameters=hyper_parameters,
        metrics=metrics,
        feature_names=data.feature_names,
        run_id=run_id_of(version, params, seed, data),
        seed=seed,
        # What the forest learnt from: the training split, not the held-out test rows.
        training_profile=profile_features(
            {name: x_train[:, i] for i, name in enumerate(data.feature_names)}
        ),
    )


# -- schemas -------------------------------------------------------------------------------


def input_schema(feature_names: Sequence[str]) -> DataSchema:
    return data_schema(FieldSpec(name=name, type="double") for name in feature_names)


def output_schema(with_probability: bool) -> DataSchema:
    fields = [
        FieldSpec(name="request_id", type="string", doc="the request's id, echoed"),
        FieldSpec(name=TARGET, type="long", doc="predicted cultivar: 0, 1 or 2"),
        FieldSpec(name="model_version", type="string", doc="the model version that scored"),
    ]
    if with_probability:
        fields.append(
            FieldSpec(name="probability", type="double", doc="probability of the prediction")
        )
    return data_schema(fields)


def training_data_schema(feature_names: Sequence[str]) -> DataSchema:
    fields = [FieldSpec(name=name, type="double") for name in feature_names]
    fields.append(FieldSpec(name=TARGET, type="long", doc="cultivar label: 0, 1 or 2"))
    return data_schema(fields)


# -- files ---------------------------------------------------------------------------------


def write_training_csv(data: WineData, path: Path) -> DataSource:
    """The training data as a CSV file, described as a capture DataSource."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*data.feature_names, TARGET])
        for row, label in zip(data.features.tolist(), data.target.tolist(), strict=True):
            writer.writerow([*(repr(v) for v in row), label])
    return DataSource(
        uri=path.resolve().as_uri(),
        name="wine (scikit-learn bundled copy of the UCI wine data set)",
        format="csv",
        schema=training_data_schema(data.feature_names),
    )


def resolve_format(requested: ArtifactFormat) -> Literal["mlflow", "joblib"]:
    if requested != "auto":
        return requested
    # MLflow's sklearn flavor also needs pandas, which mlflow-skinny does not install.
    has_mlflow = all(importlib.util.find_spec(m) is not None for m in ("mlflow", "pandas"))
    return "mlflow" if has_mlflow else "joblib"


def save_artifact(model: TrainedModel, directory: Path, fmt: ArtifactFormat = "auto") -> ModelFacts:
    """Write the model under ``directory`` (replaced if present) and read its facts back.

    The directory is made owner-only (0700, files 0600): a model file is code a loader runs,
    so the catalog should see storage that only the serving user can read or replace.
    """
    chosen = resolve_format(fmt)
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if chosen == "mlflow":
        _save_mlflow(model, directory)
    else:
        _save_joblib(model, directory)
    _owner_only(directory)
    if chosen == "mlflow":
        facts = read_mlflow(directory)
        # MLflow records the framework and the input columns (the same fingerprint as
        # input_schema()); the algorithm, the task and the output record the server writes
        # (MLflow knows only an unnamed column) are ours to add.
        return dataclasses.replace(
            facts,
            model_type=dataclasses.replace(facts.model_type, algorithm=ALGORITHM, task=TASK),
            output_schema=output_schema(with_probability=False),
        )
    import sklearn

    return ModelFacts(
        model_type=ModelType(
            framework="sklearn",
            framework_version=sklearn.__version__,
            flavor="joblib",
            algorithm=ALGORITHM,
            task=TASK,
        ),
        artifact=artifact_facts(directory),
        input_schema=input_schema(model.feature_names),
        output_schema=output_schema(with_probability=False),
        training=Training(run_id=model.run_id),
        properties={"artifact.format": "joblib"},
    )


def _save_joblib(model: TrainedModel, directory: Path) -> None:
    import joblib

    directory.mkdir()
    joblib.dump(model.estimator, directory / "model.joblib")
    meta = {
        "version": model.version,
        "feature_names": list(model.feature_names),
        "hyper_parameters": model.hyper_parameters,
        "run_id": model.run_id,
    }
    (directory / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _save_mlflow(model: TrainedModel, directory: Path) -> None:
    import mlflow.sklearn
    import pandas as pd
    import sklearn
    from mlflow.models import Model, infer_signature

    # A one-row frame of doubles is all the signature needs: named double inputs, long output.
    columns = list(model.feature_names)
    sample = pd.DataFrame(np.zeros((1, len(columns))), columns=columns)
    signature = infer_signature(sample, np.zeros(1, dtype=np.int64))
    mlflow_logger = logging.getLogger("mlflow")
    previous = mlflow_logger.level
    # cloudpickle because mlflow-skinny lacks skops (the default); MLflow warns about pickle
    # on every save, which the demo has chosen knowingly.
    mlflow_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.sklearn.save_model(
                model.estimator,
                str(directory),
                signature=signature,
                # What log_model hands save_model inside a run: the run id without a server.
                mlflow_model=Model(run_id=model.run_id, artifact_path=f"model-{model.version}"),
                serialization_format="cloudpickle",
                # Named, so MLflow does not spend seconds inferring them from the environment.
                pip_requirements=[f"scikit-learn=={sklearn.__version__}", "cloudpickle"],
            )
    finally:
        mlflow_logger.setLevel(previous)


def _owner_only(directory: Path) -> None:
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), stat.S_IRWXU)
        for name in files:
            os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IWUSR)
    os.chmod(directory, stat.S_IRWXU)


def model_loaded(
    model: TrainedModel,
    facts: ModelFacts,
    *,
    source: DataSource,
    runtime: Runtime,
    inputs: list[str],
    outputs: list[str],
    owner: str,
    with_probability: bool,
    replaces_version: str | None = None,
) -> ModelLoaded:
    """The ModelLoaded a server announces for this model: the artifact's facts plus what only
    the server knows (its topics, its output format, who owns it)."""
    return facts.model_loaded(
        runtime=runtime,
        training=dataclasses.replace(
            facts.training,
            sources=[source],
            run_id=facts.training.run_id or model.run_id,
            hyper_parameters=model.hyper_parameters,
        ),
        output_schema=output_schema(with_probability),
        metrics=list(model.metrics),
        inputs=inputs,
        outputs=outputs,
        owner=owner,
        tags=["demo", "wine", "random-forest"],
        # Predictions are the company's, not the public's: Confidential propagates from the
        # model to the deployment and the output topic along lineage.
        classifications=["Confidential"],
        replaces_version=replaces_version,
        properties={"demo.seed": str(model.seed), "demo.model_version": model.version},
        training_profile=model.training_profile,
    )
