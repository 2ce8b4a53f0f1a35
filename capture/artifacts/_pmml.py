"""Model facts from a PMML document (DMG PMML 4.x; any namespace, or none).

Only the standard library is used. The document is read as a stream and reading stops at the
model's body (its trees, tables or segments), which can be most of a large file and says
nothing about the model's interface.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

from capture.artifacts._common import (
    ArtifactError,
    LoadedOverrides,
    ModelFacts,
    StrPath,
    artifact_facts,
    schema_of,
)
from capture.events import FeatureSummary, FieldSpec, ModelLoaded, ModelType, Runtime

# PMML dataType -> Avro-style name (PMML integer is what most exporters write for int32)
_TYPES = {
    "string": "string",
    "integer": "int",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "date": "date",
    "time": "time",
    "dateTime": "timestamp",
    "timeSeconds": "int",
}
_DAYS_SINCE = re.compile(r"dateDaysSince\[(\d+)\]")
_SECONDS_SINCE = re.compile(r"dateTimeSecondsSince\[(\d+)\]")

# Children of a model element that describe its interface; whatever else comes first is the
# model's body, and the interface children precede it in every PMML 4.x model schema.
_MODEL_HEAD = frozenset(
    {
        "Extension",
        "MiningSchema",
        "Output",
        "ModelStats",
        "ModelExplanation",
        "Targets",
        "LocalTransformations",
    }
)
# OutputField features whose value is a number whatever the target's type
_NUMERIC_FEATURES = frozenset(
    {
        "probability",
        "residual",
        "standardError",
        "standardDeviation",
        "confidence",
        "affinity",
        "entityAffinity",
        "clusterAffinity",
    }
)
_MAX_LISTED_VALUES = 20


@dataclass
class _Document:
    version: str | None = None
    header: ET.Element | None = None
    data_fields: dict[str, ET.Element] = field(default_factory=dict)
    derived_fields: dict[str, ET.Element] = field(default_factory=dict)
    model: ET.Element | None = None
    models_seen: list[str] = field(default_factory=list)


def read_pmml(
    path: StrPath,
    *,
    model_name: str | None = None,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
) -> ModelFacts:
    """Facts of the PMML document at ``path``.

    A document may hold several models: the first is described unless ``model_name`` picks
    one by its ``modelName``. ``uri``, ``access_mode`` and ``encrypted_at_rest`` are as in
    ``artifact_facts``.

    Inputs are the MiningSchema's active fields; outputs are its target fields followed by
    the Output fields. Inputs are nullable unless the MiningField says
    ``missingValueTreatment="returnInvalid"``: PMML scores a record with missing values by
    default.

    The training profile comes from the model's ``ModelStats``, for the active inputs whose
    ``UnivariateStats`` has ``Counts``: count from ``totalFreq``, nulls from ``missingFreq``,
    min, max and mean from ``NumericInfo``. PMML keeps no sketch, so there is no
    distribution; frequencies of weighted statistics are rounded to whole counts.
    """
    source = Path(path)
    if not source.is_file():
        raise ArtifactError(
            f"{source}: no such file; expected a PMML document"
            if not source.exists()
            else f"{source}: a directory; expected a PMML document file"
        )
    doc = _scan(source, model_name)
    model = doc.model
    if model is None:
        if model_name is not None:
            raise ArtifactError(
                f"{source}: no model with modelName={model_name!r}; found {doc.models_seen} "
                "— pass one of those, or none for the first"
            )
        raise ArtifactError(
            f"{source}: no model element (TreeModel, RegressionModel, MiningModel, ...) "
            "after the DataDictionary; expected one PMML model"
        )
    element = _local(model.tag)
    mining = _child(model, "MiningSchema")
    if mining is None:
        raise ArtifactError(
            f"{source}: <{element}> has no MiningSchema; expected one in every PMML model"
        )
    for local in _children(model, "LocalTransformations"):
        doc.derived_fields.update(_named(local, "DerivedField"))

    inputs: list[FieldSpec] = []
    outputs: list[FieldSpec] = []
    target_type: str | None = None
    for mf in _children(mining, "MiningField"):
        name = _required(mf, "name", source, "MiningField")
        usage = mf.get("usageType", "active")
        if usage == "active":
            type_name, doc_text = _declared_type(name, doc, source)
            nullable = mf.get("missingValueTreatment") != "returnInvalid"
            inputs.append(FieldSpec(name=name, type=type_name, nullable=nullable, doc=doc_text))
        elif usage in ("target", "predicted"):  # "predicted" is PMML 3's name for target
            type_name, doc_text = _declared_type(name, doc, source)
            target_type = target_type or type_name
            outputs.append(FieldSpec(name=name, type=type_name, doc=doc_text))
    taken = {f.name for f in outputs}
    output = _child(model, "Output")
    for of in _children(output, "OutputField") if output is not None else ():
        name = _required(of, "name", source, "OutputField")
        if name in taken:
            continue
        taken.add(name)
        outputs.append(_output_field(of, name, target_type))

    application = _child(doc.header, "Application") if doc.header is not None else None
    framework = application.get("name") if application is not None else None
    return ModelFacts(
        model_type=ModelType(
            framework=framework or "pmml",
            framework_version=application.get("version") if application is not None else None,
            flavor="pmml",
            algorithm=model.get("algorithmName") or element,
            task=model.get("functionName"),
        ),
        artifact=artifact_facts(
            source, uri=uri, access_mode=access_mode, encrypted_at_rest=encrypted_at_rest
        ),
        input_schema=schema_of(inputs, None, source),
        output_schema=schema_of(outputs, None, source),
        properties=_properties(doc, model),
        training_profile=_training_profile(model, inputs, source),
    )


def from_pmml(
    path: StrPath,
    *,
    runtime: Runtime,
    model_name: str | None = None,
    uri: str | None = None,
    access_mode: str | None = None,
    encrypted_at_rest: bool | None = None,
    **overrides: Unpack[LoadedOverrides],
) -> ModelLoaded:
    """``read_pmml(...).model_loaded(runtime=..., **overrides)`` in one call."""
    facts = read_pmml(
        path,
        model_name=model_name,
        uri=uri,
        access_mode=access_mode,
        encrypted_at_rest=encrypted_at_rest,
    )
    return facts.model_loaded(runtime=runtime, **overrides)


def _scan(source: Path, model_name: str | None) -> _Document:
    doc = _Document()
    stack: list[ET.Element] = []
    # expat (2.4+, bundled with Python 3.11) refuses entity-expansion bombs, and ElementTree
    # never fetches external entities, so an untrusted document cannot blow up or reach out.
    with source.open("rb") as stream:
        try:
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if event == "start":
                    stack.append(elem)
                    if _start(doc, stack, model_name, source):
                        break
                    continue
                stack.pop()
                if _end(doc, stack, elem):
                    break
        except ET.ParseError as exc:
            line, column = exc.position
            raise ArtifactError(
                f"{source}: malformed XML at line {line}, column {column} ({exc}); expected "
                "a PMML document — re-export the model or fix the file"
            ) from None
    return doc


def _start(doc: _Document, stack: list[ET.Element], model_name: str | None, source: Path) -> bool:
    """Track one opened element; True once the chosen model's interface is complete."""
    elem = stack[-1]
    depth = len(stack)
    if depth == 1:
        if _local(elem.tag) != "PMML":
            raise ArtifactError(
                f"{source}: root element is <{_local(elem.tag)}>, expected <PMML> "
                "(a PMML 4.x document)"
            )
        doc.version = elem.get("version")
    elif depth == 2 and "functionName" in elem.attrib:
        # Every PMML model element has a functionName; nothing else at this level does.
        doc.models_seen.append(elem.get("modelName") or _local(elem.tag))
        if doc.model is None and (model_name is None or elem.get("modelName") == model_name):
            doc.model = elem
    elif depth == 3 and stack[1] is doc.model and _local(elem.tag) not in _MODEL_HEAD:
        return True
    return False


def _end(doc: _Document, stack: list[ET.Element], elem: ET.Element) -> bool:
    """Keep one closed top-level element; True when the chosen model itself closed."""
    if len(stack) != 1:
        if len(stack) >= 2 and stack[1] is not doc.model and "functionName" in stack[1].attrib:
            elem.clear()  # the body of a model we skip: free it as we go
        return False
    name = _local(elem.tag)
    if name == "Header":
        doc.header = elem
    elif name == "DataDictionary":
        doc.data_fields = _named(elem, "DataField")
    elif name == "TransformationDictionary":
        doc.derived_fields.update(_named(elem, "DerivedField"))
    elif elem is doc.model:
        return True
    elif "functionName" in elem.attrib:
        elem.clear()
    return False


def _declared_type(name: str, doc: _Document, source: Path) -> tuple[str, str | None]:
    declared = doc.data_fields.get(name)
    kind = "DataField"
    if declared is None:
        declared = doc.derived_fields.get(name)
        kind = "DerivedField"
    if declared is None:
        raise ArtifactError(
            f"{source}: MiningField {name!r} is declared neither in the DataDictionary nor as "
            "a DerivedField; expected a DataField with that name"
        )
    data_type = _required(declared, "dataType", source, f"{kind} {name!r}")
    type_name, type_doc = _avro_type(data_type)
    notes = [f"optype {declared.get('optype')}"] if declared.get("optype") else []
    if type_doc:
        notes.append(type_doc)
    values = [v.get("value", "") for v in _children(declared, "Value")]
    values = [v for v in values if v]
    if values:
        shown = ", ".join(values[:_MAX_LISTED_VALUES])
        more = len(values) - _MAX_LISTED_VALUES
        notes.append(f"values {shown}" + (f" and {more} more" if more > 0 else ""))
    return type_name, "; ".join(notes) or None


def _avro_type(data_type: str) -> tuple[str, str | None]:
    if data_type in _TYPES:
        doc = "seconds since midnight" if data_type == "timeSeconds" else None
        return _TYPES[data_type], doc
    if match := _DAYS_SINCE.fullmatch(data_type):
        return "int", f"days since {match[1]}-01-01"
    if match := _SECONDS_SINCE.fullmatch(data_type):
        return "long", f"seconds since {match[1]}-01-01T00:00:00"
    # Not a PMML 4.4 type: keep the document's word rather than fail a load over metadata.
    return data_type, f"PMML dataType {data_type!r} has no Avro counterpart"


def _output_field(of: ET.Element, name: str, target_type: str | None) -> FieldSpec:
    feature = of.get("feature", "predictedValue")
    data_type = of.get("dataType")
    notes = [f"feature {feature}"]
    if of.get("value") is not None:
        notes.append(f"value {of.get('value')}")
    if data_type:
        type_name, type_doc = _avro_type(data_type)
        if type_doc:
            notes.append(type_doc)
    elif feature == "predictedValue" and target_type:
        type_name = target_type
    elif feature in _NUMERIC_FEATURES:
        type_name = "double"
    else:
        # dataType is optional before PMML 4.4; without it only the feature hints at a type.
        type_name = "string"
        notes.append("dataType not declared")
    return FieldSpec(name=name, type=type_name, doc="; ".join(notes))


def _training_profile(
    model: ET.Element, inputs: list[FieldSpec], source: Path
) -> list[FeatureSummary]:
    stats = _child(model, "ModelStats")
    if stats is None:
        return []
    wanted = {f.name for f in inputs}
    profile: dict[str, FeatureSummary] = {}
    for univariate in _children(stats, "UnivariateStats"):
        name = univariate.get("field", "")
        counts = _child(univariate, "Counts")
        # A summary's count is required, and without Counts it is unknown.
        if name not in wanted or name in profile or counts is None:
            continue
        what = f"UnivariateStats {name!r}"
        total = _frequency(counts, "totalFreq", source, what)
        if total is None:
            raise ArtifactError(f"{source}: {what} <Counts> has no 'totalFreq'; PMML requires one")
        missing = _frequency(counts, "missingFreq", source, what)
        if missing is not None and missing > total:
            raise ArtifactError(
                f"{source}: {what} <Counts> has missingFreq {missing} > totalFreq {total}; "
                "expected the total to include the missing values — fix the statistics"
            )
        info = _child(univariate, "NumericInfo")
        low, high, mean = (
            _statistic(info, attr, source, what) if info is not None else None
            for attr in ("minimum", "maximum", "mean")
        )
        profile[name] = FeatureSummary(
            name=name, count=total, null_count=missing or 0, min=low, max=high, mean=mean
        )
    return [profile[name] for name in sorted(profile)]


def _number(elem: ET.Element, attr: str, source: Path, what: str) -> float | None:
    text = elem.get(attr)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ArtifactError(
            f"{source}: {what} <{_local(elem.tag)}> has {attr}={text!r}; expected a number"
        ) from None


def _frequency(elem: ET.Element, attr: str, source: Path, what: str) -> int | None:
    value = _number(elem, attr, source, what)
    if value is not None and not 0 <= value < 2**63:
        raise ArtifactError(
            f"{source}: {what} <{_local(elem.tag)}> has {attr}={value}; expected a count, "
            "at least 0 and below 2^63"
        )
    return None if value is None else round(value)


def _statistic(elem: ET.Element, attr: str, source: Path, what: str) -> float | None:
    value = _number(elem, attr, source, what)
    # xs:double allows NaN and INF, which say nothing about the training data.
    return value if value is not None and math.isfinite(value) else None


def _properties(doc: _Document, model: ET.Element) -> dict[str, str]:
    props = {"artifact.format": "pmml", "pmml.model_element": _local(model.tag)}
    if doc.version:
        props["pmml.version"] = doc.version
    if model.get("modelName"):
        props["pmml.model_name"] = str(model.get("modelName"))
    if model.get("isScorable") == "false":
        props["pmml.is_scorable"] = "false"
    header = doc.header
    if header is not None:
        for attr in ("description", "copyright"):
            if header.get(attr):
                props[f"pmml.header.{attr}"] = str(header.get(attr))
        timestamp = _child(header, "Timestamp")
        if timestamp is not None and timestamp.text and timestamp.text.strip():
            props["pmml.header.timestamp"] = timestamp.text.strip()
    return props


def _local(tag: str) -> str:
    # "{http://www.dmg.org/PMML-4_4}TreeModel" -> "TreeModel": every PMML version has its own
    # namespace URI, and some exporters write none.
    return tag.rpartition("}")[2]


def _children(parent: ET.Element, name: str) -> Iterator[ET.Element]:
    return (child for child in parent if _local(child.tag) == name)


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    return next(_children(parent, name), None)


def _named(parent: ET.Element, name: str) -> dict[str, ET.Element]:
    return {child.get("name", ""): child for child in _children(parent, name)}


def _required(elem: ET.Element, attr: str, source: Path, what: str) -> str:
    value = elem.get(attr)
    if not value:
        raise ArtifactError(f"{source}: {what} has no {attr!r} attribute; PMML requires one")
    return value
