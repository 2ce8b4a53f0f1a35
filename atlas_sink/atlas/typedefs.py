"""The project's Atlas type definitions: where the file is, and what Atlas still lacks. Pure diff.

``deploy/atlas/servemeta_typedefs.json`` is the single source of the types. At start the sink
asks Atlas for each of its type names and ``plan_typedefs`` says what to send:

- a type Atlas does not have is created (``POST /api/atlas/v2/types/typedefs``);
- a type that gained optional attributes (or enum elements) is updated (``PUT``), by sending
  Atlas's own definition with the new attributes appended: Atlas refuses an update that drops
  an attribute it has (``ATTRIBUTE_DELETION_NOT_SUPPORTED``, AtlasStructDefStoreV2
  .updateVertexPreUpdate), so attributes someone else added must be sent back too;
- changes Atlas refuses outside its own typedef patches are reported, never sent: a new
  mandatory attribute (``CANNOT_ADD_MANDATORY_ATTRIBUTE``), another data type for an existing
  attribute ("Data type update for attribute is not supported"), other super types or other
  relationship ends (``RELATIONSHIPDEF_INVALID_END1_UPDATE``...);
- nothing changed: no request at all.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

TYPEDEFS_FILE = "servemeta_typedefs.json"
# Where the installed package carries the file: atlas_sink/atlas_types -> ../deploy/atlas,
# a symlink like capture/schemas, listed in the package data.
PACKAGED_DIR = "atlas_types"
# Where a source checkout has it.
SOURCE_PATH = Path(__file__).resolve().parents[2] / "deploy" / "atlas" / TYPEDEFS_FILE

# The sections of an AtlasTypesDef, in the order Atlas resolves them.
CATEGORIES = (
    "enumDefs",
    "structDefs",
    "classificationDefs",
    "entityDefs",
    "relationshipDefs",
    "businessMetadataDefs",
)
# Sections whose definitions hold attributeDefs (AtlasStructDef and its subclasses).
_WITH_ATTRIBUTES = ("structDefs", "classificationDefs", "entityDefs", "businessMetadataDefs")

TypesDef = dict[str, list[dict[str, Any]]]


class TypedefConflict(Exception):
    """The project's types differ from Atlas's in a way Atlas does not update through the REST
    API: a person has to decide (a typedef patch, a new type name, or a changed file)."""


class MissingBuiltinTypes(TypedefConflict):
    """Atlas lacks types of its own model that the sink writes (an Atlas whose models folder
    was never loaded, or an older one): a person has to load them."""


def typedefs_path() -> Path:
    """The packaged copy when installed, else the one in the source tree."""
    packaged = resources.files("atlas_sink").joinpath(PACKAGED_DIR, TYPEDEFS_FILE)
    if packaged.is_file():
        return Path(str(packaged))
    return SOURCE_PATH


def load_project_typedefs(path: str | Path | None = None) -> TypesDef:
    chosen = Path(path) if path is not None else typedefs_path()
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Atlas type definitions {chosen} not found: expected {TYPEDEFS_FILE} in the "
            f"installed package (atlas_sink/{PACKAGED_DIR}/) or in deploy/atlas/ of a source "
            "checkout; reinstall servemeta, or pass the file's path"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{chosen} is not valid JSON ({exc}): expected an AtlasTypesDef document "
            "{enumDefs, structDefs, classificationDefs, entityDefs, relationshipDefs}"
        ) from None
    if not isinstance(document, dict):
        raise ValueError(f"{chosen}: expected a JSON object (AtlasTypesDef), got {document!r:.80}")
    return normalized(document)


def normalized(document: Mapping[str, Any]) -> TypesDef:
    """Every section present as a list (Atlas omits empty ones in some responses)."""
    return {c: [dict(d) for d in (document.get(c) or [])] for c in CATEGORIES}


def type_names(document: Mapping[str, Any]) -> list[str]:
    return [d["name"] for c in CATEGORIES for d in (document.get(c) or [])]


def merge(documents: Iterable[Mapping[str, Any]]) -> TypesDef:
    """One AtlasTypesDef out of several (the answers of one GET per type name)."""
    merged = normalized({})
    seen: set[tuple[str, str]] = set()
    for document in documents:
        for category in CATEGORIES:
            for definition in document.get(category) or []:
                if (category, definition["name"]) not in seen:
                    seen.add((category, definition["name"]))
                    merged[category].append(dict(definition))
    return merged


def is_empty(document: Mapping[str, Any]) -> bool:
    return not any(document.get(c) for c in CATEGORIES)


@dataclass(frozen=True)
class TypedefPlan:
    create: TypesDef = field(default_factory=lambda: normalized({}))
    update: TypesDef = field(default_factory=lambda: normalized({}))
    unchanged: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def needs_request(self) -> bool:
        return not (is_empty(self.create) and is_empty(self.update))

    def summary(self) -> str:
        created = type_names(self.create)
        updated = type_names(self.update)
        return (
            f"create {created or 'nothing'}, update {updated or 'nothing'}, "
            f"{len(self.unchanged)} unchanged"
        )


def plan_typedefs(wanted: Mapping[str, Any], existing: Mapping[str, Any]) -> TypedefPlan:
    """``wanted``: the project's AtlasTypesDef; ``existing``: what Atlas returned for those
    names (an AtlasTypesDef, possibly partial). Types Atlas has under another category are
    reported: one name is one type in Atlas, whatever its category."""
    have: dict[str, tuple[str, dict[str, Any]]] = {}
    for category in CATEGORIES:
        for definition in existing.get(category) or []:
            have[definition["name"]] = (category, definition)
    create = normalized({})
    update = normalized({})
    unchanged: list[str] = []
    problems: list[str] = []
    for category in CATEGORIES:
        for definition in wanted.get(category) or []:
            name = definition["name"]
            found = have.get(name)
            if found is None:
                create[category].append(copy.deepcopy(dict(definition)))
                continue
            found_category, stored = found
            if found_category != category:
                problems.append(
                    f"{name}: the project defines it in {category}, Atlas has it in "
                    f"{found_category}; rename the project's type or delete Atlas's"
                )
                continue
            merged, issues = _merge_definition(category, definition, stored)
            problems += issues
            if issues:
                continue
            if merged is None:
                unchanged.append(name)
            else:
                update[category].append(merged)
    return TypedefPlan(create, update, tuple(unchanged), tuple(problems))


def missing_builtins(
    types: Mapping[str, Iterable[str]],
    relationships: Iterable[str],
    existing: Mapping[str, Any],
) -> list[str]:
    """What an Atlas lacks of its own types that the sink writes. Pure.

    ``types``: type name -> attributes the sink sets on it, inherited ones included;
    ``existing``: what Atlas returned for those names and all their super types (an
    AtlasTypesDef). Each problem names a type, a type's attribute, or a relationship."""
    defs = {d["name"]: d for d in existing.get("entityDefs") or []}
    relationship_defs = existing.get("relationshipDefs") or []
    problems: list[str] = []
    for type_name in sorted(types):
        if type_name not in defs:
            problems.append(f"entity type {type_name}")
            continue
        have: set[str] = set()
        pending, seen = [type_name], set()
        while pending:
            current = pending.pop()
            if current in seen or current not in defs:
                continue
            seen.add(current)
            have.update(a["name"] for a in defs[current].get("attributeDefs") or [])
            pending.extend(defs[current].get("superTypes") or [])
        # A relationship's end is an attribute of the type at that end (S3 object's container).
        have.update(
            end["name"]
            for r in relationship_defs
            for end in (r.get("endDef1") or {}, r.get("endDef2") or {})
            if end.get("type") in seen and "name" in end
        )
        problems += [f"attribute {type_name}.{a}" for a in sorted(set(types[type_name]) - have)]
    have_relationships = {d["name"] for d in relationship_defs}
    problems += [
        f"relationship type {name}" for name in sorted(set(relationships) - have_relationships)
    ]
    return problems


def _merge_definition(
    category: str, wanted: Mapping[str, Any], stored: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Atlas's definition with what the project added, or None when nothing was added."""
    name = wanted["name"]
    problems: list[str] = []
    if category == "relationshipDefs":
        for end in ("endDef1", "endDef2"):
            ours, theirs = wanted.get(end) or {}, stored.get(end) or {}
            if (ours.get("type"), ours.get("name")) != (theirs.get("type"), theirs.get("name")):
                problems.append(
                    f"{name}.{end}: the project has {ours.get('type')}.{ours.get('name')}, "
                    f"Atlas has {theirs.get('type')}.{theirs.get('name')}; Atlas does not "
                    "change relationship ends: use a new relationship name"
                )
        return None, problems
    if category == "enumDefs":
        values = {e.get("value") for e in stored.get("elementDefs") or []}
        added = [e for e in wanted.get("elementDefs") or [] if e.get("value") not in values]
        if not added:
            return None, []
        merged = copy.deepcopy(dict(stored))
        elements = merged.setdefault("elementDefs", [])
        ordinal = max((int(e.get("ordinal", -1)) for e in elements), default=-1)
        for element in added:
            ordinal += 1
            elements.append({**element, "ordinal": element.get("ordinal", ordinal)})
        return _with_version(merged, wanted), []
    if category == "entityDefs":
        ours = set(wanted.get("superTypes") or [])
        theirs = set(stored.get("superTypes") or [])
        if ours != theirs:
            problems.append(
                f"{name}: super types {sorted(ours)} in the project, {sorted(theirs)} in Atlas; "
                "Atlas changes super types only through its typedef patches (ADD_SUPER_TYPES)"
            )
    if category not in _WITH_ATTRIBUTES:
        return None, problems
    stored_attributes = {a["name"]: a for a in stored.get("attributeDefs") or []}
    added = []
    for attribute in wanted.get("attributeDefs") or []:
        current = stored_attributes.get(attribute["name"])
        if current is None:
            # Atlas's AtlasAttributeDef defaults isOptional to false.
            if not attribute.get("isOptional", False):
                problems.append(
                    f"{name}.{attribute['name']}: a new mandatory attribute; Atlas adds only "
                    "optional attributes to an existing type (ATLAS-400-00-00C): make it "
                    "optional"
                )
            added.append(copy.deepcopy(dict(attribute)))
        elif current.get("typeName") != attribute.get("typeName"):
            problems.append(
                f"{name}.{attribute['name']}: type {attribute.get('typeName')} in the project, "
                f"{current.get('typeName')} in Atlas; Atlas does not change an attribute's type: "
                "add a new attribute instead"
            )
    if problems or not added:
        return None, problems
    merged = copy.deepcopy(dict(stored))
    merged["attributeDefs"] = [*(merged.get("attributeDefs") or []), *added]
    return _with_version(merged, wanted), []


def _with_version(merged: dict[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    # The project's typeVersion says which revision of the file the type now matches.
    if wanted.get("typeVersion"):
        merged["typeVersion"] = wanted["typeVersion"]
    return merged
