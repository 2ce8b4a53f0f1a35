"""Atlas's own types as this project defines them, turned into Atlas's JSON (AtlasTypesDef).

``deploy/atlas/builtin/*.yaml`` holds the types of Atlas's own model that the project needs: the
base types, the internal types Atlas's server and UI expect, and the built-in data set types
the sink writes (file system, Avro, Kafka, S3). A local Atlas is started with exactly these
(``local_services.atlas`` renders them as Atlas model files); against any other Atlas they
are what the sink checks for before it writes (``typedefs.missing_builtins``), and the
embedded catalog takes its super types from them.

The form is the project's own, one line per attribute or relationship end; see
``deploy/atlas/README.md``::

    entities:
      Asset:
        extends: [Referenceable]
        attributes:
          name: string required indexed string-index weight=10
    relationships:
      dataset_process_inputs:
        category: AGGREGATION
        propagate: TWO_TO_ONE
        end1: Process.inputs set container legacy
        end2: DataSet.inputToProcesses set

An attribute is optional, not unique, not indexed and of cardinality SINGLE unless a flag says
otherwise, as in Atlas's AtlasAttributeDef; a relationship end is SINGLE unless ``set``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from atlas_sink.atlas.typedefs import PACKAGED_DIR, TypesDef, normalized

BUILTIN_DIR = "builtin"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "atlas" / BUILTIN_DIR

_SECTIONS = ("service", "enums", "structs", "entities", "relationships")
_CATEGORIES = ("ASSOCIATION", "AGGREGATION", "COMPOSITION")
_PROPAGATIONS = ("NONE", "ONE_TO_TWO", "TWO_TO_ONE", "BOTH")
_ATTRIBUTE_FLAGS = ("required", "unique", "indexed", "set", "list", "owned", "string-index")


class ModelError(ValueError):
    """A built-in type file that does not say what the form expects."""


@dataclass(frozen=True)
class ModelFile:
    """One file of definitions: its name (the Atlas model folder it becomes) and its types."""

    name: str
    typedefs: TypesDef


def builtin_dir() -> Path:
    """The packaged copy when installed, else the one in the source tree."""
    packaged = resources.files("atlas_sink").joinpath(PACKAGED_DIR, BUILTIN_DIR)
    if packaged.is_dir():
        return Path(str(packaged))
    return SOURCE_DIR


def load_model_files(directory: Path | None = None) -> list[ModelFile]:
    """Every ``*.yaml`` of the directory, in name order (the order Atlas must load them in:
    a file may refer only to types of itself and of the files before it)."""
    chosen = directory or builtin_dir()
    paths = sorted(chosen.glob("*.yaml"))
    if not paths:
        raise FileNotFoundError(
            f"no Atlas built-in type files (*.yaml) in {chosen}: expected "
            f"deploy/atlas/{BUILTIN_DIR}/ of a source checkout or the installed package's copy; "
            "reinstall servemeta"
        )
    files = []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ModelError(f"{path}: not valid YAML ({exc})") from None
        files.append(ModelFile(path.stem, parse_model(document, where=str(path))))
    return files


@functools.cache
def builtin_typedefs() -> TypesDef:
    """All built-in types in one AtlasTypesDef (read once per process)."""
    merged = normalized({})
    for model in load_model_files():
        for category, definitions in model.typedefs.items():
            merged[category].extend(definitions)
    return merged


def parse_model(document: Any, where: str = "model") -> TypesDef:
    """One file of the project's form as an AtlasTypesDef. Pure."""
    if not isinstance(document, Mapping):
        raise ModelError(
            f"{where}: expected a mapping with {list(_SECTIONS)}, got {document!r:.60}"
        )
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise ModelError(f"{where}: unknown sections {unknown}; expected some of {list(_SECTIONS)}")
    service = document.get("service")
    if not isinstance(service, str) or not service:
        raise ModelError(f"{where}: expected `service: <Atlas service type>`, got {service!r}")
    out = normalized({})
    for name, values in _mapping(document, "enums", where).items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ModelError(f"{where}: enum {name}: expected a list of names, got {values!r}")
        out["enumDefs"].append(
            {
                "name": name,
                "serviceType": service,
                "elementDefs": [{"value": v, "ordinal": i} for i, v in enumerate(values)],
            }
        )
    for name, body in _mapping(document, "structs", where).items():
        out["structDefs"].append(
            {"name": name, "serviceType": service, **_struct_body(body, f"{where}: {name}")}
        )
    for name, body in _mapping(document, "entities", where).items():
        spec = body or {}
        extends = spec.get("extends", []) if isinstance(spec, Mapping) else None
        if not isinstance(extends, list):
            raise ModelError(f"{where}: {name}.extends: expected a list of type names")
        out["entityDefs"].append(
            {
                "name": name,
                "serviceType": service,
                "superTypes": list(extends),
                **_struct_body(
                    {k: v for k, v in spec.items() if k != "extends"}, f"{where}: {name}"
                ),
            }
        )
    for name, body in _mapping(document, "relationships", where).items():
        out["relationshipDefs"].append(_relationship(name, body, service, f"{where}: {name}"))
    return out


def _mapping(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key) or {}
    if not isinstance(value, Mapping):
        raise ModelError(f"{where}: {key}: expected a mapping of names, got {value!r:.60}")
    return value


def _struct_body(body: Any, where: str) -> dict[str, Any]:
    spec = body or {}
    if not isinstance(spec, Mapping) or set(spec) - {"attributes"}:
        raise ModelError(f"{where}: expected only `attributes:` (and `extends:` for an entity)")
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise ModelError(f"{where}: attributes: expected `name: type flags...` lines")
    return {"attributeDefs": [attribute_def(n, s, f"{where}.{n}") for n, s in attributes.items()]}


def attribute_def(name: str, spec: Any, where: str = "attribute") -> dict[str, Any]:
    """``"string required unique indexed weight=10"`` as an AtlasAttributeDef."""
    if not isinstance(spec, str) or not spec.split():
        raise ModelError(f"{where}: expected `type [flags]`, got {spec!r}")
    type_name, *tokens = spec.split()
    flags = set()
    weight: int | None = None
    notify = False
    for token in tokens:
        if token.startswith("weight="):
            try:
                weight = int(token.removeprefix("weight="))
            except ValueError:
                raise ModelError(f"{where}: {token}: expected weight=<integer>") from None
        elif token == "notify":
            notify = True
        elif token in _ATTRIBUTE_FLAGS:
            flags.add(token)
        else:
            raise ModelError(
                f"{where}: unknown flag {token!r}; expected some of "
                f"{[*_ATTRIBUTE_FLAGS, 'notify', 'weight=N']}"
            )
    if {"set", "list"} <= flags:
        raise ModelError(f"{where}: `set` and `list` both given; an attribute has one cardinality")
    out: dict[str, Any] = {
        "name": name,
        "typeName": type_name,
        "cardinality": "SET" if "set" in flags else "LIST" if "list" in flags else "SINGLE",
        "isOptional": "required" not in flags,
        "isUnique": "unique" in flags,
        "isIndexable": "indexed" in flags,
    }
    if "owned" in flags:
        out["constraints"] = [{"type": "ownedRef"}]
    if "string-index" in flags:
        out["indexType"] = "STRING"
    if weight is not None:
        out["searchWeight"] = weight
    if notify:
        out["includeInNotification"] = True
    return out


def _relationship(name: str, body: Any, service: str, where: str) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ModelError(
            f"{where}: expected category, end1, end2 (and propagate, label, attributes)"
        )
    unknown = set(body) - {"category", "propagate", "label", "end1", "end2", "attributes"}
    if unknown:
        raise ModelError(f"{where}: unknown keys {sorted(unknown)}")
    category = body.get("category")
    if category not in _CATEGORIES:
        # Atlas 2.3 refuses a relationship without one (ATLAS-4678).
        raise ModelError(f"{where}: category {category!r}: expected one of {list(_CATEGORIES)}")
    propagate = body.get("propagate", "NONE")
    if propagate not in _PROPAGATIONS:
        raise ModelError(f"{where}: propagate {propagate!r}: expected one of {list(_PROPAGATIONS)}")
    out: dict[str, Any] = {
        "name": name,
        "serviceType": service,
        "relationshipCategory": category,
        "propagateTags": propagate,
        "endDef1": _end(body.get("end1"), f"{where}.end1"),
        "endDef2": _end(body.get("end2"), f"{where}.end2"),
        **_struct_body({"attributes": body.get("attributes")}, where),
    }
    if body.get("label"):
        out["relationshipLabel"] = str(body["label"])
    return out


def _end(spec: Any, where: str) -> dict[str, Any]:
    """``"Process.inputs set container legacy"`` as an AtlasRelationshipEndDef."""
    if not isinstance(spec, str) or "." not in spec.split()[0]:
        raise ModelError(f"{where}: expected `type.attribute [set|single] [container] [legacy]`")
    head, *tokens = spec.split()
    type_name, _, attribute = head.partition(".")
    unknown = set(tokens) - {"set", "single", "container", "legacy"}
    if unknown or {"set", "single"} <= set(tokens):
        raise ModelError(f"{where}: flags {tokens}: expected set or single, container, legacy")
    return {
        "type": type_name,
        "name": attribute,
        "cardinality": "SET" if "set" in tokens else "SINGLE",
        "isContainer": "container" in tokens,
        "isLegacyAttribute": "legacy" in tokens,
    }
