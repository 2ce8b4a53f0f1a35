"""One way to read a served model out of either catalog: what a reader answers
(``CatalogReader``, implemented by the embedded catalog and by ``AtlasCatalog``), how a model
and its version are found, and the lineage graph that ``report`` and ``lineage`` both show."""

from __future__ import annotations

from typing import Protocol

from atlas_sink.catalog.model import Direction, LineageGraph, Referrer, StoredEntity
from atlas_sink.core import naming
from atlas_sink.core.translate import DEPLOYMENT, MODEL, MODEL_VERSION

# A "models known" hint lists at most this many names.
_KNOWN_SHOWN = 20


class CatalogReader(Protocol):
    def entity(self, type_name: str, qualified_name: str) -> StoredEntity | None: ...

    def qualified_names(self, type_name: str, name: str | None = None) -> list[str]:
        """Every qualifiedName of the type (and its subtypes), however many there are; with
        ``name``, only those of entities whose ``name`` attribute is exactly ``name``."""

    def referrers(
        self, type_name: str, qualified_name: str, attribute: str | None = None
    ) -> list[Referrer]: ...

    def lineage(
        self, type_name: str, qualified_name: str, direction: Direction = "BOTH", depth: int = 3
    ) -> LineageGraph: ...


class ModelNotFound(LookupError):
    """The catalog holds no such model or version; the message says what it holds."""


def find_model(reader: CatalogReader, model: str, cluster: str | None = None) -> StoredEntity:
    """The model named ``model`` (in ``cluster``, needed when several clusters serve it),
    found by its qualifiedName: the identity the sink gave it."""
    if cluster is not None:
        found = reader.entity(MODEL, naming.model(model, cluster))
        if found is None:
            raise ModelNotFound(
                f"no model {model!r} in cluster {cluster!r}: check the name (case matters) "
                "and --cluster"
            )
        return found
    # Searched by name, not listed: a catalog of 10,000 models is then still one request.
    clusters = sorted(
        model_cluster
        for parts, model_cluster in map(naming.split, reader.qualified_names(MODEL, model))
        if parts == [model]
    )
    if not clusters:
        known = sorted(
            {
                parts[0]
                for parts, _ in map(naming.split, reader.qualified_names(MODEL))
                if len(parts) == 1
            }
        )
        shown = known[:_KNOWN_SHOWN] + (
            [f"... {len(known) - _KNOWN_SHOWN} more"] if len(known) > _KNOWN_SHOWN else []
        )
        raise ModelNotFound(
            f"no model {model!r} in the catalog (case matters); models known: {shown}"
        )
    if len(clusters) > 1:
        raise ModelNotFound(
            f"model {model!r} exists in clusters {clusters}: choose one with --cluster"
        )
    found = reader.entity(MODEL, naming.model(model, clusters[0]))
    if found is None:  # deleted between the two reads
        raise ModelNotFound(f"no model {model!r} in cluster {clusters[0]!r}")
    return found


def model_versions(reader: CatalogReader, model_entity: StoredEntity) -> list[StoredEntity]:
    """The model's versions, in the order they were loaded."""
    return sorted(
        (
            r.entity
            for r in reader.referrers(MODEL, model_entity.qualified_name, "model")
            if r.entity.type_name == MODEL_VERSION
        ),
        key=lambda e: (e.attributes.get("loadedAt") or 0, str(e.attributes.get("version"))),
    )


def find_version(
    reader: CatalogReader,
    model_entity: StoredEntity,
    version: str | None = None,
    versions: list[StoredEntity] | None = None,
) -> StoredEntity:
    """``version`` of the model, or the latest one it served. ``versions``: the model's, when
    the caller read them already (read here only when needed: one request per version in
    Atlas)."""
    (model, *_), cluster = naming.split(model_entity.qualified_name)
    chosen = version or model_entity.attributes.get("latestVersion")
    if chosen is None:
        versions = model_versions(reader, model_entity) if versions is None else versions
        chosen = versions[-1].attributes.get("version") if versions else None
    if chosen is None:
        raise ModelNotFound(f"model {model!r} has no loaded version in the catalog")
    found = reader.entity(MODEL_VERSION, naming.model_version(model, str(chosen), cluster))
    if found is None:
        versions = model_versions(reader, model_entity) if versions is None else versions
        raise ModelNotFound(
            f"no version {str(chosen)!r} of model {model!r} in cluster {cluster!r}; versions "
            f"known: {[e.attributes.get('version') for e in versions]}"
        )
    return found


def model_lineage(
    reader: CatalogReader,
    version: StoredEntity,
    depth: int = 0,
    deployments: list[str] | None = None,
) -> LineageGraph:
    """The version's lineage, with each deployment's other inputs. A data set's own lineage
    shows what feeds it and what it feeds, not what else feeds the processes downstream
    (Atlas draws it so too); adding the deployments' inputs shows the data flowing through
    serving. ``deployments``: their qualified names, when the caller read them already."""
    base = reader.lineage(MODEL_VERSION, version.qualified_name, "BOTH", depth)
    if deployments is None:
        deployments = [
            r.entity.qualified_name
            for r in reader.referrers(MODEL_VERSION, version.qualified_name, "inputs")
            if r.entity.type_name == DEPLOYMENT
        ]
    nodes = dict(base.nodes)
    relations = set(base.relations)
    for deployment in deployments:
        inputs = reader.lineage(DEPLOYMENT, deployment, "INPUT", 1)
        nodes.update(inputs.nodes)
        relations.update(inputs.relations)
    return LineageGraph(
        base_entity_id=base.base_entity_id,
        direction=base.direction,
        depth=base.depth,
        nodes=nodes,
        relations=sorted(relations),
    )
