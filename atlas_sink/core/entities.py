"""What the translation produces and every target consumes: plain entity data, no I/O.

An ``Entity`` is Atlas's entity in miniature: a type, its unique ``qualifiedName``, plain
attributes, references to other entities by unique attribute, and classification names.
Targets turn it into their own form (Atlas JSON, hook notifications, SQLite rows).

Mutable entities (model, model version, deployment) also carry their ``EntityState``: the
newest event applied (so an older event never overwrites newer values) and, per producer
and model, the sequences applied (``sequence_ranges``: so a redelivered event never counts
twice, and a late one still counts once). The state is written in the same entity as the
values it guards, so it survives with the catalog: a restarted sink and a replay agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from atlas_sink.core import sequence_ranges
from atlas_sink.core.sequence_ranges import Ranges

# Attributes every mutable entity type carries (see deploy/atlas/servemeta_typedefs.json).
LAST_EVENT_TIME = "lastEventTime"
LAST_EVENT_ID = "lastEventId"
ATTRIBUTE_TIMES = "attributeTimes"
WATERMARKS = "producerWatermarks"
# Deployments only: per version, what the newest event about it said (see ``Served``).
SERVED_VERSIONS = "servedVersions"

# Values of a mutable entity fixed by its qualifiedName (model and version names): the same in
# every event about it, and mandatory in Atlas, so written with every upsert.
IDENTITY_ATTRIBUTES = frozenset({"name", "modelName", "version"})

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


class VersionRecord(NamedTuple):
    """The newest word on one version of a deployment, and when it was last loaded there."""

    loaded_at: int  # microseconds; 0: never loaded here
    at: int  # event time of ``status``
    status: str
    reason: str | None


@dataclass(slots=True)
class EntityState:
    """What guards a mutable entity against old and repeated events.

    ``times``: per attribute, the event time of the value it holds; a value from an older
    event is not applied, whatever order events arrive in. ``applied_sequences``: per producer
    and model, the sequences applied; a redelivered event is recognised and adds nothing.
    """

    times: dict[str, int] = field(default_factory=dict)
    applied_sequences: dict[str, Ranges] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    last_event_time: int = 0
    last_event_id: str | None = None
    # When each producer's sequences last grew: pruning keeps the most recently active
    # producers, not the highest sequences (a restarted producer starts again at 1).
    marked_at: dict[str, int] = field(default_factory=dict)
    # Deployments: per version served there. The deployment's status is derived from these
    # (``deployment_status``), never taken from the newest event alone: unloading the version
    # a deployment no longer serves must not stop the one it serves, in any arrival order.
    served: dict[str, VersionRecord] = field(default_factory=dict)

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
        if record is None:
            self.served[served.version] = VersionRecord(
                loaded_at, moment, served.status, served.reason
            )
            return
        loaded_at = max(record.loaded_at, loaded_at)
        if moment >= record.at:
            record = VersionRecord(loaded_at, moment, served.status, served.reason)
        else:
            record = record._replace(loaded_at=loaded_at)
        self.served[served.version] = record

    def current_version(self) -> str | None:
        """The version loaded last (a deployment serves one version at a time); with none ever
        loaded, the one heard of last (a first load that failed)."""
        if not self.served:
            return None
        records = self.served
        if any(r.loaded_at for r in records.values()):
            return max(records, key=lambda v: (records[v].loaded_at, v))
        return max(records, key=lambda v: (records[v].at, v))

    def copy(self) -> EntityState:
        return EntityState(
            dict(self.times),
            dict(self.applied_sequences),
            dict(self.totals),
            self.last_event_time,
            self.last_event_id,
            dict(self.marked_at),
            dict(self.served),
        )

    def _served_attributes(self) -> dict[str, Any]:
        current = self.current_version()
        if current is None:
            return {}
        record = self.served[current]
        records = self.served
        others = sorted(
            (v for v in records if v != current),
            key=lambda v: (max(records[v].at, records[v].loaded_at), v),
        )
        kept = [current, *others[-(MAX_SERVED_VERSIONS - 1) :]]
        return {
            "status": record.status,
            "statusReason": record.reason,
            "statusSince": record.at // 1000,
            SERVED_VERSIONS: {
                v: json.dumps(
                    {
                        "status": records[v].status,
                        "at": records[v].at,
                        "loadedAt": records[v].loaded_at,
                        "reason": records[v].reason,
                    },
                    separators=(",", ":"),
                )
                for v in sorted(kept)
            },
        }

    def to_attributes(self) -> dict[str, Any]:
        """Atlas maps hold strings: a producer's sequences are written as
        ``<ranges>@<micros>`` (``1-41,43-50@1764000000000000``)."""
        producers = self.applied_sequences
        recent = sorted(producers, key=lambda p: self.marked_at.get(p, 0))[-MAX_WATERMARKS:]
        return {
            ATTRIBUTE_TIMES: {name: str(t) for name, t in sorted(self.times.items())},
            WATERMARKS: {
                p: f"{sequence_ranges.to_text(producers[p])}@{self.marked_at.get(p, 0)}"
                for p in sorted(recent)
            },
            LAST_EVENT_TIME: self.last_event_time,
            LAST_EVENT_ID: self.last_event_id,
            **self.totals,
            **self._served_attributes(),
        }

    @classmethod
    def from_attributes(
        cls, attributes: dict[str, Any], total_names: tuple[str, ...]
    ) -> EntityState:
        marks = {
            producer: value.partition("@")
            for producer, value in (attributes.get(WATERMARKS) or {}).items()
        }
        return cls(
            times={k: int(v) for k, v in (attributes.get(ATTRIBUTE_TIMES) or {}).items()},
            applied_sequences={
                p: sequence_ranges.from_text(ranges) for p, (ranges, _, _) in marks.items()
            },
            # A total never written stays absent: writing 0 for it would make a restarted
            # sink's catalog differ from a replay's, and say "none" where nothing is known.
            totals={n: int(attributes[n]) for n in total_names if attributes.get(n) is not None},
            last_event_time=int(attributes.get(LAST_EVENT_TIME) or 0),
            last_event_id=attributes.get(LAST_EVENT_ID),
            marked_at={p: int(at or 0) for p, (_, _, at) in marks.items()},
            served={
                version: _version_record(text)
                for version, text in (attributes.get(SERVED_VERSIONS) or {}).items()
            },
        )


def _version_record(text: str) -> VersionRecord:
    record = json.loads(text)
    return VersionRecord(
        int(record["loadedAt"]), int(record["at"]), str(record["status"]), record.get("reason")
    )


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
_NO_TOTALS: Mapping[str, int] = MappingProxyType({})


class Update(NamedTuple):
    """One event's contribution to one entity, before coalescing.

    ``values`` apply only when the event is the newest seen for the entity; ``totals`` are
    added once per event whatever its age (a late window still happened); ``served`` is merged
    into the deployment's per-version records (``EntityState.serve``).
    ``key`` is None for immutable entities (data sets, schemas): their values never change.
    """

    type_name: str
    qualified_name: str
    values: dict[str, Any]
    references: Mapping[str, Ref | list[Ref]] = _NO_REFERENCES
    classifications: tuple[str, ...] = ()
    key: EventKey | None = None
    event_id: str | None = None
    totals: Mapping[str, int] = _NO_TOTALS
    # Deployments: the version this event is about and what it says of it.
    served: Served | None = None

    @property
    def ref(self) -> Ref:
        return Ref(self.type_name, self.qualified_name)
