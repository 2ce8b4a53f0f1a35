"""Where entities go: Atlas over REST, Atlas's hook topic, or the embedded local catalog.

Every target implements ``Target``; the pipeline knows nothing else about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from atlas_sink.core.entities import Entity, Ref


class TargetUnavailable(Exception):
    """The target cannot take writes now (down, timing out, 5xx after retries): the batch is
    kept and retried later, offsets stay uncommitted, the consumer pauses."""


class TargetAuthError(Exception):
    """Credentials refused (401/403): no write can succeed, so the sink stops with this message
    instead of dead-lettering every event."""


@dataclass(frozen=True)
class Rejection:
    """The target refused this entity for what it is (a 4xx): retrying cannot help."""

    code: str
    message: str


@dataclass
class WriteResult:
    written: int = 0
    requests: int = 0
    rejected: dict[Ref, Rejection] = field(default_factory=dict)


class Target(Protocol):
    name: str

    def ensure_types(self) -> None:
        """Register the project's type definitions: create what is missing, update what grew."""

    def fetch(
        self, refs: Sequence[Ref], attribute_names: Sequence[str]
    ) -> dict[Ref, dict[str, Any]]:
        """Stored values of the named attributes of the entities that exist (others absent)."""

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        """Upsert: attributes present are written, absent ones kept. Raises TargetUnavailable
        or TargetAuthError; per-entity refusals come back in ``rejected``."""

    def close(self) -> None: ...
