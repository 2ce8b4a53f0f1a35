"""The classification types an Atlas has, confirmed before entities carrying them are written.

Checked first because Atlas 2.1 does not refuse an entity carrying an undefined
classification with a 4xx: ``POST /entity/bulk`` (and the hook consumer) fail with a
NullPointerException, a bare HTTP 500 that a sink must retry, so one such event would block
its partition forever. Both Atlas targets use this; neither reaches into the other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from atlas_sink.atlas.client import AtlasClient, AtlasError, Verdict, message, segment
from atlas_sink.atlas.type_registry import TypeRestorer
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.target import Rejection

log = logging.getLogger("servemeta.sink.atlas_classifications")


class ClassificationTypes:
    """Names Atlas confirmed it has a classification type for, and refusals for the rest."""

    def __init__(self, client: AtlasClient, restore: TypeRestorer) -> None:
        self.client = client
        self.restore = restore
        self._confirmed: set[str] = set()

    def forget(self) -> None:
        """Ask again next time: a type deleted since it was confirmed makes Atlas 2.1 answer
        a bare 500, which a caller retries like any 5xx."""
        self._confirmed.clear()

    def problems(self, names: Iterable[str]) -> dict[str, AtlasError]:
        """Atlas's error for each classification name it has no type for (asked once per name
        until Atlas confirms it; confirmed names are remembered).

        Checked before writing because Atlas 2.1 does not refuse an entity carrying an
        undefined classification with a 4xx: ``POST /entity/bulk`` (and the hook consumer) fail
        with a NullPointerException, a bare HTTP 500 that a sink must retry, so one such event
        would block its partition forever. ``GET /types/classificationdef/name/<name>`` answers
        404 ATLAS-404-00-001 for it."""
        problems: dict[str, AtlasError] = {}
        for name in sorted(set(names) - self._confirmed):
            what = f"reading classification type {name!r}"
            answer = self.client.request(
                "GET", f"/types/classificationdef/name/{segment(name)}", what=what
            )
            if answer.verdict is not Verdict.OK and self.restore(
                name, f"{answer.error}, reading classification type {name!r}"
            ):
                answer = self.client.request(
                    "GET", f"/types/classificationdef/name/{segment(name)}", what=what
                )
            if answer.verdict is Verdict.OK:
                self._confirmed.add(name)
            else:
                problems[name] = answer.error
        return problems

    def refuse_unknown(self, entities: Sequence[Entity]) -> dict[Ref, Rejection]:
        """Rejections for the entities that carry a classification Atlas has no type for, and
        for the entities of ``entities`` that refer to those (Atlas would refuse them: 404
        ATLAS-404-00-00A over REST; the hook path would make shells of the refused ones)."""
        problems = self.problems({n for e in entities for n in e.classifications})
        if not problems:
            return {}
        rejected: dict[Ref, Rejection] = {}
        for entity in entities:
            for name in entity.classifications:
                error = problems.get(name)
                if error is not None:
                    rejected[entity.ref] = Rejection(
                        error.code,
                        f"classification {name!r} is not defined in Atlas: {message(error)}",
                    )
                    break
        changed = True
        while changed:  # referrers of refused entities, transitively
            changed = False
            for entity in entities:
                if entity.ref in rejected:
                    continue
                refused = next((t for t in entity.referenced() if t in rejected), None)
                if refused is not None:
                    cause = rejected[refused]
                    rejected[entity.ref] = Rejection(
                        cause.code,
                        f"refers to {refused.type_name} {refused.qualified_name!r}, which was "
                        f"refused: {cause.message}",
                    )
                    changed = True
        for ref, rejection in rejected.items():
            log.warning(
                "refusing %s %r: %s",
                ref.type_name,
                ref.qualified_name,
                rejection.message,
                extra={"code": rejection.code},
            )
        return rejected
