"""Every message that changes nothing is counted by its reason, and logged at most once per
reason and interval with an example to look at."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Counts, Pipeline, RawMessage
from atlas_sink.core.translate import Rules
from atlas_sink.runtime.drop_log import DropLog
from atlas_sink.runtime.metrics import SinkMetrics
from atlas_sink.targets.local import LocalCatalog
from capture.events import ModelEvent, to_avro
from capture.framing import single_object_framer
from tests.conftest import envelope, scoring_stats

FRAME = single_object_framer()


def _window(sequence: int, offset: int) -> RawMessage:
    event = ModelEvent(envelope=envelope(sequence), payload=scoring_stats())
    return RawMessage("events", 0, offset, FRAME(to_avro(event)))


def test_each_drop_is_counted_by_reason_once_per_message(tmp_path: Path) -> None:
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        first, second = _window(1, 0), _window(2, 1)
        live = Pipeline(catalog, Decoder(), Rules())
        assert live.process([first, second]).dropped_by_reason() == {}
        # The same message again: known by id. After a restart (empty caches) the catalog's
        # sequence ranges know it: already applied. Garbage is a dead letter.
        again = live.process([first._replace(offset=2)])
        restarted = Pipeline(catalog, Decoder(), Rules())
        replayed = restarted.process([first, second, RawMessage("events", 0, 9, b"junk")])
    assert again.dropped_by_reason() == {"redelivered": 1}
    assert again.drop_examples() == {"redelivered": "events/0@2"}
    assert replayed.dropped_by_reason() == {"already_applied": 2, "framing": 1}
    assert replayed.drop_examples()["framing"].startswith("events/0@9: ")
    metrics, totals = SinkMetrics(), Counts()
    for outcome in (again, replayed):
        metrics.record_batch(outcome)
        totals.add(outcome)
    assert totals.dropped == {"redelivered": 1, "already_applied": 2, "framing": 1}
    for reason, count in totals.dropped.items():
        value = metrics.registry.get_sample_value(
            "servemeta_sink_events_dropped_total", {"reason": reason}
        )
        assert value == count, reason


def test_drops_are_logged_once_per_reason_and_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    drops = DropLog(logging.getLogger("test.drops"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.drops"):
        drops.record({"framing": 1}, {"framing": "t/0@1: bad magic"})
        for second in range(1, 30):
            now[0] = second
            drops.record({"framing": 2, "redelivered": 1}, {"framing": f"t/0@{second}: x"})
        now[0] = 61
        drops.record({}, {})
        drops.record({"framing": 5}, {})
        drops.flush()
    lines = [(r.levelname, r.reason, r.count, r.example) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        ("WARNING", "framing", 1, "t/0@1: bad magic"),
        ("INFO", "redelivered", 1, None),
        ("WARNING", "framing", 58, "t/0@1: x"),
        ("INFO", "redelivered", 28, None),
        ("WARNING", "framing", 5, None),
    ]
