"""Model facts from an ONNX model file (needs the ``onnx`` extra: pip install 'servemeta[onnx]').

Element types use numpy's names (float32, float64, int64, ...) so a tensor reads the same
here as in an MLflow tensor spec; unknown or symbolic dimensions are -1, as MLflow writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Unpack

from capture.artifacts._common import (
    ArtifactError,
    LoadedOverrides,
    ModelFacts,
    StrPath,
    artifact_facts,
    schema_of,
)
from capture.events import FieldSpec, ModelLoaded, ModelType, Runtime

if TYPE_CHECKING:
    from onnx import ModelProto, TypeProto, ValueInfoProto

# ONNX names that differ from numpy's; the rest lower-case to numpy's (INT64 -> int64).
_ELEMENT_NAMES = {"FLOAT": "float32", "DOUBLE": "float64", "STRING": "string"}
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ML_DOMAIN = "ai.onnx.ml"


def read_onnx(
    path: StrPath,
    *,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
) -> ModelFacts:
    """Facts of the ONNX model at ``path``: a ``.onnx`` file, or a directory holding exactly
    one ``.onnx`` file and its external data (then the whole directory is hashed).

    A file whose weights live in external data files is hashed alone; the property
    ``onnx.external_data`` then lists the files the hash does not cover.
    ``uri``, ``access_mode`` and ``encrypted_at_rest`` are as in ``artifact_facts``.
    """
    onnx = _import_onnx()
    artifact_path = Path(path)
    model_file = _locate(artifact_path)
    model = _load(onnx, model_file)
    graph = model.graph

    # Before IR version 4, initializers (weights) were also listed as graph inputs.
    weights = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    inputs = [_field(onnx, v) for v in graph.input if v.name not in weights]
    outputs = [_field(onnx, v) for v in graph.output]

    opsets: dict[str, int] = {}
    for opset in model.opset_import:
        domain = opset.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), opset.version)
    algorithm, task = _estimator(n.op_type for n in graph.node if n.domain == _ML_DOMAIN)

    properties = {
        "artifact.format": "onnx",
        "onnx.ir_version": str(model.ir_version),
        "onnx.opset": ",".join(f"{d}={v}" for d, v in sorted(opsets.items())),
    }
    for key, value in (
        ("producer_name", model.producer_name),
        ("producer_version", model.producer_version),
        ("graph_name", graph.name),
        ("domain", model.domain),
        ("model_version", str(model.model_version) if model.model_version else ""),
        ("doc_string", model.doc_string),
    ):
        if value:
            properties[f"onnx.{key}"] = value
    for prop in model.metadata_props:
        properties[f"onnx.metadata.{prop.key}"] = prop.value
    external = _external_files(onnx, model)
    if external and artifact_path.is_file():
        properties["onnx.external_data"] = ",".join(external)

    return ModelFacts(
        model_type=ModelType(
            framework="onnx",
            framework_version=str(opsets["ai.onnx"]) if "ai.onnx" in opsets else None,
            algorithm=algorithm,
            task=task,
        ),
        artifact=artifact_facts(
            artifact_path, uri=uri, access_mode=access_mode, encrypted_at_rest=encrypted_at_rest
        ),
        input_schema=schema_of(inputs, None, model_file),
        output_schema=schema_of(outputs, None, model_file),
        properties=properties,
    )


def from_onnx(
    path: StrPath,
    *,
    runtime: Runtime,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
    **overrides: Unpack[LoadedOverrides],
) -> ModelLoaded:
    """``read_onnx(...).model_loaded(runtime=..., **overrides)`` in one call."""
    facts = read_onnx(path, uri=uri, access_mode=access_mode, encrypted_at_rest=encrypted_at_rest)
    return facts.model_loaded(runtime=runtime, **overrides)


def _import_onnx() -> ModuleType:
    try:
        import onnx
    except ModuleNotFoundError as exc:
        raise ImportError(
            "reading an ONNX model needs the onnx package, which the capture emitter does not "
            "require; install the extra: pip install 'servemeta[onnx]'"
        ) from exc
    return onnx


def _locate(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or directory; expected an ONNX model file")
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        raise ArtifactError(
            f"{path}: a directory with {len(found)} .onnx files "
            f"{[f.name for f in found]}; expected exactly one — pass the model file instead"
        )
    return found[0]


def _load(onnx: ModuleType, model_file: Path) -> ModelProto:
    from google.protobuf.message import DecodeError

    try:
        # External weights are not needed to read the interface and can be gigabytes.
        model: ModelProto = onnx.load(str(model_file), load_external_data=False)
    except DecodeError as exc:
        raise ArtifactError(
            f"{model_file}: not an ONNX model ({exc}); expected a ModelProto as onnx.save writes it"
        ) from None
    # Protobuf parses an empty or truncated file as an empty message without complaint.
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ArtifactError(
            f"{model_file}: not an ONNX model (no graph or no ir_version); expected a "
            "ModelProto as onnx.save writes it"
        )
    return model


def _field(onnx: ModuleType, value: ValueInfoProto) -> FieldSpec:
    symbolic: list[str] = []
    type_name = _type_name(onnx, value.type, symbolic)
    notes = [value.doc_string] if value.doc_string else []
    if symbolic:
        notes.append("symbolic dims " + ", ".join(symbolic))
    return FieldSpec(
        name=value.name,
        type=type_name,
        nullable=value.type.WhichOneof("value") == "optional_type",
        doc="; ".join(notes) or None,
    )


def _type_name(onnx: ModuleType, tp: TypeProto, symbolic: list[str]) -> str:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tensor = tp.tensor_type if kind == "tensor_type" else tp.sparse_tensor_type
        name = "tensor" if kind == "tensor_type" else "sparse_tensor"
        element = _element(onnx, tensor.elem_type)
        if not tensor.HasField("shape"):
            return f"{name}<{element}>"  # rank unknown
        dims = []
        for i, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(str(dim.dim_value))
            else:
                dims.append("-1")
                if dim.dim_param:
                    symbolic.append(f"{i}={dim.dim_param}")
        return f"{name}<{element}>[{','.join(dims)}]"
    if kind == "sequence_type":
        return f"sequence<{_type_name(onnx, tp.sequence_type.elem_type, symbolic)}>"
    if kind == "map_type":
        key = _element(onnx, tp.map_type.key_type)
        return f"map<{key},{_type_name(onnx, tp.map_type.value_type, symbolic)}>"
    if kind == "optional_type":
        return _type_name(onnx, tp.optional_type.elem_type, symbolic)
    return "unknown"  # a graph may leave a value's type unset


def _element(onnx: ModuleType, elem_type: int) -> str:
    try:
        name: str = onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"elem_type_{elem_type}"  # newer than this onnx package
    return _ELEMENT_NAMES.get(name, name.lower())


def _estimator(ml_ops: Iterable[str]) -> tuple[str | None, str | None]:
    """Classic ML converters (skl2onnx, onnxmltools) leave one ai.onnx.ml estimator op that
    names the algorithm and, by its suffix, the task; deep-learning graphs have none."""
    for op in ml_ops:
        if op.endswith("Classifier"):
            return op, "classification"
        if op.endswith("Regressor"):
            return op, "regression"
    return None, None


def _external_files(onnx: ModuleType, model: ModelProto) -> list[str]:
    files: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(files)
