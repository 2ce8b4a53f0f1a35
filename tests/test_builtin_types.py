"""The project's definitions of Atlas's own types (deploy/atlas/builtin), with its servemeta_*
types on top: well formed, loadable in file order, and within the rules of Atlas 2.1 to 2.4,
including those of releases no server of which can be had here (2.3's ATLAS-4522 and
ATLAS-4678). That a real Atlas takes them as they are is tested in test_atlas_integration.py."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from atlas_sink.atlas.builtin_types import (
    ModelError,
    attribute_def,
    builtin_typedefs,
    load_model_files,
    parse_model,
)
from atlas_sink.atlas.typedefs import CATEGORIES, load_project_typedefs, missing_builtins

PRIMITIVES = {
    "boolean",
    "byte",
    "short",
    "int",
    "long",
    "float",
    "double",
    "biginteger",
    "bigdecimal",
    "string",
    "date",
    "object",
}
# The types of Atlas's own machine-learning (4010-ml_model.json, 2.1 to 2.4) and Flink
# (1110-flink_model.json, from 2.2) models: a project type of one of these names would clash
# with Atlas's own on any Atlas that loads them.
ATLAS_ML_AND_FLINK_TYPES = {
    "ml_model_deployment_status",
    "ml_project",
    "ml_model_build",
    "ml_model_deployment",
    "ml_project_create_process",
    "ml_model_train_build_process",
    "ml_model_deploy_process",
    "ml_project_model_build",
    "ml_build_deployment",
    "flink_application",
    "flink_process",
    "flink_application_processes",
}


def _all_documents() -> list[Mapping[str, Any]]:
    documents: list[Mapping[str, Any]] = [m.typedefs for m in load_model_files()]
    return [*documents, load_project_typedefs()]


def _definitions() -> Iterator[tuple[str, Mapping[str, Any]]]:
    for document in _all_documents():
        for category in CATEGORIES:
            for definition in document.get(category) or []:
                yield category, definition


def _element_types(type_name: str) -> list[str]:
    """The named types an attribute type refers to: array<T> -> T, map<K,V> -> K, V."""
    match = re.fullmatch(r"array<(.+)>", type_name)
    if match:
        return _element_types(match.group(1))
    match = re.fullmatch(r"map<([^,]+),(.+)>", type_name)
    if match:
        return _element_types(match.group(1)) + _element_types(match.group(2))
    return [type_name]


def test_every_file_refers_only_to_types_of_itself_and_earlier_files() -> None:
    """Atlas loads the model files in name order, each against what is loaded already."""
    known: set[str] = set(PRIMITIVES)
    for document in _all_documents():
        names = {d["name"] for c in CATEGORIES for d in document.get(c) or []}
        assert not names & known - PRIMITIVES, f"defined twice: {sorted(names & known)}"
        known |= names
        for category in CATEGORIES:
            for definition in document.get(category) or []:
                where = f"{category} {definition['name']}"
                for super_type in definition.get("superTypes") or []:
                    assert super_type in known, f"{where}: super type {super_type}"
                for attribute in definition.get("attributeDefs") or []:
                    for element in _element_types(attribute["typeName"]):
                        assert element in known, f"{where}.{attribute['name']}: {element}"
                for end in ("endDef1", "endDef2"):
                    if end in definition:
                        assert definition[end]["type"] in known, f"{where}.{end}"


def test_no_type_redefines_an_attribute_of_a_super_type() -> None:
    """Atlas 2.3 refuses such a type (ATLAS-4522, ATLAS-400-00-09E)."""
    supers: dict[str, list[str]] = {}
    own: dict[str, set[str]] = {}
    for category, definition in _definitions():
        if category in ("entityDefs", "classificationDefs", "structDefs"):
            supers[definition["name"]] = list(definition.get("superTypes") or [])
            own[definition["name"]] = {a["name"] for a in definition.get("attributeDefs") or []}

    def inherited(name: str) -> set[str]:
        found: set[str] = set()
        for parent in supers.get(name, []):
            found |= own.get(parent, set()) | inherited(parent)
        return found

    clashes = {n: sorted(own[n] & inherited(n)) for n in own if own[n] & inherited(n)}
    assert clashes == {}


def test_every_relationship_names_its_category() -> None:
    """Atlas 2.3 refuses a relationship def without a relationshipCategory (ATLAS-4678)."""
    relationships = [d for c, d in _definitions() if c == "relationshipDefs"]
    assert len(relationships) > 20
    for relationship in relationships:
        assert relationship.get("relationshipCategory") in (
            "ASSOCIATION",
            "AGGREGATION",
            "COMPOSITION",
        ), relationship["name"]


def test_no_type_takes_a_name_of_atlas_s_ml_or_flink_models() -> None:
    names = {d["name"] for _, d in _definitions()}
    assert not names & ATLAS_ML_AND_FLINK_TYPES
    assert not {n for n in names if n.startswith(("ml_", "flink_"))}


def test_the_project_s_own_types_are_all_servemeta_or_classifications() -> None:
    """The project registers only its own types on an Atlas; Atlas's stay Atlas's."""
    project = load_project_typedefs()
    builtin = {d["name"] for c in CATEGORIES for d in builtin_typedefs()[c]}
    for category in CATEGORIES:
        for definition in project[category]:
            assert definition["name"] not in builtin, definition["name"]
            if category != "classificationDefs":
                assert definition["name"].startswith("servemeta_"), definition["name"]


def test_the_core_types_every_atlas_has_are_defined_as_atlas_defines_them() -> None:
    """The attributes the sink and Atlas's hooks rely on, with Atlas's types and flags."""
    defs = {d["name"]: d for d in builtin_typedefs()["entityDefs"]}

    def attribute(type_name: str, name: str) -> tuple[str, str, bool, bool]:
        found = next(a for a in defs[type_name]["attributeDefs"] if a["name"] == name)
        return found["typeName"], found["cardinality"], found["isOptional"], found["isUnique"]

    assert attribute("Referenceable", "qualifiedName") == ("string", "SINGLE", False, True)
    assert attribute("Asset", "name") == ("string", "SINGLE", False, False)
    assert attribute("Process", "inputs") == ("array<DataSet>", "SET", True, False)
    assert attribute("kafka_topic", "topic") == ("string", "SINGLE", False, False)
    assert attribute("kafka_topic", "uri") == ("string", "SINGLE", False, False)
    assert attribute("fs_path", "path") == ("string", "SINGLE", False, False)
    assert defs["fs_path"]["superTypes"] == ["DataSet", "Path"]
    assert defs["hdfs_path"]["superTypes"] == ["fs_path"]
    assert defs["aws_s3_v2_object"]["superTypes"] == ["aws_s3_v2_base", "aws_s3_v2_contained"]
    ends = {
        r["name"]: (r["endDef1"]["type"], r["endDef1"]["name"], r["endDef2"]["name"])
        for r in builtin_typedefs()["relationshipDefs"]
    }
    assert ends["dataset_process_inputs"] == ("Process", "inputs", "inputToProcesses")
    assert ends["process_dataset_outputs"] == ("Process", "outputs", "outputFromProcesses")


def test_attribute_lines_become_atlas_attribute_defs() -> None:
    assert attribute_def("qualifiedName", "string required unique indexed weight=10") == {
        "name": "qualifiedName",
        "typeName": "string",
        "cardinality": "SINGLE",
        "isOptional": False,
        "isUnique": True,
        "isIndexable": True,
        "searchWeight": 10,
    }
    owned = attribute_def("s", "array<x> set owned")
    assert (owned["cardinality"], owned["isOptional"], owned["constraints"]) == (
        "SET",
        True,
        [{"type": "ownedRef"}],
    )
    assert attribute_def("n", "string string-index notify")["indexType"] == "STRING"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not a mapping", "expected a mapping"),
        ({"entities": {}}, "expected `service:"),
        ({"service": "s", "types": {}}, r"unknown sections \['types'\]"),
        ({"service": "s", "entities": {"t": {"attributes": {"a": "string shiny"}}}}, "'shiny'"),
        ({"service": "s", "entities": {"t": {"attributes": {"a": "string set list"}}}}, "both"),
        ({"service": "s", "enums": {"e": "A, B"}}, "expected a list of names"),
        (
            {"service": "s", "relationships": {"r": {"end1": "a.b", "end2": "c.d"}}},
            "category None",
        ),
        (
            {
                "service": "s",
                "relationships": {"r": {"category": "ASSOCIATION", "end1": "ab", "end2": "c.d"}},
            },
            r"end1: expected `type.attribute",
        ),
    ],
)
def test_a_malformed_file_is_refused_with_what_is_wrong(document: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_model(document, where="test.yaml")


def test_missing_builtins_names_types_attributes_and_relationships() -> None:
    existing = {
        "entityDefs": [
            {"name": "DataSet", "superTypes": ["Asset"], "attributeDefs": []},
            {"name": "Asset", "superTypes": [], "attributeDefs": [{"name": "name"}]},
            {"name": "kafka_topic", "superTypes": ["DataSet"], "attributeDefs": []},
        ],
        "relationshipDefs": [{"name": "dataset_process_inputs"}],
    }
    problems = missing_builtins(
        {"kafka_topic": {"name", "topic"}, "fs_path": {"path"}, "DataSet": {"name"}},
        ["dataset_process_inputs", "process_dataset_outputs"],
        existing,
    )
    assert problems == [
        "entity type fs_path",
        "attribute kafka_topic.topic",
        "relationship type process_dataset_outputs",
    ]


def test_the_project_s_definitions_have_everything_the_sink_checks_for() -> None:
    from atlas_sink.core.translate import ATLAS_RELATIONSHIPS_WRITTEN, ATLAS_TYPES_WRITTEN

    assert (
        missing_builtins(ATLAS_TYPES_WRITTEN, ATLAS_RELATIONSHIPS_WRITTEN, builtin_typedefs()) == []
    )
