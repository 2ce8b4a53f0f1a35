"""The schema a ``SchemaChanged`` replaced, for events that name it by fingerprint only.

Since contract v2 a producer sends ``previous_schema`` and the sink judges compatibility from
the event alone. An older producer (or another language's emitter on v1) sends only
``previous_fingerprint``: the schema is then found among those the sink has seen (a bounded
cache, content-addressed, so what order it was filled in does not matter) or in the
catalog. Found late or not at all, the verdict stays UNKNOWN (counted as ``unjudged``).
Fingerprints are recomputed from the fields before anything is cached or used, so a schema
found here is the one its fingerprint names.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from atlas_sink.core import naming
from atlas_sink.core.entities import Ref
from atlas_sink.core.translate import DATA_SCHEMA
from capture.dataschema import fingerprint
from capture.events import DataSchema, FieldSpec, ModelEvent, ModelLoaded, SchemaChanged

Fetch = Callable[[Sequence[Ref], Sequence[str]], Mapping[Ref, Mapping[str, Any]]]


def schema_from_stored(attributes: Mapping[str, Any]) -> DataSchema | None:
    """A catalog's schema entity back as a DataSchema: None when its fields no longer give the
    fingerprint it is named by (an entity edited by hand is not trusted to judge)."""
    fields = []
    for stored in attributes.get("fields") or []:
        # Atlas returns struct values as {typeName, attributes}; the embedded catalog plainly.
        field = stored.get("attributes", stored) if isinstance(stored, Mapping) else None
        if not isinstance(field, Mapping) or not isinstance(field.get("name"), str):
            return None
        fields.append(
            FieldSpec(
                name=field["name"],
                type=str(field.get("type")),
                nullable=bool(field.get("nullable")),
            )
        )
    claimed = attributes.get("fingerprint")
    if not fields or claimed != fingerprint(fields):
        return None
    return DataSchema(fields=fields, fingerprint=claimed)


class PreviousSchemas:
    def __init__(self, fetch: Fetch, capacity: int = 10_000) -> None:
        self._fetch = fetch
        self._capacity = capacity
        self._known: OrderedDict[str, DataSchema] = OrderedDict()

    def see(self, event: ModelEvent) -> ModelEvent:
        """Remember the schemas a (validated) event carries; return it with
        ``previous_schema`` filled in where it was left out and is known."""
        payload = event.payload
        if isinstance(payload, ModelLoaded):
            self._remember(payload.input_schema, payload.output_schema)
            return event
        if not isinstance(payload, SchemaChanged):
            return event
        self._remember(payload.new_schema)
        if payload.previous_schema is not None:
            self._remember(payload.previous_schema)
            return event
        if payload.previous_fingerprint is None:
            return event
        found = self._find(payload.previous_fingerprint, event.envelope.deployment.cluster)
        if found is None:
            return event
        return ModelEvent(
            envelope=event.envelope, payload=dataclasses.replace(payload, previous_schema=found)
        )

    def _remember(self, *schemas: DataSchema) -> None:
        known = self._known
        for schema in schemas:
            known[schema.fingerprint] = schema
            known.move_to_end(schema.fingerprint)
        while len(known) > self._capacity:
            known.popitem(last=False)

    def _find(self, schema_fingerprint: str, cluster: str) -> DataSchema | None:
        known = self._known.get(schema_fingerprint)
        if known is not None:
            return known
        ref = Ref(DATA_SCHEMA, naming.data_schema(schema_fingerprint, cluster))
        stored = self._fetch([ref], ["fingerprint", "fields"]).get(ref)
        found = schema_from_stored(stored) if stored else None
        if found is not None:
            self._remember(found)
        return found
