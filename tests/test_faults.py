"""Faults on the real broker and catalog, at CI sizes: the sink SIGKILLed and restarted, its
catalog locked, the broker restarted under a serving model (with and without the emitter's
disk spool), sink instances joining and leaving the group.

Every scenario is bench/faults.py's, which runs them at full size for RELIABILITY.md
(``python bench/faults.py all``); here they run small and the results are asserted. Each
scenario ends by comparing its live catalog with a reference made by one uninterrupted replay
of the same topic into a fresh file, which is also the check that a replay from the beginning
equals the live catalog (test_sink_kafka.py checks the same through the CLI on a small topic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atlas_sink.core.pipeline import RawMessage
from atlas_sink.runtime.config import load_config
from atlas_sink.service import wiring
from atlas_sink.targets.local import LocalCatalog
from bench import faults
from capture.events import (
    DataSource,
    Deployment,
    Envelope,
    ModelEvent,
    ModelIdentity,
    Producer,
    Training,
    to_avro,
)
from capture.framing import single_object_framer
from tests.conftest import INPUT, model_loaded

pytestmark = pytest.mark.integration

SIZES = faults.SMALL


def assert_equal_to_reference(comparison: faults.Comparison, events: int) -> None:
    assert comparison.differences == []
    assert comparison.identical
    # Every window counted exactly once: nothing lost, nothing applied twice.
    assert comparison.totals_as_sent
    assert comparison.reference_messages == events
    assert comparison.reference_dead_letters == {}
    assert comparison.entities > 50


def test_a_sink_killed_at_random_points_ends_in_the_reference_state(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = faults.sigkill_run(
        kafka_bootstrap,
        tmp_path,
        events=SIZES.kill_events,
        kills=SIZES.kills,
        rate=SIZES.kill_rate,
        max_life_seconds=SIZES.kill_max_life_seconds,
    )
    assert (result.events, result.kills) == (5_000, 5)
    # Killed with work in hand (read, written or not yet committed) at least once.
    assert result.kills_with_backlog >= 1
    assert_equal_to_reference(result.comparison, 5_000)
    # Each restart got the partitions back once the dead member's session expired
    # (SINK_SESSION_TIMEOUT_SECONDS), not after librdkafka's default 45 s.
    assert len(result.restart_to_assigned_seconds) == 6
    assert max(result.restart_to_assigned_seconds) < faults.SESSION_TIMEOUT_SECONDS + 10


def test_a_locked_catalog_pauses_the_sink_which_then_catches_up(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = faults.catalog_outage(
        kafka_bootstrap,
        tmp_path,
        events=SIZES.outage_events,
        rate=SIZES.outage_rate,
        outage_seconds=SIZES.outage_seconds,
        retry_max_seconds=SIZES.outage_retry_max_seconds,
    )
    # SQLite waits out its busy timeout (10 s) before the write counts as failed.
    assert 10.0 <= result.seconds_to_not_ready < SIZES.outage_seconds
    assert result.paused_gauge == 1.0
    assert result.committed_during_outage == 0
    assert result.backlog_at_release > 0
    assert result.catch_up_seconds < 30
    # Paused means fetching nothing: memory stays where it was while the backlog grows.
    assert result.rss_peak_paused_kib - result.rss_before_kib < 20 * 1024
    assert result.rss_peak_paused_kib < 200 * 1024
    assert_equal_to_reference(result.comparison, 4_000)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[faults.RestartableBroker]:
    """A broker of this module's own: the tests stop and restart it (on its data)."""
    started = faults.RestartableBroker(tmp_path_factory.mktemp("kafka"))
    yield started
    started.close()


def broker_restart(
    broker: faults.RestartableBroker, tmp_path: Path, spool: bool
) -> faults.BrokerResult:
    return faults.broker_restart(
        tmp_path,
        broker,
        spool=spool,
        rate=SIZES.broker_rate,
        before_seconds=2,
        down_seconds=SIZES.broker_down_seconds,
        after_seconds=2,
        delivery_timeout_seconds=SIZES.broker_delivery_timeout_seconds,
    )


def test_a_broker_restart_never_blocks_serving_and_every_event_is_counted(
    broker: faults.RestartableBroker, tmp_path: Path
) -> None:
    result = broker_restart(broker, tmp_path, spool=False)
    dropped = sum(result.dropped.values())
    # Events older than the delivery timeout while the broker was down were dropped, counted.
    assert dropped > 0
    assert set(result.dropped) <= {"delivery:_MSG_TIMED_OUT", "close_timeout"}
    assert result.delivered + dropped == result.emitted
    # What was delivered before the stop is still there: the broker restarted on its data.
    assert result.in_topic == result.delivered
    assert result.in_producer_order
    assert result.calls > 1000
    assert result.call_max_ms < 100  # blocking would take the delivery timeout, 1 s
    assert result.seconds_to_resume >= 0


def test_with_the_disk_spool_a_broker_restart_loses_nothing(
    broker: faults.RestartableBroker, tmp_path: Path
) -> None:
    result = broker_restart(broker, tmp_path, spool=True)
    assert result.dropped == {}
    assert result.delivered == result.emitted == result.in_topic
    assert result.emitted > 300
    # Spooled through the outage and the server's restart, sent first and in order.
    assert result.peak_spooled > 0
    assert result.in_producer_order
    assert result.spool_files_left == 0
    assert result.calls > 1000
    assert result.call_max_ms < 100
    assert 0 <= result.seconds_to_resume <= result.seconds_to_drain


def test_sinks_joining_and_leaving_the_group_end_in_the_reference_state(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = faults.scale_out(
        kafka_bootstrap, tmp_path, events=SIZES.scale_events, rate=SIZES.scale_rate
    )
    assert_equal_to_reference(result.comparison, 5_000)
    everything = {f"{p}" for p in range(result.partitions)}

    def numbers(assignment: list[str]) -> set[str]:
        return {name.rsplit("[", 1)[1].rstrip("]") for name in assignment}

    first, second, third = (result.assignments[n] for n in ("first", "second", "third"))
    assert numbers(first[0]) == everything  # alone at first
    assert len(first) >= 3  # then shared twice, then given the leaver's partitions
    assert second and third
    # After the second left, the first and the third own every partition between them.
    assert numbers(first[-1]) | numbers(third[-1]) == everything
    assert not numbers(first[-1]) & numbers(third[-1])


def test_a_schema_shared_by_two_data_sets_does_not_depend_on_the_order_of_models(
    tmp_path: Path,
) -> None:
    frame = single_object_framer()
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def loaded(model: str, partition: int) -> RawMessage:
        source = DataSource(uri=f"file:///data/{model}.csv", name=model, format="csv", schema=INPUT)
        payload = dataclasses.replace(model_loaded(), training=Training(sources=[source]))
        envelope = Envelope(
            event_id=f"00000000-0000-4000-8000-00000000000{partition}",
            event_time=when,
            producer=Producer(
                emitter_name="t", emitter_version="0", host="h", pid=1, instance_id=model
            ),
            sequence=1,
            deployment=Deployment(server_kind="python", server_name="s", cluster="c"),
            model=ModelIdentity(name=model, version="1"),
        )
        value = frame(to_avro(ModelEvent(envelope=envelope, payload=payload)))
        return RawMessage("events", partition, 0, value, f"c/{model}".encode())

    wine, beer = loaded("wine", 0), loaded("beer", 1)
    config = load_config({}, overrides={"catalog_path": tmp_path / "unused.sqlite"})
    dumps = []
    for name, order in (("wine-first", [wine, beer]), ("beer-first", [beer, wine])):
        path = tmp_path / f"{name}.sqlite"
        with LocalCatalog(path) as catalog:
            catalog.ensure_types()
            pipeline = wiring.build_pipeline(config, catalog)
            for message in order:  # one batch per partition, as two consumers would
                assert pipeline.process([message]).dead == []
        dumps.append(faults.dump(path))
    assert dumps[0] == dumps[1]
