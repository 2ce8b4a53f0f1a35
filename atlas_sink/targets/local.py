"""The embedded local catalog: Atlas's entity model in one SQLite file, the default target.

It answers the governance questions without an Atlas: entities with their attributes,
references between them, classifications, lineage and classification propagation, shaped
as Atlas shapes them so the CLI and the report read the same way from either.

Storage, one SQLite file in WAL mode (readers never wait for the writer):

- ``types``: every registered type name with its category and super types;
- ``entities``: one row per (type, qualifiedName), plain attributes as a JSON object;
- ``edges``: one row per reference (position -1 marks a single reference, 0.. a list);
- ``classifications``: the names attached directly to each entity.

Writes are upserts in one transaction per call, as ``POST /entity/bulk`` is: attributes
present overwrite, absent ones are kept, a reference attribute present replaces that
attribute's edges, classifications accumulate. Propagated classifications are not stored:
they are computed when read, from the lineage as it is then, so the order in which entities
were written never matters.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.typedefs import load_project_typedefs, typedefs_path
from atlas_sink.catalog.model import (
    DIRECTIONS,
    Direction,
    LineageGraph,
    LineageNode,
    LineageRelation,
    Referrer,
    StoredEntity,
    entity_key,
)
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.target import Rejection, TargetUnavailable, WriteResult

PROCESS = "Process"
DATASET = "DataSet"
INPUTS = "inputs"
OUTPUTS = "outputs"
SINGLE = -1  # edges.position of a reference that is not a list


# Bound parameters per statement stay far below SQLite's limit (999 in old builds).
_CHUNK = 400
# Bumped when the tables change shape; a file from a newer sink is refused, not misread.
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS types (
    name TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    super_types TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (
    type_name TEXT NOT NULL,
    qualified_name TEXT NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (type_name, qualified_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges (
    from_type TEXT NOT NULL,
    from_qn TEXT NOT NULL,
    attribute TEXT NOT NULL,
    to_type TEXT NOT NULL,
    to_qn TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (from_type, from_qn, attribute, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_by_target ON edges (to_type, to_qn, attribute);
CREATE TABLE IF NOT EXISTS classifications (
    type_name TEXT NOT NULL,
    qualified_name TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (type_name, qualified_name, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS classifications_by_name ON classifications (name);
"""


class EntityNotFound(LookupError):
    """Asked about an entity the catalog does not hold (Atlas answers 404)."""


class _Types:
    """The registered types with each one's super types resolved, read once per call."""

    def __init__(self, rows: Iterable[tuple[str, str, tuple[str, ...]]]) -> None:
        self.categories: dict[str, str] = {}
        supers: dict[str, tuple[str, ...]] = {}
        for name, category, super_types in rows:
            self.categories[name] = category
            supers[name] = super_types
        self.entity_types = {n for n, c in self.categories.items() if c == "ENTITY"}
        self._closure: dict[str, set[str]] = {}
        for name in self.entity_types:
            seen: set[str] = set()
            todo = [name]
            while todo:
                current = todo.pop()
                if current not in seen:
                    seen.add(current)
                    todo.extend(supers.get(current, ()))
            self._closure[name] = seen
        self.processes = self.subtypes(PROCESS)

    def with_supers(self, type_name: str) -> set[str]:
        """The type and all its super types."""
        return self._closure.get(type_name, {type_name})

    def subtypes(self, type_name: str) -> set[str]:
        return {name for name, supers in self._closure.items() if type_name in supers}

    def is_a(self, type_name: str, super_type: str) -> bool:
        return super_type in self.with_supers(type_name)


class LocalCatalog:
    """A ``Target`` writing to one SQLite file, with the read API the CLI and report use."""

    name = "local"

    def __init__(
        self,
        path: str | Path,
        *,
        typedefs: str | Path | None = None,
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.typedefs = Path(typedefs) if typedefs is not None else typedefs_path()
        # One connection shared under a lock: the sink may build the target on one thread
        # and write from another, and sqlite3 objects must not be used concurrently.
        self._lock = threading.RLock()
        # The default path sits in a data directory that a first run has not made yet.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # Offsets are committed to Kafka once write() returns, so a committed transaction
        # must survive a power loss too: FULL, not WAL's usual NORMAL.
        self._db.execute("PRAGMA synchronous=FULL")
        # Another writer on the same file (a second sink, a CLI import) is waited for this
        # long; after that the write reports the target unavailable and is retried.
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            self.close()
            raise RuntimeError(
                f"{self.path} has local catalog schema version {version}, this sink reads up to "
                f"{_SCHEMA_VERSION}: upgrade the sink or point it at another file"
            )
        self._create_tables()

    # -- Target ------------------------------------------------------------------------------

    def ensure_types(self) -> None:
        # Atlas's own types first, as an Atlas has them before the project's are registered.
        rows: dict[str, tuple[str, tuple[str, ...]]] = {}
        for defs in (builtin_typedefs(), load_project_typedefs(self.typedefs)):
            for category, section in (
                ("ENUM", "enumDefs"),
                ("STRUCT", "structDefs"),
                ("CLASSIFICATION", "classificationDefs"),
                ("ENTITY", "entityDefs"),
                ("RELATIONSHIP", "relationshipDefs"),
                ("BUSINESS_METADATA", "businessMetadataDefs"),
            ):
                for definition in defs.get(section, []):
                    supers = tuple(definition.get("superTypes") or ())
                    rows[definition["name"]] = (category, supers)
        for name, (category, supers) in rows.items():
            unknown = [s for s in supers if rows.get(s, ("",))[0] != category]
            if unknown:
                raise ValueError(
                    f"{category.lower()} type {name} in {self.typedefs} has super types "
                    f"{unknown} that are neither defined there nor among Atlas's own types "
                    "(deploy/atlas/builtin/*.yaml): define them in one of the two"
                )
        with self._lock, self._transaction(immediate=True) as db:
            db.executemany(
                "INSERT INTO types (name, category, super_types) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET category = excluded.category, "
                "super_types = excluded.super_types",
                [(n, c, json.dumps(list(s))) for n, (c, s) in sorted(rows.items())],
            )

    def fetch(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        names = tuple(attribute_names)
        with self._lock, self._unavailable_on_io_errors(), self._transaction() as db:
            return {
                ref: {n: attributes[n] for n in names if n in attributes}
                for ref, attributes in self._attributes(db, refs).items()
            }

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        result = WriteResult()
        if not entities:
            return result
        with self._lock, self._unavailable_on_io_errors(), self._transaction(True) as db:
            result.requests = 1
            types = self._types(db)
            known = types.entity_types
            accepted: list[Entity] = []
            for entity in entities:
                rejection = _check(entity, known, self.typedefs)
                if rejection is None:
                    accepted.append(entity)
                else:
                    result.rejected[entity.ref] = rejection
            merged = self._attributes(db, [e.ref for e in accepted])
            edges: dict[tuple[Ref, str], Ref | list[Ref]] = {}
            classified: set[tuple[str, str, str]] = set()
            for entity in accepted:
                ref = entity.ref
                merged[ref] = {**merged.get(ref, {}), **entity.attributes}
                for attribute, target in entity.references.items():
                    edges[ref, attribute] = target
                classified.update(
                    (ref.type_name, ref.qualified_name, name) for name in entity.classifications
                )
            written = {e.ref for e in accepted}
            db.executemany(
                "INSERT INTO entities (type_name, qualified_name, attributes) VALUES (?, ?, ?) "
                "ON CONFLICT (type_name, qualified_name) "
                "DO UPDATE SET attributes = excluded.attributes",
                [
                    (ref.type_name, ref.qualified_name, _dumps(merged[ref]))
                    for ref in sorted(written)
                ],
            )
            db.executemany(
                "DELETE FROM edges WHERE from_type = ? AND from_qn = ? AND attribute = ?",
                [(ref.type_name, ref.qualified_name, attribute) for ref, attribute in edges],
            )
            db.executemany(
                "INSERT INTO edges (from_type, from_qn, attribute, to_type, to_qn, position) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        ref.type_name,
                        ref.qualified_name,
                        attribute,
                        to.type_name,
                        to.qualified_name,
                        i,
                    )
                    for (ref, attribute), target in edges.items()
                    for i, to in _positions(target)
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO classifications (type_name, qualified_name, name) "
                "VALUES (?, ?, ?)",
                sorted(classified),
            )
            result.written = len(written)
        return result

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> LocalCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def entity(self, type_name: str, qualified_name: str) -> StoredEntity | None:
        with self._lock, self._transaction() as db:
            found = self._load(db, self._types(db), [Ref(type_name, qualified_name)])
        return found[0] if found else None

    def find(
        self,
        type_name: str | None = None,
        classification: str | None = None,
        include_subtypes: bool = True,
        include_propagated: bool = True,
    ) -> list[StoredEntity]:
        """Entities of a type (and its subtypes), with a classification (attached, or
        propagated to them as Atlas's search finds them), or all: sorted by type and name."""
        with self._lock, self._transaction() as db:
            types = self._types(db)
            wanted: set[str] | None = None
            if type_name is not None:
                wanted = types.subtypes(type_name) if include_subtypes else {type_name}
                wanted.add(type_name)
            if classification is None:
                refs = self._refs_of_types(db, wanted)
                return self._load(db, types, refs)
            direct = {
                Ref(t, q)
                for t, q in db.execute(
                    "SELECT type_name, qualified_name FROM classifications WHERE name = ?",
                    (classification,),
                )
            }
            candidates = set(direct)
            if include_propagated:
                candidates |= self._closure(db, types, direct, upstream=False)
            candidates = {r for r in candidates if wanted is None or r.type_name in wanted}
            return [
                e
                for e in self._load(db, types, sorted(candidates))
                if classification in e.classifications
                or (include_propagated and classification in e.propagated_classifications)
            ]

    def qualified_names(self, type_name: str, name: str | None = None) -> list[str]:
        """Every qualifiedName of the type and its subtypes, sorted; with ``name``, of the
        entities whose ``name`` attribute is exactly ``name``."""
        with self._lock, self._transaction() as db:
            wanted = self._types(db).subtypes(type_name) | {type_name}
            if name is None:
                return sorted(ref.qualified_name for ref in self._refs_of_types(db, wanted))
            marks = ",".join("?" * len(wanted))
            rows = db.execute(
                f"SELECT qualified_name FROM entities WHERE type_name IN ({marks}) "
                "AND json_extract(attributes, '$.name') = ?",
                (*sorted(wanted), name),
            )
            return sorted(q for (q,) in rows)

    def referrers(
        self, type_name: str, qualified_name: str, attribute: str | None = None
    ) -> list[Referrer]:
        """Entities with a reference to this one: a version's schema changes, deployments and
        training, the schemas describing a data set. Sorted by attribute, type and name."""
        sql = "SELECT from_type, from_qn, attribute FROM edges WHERE to_type = ? AND to_qn = ?"
        params: tuple[str, ...] = (type_name, qualified_name)
        if attribute is not None:
            sql += " AND attribute = ?"
            params += (attribute,)
        with self._lock, self._transaction() as db:
            pointing = sorted({(a, Ref(t, q)) for t, q, a in db.execute(sql, params)})
            loaded = {e.ref: e for e in self._load(db, self._types(db), [r for _, r in pointing])}
        return [Referrer(a, loaded[r]) for a, r in pointing if r in loaded]

    def lineage(
        self, type_name: str, qualified_name: str, direction: Direction = "BOTH", depth: int = 3
    ) -> LineageGraph:
        """Atlas's lineage of a data set or process: processes reached through their
        ``inputs`` and ``outputs``, ``depth`` process hops each way (0: no limit)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0 (0 means unlimited, as in Atlas), got {depth}")
        base = Ref(type_name, qualified_name)
        with self._lock, self._transaction() as db:
            types = self._types(db)
            if not self._attributes(db, [base]):
                raise EntityNotFound(
                    f"no {type_name} with qualifiedName {qualified_name!r} in {self.path}"
                )
            is_process = types.is_a(type_name, PROCESS)
            if not is_process and not types.is_a(type_name, DATASET):
                raise ValueError(
                    f"lineage is defined for DataSet and Process types, got {type_name} "
                    f"(super types {sorted(types.with_supers(type_name) - {type_name})})"
                )
            relations: set[tuple[Ref, Ref]] = set()
            if direction in ("INPUT", "BOTH"):
                relations |= self._walk(db, types, base, is_process, True, depth)
            if direction in ("OUTPUT", "BOTH"):
                relations |= self._walk(db, types, base, is_process, False, depth)
            members = {base} | {r for pair in relations for r in pair}
            nodes = self._nodes(db, types, members)
        return LineageGraph(
            base_entity_id=entity_key(base),
            direction=direction,
            depth=depth,
            nodes=nodes,
            relations=sorted(LineageRelation(entity_key(a), entity_key(b)) for a, b in relations),
        )

    # -- internals ---------------------------------------------------------------------------

    def _create_tables(self) -> None:
        with self._lock, self._transaction(immediate=True) as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: IMMEDIATE for writes (the read-merge-write of an upsert must not
        interleave with another writer), deferred for reads (one consistent snapshot)."""
        db = self._db
        if db is None:
            raise RuntimeError(f"the local catalog {self.path} is closed")
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _unavailable_on_io_errors(self) -> Iterator[None]:
        """A locked, full or failing disk is the target being unavailable: the pipeline keeps
        the batch and retries it, offsets stay uncommitted."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise TargetUnavailable(
                f"the local catalog {self.path} cannot be written now ({exc}): the batch is "
                "kept and retried; if this lasts, check the disk and any other process "
                "holding the file"
            ) from exc

    def _types(self, db: sqlite3.Connection) -> _Types:
        rows = db.execute("SELECT name, category, super_types FROM types")
        return _Types((n, c, tuple(json.loads(s))) for n, c, s in rows)

    def _attributes(self, db: sqlite3.Connection, refs: Iterable[Ref]) -> dict[Ref, dict[str, Any]]:
        return {
            Ref(t, q): json.loads(a)
            for t, q, a in _select_by_ref(
                db,
                "SELECT type_name, qualified_name, attributes FROM entities",
                ("type_name", "qualified_name"),
                refs,
            )
        }

    def _refs_of_types(self, db: sqlite3.Connection, wanted: set[str] | None) -> list[Ref]:
        sql = "SELECT type_name, qualified_name FROM entities"
        if wanted is None:
            return [Ref(t, q) for t, q in db.execute(sql + " ORDER BY type_name, qualified_name")]
        refs: list[Ref] = []
        for type_name in sorted(wanted):
            rows = db.execute(sql + " WHERE type_name = ? ORDER BY qualified_name", (type_name,))
            refs.extend(Ref(t, q) for t, q in rows)
        return refs

    def _load(
        self, db: sqlite3.Connection, types: _Types, refs: Iterable[Ref]
    ) -> list[StoredEntity]:
        attributes = self._attributes(db, refs)
        found = sorted(attributes)
        references: dict[Ref, dict[str, list[tuple[int, Ref]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for t, q, attribute, to_t, to_q, position in _select_by_ref(
            db,
            "SELECT from_type, from_qn, attribute, to_type, to_qn, position FROM edges",
            ("from_type", "from_qn"),
            found,
        ):
            references[Ref(t, q)][attribute].append((position, Ref(to_t, to_q)))
        classifications = self._classifications(db, found)
        propagated = self._propagated(db, types, found)
        return [
            StoredEntity(
                type_name=ref.type_name,
                qualified_name=ref.qualified_name,
                attributes=attributes[ref],
                references={
                    attribute: _shape(targets)
                    for attribute, targets in sorted(references[ref].items())
                },
                classifications=tuple(sorted(classifications.get(ref, ()))),
                propagated_classifications={
                    name: tuple(sorted(entity_key(s) for s in sources))
                    for name, sources in sorted(propagated.get(ref, {}).items())
                },
            )
            for ref in found
        ]

    def _classifications(self, db: sqlite3.Connection, refs: Iterable[Ref]) -> dict[Ref, set[str]]:
        found: dict[Ref, set[str]] = defaultdict(set)
        for t, q, name in _select_by_ref(
            db,
            "SELECT type_name, qualified_name, name FROM classifications",
            ("type_name", "qualified_name"),
            refs,
        ):
            found[Ref(t, q)].add(name)
        return found

    def _step(
        self, db: sqlite3.Connection, types: _Types, frontier: Collection[Ref], upstream: bool
    ) -> set[tuple[Ref, Ref]]:
        """One hop along the lineage edges, as (from, to) pairs in data-flow direction: a data
        set flows into each process listing it in ``inputs``, a process into each entity in
        its ``outputs``. Only references held by Process types count, as in Atlas, where
        they are the dataset_process_inputs and process_dataset_outputs relationships."""
        processes = types.processes
        pairs: set[tuple[Ref, Ref]] = set()
        own = [r for r in frontier if r.type_name in processes]
        for t, q, to_t, to_q in self._edges_from(db, own, INPUTS if upstream else OUTPUTS):
            process, other = Ref(t, q), Ref(to_t, to_q)
            pairs.add((other, process) if upstream else (process, other))
        data = [r for r in frontier if r.type_name not in processes]
        for t, q, to_t, to_q in self._edges_to(db, data, OUTPUTS if upstream else INPUTS):
            if t in processes:
                process, other = Ref(t, q), Ref(to_t, to_q)
                pairs.add((process, other) if upstream else (other, process))
        return pairs

    def _edges_from(
        self, db: sqlite3.Connection, refs: Iterable[Ref], attribute: str
    ) -> list[tuple[str, str, str, str]]:
        return _select_by_ref(
            db,
            "SELECT from_type, from_qn, to_type, to_qn FROM edges",
            ("from_type", "from_qn"),
            refs,
            ("attribute = ?", attribute),
        )

    def _edges_to(
        self, db: sqlite3.Connection, refs: Iterable[Ref], attribute: str
    ) -> list[tuple[str, str, str, str]]:
        return _select_by_ref(
            db,
            "SELECT from_type, from_qn, to_type, to_qn FROM edges",
            ("to_type", "to_qn"),
            refs,
            ("attribute = ?", attribute),
        )

    def _closure(
        self, db: sqlite3.Connection, types: _Types, start: Iterable[Ref], upstream: bool
    ) -> set[Ref]:
        """Everything reachable from ``start`` along lineage edges, at any distance."""
        graph = self._graph(db, types, start, upstream)
        return {r for linked in graph.values() for r in linked}

    def _graph(
        self, db: sqlite3.Connection, types: _Types, start: Iterable[Ref], upstream: bool
    ) -> dict[Ref, set[Ref]]:
        """The lineage reachable from ``start`` one way, as node -> next nodes; the queries
        of a hop cover the whole frontier, whatever its size."""
        linked: dict[Ref, set[Ref]] = defaultdict(set)
        seen = set(start)
        frontier = set(seen)
        while frontier:
            reached: set[Ref] = set()
            for a, b in self._step(db, types, frontier, upstream):
                here, there = (b, a) if upstream else (a, b)
                linked[here].add(there)
                if there not in seen:
                    reached.add(there)
            seen |= reached
            frontier = reached
        return linked

    def _propagated(
        self, db: sqlite3.Connection, types: _Types, refs: Collection[Ref]
    ) -> dict[Ref, dict[str, set[Ref]]]:
        """Classifications reaching each entity from upstream, as Atlas propagates them by
        default along dataset_process_inputs and process_dataset_outputs: from a data set to
        the processes reading it, from a process to what it writes, transitively."""
        parents = self._graph(db, types, refs, upstream=True)
        children: dict[Ref, set[Ref]] = defaultdict(set)
        for node, linked in parents.items():
            for parent in linked:
                children[parent].add(node)
        # Every path from a classified entity to one asked about lies in the upstream graph
        # just walked; walking down from the few classified entities is linear in its size,
        # where collecting each entity's ancestors would be quadratic on long chains.
        classified = self._classifications(db, {*refs, *children})
        wanted = set(refs)
        result: dict[Ref, dict[str, set[Ref]]] = {}
        for source, names in classified.items():
            reached: set[Ref] = set()
            todo = list(children.get(source, ()))
            while todo:
                node = todo.pop()
                if node not in reached:
                    reached.add(node)
                    todo.extend(children.get(node, ()))
            reached.discard(source)
            for node in reached & wanted:
                found = result.setdefault(node, {})
                for name in names:
                    found.setdefault(name, set()).add(source)
        return result

    def _walk(
        self,
        db: sqlite3.Connection,
        types: _Types,
        base: Ref,
        is_process: bool,
        upstream: bool,
        depth: int,
    ) -> set[tuple[Ref, Ref]]:
        """Atlas's traversal (EntityLineageService.getLineageInfoV2 and traverseEdges): from
        a process one hop to its data sets first; from each data set to the processes on the
        far side and on to their other side, ``depth`` times. As in Atlas, a process is only
        followed when it has data sets on its far side, and siblings (a process's other
        inputs when walking downstream) are not part of the answer."""
        relations: set[tuple[Ref, Ref]] = set()
        remaining = depth if depth > 0 else -1
        if is_process:
            first = self._step(db, types, [base], upstream)
            relations |= first
            frontier = {a if upstream else b for a, b in first}
            remaining -= 1
        else:
            frontier = {base}
        visited: set[Ref] = set()
        while frontier and remaining != 0:
            visited |= frontier
            to_processes = self._step(db, types, frontier, upstream)
            far_side: dict[Ref, list[tuple[Ref, Ref]]] = defaultdict(list)
            processes = {a if upstream else b for a, b in to_processes}
            for pair in self._step(db, types, processes, upstream):
                far_side[pair[1] if upstream else pair[0]].append(pair)
            reached: set[Ref] = set()
            for hop in to_processes:
                far = far_side.get(hop[0] if upstream else hop[1])
                if far:
                    relations.add(hop)
                    relations.update(far)
                    reached.update(pair[0] if upstream else pair[1] for pair in far)
            frontier = reached - visited
            remaining -= 1
        return relations

    def _nodes(
        self, db: sqlite3.Connection, types: _Types, refs: Collection[Ref]
    ) -> dict[str, LineageNode]:
        attributes = self._attributes(db, refs)
        classifications = self._classifications(db, refs)
        propagated = self._propagated(db, types, refs)
        nodes: dict[str, LineageNode] = {}
        for ref in sorted(refs):
            stored = attributes.get(ref)
            name = stored.get("name") if stored else None
            nodes[entity_key(ref)] = LineageNode(
                type_name=ref.type_name,
                qualified_name=ref.qualified_name,
                name=name if isinstance(name, str) else None,
                classifications=tuple(sorted(classifications.get(ref, ()))),
                propagated_classifications=tuple(sorted(propagated.get(ref, {}))),
                incomplete=stored is None,
            )
        return nodes


def _check(entity: Entity, known: set[str], typedefs: Path) -> Rejection | None:
    """Refuse what Atlas would refuse with a 400, before anything is written."""
    if entity.type_name not in known:
        hint = (
            "no types are registered yet: call ensure_types() first"
            if not known
            else f"define it in {typedefs} and call ensure_types()"
        )
        return Rejection(
            "UNKNOWN_TYPE",
            f"expected a registered entity type, got {entity.type_name!r} "
            f"(Atlas answers 400 ATLAS-400-00-014): {hint}",
        )
    try:
        _dumps(entity.attributes)
    except (TypeError, ValueError) as exc:
        return Rejection(
            "INVALID_VALUE",
            f"expected JSON-serialisable attribute values (finite numbers, strings, lists, "
            f"maps), got {exc}: fix the translation of this entity",
        )
    return None


def _dumps(attributes: Mapping[str, Any]) -> str:
    # NaN and infinities are not JSON, and Atlas refuses them: refuse them here too.
    return json.dumps(attributes, sort_keys=True, allow_nan=False, separators=(",", ":"))


def _positions(target: Ref | list[Ref]) -> list[tuple[int, Ref]]:
    if isinstance(target, Ref):
        return [(SINGLE, target)]
    return list(enumerate(target))


def _shape(targets: list[tuple[int, Ref]]) -> Ref | list[Ref]:
    if len(targets) == 1 and targets[0][0] == SINGLE:
        return targets[0][1]
    return [ref for _, ref in sorted(targets)]


def _select_by_ref(
    db: sqlite3.Connection,
    select: str,
    columns: tuple[str, str],
    refs: Iterable[Ref],
    extra: tuple[str, str] | None = None,
) -> list[Any]:
    """``select`` restricted to rows whose (type, name) ``columns`` are among ``refs``: one
    statement per type and chunk, each a lookup in the (type, name) index."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for ref in set(refs):
        by_type[ref.type_name].append(ref.qualified_name)
    rows: list[Any] = []
    type_column, name_column = columns
    for type_name, names in sorted(by_type.items()):
        names.sort()
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"{select} WHERE {type_column} = ? AND {name_column} IN ({marks})"
            params: list[str] = [type_name, *chunk]
            if extra is not None:
                sql += f" AND {extra[0]}"
                params.append(extra[1])
            rows.extend(db.execute(sql, params))
    return rows
