"""Deduplicate and coalesce a batch's entity updates into one write per entity. Pure.

Rules, per entity:
- an update whose (producer, sequence) the entity has already applied is a duplicate: it
  changes nothing (this is what makes redelivery after a crash harmless); the sequences
  applied are kept exactly, so a late event that arrives after a higher sequence is still
  applied once;
- each attribute keeps the value of the newest event that set it (event time), so an old
  event never overwrites newer state, in whatever order events arrive;
- a scoring window merges once into its version's live figures (``serving_stats``), whatever
  its age;
- a deployment's status is derived from what the newest event about each version said and
  which version was loaded last, so news of a version it no longer serves changes nothing;
- classifications only accumulate.
The result depends only on the set of events, not on how they were split into batches, so a
replay from the beginning ends where the live run ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from atlas_sink.core.entities import (
    IDENTITY_ATTRIBUTES,
    Entity,
    EntityState,
    EventKey,
    Ref,
    Update,
)
from atlas_sink.core.serving_stats import ServingStats


@dataclass
class Coalesced:
    entities: list[Entity]
    states: dict[Ref, EntityState]
    duplicates: int = 0
    beyond_window: int = 0
    updates: int = 0
    # Refs whose state was needed but not supplied: the caller must load them first.
    missing_states: set[Ref] = field(default_factory=set)
    # Events (by key) with an update applied, or recognised as applied already: an event
    # none of whose updates applied was dropped, for the reason its updates give.
    applied_keys: set[EventKey] = field(default_factory=set)
    duplicate_keys: set[EventKey] = field(default_factory=set)
    beyond_window_keys: set[EventKey] = field(default_factory=set)

    def dropped_events(self) -> dict[str, set[EventKey]]:
        """Events dropped whole, by reason: ``already_applied`` or ``beyond_dedup_window``."""
        beyond = self.beyond_window_keys - self.applied_keys
        duplicate = self.duplicate_keys - self.applied_keys - beyond
        dropped = {"already_applied": duplicate, "beyond_dedup_window": beyond}
        return {reason: keys for reason, keys in dropped.items() if keys}


def refs_needing_state(updates: Iterable[Update]) -> set[Ref]:
    return {u.ref for u in updates if u.key is not None}


def coalesce(updates: Iterable[Update], states: Mapping[Ref, EntityState]) -> Coalesced:
    """Fold updates in order; ``states`` must hold the stored state of every mutable ref
    (an entity the catalog does not have yet maps to an empty ``EntityState``)."""
    entities: dict[Ref, Entity] = {}
    new_states: dict[Ref, EntityState] = {}
    applied: set[Ref] = set()
    # Entities an event applied to (not only an unkeyed update): their state changed.
    keyed: set[Ref] = set()
    result = Coalesced(entities=[], states=new_states)
    count = 0
    for update in updates:
        count += 1
        ref = Ref(update.type_name, update.qualified_name)
        entity = entities.get(ref)
        if entity is None:
            entity = entities[ref] = Entity(update.type_name, update.qualified_name)
        if update.classifications:
            for name in update.classifications:
                if name not in entity.classifications:
                    entity.classifications.append(name)
        if update.key is None:
            entity.attributes.update(update.values)
            entity.references.update(update.references)
            applied.add(ref)
            continue
        state = new_states.get(ref)
        if state is None:
            stored = states.get(ref)
            if stored is None:
                result.missing_states.add(ref)
                stored = EntityState()
            state = new_states[ref] = stored.copy()
        key = update.key
        if state.applied(key):
            if state.beyond_window(key):
                result.beyond_window += 1
                result.beyond_window_keys.add(key)
            else:
                result.duplicates += 1
                result.duplicate_keys.add(key)
            continue
        applied.add(ref)
        keyed.add(ref)
        result.applied_keys.add(key)
        state.mark(key)
        moment = key.event_time
        if update.stats is not None:
            if state.stats is None:
                state.stats = ServingStats()
            state.stats.apply(update.stats, moment)
        if update.served is not None:
            state.serve(update.served, moment)
        if moment >= state.last_event_time:
            # The usual case, events in order: newer than anything applied, so every value
            # wins (each attribute's time is at most last_event_time).
            state.times.update(dict.fromkeys(update.values, moment))
            entity.attributes.update(update.values)
            if update.references:
                state.times.update(dict.fromkeys(update.references, moment))
                entity.references.update(update.references)
            state.last_event_time = moment
            state.last_event_id = update.event_id
            continue
        for name in IDENTITY_ATTRIBUTES.intersection(update.values):
            # Atlas refuses an upsert without a mandatory attribute (ATLAS-404-00-007), even
            # of an entity it has; these follow from the entity's identity alone, so a late
            # event's are as right as the newest one's.
            entity.attributes.setdefault(name, update.values[name])
        for name, value in update.values.items():
            if state.times.get(name, -1) <= moment:
                state.times[name] = moment
                entity.attributes[name] = value
        for name, target in update.references.items():
            if state.times.get(name, -1) <= moment:
                state.times[name] = moment
                entity.references[name] = target
    result.updates = count
    # An entity whose every update was a duplicate needs no write; one that only an unkeyed
    # update touched (a deployment named by a window) is written without its state, which
    # did not change, so the caller can skip it when it wrote the same before.
    result.entities = [entities[ref] for ref in entities if ref in applied]
    for entity in result.entities:
        if entity.ref in keyed:
            entity.attributes.update(new_states[entity.ref].to_attributes())
    result.states = {ref: state for ref, state in new_states.items() if ref in keyed}
    return result
