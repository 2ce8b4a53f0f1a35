"""Rebuilding a catalog from the topics: a snapshot read through the pipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer

from atlas_sink.core.pipeline import BatchOutcome, Counts, Pipeline, RawMessage
from atlas_sink.core.target import TargetAuthError
from atlas_sink.kafka.client import SinkFatal, raw_message
from atlas_sink.kafka.snapshot import read_snapshot
from atlas_sink.runtime.config import SinkConfig
from atlas_sink.runtime.exit_codes import EXIT_TARGET_AUTH
from atlas_sink.runtime.retry import retry_unavailable


@dataclass
class ReplayResult(Counts):
    seconds: float = 0.0
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The summary ``atlas-sink replay --json`` prints (its keys are part of the CLI)."""
        return {
            "messages": self.consumed,
            "decoded": self.decoded,
            "duplicates": self.duplicates,
            "updates": self.updates,
            "entities_written": self.entities_written,
            "dead_letters": dict(self.dead_lettered),
            "dropped": dict(self.dropped),
            "seconds": self.seconds,
            "complete": self.complete,
        }


def replay(
    config: SinkConfig,
    pipeline: Pipeline,
    *,
    since: datetime | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    consumer: Consumer | None = None,
) -> ReplayResult:
    """Rebuild the target from the topics. Dead letters are counted, not produced again: the
    live sink already stored them. ``progress(done, total)`` is called as messages are read.
    Raises ``SinkFatal`` on refused credentials."""
    stop = stop or threading.Event()
    result = ReplayResult()
    started = time.monotonic()
    for batch in read_snapshot(
        config,
        list(config.topics),
        since=since,
        stop=stop,
        progress=progress,
        consumer=consumer,
    ):
        raw = [raw_message(m) for m in batch]

        def process(raw: list[RawMessage] = raw) -> BatchOutcome:
            return pipeline.process(raw)

        try:
            outcome = retry_unavailable(process, "replay batch", stop, config.retry_max_seconds)
        except TargetAuthError as exc:
            raise SinkFatal(
                f"the target {pipeline.target.name} refused the credentials: {exc}",
                EXIT_TARGET_AUTH,
            ) from None
        if outcome is None:  # stopped while the target was down
            break
        result.add(outcome)
    result.complete = not stop.is_set()
    result.seconds = round(time.monotonic() - started, 3)
    return result
