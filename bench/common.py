"""What every benchmark prints: one JSON object per figure, with its same-run baseline."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        out: dict[str, Any] = {"name": self.name, "value": round(self.value, 3), "unit": self.unit}
        if self.baseline is not None and self.baseline_value:
            out["baseline"] = self.baseline
            out["baseline_value"] = round(self.baseline_value, 3)
            out["ratio"] = round(self.value / self.baseline_value, 3)
        if self.target:
            out["target"] = self.target
        out.update(self.extra)
        return json.dumps(out)


def kafka_bootstrap() -> str:
    """The broker named by KAFKA_BOOTSTRAP_SERVERS, else the project's own, started if needed."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    from local_services import kafka

    return kafka.start().address
