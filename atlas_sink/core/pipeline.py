"""One batch of raw Kafka messages through decode, validate, dedup, translate, coalesce, write.

Kafka stays in the consumer above; this module sees messages as plain values, and the target
through its small interface. Caches here are bounded and only ever updated after the target
acknowledged a write, so a failed batch can be retried as if it had never been seen.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar

from atlas_sink.core.coalesce import Coalesced, coalesce, refs_needing_state
from atlas_sink.core.decode import DecodeError, Decoder
from atlas_sink.core.entities import (
    STATE_ATTRIBUTES,
    Entity,
    EntityState,
    Ref,
    Update,
)
from atlas_sink.core.previous_schemas import PreviousSchemas
from atlas_sink.core.target import Target
from atlas_sink.core.translate import (
    SERVING_STATS,
    Rules,
    judged_compatibility,
    translate,
)
from atlas_sink.core.validate import InvalidEvent, Limits, check_event, check_names, check_size
from capture.events import Compatibility, ModelEvent, SchemaChanged

K = TypeVar("K")
V = TypeVar("V")


def tune_gc_for_streaming() -> None:
    """Fewer, larger young-generation collections, and start-up objects out of the GC's way.

    The sink allocates a dozen short-lived objects per event while holding large, long-lived
    caches; with the default thresholds the collector runs every 700 allocations and spends
    a third of the time walking objects that never die. Memory stays bounded: the caches are
    bounded and the young generation is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class BoundedCache(Generic[K, V]):
    """Least-recently-used mapping with a fixed capacity: memory stays flat on any backlog."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


class RecentIds:
    """The last ``capacity`` event ids applied, each with a digest of its message, oldest
    forgotten first (no LRU bookkeeping: a duplicate is recognised whether or not it was seen
    lately). The digest tells a redelivery from another body under a known id."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, bytes] = {}

    def add(self, event_id: str, digest: bytes) -> None:
        ids = self._ids
        ids[event_id] = digest
        if len(ids) > self.capacity:
            del ids[next(iter(ids))]

    def get(self, event_id: str) -> bytes | None:
        return self._ids.get(event_id)


class RawMessage(NamedTuple):
    """One Kafka message as plain values (a named tuple: one per message, made in C)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    message: RawMessage
    reason: str  # stable class: framing, avro, validation, timestamp, target_rejected, ...
    detail: str


@dataclass
class BatchOutcome:
    consumed: int = 0
    decoded: int = 0
    duplicates: int = 0
    updates: int = 0
    entities_written: int = 0
    write_requests: int = 0
    write_seconds: float = 0.0
    # Updates taken for applied only because their producer's oldest sequence gaps were given
    # up (``sequence_ranges``): possibly never applied, so counted apart from duplicates.
    beyond_window: int = 0
    # Schema changes by how the sink's own verdict compares with the producer's claim:
    # agreed, overruled (both known and different) or unjudged (previous schema unknown).
    compatibility: dict[str, int] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    # Valid events dropped without a dead letter, by reason (``redelivered``: a known id with
    # the same body; ``already_applied``, ``beyond_dedup_window``: see coalesce), each with
    # the position of one of them, for the log.
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_example: dict[str, str] = field(default_factory=dict)
    # Serving stats entities the target took: the live figures per version, for /metrics.
    live_figures: list[Entity] = field(default_factory=list)

    def dead_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self.dead:
            counts[letter.reason] = counts.get(letter.reason, 0) + 1
        return counts

    def dropped_by_reason(self) -> dict[str, int]:
        """Every message that changed nothing in the catalog, by reason, dead or skipped."""
        counts = self.dead_by_reason()
        for reason, count in self.skipped.items():
            counts[reason] = counts.get(reason, 0) + count
        return counts

    def drop_examples(self) -> dict[str, str]:
        """One dropped message per reason: where it is, and for a dead letter why."""
        examples = dict(self.skipped_example)
        for letter in self.dead:
            examples.setdefault(letter.reason, f"{describe(letter.message)}: {letter.detail[:300]}")
        return examples

    def skip(self, reason: str, message: RawMessage, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.skipped_example.setdefault(reason, describe(message))


@dataclass
class Counts:
    """Events counted over any number of batches: the live loop's totals, a replay's result."""

    consumed: int = 0
    decoded: int = 0
    duplicates: int = 0
    updates: int = 0
    entities_written: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: BatchOutcome) -> None:
        self.consumed += outcome.consumed
        self.decoded += outcome.decoded
        self.duplicates += outcome.duplicates
        self.updates += outcome.updates
        self.entities_written += outcome.entities_written
        for reason, count in outcome.dead_by_reason().items():
            self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + count
        for reason, count in outcome.dropped_by_reason().items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count


class Pipeline:
    def __init__(
        self,
        target: Target,
        decoder: Decoder,
        rules: Rules,
        limits: Limits | None = None,
        *,
        cache_size: int = 100_000,
        recent_ids: int = 10_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self.decoder = decoder
        self.rules = rules
        self.limits = limits or Limits()
        self._clock = clock
        self._states: BoundedCache[Ref, EntityState] = BoundedCache(cache_size)
        self._written: BoundedCache[Ref, str] = BoundedCache(cache_size)
        # Redelivery after a crash repeats at most a few batches, and the entities' own
        # watermarks catch anything older: the id set only needs to cover recent events.
        self._seen = RecentIds(recent_ids)
        self._previous_schemas = PreviousSchemas(lambda refs, names: self.target.fetch(refs, names))

    def decode(self, message: RawMessage) -> ModelEvent:
        """Raises DecodeError or InvalidEvent; both carry a reason and a message."""
        check_size(message.value, self.limits)
        event = self.decoder.decode(message.value)
        check_event(event, self.limits, self._clock())
        return event

    def process(self, batch: Sequence[RawMessage]) -> BatchOutcome:
        # A batch's garbage is freed by reference counting as it goes; the cycle collector,
        # run mid-batch, would only walk the batch's live objects and find nothing (about a
        # tenth of the batch's time, measured). It is held off for the whole batch, the
        # target's write included: enabled before the write, its first collection walks every
        # event the batch still holds (0.34 of the decode floor against 0.37, measured). What
        # cycles a batch leaves are bounded by its size and collected once it returns.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._process(batch)
        finally:
            if collecting:
                gc.enable()

    def _process(self, batch: Sequence[RawMessage]) -> BatchOutcome:
        outcome = BatchOutcome(consumed=len(batch))
        updates: list[Update] = []
        sources: list[int] = []  # sources[i]: index in ``batch`` of the event behind updates[i]
        batch_ids: dict[str, int] = {}
        digests: dict[str, bytes] = {}
        seen, rules = self._seen, self.rules
        for index, message in enumerate(batch):
            try:
                event = self.decode(message)
            except (DecodeError, InvalidEvent) as exc:
                outcome.dead.append(DeadLetter(message, exc.reason, exc.message))
                continue
            outcome.decoded += 1
            event_id = event.envelope.event_id
            digest = hashlib.blake2b(message.value or b"", digest_size=8).digest()
            known = digests.get(event_id) or seen.get(event_id)
            if known is not None:
                if known == digest:
                    outcome.duplicates += 1
                    outcome.skip("redelivered", message)
                else:
                    outcome.dead.append(
                        DeadLetter(
                            message,
                            "conflicting_duplicate",
                            f"event id {event_id} was applied already with another body "
                            f"(digest {known.hex()}, this one {digest.hex()}); expected a "
                            "redelivery to repeat its event exactly. The first one applied "
                            "stands: give a changed event an id of its own",
                        )
                    )
                continue
            event = self._previous_schemas.see(event)
            if isinstance(event.payload, SchemaChanged):
                verdict = _verdict_on_claim(event.payload)
                outcome.compatibility[verdict] = outcome.compatibility.get(verdict, 0) + 1
            try:
                translated = translate(event, rules)
                check_names(translated)
            except InvalidEvent as exc:
                outcome.dead.append(DeadLetter(message, exc.reason, exc.message))
                continue
            except ValueError as exc:  # urlsplit("kafka://[x"): "Invalid IPv6 URL"
                detail = f"no entity name can be made from the event: {exc}"
                outcome.dead.append(DeadLetter(message, "name", detail))
                continue
            batch_ids[event_id] = index
            digests[event_id] = digest
            updates += translated
            sources += [index] * len(translated)
        outcome.updates = len(updates)
        states = self._load_states(refs_needing_state(updates))
        result = coalesce(updates, states)
        outcome.duplicates += result.duplicates
        outcome.beyond_window += result.beyond_window
        if result.duplicate_keys or result.beyond_window_keys:
            self._count_skipped(batch, updates, sources, result, outcome)
        entities = [
            e for e in result.entities if e.ref in result.states or self._changed_since_written(e)
        ]
        started = time.perf_counter()
        written = self.target.write(entities) if entities else None
        outcome.write_seconds = time.perf_counter() - started
        rejected = written.rejected if written else {}
        if written:
            outcome.entities_written = written.written
            outcome.write_requests = written.requests
        if rejected:
            for update, index in zip(updates, sources, strict=True):
                rejection = rejected.get(update.ref)
                if rejection is not None:
                    outcome.dead.append(
                        DeadLetter(
                            batch[index],
                            "target_rejected",
                            f"{self.target.name} refused {update.type_name} "
                            f"{update.qualified_name!r}: {rejection.code} {rejection.message}",
                        )
                    )
        accepted: Iterable[str] = batch_ids
        if outcome.dead:
            outcome.dead = _unique_by_offset(outcome.dead)
            dead = {_position(letter.message) for letter in outcome.dead}
            # A rejected event must stay unseen, or its re-drive from the DLQ would be taken
            # for a duplicate.
            accepted = [i for i, index in batch_ids.items() if _position(batch[index]) not in dead]
        self._remember(entities, result.states, rejected, {i: digests[i] for i in accepted})
        outcome.live_figures = [
            e for e in entities if e.type_name == SERVING_STATS and e.ref not in rejected
        ]
        return outcome

    @staticmethod
    def _count_skipped(
        batch: Sequence[RawMessage],
        updates: list[Update],
        sources: list[int],
        result: Coalesced,
        outcome: BatchOutcome,
    ) -> None:
        where = {u.key: i for u, i in zip(updates, sources, strict=True) if u.key is not None}
        for reason, keys in result.dropped_events().items():
            outcome.skip(reason, batch[where[next(iter(keys))]], len(keys))

    def _load_states(self, refs: set[Ref]) -> dict[Ref, EntityState]:
        states: dict[Ref, EntityState] = {}
        missing: list[Ref] = []
        for ref in refs:
            cached = self._states.get(ref)
            if cached is None:
                missing.append(ref)
            else:
                states[ref] = cached
        if missing:
            stored = self.target.fetch(sorted(missing), list(STATE_ATTRIBUTES))
            for ref in missing:
                states[ref] = EntityState.from_attributes(stored.get(ref) or {})
        return states

    def _changed_since_written(self, entity: Entity) -> bool:
        """Immutable entities (data sets, schemas) already written unchanged are skipped."""
        return self._written.get(entity.ref) != _digest(entity)

    def _remember(
        self,
        entities: list[Entity],
        states: dict[Ref, EntityState],
        rejected: dict[Ref, Any],
        event_ids: Mapping[str, bytes],
    ) -> None:
        for entity in entities:
            if entity.ref in rejected:
                continue
            if entity.ref in states:
                self._states.put(entity.ref, states[entity.ref])
            else:
                self._written.put(entity.ref, _digest(entity))
        for event_id, digest in event_ids.items():
            self._seen.add(event_id, digest)


def _verdict_on_claim(changed: SchemaChanged) -> str:
    judged = judged_compatibility(changed)
    if judged is Compatibility.UNKNOWN:
        return "unjudged"
    claim = changed.compatibility
    return "agreed" if claim in (judged, Compatibility.UNKNOWN) else "overruled"


def _digest(entity: Entity) -> str:
    content = json.dumps(
        [
            entity.attributes,
            {k: repr(v) for k, v in entity.references.items()},
            entity.classifications,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def describe(message: RawMessage) -> str:
    return f"{message.topic}/{message.partition}@{message.offset}"


def _position(message: RawMessage) -> tuple[str, int, int]:
    return (message.topic, message.partition, message.offset)


def _unique_by_offset(dead: list[DeadLetter]) -> list[DeadLetter]:
    seen: set[tuple[str, int, int]] = set()
    unique = []
    for letter in dead:
        key = _position(letter.message)
        if key not in seen:
            seen.add(key)
            unique.append(letter)
    return unique
