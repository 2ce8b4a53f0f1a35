"""``Target`` writing to Apache Atlas over REST: bulk upserts in bounded batches, refusals
isolated by bisection, classifications an existing entity lacks attached afterwards.

How Atlas's answers map onto a write (``atlas.client.classify``): OK is written; AUTH stops
the sink (``TargetAuthError``); RETRY is retried by the client, then ``TargetUnavailable``;
REJECT makes the batch be halved until the refused entities stand alone, each coming back as
a ``Rejection`` (code ATLAS-404-00-007, say) while the rest is written. Retrying a bulk POST
is safe: it is an upsert of absolute values, so one applied twice leaves the same state.

What the real server (Atlas 2.1.0) showed, and the target does about it:

- An entity carrying a classification Atlas has no type for fails the whole bulk write with a
  bare 500; so classification names are confirmed first (``atlas.classification_types``).
- An Atlas without the project's types (a new or reset server) refuses every entity with 400
  ATLAS-400-00-014. When that error names one of the project's types, the target registers
  the types again and repeats the request, once per write, instead of dead-lettering it all.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from atlas_sink.atlas import entity_json
from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.classification_types import ClassificationTypes
from atlas_sink.atlas.client import (
    ALREADY_ASSOCIATED,
    TYPE_NAME_INVALID,
    AtlasClient,
    Verdict,
    message,
    segment,
)
from atlas_sink.atlas.type_registry import TypeRestorer, ensure_types
from atlas_sink.atlas.typedefs import load_project_typedefs
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.target import Rejection, TargetUnavailable, WriteResult

log = logging.getLogger("servemeta.sink.atlas_rest")


class AtlasRestTarget:
    """``Target`` writing to Atlas through ``POST /api/atlas/v2/entity/bulk``."""

    name = "atlas-rest"

    def __init__(
        self,
        client: AtlasClient,
        *,
        typedefs: Mapping[str, Any] | None = None,
        batch_size: int = 200,
        max_batch_bytes: int = 2_000_000,
        classification_cache: int = 100_000,
    ) -> None:
        """``typedefs``: the project's AtlasTypesDef (default: the packaged
        servemeta_typedefs.json)."""
        if batch_size < 1 or max_batch_bytes < 1:
            raise ValueError(
                f"batch_size={batch_size}, max_batch_bytes={max_batch_bytes}: expected "
                "positive sizes"
            )
        self.client = client
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.typedefs = dict(typedefs) if typedefs is not None else load_project_typedefs()
        self.model = entity_json.type_model(builtin_typedefs(), self.typedefs)
        self._restore = TypeRestorer(client, self.typedefs)
        self._classifications = ClassificationTypes(client, self._restore)
        self._classified = _LruSet(classification_cache)

    def __repr__(self) -> str:
        return f"AtlasRestTarget({self.client.base_url!r}, user={self.client.user!r})"

    # -- Target --------------------------------------------------------------------------------

    def ensure_types(self) -> None:
        """Check that Atlas has the types of its own that the sink writes, then register the
        project's; nothing is written when a built-in type or attribute is missing."""
        ensure_types(self.client, self.typedefs)

    def fetch(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        return self.client.attributes_of(refs, attribute_names)

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        result = WriteResult()
        if not entities:
            return result
        self._restore.new_write()
        result.rejected.update(self._classifications.refuse_unknown(entities))
        writable = [e for e in entities if e.ref not in result.rejected]
        created: set[Ref] = set()
        try:
            for batch in self._batches(entity_json.topological_order(writable)):
                self._write_batch(batch, result, created)
        except TargetUnavailable:
            # A classification type deleted since it was confirmed makes Atlas 2.1 answer a bare
            # 500 (a NullPointerException in EntityGraphMapper.createClassificationVertex),
            # which is retried like any 5xx: confirm the types again before the next attempt,
            # so that such an entity is refused then instead of blocking its partition.
            self._classifications.forget()
            raise
        self._add_classifications(writable, created, result)
        return result

    def close(self) -> None:
        self.client.close()

    # -- writing -------------------------------------------------------------------------------

    def _batches(self, entities: Sequence[Entity]) -> Iterator[list[Entity]]:
        """Consecutive runs bounded by count and bytes: Atlas times out on very large bulks."""
        batch: list[Entity] = []
        size = 0
        for entity in entities:
            entity_bytes = entity_json.entity_size(entity, self.model)
            if batch and (
                len(batch) >= self.batch_size or size + entity_bytes > self.max_batch_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(entity)
            size += entity_bytes
        if batch:
            yield batch

    def _write_batch(self, batch: list[Entity], result: WriteResult, created: set[Ref]) -> None:
        answer = self.client.request(
            "POST",
            "/entity/bulk",
            body=entity_json.bulk_request(batch, self.model),
            what=f"writing {len(batch)} entities",
        )
        result.requests += 1
        if answer.verdict is Verdict.OK:
            response = answer.json()
            if not isinstance(response, dict):
                # A 200 that is no EntityMutationResponse (a login page behind a proxy, say)
                # wrote nothing: not a success to acknowledge.
                raise TargetUnavailable(
                    f"writing {len(batch)} entities to {self.client.base_url}: expected Atlas's "
                    f"JSON answer (EntityMutationResponse), got {answer.text[:120]!r}; check that "
                    "ATLAS_URL is Atlas's address and nothing in between rewrites answers"
                )
            result.written += len(batch)
            created.update(_created(batch, response))
            return
        if answer.error.code == TYPE_NAME_INVALID and self._restore(
            answer.error.message, f"{answer.error}, writing {len(batch)} entities"
        ):
            self._write_batch(batch, result, created)
            return
        if len(batch) == 1:
            entity = batch[0]
            error = answer.error
            log.warning(
                "Atlas refused %s %r: %s",
                entity.type_name,
                entity.qualified_name,
                error,
                extra={"status": answer.status, "code": error.code},
            )
            result.rejected[entity.ref] = Rejection(error.code, message(error))
            return
        # Some entity in the batch is refused: halve until it stands alone. The halves keep
        # the batch's order, so referenced entities are written before those referring.
        middle = len(batch) // 2
        self._write_batch(batch[:middle], result, created)
        self._write_batch(batch[middle:], result, created)

    def _add_classifications(
        self, entities: Sequence[Entity], created: set[Ref], result: WriteResult
    ) -> None:
        """Attach the classifications an existing entity lacks (bulk upserts apply them only
        when they create the entity): only the missing ones, since Atlas refuses a request
        naming one already attached."""
        wanted: dict[Ref, frozenset[str]] = {}
        for entity in entities:
            names = frozenset(entity.classifications)
            if not names or entity.ref in result.rejected:
                continue
            if entity.ref in created:
                self._classified.add(entity.ref, names)
            elif not self._classified.covers(entity.ref, names):
                wanted[entity.ref] = names
        if not wanted:
            return
        found = self.client.entities(list(wanted))
        for ref, names in wanted.items():
            stored = found.get(ref)
            if stored is None:
                continue
            guid = str(stored.get("guid"))
            direct = {
                c.get("typeName")
                for c in stored.get("classifications") or []
                if c.get("entityGuid") in (None, "", guid)
            }
            missing = sorted(names - direct)
            if missing:
                what = f"classifying {ref.type_name} {ref.qualified_name!r} as {missing}"
                answer = self.client.request(
                    "POST",
                    f"/entity/guid/{segment(guid)}/classifications",
                    body=entity_json.classifications_json(missing),
                    what=what,
                )
                result.requests += 1
                if answer.verdict is Verdict.REJECT and ALREADY_ASSOCIATED not in str(answer.error):
                    log.warning("Atlas refused %s: %s", what, answer.error)
                    result.rejected[ref] = Rejection(
                        answer.error.code,
                        f"entity written, but classifications {missing} refused: "
                        f"{message(answer.error)}",
                    )
                    result.written -= 1
                    continue
            self._classified.add(ref, names)


# -- helpers -----------------------------------------------------------------------------------


def _created(batch: Sequence[Entity], response: Any) -> set[Ref]:
    """Refs of the batch that Atlas created (not updated), from EntityMutationResponse."""
    if not isinstance(response, dict):
        return set()
    assignments = response.get("guidAssignments") or {}
    mutated = response.get("mutatedEntities") or {}
    created_guids = {h.get("guid") for h in mutated.get("CREATE") or []}
    placeholders = entity_json.placeholder_guids(batch)
    return {
        ref
        for ref, placeholder in placeholders.items()
        if assignments.get(placeholder) in created_guids
    }


class _LruSet:
    """Refs whose direct classifications were confirmed, with the names confirmed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Ref, frozenset[str]] = OrderedDict()

    def covers(self, ref: Ref, names: Iterable[str]) -> bool:
        known = self._data.get(ref)
        if known is None:
            return False
        self._data.move_to_end(ref)
        return known.issuperset(names)

    def add(self, ref: Ref, names: Iterable[str]) -> None:
        self._data[ref] = self._data.get(ref, frozenset()) | frozenset(names)
        self._data.move_to_end(ref)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
