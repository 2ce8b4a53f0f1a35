"""Model facts from an MLflow model directory (its ``MLmodel`` file).

Needs PyYAML, which the emitter does not require: it is imported only when an MLmodel is read.
MLflow itself is not needed; the MLmodel format is read as MLflow writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack

from capture.artifacts._common import (
    ArtifactError,
    LoadedOverrides,
    ModelFacts,
    StrPath,
    artifact_facts,
    schema_of,
)
from capture.events import FieldSpec, ModelLoaded, ModelType, Runtime, Training

MLMODEL = "MLmodel"
PYFUNC = "python_function"

# MLflow DataType names -> Avro-style names (MLflow's integer is 32-bit, its datetime a timestamp)
_COLUMN_TYPES = {
    "double": "double",
    "float": "float",
    "long": "long",
    "integer": "int",
    "boolean": "boolean",
    "string": "string",
    "binary": "bytes",
    "datetime": "timestamp",
    "any": "any",
    "sparkml_vector": "array<double>",
}

# Top-level MLmodel keys copied into properties as mlflow.<key> when present.
_TOP_LEVEL_PROPERTIES = (
    "model_uuid",
    "model_id",
    "utc_time_created",
    "artifact_path",
    "mlflow_version",
    "model_size_bytes",
    "databricks_runtime",
)


def read_mlflow(
    path: StrPath,
    *,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
) -> ModelFacts:
    """Facts of the MLflow model at ``path``: its directory, or the MLmodel file in it.

    The artifact (hash, size, permissions) is the whole model directory. ``uri``,
    ``access_mode`` and ``encrypted_at_rest`` are as in ``artifact_facts``.
    """
    mlmodel = _locate(Path(path))
    doc = _load(mlmodel)
    flavors = _mapping(doc, "flavors", mlmodel)
    if not flavors:
        raise ArtifactError(
            f"{mlmodel}: key 'flavors' is empty; expected at least one flavor "
            "(e.g. sklearn, python_function) as mlflow.<flavor>.save_model records"
        )
    flavor = _primary_flavor(flavors)
    config = _mapping(flavors, flavor, mlmodel, where="flavors.")
    if flavor == PYFUNC:
        # A custom pyfunc has no framework of its own: MLflow is what loads and runs it.
        framework, version = "mlflow", _str_or_none(doc.get("mlflow_version"))
    else:
        framework, version = flavor, _framework_version(config)

    signature = _mapping(doc, "signature", mlmodel, required=False)
    inputs, inputs_text = _signature_side(signature, "inputs", mlmodel)
    outputs, outputs_text = _signature_side(signature, "outputs", mlmodel)

    return ModelFacts(
        model_type=ModelType(framework=framework, framework_version=version, flavor=flavor),
        artifact=artifact_facts(
            mlmodel.parent, uri=uri, access_mode=access_mode, encrypted_at_rest=encrypted_at_rest
        ),
        input_schema=schema_of(inputs, inputs_text, mlmodel),
        output_schema=schema_of(outputs, outputs_text, mlmodel),
        training=Training(run_id=_str_or_none(doc.get("run_id"))),
        properties=_properties(doc, flavors, signature),
    )


def from_mlflow(
    path: StrPath,
    *,
    runtime: Runtime,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
    **overrides: Unpack[LoadedOverrides],
) -> ModelLoaded:
    """``read_mlflow(...).model_loaded(runtime=..., **overrides)`` in one call."""
    facts = read_mlflow(path, uri=uri, access_mode=access_mode, encrypted_at_rest=encrypted_at_rest)
    return facts.model_loaded(runtime=runtime, **overrides)


def _locate(path: Path) -> Path:
    if path.is_dir():
        mlmodel = path / MLMODEL
        if not mlmodel.is_file():
            raise ArtifactError(
                f"{path}: no {MLMODEL} file in this directory; expected the directory that "
                f"mlflow.<flavor>.save_model wrote, or the {MLMODEL} file itself"
            )
        return mlmodel
    if not path.exists():
        raise ArtifactError(
            f"{path}: no such file or directory; expected an MLflow model directory "
            f"or its {MLMODEL} file"
        )
    if path.name != MLMODEL:
        raise ArtifactError(
            f"{path}: expected an MLflow model directory or its {MLMODEL} file, got a file "
            f"named {path.name!r} — pass the directory that holds {MLMODEL}"
        )
    return path


def _load(mlmodel: Path) -> Mapping[str, Any]:
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ImportError(
            "reading an MLflow MLmodel file needs PyYAML, which the capture emitter does not "
            "require; install it: pip install PyYAML (the servemeta[sink] extra includes it)"
        ) from exc
    # The C loader is much faster where libyaml is present; both are safe loaders, so
    # an MLmodel cannot construct arbitrary Python objects.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(mlmodel.read_text(encoding="utf-8"), Loader=loader)
    except UnicodeDecodeError as exc:
        raise ArtifactError(
            f"{mlmodel}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "expected the YAML file MLflow writes"
        ) from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ArtifactError(
            f"{mlmodel}: malformed YAML ({detail}); expected the YAML file MLflow writes "
            "— re-save the model with MLflow or fix the file"
        ) from None
    if not isinstance(doc, Mapping):
        raise ArtifactError(
            f"{mlmodel}: expected a YAML mapping with keys such as 'flavors' and "
            f"'signature', got {type(doc).__name__}"
        )
    return doc


def _mapping(
    doc: Mapping[str, Any], key: str, mlmodel: Path, *, where: str = "", required: bool = True
) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ArtifactError(
                f"{mlmodel}: missing key '{where}{key}'; expected it in every MLmodel file "
                "MLflow writes — is this an MLflow model?"
            )
        return {}
    if not isinstance(value, Mapping):
        raise ArtifactError(
            f"{mlmodel}: key '{where}{key}' must be a mapping, got {type(value).__name__} "
            f"{_short(value)}"
        )
    return value


def _primary_flavor(flavors: Mapping[str, Any]) -> str:
    """The flavor the model was saved with; python_function is MLflow's generic wrapper."""
    pyfunc = flavors.get(PYFUNC)
    loader = pyfunc.get("loader_module") if isinstance(pyfunc, Mapping) else None
    if isinstance(loader, str) and loader.startswith("mlflow."):
        # loader_module names the flavor that loads the model: mlflow.sklearn -> sklearn
        name = loader.removeprefix("mlflow.")
        if name in flavors:
            return name
    others = [name for name in flavors if name != PYFUNC]
    return others[0] if others else PYFUNC


def _framework_version(config: Mapping[str, Any]) -> str | None:
    # Flavors record their library's version under their own key: sklearn_version,
    # pytorch_version, xgb_version, lgb_version, ...
    for key, value in config.items():
        if key.endswith("_version") and key != "python_version" and value is not None:
            return str(value)
    return None


def _signature_side(
    signature: Mapping[str, Any], side: str, mlmodel: Path
) -> tuple[list[FieldSpec], str | None]:
    raw = signature.get(side)
    if raw is None:
        return [], None
    key = f"signature.{side}"
    if not isinstance(raw, str):
        raise ArtifactError(
            f"{mlmodel}: key '{key}' must be a JSON string of column or tensor specs, "
            f"got {type(raw).__name__} {_short(raw)}"
        )
    try:
        specs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{mlmodel}: key '{key}' is not valid JSON ({exc}); expected a JSON list of "
            'column or tensor specs such as [{"name": "x", "type": "double"}]'
        ) from None
    if not isinstance(specs, list):
        raise ArtifactError(
            f"{mlmodel}: key '{key}' must be a JSON list of column or tensor specs, "
            f"got {type(specs).__name__} {_short(specs)}"
        )
    prefix = side.removesuffix("s")
    return [_field(spec, i, prefix, f"{key}[{i}]", mlmodel) for i, spec in enumerate(specs)], raw


def _field(spec: Any, index: int, prefix: str, key: str, mlmodel: Path) -> FieldSpec:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ArtifactError(
            f"{mlmodel}: {key} must be a column or tensor spec with a 'type', got {_short(spec)}"
        )
    name = spec.get("name")
    doc = None
    if name is None:
        # MLflow allows unnamed (positional) columns and tensors; FieldSpec needs a name.
        name = f"{prefix}_{index}"
        doc = f"unnamed in the MLflow signature; position {index}"
    if spec["type"] == "tensor":
        return FieldSpec(name=str(name), type=_tensor_type(spec, key, mlmodel), doc=doc)
    type_name = _column_type(spec, key, mlmodel)
    # MLflow columns are required unless marked otherwise; an optional one may be absent.
    nullable = spec.get("required", True) is False
    return FieldSpec(name=str(name), type=type_name, nullable=nullable, doc=doc)


def _tensor_type(spec: Mapping[str, Any], key: str, mlmodel: Path) -> str:
    info = spec.get("tensor-spec")
    if not isinstance(info, Mapping) or "dtype" not in info:
        raise ArtifactError(
            f"{mlmodel}: {key} is a tensor spec without 'tensor-spec.dtype'; expected "
            f'{{"type": "tensor", "tensor-spec": {{"dtype": "float64", "shape": [-1, 4]}}}}, '
            f"got {_short(spec)}"
        )
    shape = info.get("shape")
    dims = "" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"
    return f"tensor<{info['dtype']}>{dims}"


def _column_type(spec: Mapping[str, Any], key: str, mlmodel: Path) -> str:
    kind = spec.get("type")
    if kind == "array":
        return f"array<{_column_type(_nested(spec, 'items', key, mlmodel), key, mlmodel)}>"
    if kind == "map":
        # MLflow maps have string keys; the key type is spelt out as ONNX's maps spell theirs,
        # so that one spelling (schemas/README.md) serves every producer.
        return f"map<string,{_column_type(_nested(spec, 'values', key, mlmodel), key, mlmodel)}>"
    if kind == "object":
        properties = _nested(spec, "properties", key, mlmodel)
        members = ",".join(
            f"{name}:{_column_type(_nested(properties, name, key, mlmodel), key, mlmodel)}"
            for name in properties
        )
        return f"record<{members}>"
    if not isinstance(kind, str):
        raise ArtifactError(
            f"{mlmodel}: {key} has type {_short(kind)}; expected an MLflow type name "
            f"such as {sorted(_COLUMN_TYPES)}"
        )
    # A type newer than this reader passes through under MLflow's name rather than failing
    # the model load over metadata.
    return _COLUMN_TYPES.get(kind, kind)


def _nested(spec: Mapping[str, Any], member: str, key: str, mlmodel: Path) -> Mapping[str, Any]:
    value = spec.get(member)
    if not isinstance(value, Mapping):
        raise ArtifactError(
            f"{mlmodel}: {key} needs a mapping under '{member}' for type {spec.get('type')!r}, "
            f"got {_short(value)}"
        )
    return value


def _properties(
    doc: Mapping[str, Any], flavors: Mapping[str, Any], signature: Mapping[str, Any]
) -> dict[str, str]:
    props = {"artifact.format": "mlflow", "mlflow.flavors": ",".join(flavors)}
    pyfunc = flavors.get(PYFUNC)
    if isinstance(pyfunc, Mapping):
        for key in ("loader_module", "python_version"):
            if pyfunc.get(key) is not None:
                props[f"mlflow.{key}"] = str(pyfunc[key])
    for key in _TOP_LEVEL_PROPERTIES:
        if doc.get(key) is not None:
            props[f"mlflow.{key.removeprefix('mlflow_')}"] = str(doc[key])
    for group in ("saved_input_example_info", "metadata"):
        values = doc.get(group)
        if isinstance(values, Mapping):
            for key, value in values.items():
                if value is not None:
                    props[f"mlflow.{group}.{key}"] = _text(value)
    params = signature.get("params")
    if params is not None:
        # Inference parameters are neither inputs nor outputs; keep MLflow's JSON as written.
        props["mlflow.signature.params"] = _text(params)
    return props


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
