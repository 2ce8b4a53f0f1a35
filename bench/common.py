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


def realistic_scoring_stats(requests: int = 1_000, seed: int = 7) -> Any:
    """A ScoringStats window as the recorder makes it for ``requests`` lognormal latencies
    (median 5 ms): its sketch has the hundred-odd buckets real windows have."""
    import random
    from datetime import UTC, datetime, timedelta

    from capture.stats import ScoringRecorder

    start = datetime.now(UTC) - timedelta(minutes=1)
    recorder = ScoringRecorder(60, now=start)
    rng = random.Random(seed)
    for i in range(requests):
        recorder.record(rng.lognormvariate(-5.3, 0.5), "timeout" if i % 100 == 0 else None)
    stats = recorder.close_window(start + timedelta(minutes=1))
    assert stats is not None
    return stats
