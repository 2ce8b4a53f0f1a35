"""One log line per drop reason at most every ``interval`` seconds, saying how many and where.

Metrics count every drop (``servemeta_sink_events_dropped_total{reason}``); the log says what
was dropped and gives one example to look at, without a line per message when a producer
floods the topic with bad events or a restart redelivers a backlog. Counts that wait for
their interval to end are written by the next ``record`` after it, or by ``flush``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

# Expected after a restart or rebalance: a sink reads the last uncommitted batch again.
_ROUTINE = frozenset({"redelivered", "already_applied"})


class DropLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._pending: dict[str, int] = {}
        self._example: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def record(self, counts: Mapping[str, int], examples: Mapping[str, str]) -> None:
        for reason, count in counts.items():
            self._pending[reason] = self._pending.get(reason, 0) + count
            if reason in examples:
                self._example.setdefault(reason, examples[reason])
        now = self._clock()
        for reason in [
            r for r in self._pending if now - self._last.get(r, -self.interval) >= self.interval
        ]:
            self._write(reason)
            self._last[reason] = now

    def flush(self) -> None:
        for reason in list(self._pending):
            self._write(reason)

    def _write(self, reason: str) -> None:
        count = self._pending.pop(reason)
        self._log.log(
            logging.INFO if reason in _ROUTINE else logging.WARNING,
            "events dropped",
            extra={"reason": reason, "count": count, "example": self._example.pop(reason, None)},
        )
