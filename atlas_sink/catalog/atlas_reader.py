"""Atlas read as the report reads the embedded catalog (``report.CatalogReader``).

Atlas answers with guids, object ids and relationship attributes; this turns them into the
same ``StoredEntity``, ``Referrer`` and ``LineageGraph`` the local catalog returns, so one
report serves both. "Who refers to this entity" is each relationship's other end, which
Atlas lists on the entity itself: the table below names that end for every reference the
translation writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atlas_sink.atlas.client import AtlasClient
from atlas_sink.catalog.model import (
    Direction,
    LineageGraph,
    LineageNode,
    LineageRelation,
    Referrer,
    StoredEntity,
    entity_key,
)
from atlas_sink.core.entities import Ref

# reference attribute -> the relationship attribute Atlas keeps on the referenced entity
INVERSE = {
    "inputs": "inputToProcesses",
    "outputs": "outputFromProcesses",
    "model": "versions",
    "modelVersion": "schemaChanges",
    "describes": "servemetaSchemas",
    "inputSchema": "inputOfVersions",
    "outputSchema": "outputOfVersions",
    "newSchema": "introducedBy",
    "deployment": "versionStats",
}


def _is_object_id(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and "typeName" in value
        and ("guid" in value or "uniqueAttributes" in value)
    )


def plain(value: Any) -> Any:
    """Struct values come as {typeName, attributes}: keep the attributes."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict) and "attributes" in value and "typeName" in value:
        return dict(value["attributes"])
    return value


def propagation_pending(entity: Mapping[str, Any]) -> bool:
    """Whether Atlas still runs classification tasks for the entity (AtlasEntity.pendingTasks,
    Atlas 2.2 and later; 2.1 has no such field and propagates within the request)."""
    return bool(entity.get("pendingTasks"))


class AtlasCatalog:
    """``CatalogReader`` over Atlas's REST API: entities, referrers and lineage, and searches
    that page through every match."""

    def __init__(self, client: AtlasClient) -> None:
        self._rest = client
        self._qualified_names: dict[str, Ref] = {}

    def _ref(self, value: dict[str, Any], referred: dict[str, Any]) -> Ref | None:
        qualified = (value.get("uniqueAttributes") or {}).get("qualifiedName")
        guid = value.get("guid")
        if qualified is None and guid in referred:
            qualified = referred[guid]["attributes"].get("qualifiedName")
        if qualified is None:
            return self._by_guid(guid) if guid else None
        ref = Ref(value["typeName"], qualified)
        if guid:
            self._qualified_names[guid] = ref
        return ref

    def _by_guid(self, guid: str) -> Ref | None:
        """Relationship ends and propagated classifications name entities by guid alone: ask
        Atlas once, then remember it."""
        if guid in self._qualified_names:
            return self._qualified_names[guid]
        answer = self._rest.entity_by_guid(guid)
        if answer is None:
            return None
        entity = answer["entity"]
        qualified = (entity.get("attributes") or {}).get("qualifiedName")
        if qualified is None:
            return None
        ref = self._qualified_names[guid] = Ref(entity["typeName"], qualified)
        return ref

    def _stored(self, answer: dict[str, Any]) -> StoredEntity:
        entity = answer["entity"]
        referred = answer.get("referredEntities") or {}
        guid = entity.get("guid")
        attributes: dict[str, Any] = {}
        references: dict[str, Ref | list[Ref]] = {}
        relationship = entity.get("relationshipAttributes") or {}
        for name, value in {**entity.get("attributes", {}), **relationship}.items():
            if _is_object_id(value):
                ref = self._ref(value, referred)
                if ref is not None:
                    references[name] = ref
            elif isinstance(value, list) and value and all(_is_object_id(v) for v in value):
                references[name] = [r for v in value if (r := self._ref(v, referred))]
            elif name not in relationship:
                attributes[name] = plain(value)
        qualified = attributes.get("qualifiedName", "")
        if guid:
            self._qualified_names[guid] = Ref(entity["typeName"], qualified)
        own: list[str] = []
        propagated: dict[str, tuple[str, ...]] = {}
        for classification in entity.get("classifications") or []:
            origin = classification.get("entityGuid")
            if origin in (None, guid):
                own.append(classification["typeName"])
            else:
                source = self._by_guid(origin)
                propagated[classification["typeName"]] = (
                    entity_key(source) if source else f"guid:{origin}",
                )
        return StoredEntity(
            type_name=entity["typeName"],
            qualified_name=qualified,
            attributes=attributes,
            references=references,
            classifications=tuple(sorted(own)),
            propagated_classifications=propagated,
            propagation_pending=propagation_pending(entity),
        )

    def entity(self, type_name: str, qualified_name: str) -> StoredEntity | None:
        answer = self._rest.entity(type_name, qualified_name)
        return None if answer is None else self._stored(answer)

    def qualified_names(self, type_name: str, name: str | None = None) -> list[str]:
        """From the search's entity headers alone: no read of each entity. With ``name``,
        Atlas filters by it and the exact match is checked here: Atlas's ``eq`` on a string
        may also match other spellings (case, tokens)."""
        headers = self._rest.search_all(
            type_name,
            attribute_filter=None if name is None else ("name", "eq", name),
            attributes=() if name is None else ("name",),
        )
        return sorted(
            str(attributes["qualifiedName"])
            for attributes in (h.get("attributes") or {} for h in headers)
            if attributes.get("qualifiedName") is not None
            and (name is None or attributes.get("name") == name)
        )

    def referrers(
        self, type_name: str, qualified_name: str, attribute: str | None = None
    ) -> list[Referrer]:
        target = self._rest.entity(type_name, qualified_name)
        if target is None:
            return []
        relationship = target["entity"].get("relationshipAttributes") or {}
        referred = target.get("referredEntities") or {}
        wanted = [attribute] if attribute is not None else sorted(INVERSE)
        out = []
        for name in wanted:
            ends = relationship.get(INVERSE.get(name, ""))
            for end in ends if isinstance(ends, list) else [ends] if ends else []:
                ref = self._ref(end, referred)
                if ref is None or end.get("relationshipStatus") == "DELETED":
                    continue
                stored = self.entity(ref.type_name, ref.qualified_name)
                if stored is not None:
                    out.append(Referrer(name, stored))
        return sorted(out, key=lambda r: (r.attribute, r.entity.type_name, r.entity.qualified_name))

    def lineage(
        self, type_name: str, qualified_name: str, direction: Direction = "BOTH", depth: int = 3
    ) -> LineageGraph:
        answer = self._rest.lineage(type_name, qualified_name, direction, depth) or {}
        headers = answer.get("guidEntityMap") or {}
        keys: dict[str, str] = {}
        nodes: dict[str, LineageNode] = {}
        for guid, header in headers.items():
            attrs = header.get("attributes") or {}
            ref = Ref(header["typeName"], attrs.get("qualifiedName", guid))
            keys[guid] = entity_key(ref)
            nodes[keys[guid]] = LineageNode(
                type_name=ref.type_name,
                qualified_name=ref.qualified_name,
                name=attrs.get("name"),
                classifications=tuple(sorted(set(header.get("classificationNames") or []))),
                propagated_classifications=(),
                incomplete=bool(header.get("isIncomplete")),
            )
        relations = sorted(
            {
                LineageRelation(keys[r["fromEntityId"]], keys[r["toEntityId"]])
                for r in answer.get("relations") or []
                if r.get("fromEntityId") in keys and r.get("toEntityId") in keys
            }
        )
        base = keys.get(
            answer.get("baseEntityGuid", ""), entity_key(Ref(type_name, qualified_name))
        )
        return LineageGraph(
            base_entity_id=base,
            direction=direction,
            depth=depth,
            nodes=nodes,
            relations=relations,
        )
