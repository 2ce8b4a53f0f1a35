"""Entities as Atlas 2.4 JSON: AtlasEntity, AtlasObjectId, the bulk request body. Pure.

What Atlas does with what we send decides the shape (sources: Apache Atlas 2.4.0):

- References to another entity of the same request carry its placeholder guid (a negative
  number) as well as ``typeName`` and ``uniqueAttributes``. Atlas resolves a guid reference
  against the request's own entities (IDBasedEntityResolver), but a reference by unique
  attributes only against the graph (UniqAttrBasedEntityResolver): an entity created in the
  same request would be "not found" (404 ATLAS-404-00-00A) over REST. References to entities
  outside the request carry ``typeName`` and ``uniqueAttributes`` only; a placeholder guid not
  in the request is itself an error.
- Attributes that are ends of a relationship go in ``relationshipAttributes`` with their
  ``relationshipType``, as Atlas's own hooks send them (BaseHiveEvent sets Process
  ``inputs``/``outputs`` with AtlasTypeUtil.getAtlasRelatedObjectIds(...,
  "dataset_process_inputs"/"process_dataset_outputs")). The type names the relationship,
  so Atlas never has to guess it when several relationships share an attribute name.
- Classifications are sent as ``{typeName, propagate: true}``. ``POST /entity/bulk`` and the
  hook's ENTITY_CREATE_V2 apply them only to entities they create:
  EntityGraphMapper.mapAttributesAndClassifications touches the classifications of updated
  entities only with ``replaceClassifications``, which neither path sets in 2.4.0, and the
  unchanged-entity check skips classification differences then. Sending them on every
  write therefore never fails with "already associated"; the REST target adds what an
  existing entity lacks through the classification endpoint.
- ``date`` attributes are epoch milliseconds (AtlasDateType takes a Number as millis); maps
  of ``string`` hold strings; non-finite floats (not valid JSON) are dropped.
- ``referredEntities`` stays empty: every entity we send is one we mean to write, and Atlas
  writes referred entities only when something refers to them by guid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from atlas_sink.atlas.typedefs import CATEGORIES
from atlas_sink.core.entities import Entity, Ref

JsonDict = dict[str, Any]

QUALIFIED_NAME = "qualifiedName"


@dataclass(frozen=True)
class TypeModel:
    """What the conversion needs to know of the types: super types, attribute types and which
    attributes are relationship ends (with the relationship's name)."""

    supertypes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    attributes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    relationships: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    structs: frozenset[str] = frozenset()

    @classmethod
    def from_typedefs(cls, *documents: Mapping[str, Any]) -> TypeModel:
        """A type defined in several documents gets the attributes of all, later ones winning."""
        supertypes: dict[str, tuple[str, ...]] = {}
        attributes: dict[str, dict[str, str]] = {}
        relationships: dict[str, dict[str, str]] = {}
        structs: set[str] = set()
        for document in documents:
            for category in CATEGORIES:
                if category == "relationshipDefs":
                    continue
                for definition in document.get(category) or []:
                    name = definition["name"]
                    if category == "structDefs":
                        structs.add(name)
                    if category in ("entityDefs", "classificationDefs"):
                        supertypes[name] = tuple(definition.get("superTypes") or ())
                    own = attributes.setdefault(name, {})
                    for attribute in definition.get("attributeDefs") or []:
                        own[attribute["name"]] = attribute["typeName"]
            for relationship in document.get("relationshipDefs") or []:
                for end in ("endDef1", "endDef2"):
                    end_def = relationship.get(end) or {}
                    if end_def.get("type") and end_def.get("name"):
                        ends = relationships.setdefault(end_def["type"], {})
                        ends[end_def["name"]] = relationship["name"]
        return cls(supertypes, attributes, relationships, frozenset(structs))

    def lineage(self, type_name: str) -> list[str]:
        """The type and all its super types, nearest first."""
        order: list[str] = []
        pending = [type_name]
        while pending:
            current = pending.pop(0)
            if current not in order:
                order.append(current)
                pending.extend(self.supertypes.get(current, ()))
        return order

    def knows(self, type_name: str) -> bool:
        return type_name in self.supertypes or type_name in self.attributes

    def attribute_type(self, type_name: str, attribute: str) -> str | None:
        for current in self.lineage(type_name):
            found = self.attributes.get(current, {}).get(attribute)
            if found is not None:
                return found
        return None

    def relationship_type(self, type_name: str, attribute: str) -> str | None:
        for current in self.lineage(type_name):
            found = self.relationships.get(current, {}).get(attribute)
            if found is not None:
                return found
        return None


def type_model(
    builtin_typedefs: Mapping[str, Any], project_typedefs: Mapping[str, Any]
) -> TypeModel:
    """Atlas's own types (``builtin_types.builtin_typedefs()``) with the project's on top."""
    return TypeModel.from_typedefs(builtin_typedefs, project_typedefs)


# -- values ------------------------------------------------------------------------------------


def epoch_millis(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    return value


def _string(value: Any) -> str:
    # Atlas (Java) spells booleans in lower case; a map of strings must not hold "True".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: Atlas's parser would refuse the whole request."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def convert(value: Any, type_name: str | None, model: TypeModel) -> Any:
    """A value as Atlas wants it for an attribute of type ``type_name`` (None: unknown)."""
    if value is None:
        return None
    if type_name is None:
        return _finite(value)
    if type_name == "date":
        return epoch_millis(value)
    if type_name in ("float", "double"):
        return _finite(value)
    if type_name.startswith("array<") and type_name.endswith(">"):
        element = type_name[6:-1]
        if not isinstance(value, list | tuple | set | frozenset):
            return _finite(value)
        items = sorted(value) if isinstance(value, set | frozenset) else value
        converted = [convert(v, element, model) for v in items]
        return [v for v in converted if v is not None]
    if type_name.startswith("map<") and type_name.endswith(">"):
        _, _, value_type = type_name[4:-1].partition(",")
        if not isinstance(value, Mapping):
            return _finite(value)
        out: JsonDict = {}
        for key, item in value.items():
            if value_type.strip() == "string":
                converted_item: Any = None if item is None else _string(item)
            else:
                converted_item = convert(item, value_type.strip(), model)
            if converted_item is not None:
                out[str(key)] = converted_item
        return out
    if type_name in model.structs and isinstance(value, Mapping):
        attributes = value.get("attributes") if "typeName" in value else value
        if not isinstance(attributes, Mapping):
            return _finite(value)
        return {
            "typeName": type_name,
            "attributes": {
                str(k): convert(v, model.attribute_type(type_name, str(k)), model)
                for k, v in attributes.items()
            },
        }
    return _finite(value)


# -- entities ----------------------------------------------------------------------------------


def object_id(ref: Ref, guids: Mapping[Ref, str], relationship_type: str | None = None) -> JsonDict:
    """AtlasObjectId (AtlasRelatedObjectId with a relationship type): guid only when the
    referenced entity is in the same request."""
    out: JsonDict = {}
    guid = guids.get(ref)
    if guid is not None:
        out["guid"] = guid
    out["typeName"] = ref.type_name
    out["uniqueAttributes"] = {QUALIFIED_NAME: ref.qualified_name}
    if relationship_type is not None:
        out["relationshipType"] = relationship_type
    return out


def classifications_json(names: Iterable[str]) -> list[JsonDict]:
    # propagate explicitly: left null, Atlas picks false for hook messages
    # (EntityGraphMapper.addClassifications when isInNotificationProcessing).
    return [{"typeName": name, "propagate": True} for name in names]


def entity_json(entity: Entity, model: TypeModel, guids: Mapping[Ref, str]) -> JsonDict:
    attributes: JsonDict = {QUALIFIED_NAME: entity.qualified_name}
    for name, value in entity.attributes.items():
        attributes[name] = convert(value, model.attribute_type(entity.type_name, name), model)
    relationship_attributes: JsonDict = {}
    for name, target in entity.references.items():
        relationship = model.relationship_type(entity.type_name, name)
        reference: JsonDict | list[JsonDict] = (
            object_id(target, guids, relationship)
            if isinstance(target, Ref)
            else [object_id(t, guids, relationship) for t in target]
        )
        if relationship is not None:
            relationship_attributes[name] = reference
        else:
            attributes[name] = reference
    out: JsonDict = {"typeName": entity.type_name}
    guid = guids.get(entity.ref)
    if guid is not None:
        out["guid"] = guid
    out["attributes"] = attributes
    if relationship_attributes:
        out["relationshipAttributes"] = relationship_attributes
    if entity.classifications:
        out["classifications"] = classifications_json(entity.classifications)
    return out


def placeholder_guids(entities: Sequence[Entity]) -> dict[Ref, str]:
    """Negative guids, unique within one request: Atlas maps them to real ones in the
    response's ``guidAssignments``."""
    return {entity.ref: f"-{index}" for index, entity in enumerate(entities, start=1)}


def entities_json(entities: Sequence[Entity], model: TypeModel) -> list[JsonDict]:
    guids = placeholder_guids(entities)
    return [entity_json(entity, model, guids) for entity in entities]


def bulk_request(entities: Sequence[Entity], model: TypeModel) -> JsonDict:
    """The body of ``POST /api/atlas/v2/entity/bulk`` (AtlasEntitiesWithExtInfo)."""
    return {"entities": entities_json(entities, model), "referredEntities": {}}


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON; NaN is refused here, not by Atlas."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entity_size(entity: Entity, model: TypeModel) -> int:
    """Bytes the entity takes in a request, at most (every reference counted with a guid)."""
    guids = {entity.ref: "-0000000", **{r: "-0000000" for r in entity.referenced()}}
    return len(dumps(entity_json(entity, model, guids))) + 1


def topological_order(entities: Sequence[Entity]) -> list[Entity]:
    """Referenced entities before those referring to them, otherwise in the given order.

    When a batch is cut in parts, or bisected to find a refused entity, the parts are sent in
    order: an entity then never refers to one that comes in a later request."""
    by_ref = {e.ref: e for e in entities}
    done: set[Ref] = set()
    order: list[Entity] = []
    for entity in entities:
        # Iterative depth-first walk: reference chains may be long, Python's stack is not.
        stack: list[tuple[Entity, int]] = [(entity, 0)]
        visiting: set[Ref] = set()
        while stack:
            current, position = stack.pop()
            if current.ref in done:
                continue
            visiting.add(current.ref)
            targets = [t for t in current.referenced() if t in by_ref and t != current.ref]
            if position < len(targets):
                stack.append((current, position + 1))
                target = targets[position]
                if target not in done and target not in visiting:  # a cycle: keep input order
                    stack.append((by_ref[target], 0))
                continue
            visiting.discard(current.ref)
            done.add(current.ref)
            order.append(current)
    return order
