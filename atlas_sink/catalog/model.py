"""The read model of a catalog, whichever holds it (the embedded one or Atlas): stored entities,
who refers to them, and lineage graphs in Atlas's shape with ``type:qualifiedName`` keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from atlas_sink.core.entities import Ref

Direction = Literal["BOTH", "INPUT", "OUTPUT"]
DIRECTIONS = ("BOTH", "INPUT", "OUTPUT")


def entity_key(ref: Ref) -> str:
    """The id of an entity in lineage graphs: ``type:qualifiedName`` (type names have no ':')."""
    return f"{ref.type_name}:{ref.qualified_name}"


def parse_key(key: str) -> Ref:
    type_name, _, qualified_name = key.partition(":")
    return Ref(type_name, qualified_name)


@dataclass(frozen=True, slots=True)
class StoredEntity:
    type_name: str
    qualified_name: str
    attributes: dict[str, Any]
    references: dict[str, Ref | list[Ref]]
    classifications: tuple[str, ...]
    # Classification name -> keys of the upstream entities it propagated from.
    propagated_classifications: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Atlas 2.2+ propagates classifications in background tasks; while an entity has pending
    # ones, what propagated to it may not show yet. The embedded catalog propagates at once.
    propagation_pending: bool = False

    @property
    def ref(self) -> Ref:
        return Ref(self.type_name, self.qualified_name)

    @property
    def key(self) -> str:
        return entity_key(self.ref)

    @property
    def all_classifications(self) -> tuple[str, ...]:
        return tuple(sorted({*self.classifications, *self.propagated_classifications}))


@dataclass(frozen=True, slots=True)
class Referrer:
    """An entity whose reference ``attribute`` points at the entity asked about."""

    attribute: str
    entity: StoredEntity


@dataclass(frozen=True, slots=True)
class LineageNode:
    """Atlas's entity header in a lineage answer."""

    type_name: str
    qualified_name: str
    name: str | None
    classifications: tuple[str, ...]
    propagated_classifications: tuple[str, ...]
    # Referenced but never written: what Atlas's hook path would hold as a shell entity.
    incomplete: bool = False

    def to_atlas(self) -> dict[str, Any]:
        return {
            "typeName": self.type_name,
            "attributes": {"qualifiedName": self.qualified_name, "name": self.name},
            "classificationNames": sorted(
                {*self.classifications, *self.propagated_classifications}
            ),
            "isIncomplete": self.incomplete,
        }


@dataclass(frozen=True, slots=True, order=True)
class LineageRelation:
    """An edge in data-flow direction: data set -> process that reads it, process -> output."""

    from_entity_id: str
    to_entity_id: str

    def to_atlas(self) -> dict[str, str]:
        return {"fromEntityId": self.from_entity_id, "toEntityId": self.to_entity_id}


@dataclass(frozen=True, slots=True)
class LineageGraph:
    """Atlas's ``AtlasLineageInfo`` with ``type:qualifiedName`` keys in place of guids."""

    base_entity_id: str
    direction: Direction
    depth: int
    nodes: dict[str, LineageNode]
    relations: list[LineageRelation]

    def to_atlas(self) -> dict[str, Any]:
        return {
            "baseEntityGuid": self.base_entity_id,
            "lineageDirection": self.direction,
            "lineageDepth": self.depth,
            "guidEntityMap": {key: node.to_atlas() for key, node in sorted(self.nodes.items())},
            "relations": [relation.to_atlas() for relation in self.relations],
        }
