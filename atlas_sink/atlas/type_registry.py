"""Registering the project's types in an Atlas: first check that Atlas has the types of its
own that the sink writes, then create what is missing and grow what gained attributes
(``typedefs.plan_typedefs`` decides; this module asks and sends)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from atlas_sink.atlas.client import TYPE_ALREADY_EXISTS, AtlasClient, Verdict
from atlas_sink.atlas.typedefs import (
    MissingBuiltinTypes,
    TypedefConflict,
    merge,
    missing_builtins,
    plan_typedefs,
    type_names,
)
from atlas_sink.core.translate import ATLAS_RELATIONSHIPS_WRITTEN, ATLAS_TYPES_WRITTEN

log = logging.getLogger("servemeta.sink.atlas_types")


def ensure_types(client: AtlasClient, typedefs: Mapping[str, Any]) -> None:
    """Check that Atlas has the types of its own that the sink writes, then create the
    project's missing types and add new attributes to existing ones. Nothing is written
    when a built-in type or attribute is missing."""
    check_builtin_types(client)
    names = type_names(typedefs)
    for attempt in range(2):
        existing = merge(client.typedef(name) for name in names)
        plan = plan_typedefs(typedefs, existing)
        if plan.problems:
            raise TypedefConflict(
                f"the types in Atlas at {client.base_url} differ from the project's in ways "
                "Atlas does not update over REST:\n- "
                + "\n- ".join(plan.problems)
                + "\nexpected only new optional attributes; change the type definitions or "
                "Atlas's types (typedef patch), then start again"
            )
        if not plan.needs_request:
            log.info("Atlas types up to date", extra={"types": len(plan.unchanged)})
            return
        log.info("registering Atlas types: %s", plan.summary())
        if any(plan.create.values()):
            answer = client.request(
                "POST", "/types/typedefs", body=plan.create, what="creating types"
            )
            if answer.verdict is Verdict.REJECT:
                if answer.error.code == TYPE_ALREADY_EXISTS and attempt == 0:
                    # Another sink created them meanwhile: look again.
                    continue
                raise TypedefConflict(
                    f"Atlas refused to create types {type_names(plan.create)}: "
                    f"{answer.error}; check deploy/atlas/servemeta_typedefs.json"
                )
        if any(plan.update.values()):
            answer = client.request(
                "PUT", "/types/typedefs", body=plan.update, what="updating types"
            )
            if answer.verdict is Verdict.REJECT:
                raise TypedefConflict(
                    f"Atlas refused to update types {type_names(plan.update)}: "
                    f"{answer.error}; check deploy/atlas/servemeta_typedefs.json"
                )
        return


def check_builtin_types(client: AtlasClient) -> None:
    """Raise ``MissingBuiltinTypes`` naming every type, attribute and relationship of
    Atlas's own model that the sink writes and this Atlas lacks."""
    documents = []
    pending = sorted(ATLAS_TYPES_WRITTEN)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        document = client.typedef(name)
        documents.append(document)
        for definition in document.get("entityDefs") or []:
            pending.extend(definition.get("superTypes") or [])
    documents += [client.typedef(name) for name in ATLAS_RELATIONSHIPS_WRITTEN]
    problems = missing_builtins(ATLAS_TYPES_WRITTEN, ATLAS_RELATIONSHIPS_WRITTEN, merge(documents))
    if problems:
        raise MissingBuiltinTypes(
            f"Atlas at {client.base_url} lacks types of Atlas's own model that the sink "
            "writes:\n- " + "\n- ".join(problems) + "\nexpected Atlas's base, file "
            "system, Kafka and AWS S3 v2 models (Atlas 2.1 to 2.4 ship them in "
            "models/); load them into Atlas (deploy/atlas/builtin/ has the project's "
            "definitions of them), then start again. Nothing was written."
        )


class TypeRestorer:
    """Registers the project's types again when an Atlas error names one of them, at most once
    per write (``new_write``)."""

    def __init__(self, client: AtlasClient, typedefs: Mapping[str, Any]) -> None:
        self.client = client
        self.typedefs = typedefs
        self._restored = False

    def new_write(self) -> None:
        self._restored = False

    def __call__(self, text: str, what: str) -> bool:
        """When ``text`` (an Atlas error) names one of the project's own types, register the
        types again and say so; at most once per write. An Atlas that lost them (a new or
        reset server, a type deleted by hand) then gets them back instead of every entity
        being refused with 400 ATLAS-400-00-014 (unknown type) and dead-lettered."""
        if self._restored:
            return False
        missing = sorted(
            name for name in type_names(self.typedefs) if re.search(rf"\b{re.escape(name)}\b", text)
        )
        if not missing:
            return False
        self._restored = True
        log.warning(
            "Atlas at %s lacks the project's type(s) %s (%s): registering the types again",
            self.client.base_url,
            missing,
            what,
        )
        ensure_types(self.client, self.typedefs)
        return True
