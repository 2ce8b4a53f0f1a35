"""What the translation produces and every target consumes: plain entity data, no I/O.

An ``Entity`` is Atlas's entity in miniature: a type, its unique ``qualifiedName``, plain
attributes, references to other entities by unique attribute, and classification names.
Targets turn it into their own form (Atlas JSON, hook notifications, SQLite rows).

Mutable entities (model, model version, deployment) also carry their ``EntityState``: the
newest event applied (so an older event never overwrites newer values) and, per producer
and model, the sequences applied (``sequence_ranges``: so a redelivered event never counts
twice, and a late one still counts once). The state is written in the same entity as the
values it guards, so it survives with the catalog: a restarted sink and a replay agree. It
is written as one JSON text in one attribute (``SINK_STATE``) that only the sink reads, so
that a reviewer reading the entity meets the values, not the bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from atlas_sink.core import sequence_ranges
from atlas_sink.core.sequence_ranges import Ranges
from atlas_sink.core.serving_stats import ServingStats, StatsContribution, iso_seconds

# Every mutable entity type carries it (see deploy/atlas/servemeta_typedefs.json). Its name
# sorts last: Atlas's UI lists an entity's attributes alphabetically.
SINK_STATE = "zInternalSinkState"
# Deployments only: per version, what the newest event about it said (see ``Served``).
SERVED_VERSIONS = "servedVersions"
# What servemeta wrote before type version 2.0, as separate attributes that reviewers met
# first: read when the entity has no SINK_STATE yet, so that a sink upgraded over an existing
# catalog keeps its guard against repeated events, and its totals. Atlas keeps the old
# attributes (it deletes none); they are no longer written.
LEGACY_STATE_ATTRIBUTES = (
    "attributeTimes",
    "producerWatermarks",
    "lastEventTime",
    "lastEventId",
    "servedVersions",
)
# Attributes the sink reads back to rebuild an entity's state.
STATE_ATTRIBUTES = (SINK_STATE, *LEGACY_STATE_ATTRIBUTES)

# Values of a mutable entity fixed by its qualifiedName (model and version names): the same in
# every event about it, and mandatory in Atlas, so written with every upsert.
IDENTITY_ATTRIBUTES = frozenset({"name", "modelName", "version", "serverName"})

# At most this many producers' sequence ranges per entity: restarts create new producer
# instances, and their ranges only matter while their events can still be redelivered.
MAX_WATERMARKS = 64
# At most this many versions' records per deployment; the one it serves is always kept.
MAX_SERVED_VERSIONS = 32


# Ref, EventKey and Update are named tuples rather than frozen dataclasses: they are made
# and hashed several times per event on the sink's hot path, and tuples do both in C.


class Ref(NamedTuple):
    """A reference to an entity by its unique attribute."""

    type_name: str
    qualified_name: str


class EventKey(NamedTuple):
    event_time: int  # microseconds since the epoch
    producer: str  # "<instance_id>/<model>": the Kafka key's order holds within it
    sequence: int


class Served(NamedTuple):
    """What one lifecycle event says about one version on a deployment."""

    version: str
    status: str  # IN_SERVICE (it was loaded), FAILED, STOPPED
    reason: str | None
    loaded: bool
    # A restored instance serving again what it loaded before (ModelLoaded.restored).
    resumed: bool = False


class VersionRecord(NamedTuple):
    """The newest word on one version of a deployment, and when it was last loaded there."""

    loaded_at: int  # microseconds; 0: never loaded here
    at: int  # event time of ``status``
    status: str
    reason: str | None
    # When an instance last resumed serving it after a restart (0: never): not a load, but
    # it serves from then on, so it counts as loaded_at does for which version is current.
    resumed_at: int = 0

    @property
    def serving_since(self) -> int:
        return max(self.loaded_at, self.resumed_at)


@dataclass(slots=True)
class EntityState:
    """What guards a mutable entity against old and repeated events.

    ``times``: per attribute, the event time of the value it holds; a value from an older
    event is not applied, whatever order events arrive in. ``applied_sequences``: per producer
    and model, the sequences applied; a redelivered event is recognised and adds nothing.
    """

    times: dict[str, int] = field(default_factory=dict)
    applied_sequences: dict[str, Ranges] = field(default_factory=dict)
    last_event_time: int = 0
    last_event_id: str | None = None
    # When each producer's sequences last grew: pruning keeps the most recently active
    # producers, not the highest sequences (a restarted producer starts again at 1).
    marked_at: dict[str, int] = field(default_factory=dict)
    # Deployments: per version served there. The deployment's status is derived from these
    # (``deployment_status``), never taken from the newest event alone: unloading the version
    # a deployment no longer serves must not stop the one it serves, in any arrival order.
    served: dict[str, VersionRecord] = field(default_factory=dict)
    # Serving stats entities: the live figures merged from every window applied.
    stats: ServingStats | None = None

    def applied(self, key: EventKey) -> bool:
        return sequence_ranges.contains(self.applied_sequences.get(key.producer, ()), key.sequence)

    def beyond_window(self, key: EventKey) -> bool:
        """An event taken for applied only because its producer's oldest gaps were given up."""
        ranges = self.applied_sequences.get(key.producer, ())
        return sequence_ranges.beyond_window(ranges, key.sequence)

    def mark(self, key: EventKey) -> None:
        ranges = self.applied_sequences.get(key.producer, ())
        self.applied_sequences[key.producer] = sequence_ranges.add(ranges, key.sequence)
        self.marked_at[key.producer] = max(self.marked_at.get(key.producer, 0), key.event_time)

    def serve(self, served: Served, moment: int) -> None:
        """Merge one event's word on a version: the newest status wins, the latest load counts.
        Both are order-free, so the result depends on the set of events alone."""
        record = self.served.get(served.version)
        loaded_at = moment if served.loaded else 0
        resumed_at = moment if served.resumed else 0
        if record is None:
            self.served[served.version] = VersionRecord(
                loaded_at, moment, served.status, served.reason, resumed_at
            )
            return
        loaded_at = max(record.loaded_at, loaded_at)
        resumed_at = max(record.resumed_at, resumed_at)
        if moment >= record.at:
            record = VersionRecord(loaded_at, moment, served.status, served.reason, resumed_at)
        else:
            record = record._replace(loaded_at=loaded_at, resumed_at=resumed_at)
        self.served[served.version] = record

    def current_version(self) -> str | None:
        """The version loaded (or resumed after a restart) last: a deployment serves one version
        at a time; with none ever loaded, the one heard of last (a first load that failed)."""
        if not self.served:
            return None
        records = self.served
        if any(r.serving_since for r in records.values()):
            return max(records, key=lambda v: (records[v].serving_since, v))
        return max(records, key=lambda v: (records[v].at, v))

    def copy(self) -> EntityState:
        return EntityState(
            dict(self.times),
            dict(self.applied_sequences),
            self.last_event_time,
            self.last_event_id,
            dict(self.marked_at),
            dict(self.served),
            self.stats.copy() if self.stats is not None else None,
        )

    def _served_attributes(self) -> dict[str, Any]:
        """For reviewers: the deployment's status, and per version served there the newest
        word on it in words (the records themselves are in the sink's state)."""
        current = self.current_version()
        if current is None:
            return {}
        record = self.served[current]
        return {
            "status": record.status,
            "statusReason": record.reason,
            "statusSince": record.at // 1000,
            SERVED_VERSIONS: {
                version: _in_words(self.served[version]) for version in self._kept_versions()
            },
        }

    def _kept_versions(self) -> list[str]:
        current = self.current_version()
        records = self.served
        others = sorted(
            (v for v in records if v != current),
            key=lambda v: (max(records[v].at, records[v].serving_since), v),
        )
        kept = others[-(MAX_SERVED_VERSIONS - 1) :]
        if current is not None:
            kept.append(current)
        return sorted(kept)

    def to_attributes(self) -> dict[str, Any]:
        """A producer's sequences are written as ``<ranges>@<micros>``
        (``1-41,43-50@1764000000000000``): the ranges, and when they last grew."""
        producers = self.applied_sequences
        recent = sorted(producers, key=lambda p: self.marked_at.get(p, 0))[-MAX_WATERMARKS:]
        state: dict[str, Any] = {
            "attributeTimes": dict(sorted(self.times.items())),
            "producers": {
                p: f"{sequence_ranges.to_text(producers[p])}@{self.marked_at.get(p, 0)}"
                for p in sorted(recent)
            },
            "lastEventTime": self.last_event_time,
            "lastEventId": self.last_event_id,
        }
        if self.served:
            state["served"] = {
                v: [
                    self.served[v].loaded_at,
                    self.served[v].at,
                    self.served[v].status,
                    self.served[v].reason,
                    self.served[v].resumed_at,
                ]
                for v in self._kept_versions()
            }
        if self.stats is not None:
            state["stats"] = self.stats.to_state()
        attributes: dict[str, Any] = {
            SINK_STATE: json.dumps(state, separators=(",", ":"), ensure_ascii=False),
            **self._served_attributes(),
        }
        if self.stats is not None:
            attributes.update(self.stats.to_attributes())
        return attributes

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any]) -> EntityState:
        """The state ``to_attributes`` wrote; an entity without it has none yet."""
        text = attributes.get(SINK_STATE)
        state: dict[str, Any] = json.loads(text) if text else _legacy_state(attributes)
        marks = {
            producer: value.partition("@")
            for producer, value in (state.get("producers") or {}).items()
        }
        return cls(
            times={k: int(v) for k, v in (state.get("attributeTimes") or {}).items()},
            applied_sequences={
                p: sequence_ranges.from_text(ranges) for p, (ranges, _, _) in marks.items()
            },
            last_event_time=int(state.get("lastEventTime") or 0),
            last_event_id=state.get("lastEventId"),
            marked_at={p: int(at or 0) for p, (_, _, at) in marks.items()},
            served={
                # Four entries before resumed_at was kept.
                version: VersionRecord(
                    int(record[0]),
                    int(record[1]),
                    str(record[2]),
                    record[3],
                    int(record[4]) if len(record) > 4 else 0,
                )
                for version, record in (state.get("served") or {}).items()
            },
            stats=ServingStats.from_state(state["stats"]) if state.get("stats") else None,
        )


def _legacy_state(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The state as ``to_attributes`` would hold it, from the attributes of before 2.0."""
    served = {}
    for version, text in (attributes.get("servedVersions") or {}).items():
        if str(text).startswith("{"):  # a record in JSON, not the words written since
            record = json.loads(text)
            served[version] = [
                record["loadedAt"],
                record["at"],
                record["status"],
                record.get("reason"),
            ]
    return {
        "attributeTimes": attributes.get("attributeTimes") or {},
        "producers": attributes.get("producerWatermarks") or {},
        "lastEventTime": attributes.get("lastEventTime") or 0,
        "lastEventId": attributes.get("lastEventId"),
        "served": served,
    }


def _in_words(record: VersionRecord) -> str:
    """``IN_SERVICE since 2026-12-03T19:51:55Z, loaded 2026-12-03T19:51:55Z (reason)``."""
    text = f"{record.status} since {iso_seconds(record.at)}"
    if record.loaded_at:
        text += f", loaded {iso_seconds(record.loaded_at)}"
    if record.resumed_at:
        text += f", resumed {iso_seconds(record.resumed_at)}"
    return text + (f" ({record.reason})" if record.reason else "")


@dataclass(slots=True)
class Entity:
    type_name: str
    qualified_name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    # Attributes whose values are references: a Ref, or a list of Refs.
    references: dict[str, Ref | list[Ref]] = field(default_factory=dict)
    classifications: list[str] = field(default_factory=list)

    @property
    def ref(self) -> Ref:
        return Ref(self.type_name, self.qualified_name)

    def referenced(self) -> list[Ref]:
        """Every entity this one refers to, single references and lists alike."""
        refs: list[Ref] = []
        for target in self.references.values():
            refs.extend([target] if isinstance(target, Ref) else target)
        return refs


_NO_REFERENCES: Mapping[str, Ref | list[Ref]] = MappingProxyType({})


class Update(NamedTuple):
    """One event's contribution to one entity, before coalescing.

    ``values`` apply only when the event is the newest seen for the entity; ``stats`` is merged
    into a serving stats entity's live figures once per event whatever its age (a late window
    still happened); ``served`` into the deployment's per-version records
    (``EntityState.serve``).
    ``key`` is None for immutable entities (data sets, schemas): their values never change.
    """

    type_name: str
    qualified_name: str
    values: dict[str, Any]
    references: Mapping[str, Ref | list[Ref]] = _NO_REFERENCES
    classifications: tuple[str, ...] = ()
    key: EventKey | None = None
    event_id: str | None = None
    # Deployments: the version this event is about and what it says of it.
    served: Served | None = None
    # Serving stats: a window, or a training profile, to merge into the live figures.
    stats: StatsContribution | None = None

    @property
    def ref(self) -> Ref:
        return Ref(self.type_name, self.qualified_name)
