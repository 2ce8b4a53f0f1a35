"""The sink against the real Kafka broker, writing to a local catalog in tmp_path.

Every test has its own topics and consumer group. Nothing sleeps: loops step the sink (or
poll an endpoint) until a condition holds or a deadline passes.
"""

from __future__ import annotations

import functools
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from atlas_sink.core import naming
from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.pipeline import DeadLetter
from atlas_sink.core.target import TargetAuthError, TargetUnavailable, WriteResult
from atlas_sink.core.translate import DEPLOYMENT as DEPLOYMENT_TYPE
from atlas_sink.core.translate import MODEL, MODEL_VERSION, SERVING_STATS
from atlas_sink.kafka.client import SinkFatal
from atlas_sink.kafka.consumer import SinkConsumer
from atlas_sink.kafka.dlq import (
    ERROR,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_TOPIC,
    REASON,
    DeadLetterProducer,
    read_dlq,
    redrive,
)
from atlas_sink.kafka.replay import replay
from atlas_sink.runtime import exit_codes, logs
from atlas_sink.runtime.config import SinkConfig, load_config
from atlas_sink.runtime.exit_codes import EXIT_KAFKA, EXIT_TARGET_AUTH
from atlas_sink.service import cli, wiring
from atlas_sink.targets.local import LocalCatalog
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import (
    Deployment,
    Envelope,
    LatencySummary,
    LogSketch,
    ModelEvent,
    ModelIdentity,
    Payload,
    ScoringStats,
    to_avro,
)
from capture.events import (
    Producer as EventProducer,
)
from capture.framing import single_object_framer
from local_services import harness
from tests import services
from tests.conftest import INPUT, OUTPUT, model_loaded
from tests.services import SinkProcess, Topics, catalog_dump, step_until

pytestmark = pytest.mark.integration

CLUSTER = "it"
DEPLOYMENT = Deployment(server_kind="python", server_name="wine-scorer", cluster=CLUSTER)
MODEL_ID = ModelIdentity(name="wine", version="1")
VERSION_QN = naming.model_version("wine", "1", CLUSTER)
DEPLOYMENT_QN = naming.deployment("wine-scorer", "wine", CLUSTER)
# Event times in the recent past: the sink refuses events from the future.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
FRAME = single_object_framer()
DEADLINE = 20.0


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with services.kafka() as address:
        yield address


@pytest.fixture
def topics(bootstrap: str) -> Topics:
    return services.new_topics(bootstrap, "sink-it")


def sink_config(bootstrap: str, topics: Topics, **overrides: Any) -> SinkConfig:
    settings: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topics": [topics.events],
        "dlq_topic": topics.dlq,
        "group_id": f"sink-it-{uuid.uuid4().hex[:8]}",
        "batch_max_wait_seconds": 0.3,
        "retry_max_seconds": 1.0,
    }
    settings.update(overrides)
    return load_config({}, overrides=settings)


def sink_env(bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    """The settings alone: the tests set them in-process or give them to ``SinkProcess``."""
    return harness.sink_environment(
        bootstrap,
        topics.events,
        group=f"sink-it-{uuid.uuid4().hex[:8]}",
        dlq_topic=topics.dlq,
        base={},
        settings={"SINK_BATCH_MAX_WAIT_SECONDS": "0.3", **extra},
    )


def requests_served(catalog: LocalCatalog, deployment: str) -> int:
    """A deployment's lifetime requests: the sum over the live figures of the versions it
    served (each window merged once)."""
    return sum(
        int(r.entity.attributes["lifetime"]["requests"])
        for r in catalog.referrers(DEPLOYMENT_TYPE, deployment, "deployment")
        if r.entity.type_name == SERVING_STATS
    )


def open_catalog(path: Path, *, with_types: bool = True) -> LocalCatalog:
    catalog = LocalCatalog(path)
    if with_types:
        catalog.ensure_types()
    return catalog


def start_sink(config: SinkConfig, target: Any) -> SinkConsumer:
    sink = SinkConsumer(config, wiring.pipeline_factory(config, target))
    sink.start()
    return sink


def run_until(config: SinkConfig, target: Any, committed: int) -> SinkConsumer:
    """A sink that consumes until ``committed`` messages are committed, then closes."""
    sink = start_sink(config, target)
    try:
        step_until(sink, lambda: sink.totals.committed >= committed)
    finally:
        sink.close()
    return sink


def committed_total(bootstrap: str, config: SinkConfig) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": config.group_id})
    try:
        partitions = [TopicPartition(config.topics[0], p) for p in range(3)]
        return sum(max(tp.offset, 0) for tp in probe.committed(partitions, timeout=10))
    finally:
        probe.close()


def event(
    payload: Payload,
    *,
    seq: int,
    seconds: int,
    instance: str = "a",
    version: str = "1",
    model: str = "wine",
) -> ModelEvent:
    return ModelEvent(
        envelope=Envelope(
            event_id=str(uuid.uuid4()),
            event_time=T0 + timedelta(seconds=seconds),
            producer=EventProducer(
                emitter_name="test", emitter_version="0", host="h", pid=1, instance_id=instance
            ),
            sequence=seq,
            deployment=DEPLOYMENT,
            model=ModelIdentity(name=model, version=version),
        ),
        payload=payload,
    )


def stats(requests: int, seconds: int) -> ScoringStats:
    start = T0 + timedelta(seconds=seconds)
    return ScoringStats(
        window_start=start,
        window_end=start + timedelta(seconds=60),
        request_count=requests,
        error_count=0,
        latency=LatencySummary(
            min=0.001,
            max=0.002,
            mean=0.0015,
            p50=0.0015,
            p95=0.002,
            p99=0.002,
            sketch=LogSketch(relative_accuracy=0.01, first_index=-650, counts=[requests]),
        ),
    )


def encode(ev: ModelEvent) -> bytes:
    return FRAME(to_avro(ev))


KEY = f"{CLUSTER}/wine".encode()


@dataclass(frozen=True)
class Sent:
    value: bytes
    key: bytes | None
    partition: int
    offset: int
    timestamp_ms: int


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | tuple[bytes, bytes]],
    timestamp_ms: int | None = None,
) -> list[Sent]:
    """Produce in order (one key: one partition); returns where each message landed."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent: list[Sent | None] = [None] * len(values)

    def delivered(index: int, err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        sent[index] = Sent(
            msg.value() or b"",
            msg.key(),
            msg.partition() or 0,
            msg.offset() or 0,
            msg.timestamp()[1],
        )

    for index, item in enumerate(values):
        value, key = item if isinstance(item, tuple) else (item, KEY)
        producer.produce(
            topic,
            value=value,
            key=key,
            timestamp=timestamp_ms or 0,
            on_delivery=functools.partial(delivered, index),
        )
    assert producer.flush(15) == 0
    assert all(s is not None for s in sent)
    return [s for s in sent if s is not None]


class FlakyTarget:
    """A catalog whose first writes fail with ``error``."""

    def __init__(self, inner: LocalCatalog, failures: int, error: Exception) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.name = "flaky"

    def ensure_types(self) -> None:
        self.inner.ensure_types()

    def fetch(self, refs: Sequence[Ref], attribute_names: Sequence[str]) -> dict[Ref, Any]:
        return self.inner.fetch(refs, attribute_names)

    def write(self, entities: Sequence[Entity]) -> WriteResult:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.inner.write(entities)

    def close(self) -> None:
        self.inner.close()


# -- tests -------------------------------------------------------------------------------------


def test_emitted_events_become_catalog_entities(
    bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SINK_CATALOG_PATH", str(tmp_path / "catalog.sqlite"))
    with Emitter(EmitterConfig(bootstrap_servers=bootstrap, topic=topics.events), DEPLOYMENT) as em:
        em.model_loaded(MODEL_ID, model_loaded())
        em.schema_changed(MODEL_ID, "OUTPUT", OUTPUT, previous=INPUT)
        recorder = em.scoring_recorder(MODEL_ID, window_seconds=3600)
        recorder.record(0.004)
        recorder.record(0.002, error="timeout")
    assert em.stats().delivered == 3  # the open window was sent at close
    config = sink_config(bootstrap, topics)
    path = tmp_path / "catalog.sqlite"
    assert cli.main(["init-types", "--catalog", str(path)]) == exit_codes.EXIT_OK
    catalog = open_catalog(path, with_types=False)
    sink = run_until(config, catalog, committed=3)

    assert sink.totals.dead_lettered == {}
    version = catalog.entity(MODEL_VERSION, VERSION_QN)
    assert version is not None
    assert version.attributes["framework"] == "sklearn"
    assert "Confidential" in version.classifications
    deployment = catalog.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None
    assert deployment.attributes["status"] == "IN_SERVICE"
    assert requests_served(catalog, DEPLOYMENT_QN) == 2
    graph = catalog.lineage(MODEL_VERSION, VERSION_QN, "BOTH", 3)
    assert {
        f"fs_path:{naming.uri_dataset('file:///data/wine.csv', CLUSTER)}",
        f"servemeta_training:{naming.training('wine', '1', CLUSTER)}",
        f"{DEPLOYMENT_TYPE}:{DEPLOYMENT_QN}",
        f"kafka_topic:{naming.kafka_topic('wine-scores', CLUSTER)}",
    } <= set(graph.nodes)
    assert committed_total(bootstrap, config) == 3

    # The CLI answers from the same catalog: upstream training data, downstream topics.
    capsys.readouterr()
    assert cli.main(["lineage", "wine", "--catalog", str(path)]) == exit_codes.EXIT_OK
    text = capsys.readouterr().out
    upstream, downstream = text.split("downstream:")
    assert "<- servemeta_training wine.1.training@it" in upstream
    assert "file:///data/wine.csv@it" in upstream
    assert f"-> servemeta_deployment {DEPLOYMENT_QN}" in downstream
    assert "kafka_topic wine-scores@it" in downstream
    assert cli.main(["lineage", "wine", "--cluster", "it", "--version", "1", "--json"]) == 0
    graph_json = json.loads(capsys.readouterr().out)
    assert graph_json["baseEntityGuid"] == f"{MODEL_VERSION}:{VERSION_QN}"
    assert cli.main(["lineage", "nosuch", "--catalog", str(path)]) == exit_codes.EXIT_USAGE
    assert "no model 'nosuch'" in capsys.readouterr().err
    logs.unconfigure()


def test_duplicates_and_out_of_order_events_do_not_change_the_final_state(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Two producers: replica "a" served version 1, then "b" loaded version 2 in its place.
    a = [
        event(model_loaded("1"), seq=1, seconds=1),
        event(stats(10, 2), seq=2, seconds=62),
        event(stats(20, 62), seq=3, seconds=122),
    ]
    b = [
        event(model_loaded("2", replaces="1"), seq=1, seconds=200, instance="b", version="2"),
        event(stats(30, 200), seq=2, seconds=260, instance="b", version="2"),
    ]
    a1, a2, a3 = (encode(e) for e in a)
    b1, b2 = (encode(e) for e in b)
    produce(bootstrap, topics.events, [a1, a2, a3, b1, b2])
    in_order = open_catalog(tmp_path / "in-order.sqlite")
    run_until(sink_config(bootstrap, topics), in_order, committed=5)

    # Newer producer first, every message twice (one producer's own order is Kafka's to keep);
    # batches of two, so duplicates meet in the same batch and across batches.
    shuffled = services.new_topics(bootstrap, "sink-it")
    produce(bootstrap, shuffled.events, [b1, a1, b1, b2, a2, a1, a3, b2, a3, a2])
    messy = open_catalog(tmp_path / "messy.sqlite")
    sink = run_until(sink_config(bootstrap, shuffled, batch_max_messages=2), messy, committed=10)

    assert sink.totals.duplicates >= 5
    assert catalog_dump(messy) == catalog_dump(in_order)
    deployment = messy.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None
    assert requests_served(messy, DEPLOYMENT_QN) == 60
    assert deployment.attributes["currentVersion"] == "2"
    model = messy.entity(MODEL, naming.model("wine", CLUSTER))
    assert model is not None and model.attributes["latestVersion"] == "2"
    old = messy.entity(MODEL_VERSION, VERSION_QN)
    assert old is not None and old.attributes["status"] == "REPLACED"


def test_poison_messages_land_in_the_dlq_with_their_position(
    bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = encode(event(model_loaded(), seq=1, seconds=1))
    poison = {
        "framing": b"\x7f" + os.urandom(40),
        "avro": good[: len(good) // 2],
        "unknown_fingerprint": b"\xc3\x01" + bytes(8) + good[10:],
    }
    values: list[bytes | tuple[bytes, bytes]] = [
        good,
        (poison["framing"], b"poison-framing"),
        encode(event(stats(5, 2), seq=2, seconds=62)),
        (poison["avro"], b"poison-avro"),
        (poison["unknown_fingerprint"], b"poison-fingerprint"),
    ]
    stamp = int(time.time() * 1000) - 5000
    sent = produce(bootstrap, topics.events, values, timestamp_ms=stamp)
    config = sink_config(bootstrap, topics)
    catalog = open_catalog(tmp_path / "catalog.sqlite")
    sink = run_until(config, catalog, committed=5)

    assert sink.totals.dead_lettered == {"framing": 1, "avro": 1, "unknown_fingerprint": 1}
    deployment = catalog.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None and requests_served(catalog, DEPLOYMENT_QN) == 5
    records = {r.reason: r for r in read_dlq(config)}
    assert set(records) == set(poison)
    by_value = {s.value: s for s in sent}
    for reason, value in poison.items():
        record = records[reason]
        original = by_value[value]
        assert record.value == value  # unchanged
        assert record.key == original.key
        assert record.original_topic == topics.events
        assert (record.original_partition, record.original_offset) == (
            original.partition,
            original.offset,
        )
        assert record.original_timestamp_ms == stamp
        assert record.error
        assert record.size == len(value)
    # The raw headers, as another tool would read them.
    raw = services.consume(bootstrap, topics.dlq, 3)
    names = {k for k, _ in raw[0].headers() or []}
    assert {REASON, ERROR, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET} <= names
    assert ORIGINAL_TIMESTAMP in names

    for name, setting in sink_env(bootstrap, topics).items():
        monkeypatch.setenv(name, setting)
    try:
        assert cli.main(["dlq", "list", "--json", "--reason", "avro"]) == exit_codes.EXIT_OK
    finally:
        logs.unconfigure()
    out = capsys.readouterr()
    listed = [json.loads(line) for line in out.out.splitlines()]
    assert [r["reason"] for r in listed] == ["avro"]
    assert listed[0]["original_offset"] == by_value[poison["avro"]].offset
    assert "1 dead letters" in out.err


def test_replay_into_a_fresh_catalog_equals_the_live_catalog(
    bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = int((time.time() - 3 * 3600) * 1000)
    first = [
        encode(event(model_loaded("1"), seq=1, seconds=1)),
        encode(event(stats(10, 2), seq=2, seconds=62)),
    ]
    produce(bootstrap, topics.events, [*first, first[1], b"\x7fjunk"], timestamp_ms=old)
    later = [
        encode(event(model_loaded("2", replaces="1"), seq=3, seconds=300, version="2")),
        encode(event(stats(7, 300), seq=4, seconds=360, version="2")),
    ]
    produce(bootstrap, topics.events, later)
    config = sink_config(bootstrap, topics)
    live = open_catalog(tmp_path / "live.sqlite")
    run_until(config, live, committed=6)

    fresh = tmp_path / "replayed.sqlite"
    for name, setting in sink_env(bootstrap, topics).items():
        monkeypatch.setenv(name, setting)
    try:
        code = cli.main(["replay", "--from-beginning", "--catalog", str(fresh), "--json"])
    finally:
        logs.unconfigure()
    assert code == exit_codes.EXIT_OK
    out = capsys.readouterr()
    counts = json.loads(out.out)
    assert (counts["messages"], counts["decoded"]) == (6, 5)
    assert counts["dead_letters"] == {"framing": 1}
    assert "100%" in out.err  # the progress bar
    replayed = open_catalog(fresh)
    assert catalog_dump(replayed) == catalog_dump(live)

    # From a time: only the later messages.
    since_catalog = open_catalog(tmp_path / "since.sqlite")
    result = replay(
        config,
        wiring.build_pipeline(config, since_catalog),
        since=datetime.now(UTC) - timedelta(hours=1),
    )
    assert (result.consumed, result.complete) == (2, True)
    assert since_catalog.entity(MODEL_VERSION, naming.model_version("wine", "2", CLUSTER))
    assert since_catalog.entity(MODEL_VERSION, VERSION_QN) is not None  # REPLACED by "2"


def test_a_crash_between_write_and_commit_leaves_no_duplicate(
    bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    produce(
        bootstrap,
        topics.events,
        [
            encode(event(model_loaded(), seq=1, seconds=1)),
            encode(event(stats(10, 2), seq=2, seconds=62)),
            encode(event(stats(20, 62), seq=3, seconds=122)),
            encode(event(stats(30, 122), seq=4, seconds=182)),
        ],
    )
    config = sink_config(bootstrap, topics, batch_max_wait_seconds=1.0)
    catalog = open_catalog(tmp_path / "catalog.sqlite")

    class Crash(Exception):
        pass

    def crash(_offsets: object) -> None:
        raise Crash

    first = start_sink(config, catalog)
    monkeypatch.setattr(first, "_commit", crash)
    with pytest.raises(Crash):
        step_until(first, lambda: False)
    first.close()
    written = first.totals.consumed
    assert written >= 1
    assert committed_total(bootstrap, config) == 0
    deployment = catalog.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None
    before = requests_served(catalog, DEPLOYMENT_QN)

    # A new process: fresh pipeline caches, same group, same catalog.
    second = run_until(config, catalog, committed=4)
    assert second.totals.consumed == 4  # the crashed batch was read again
    assert second.totals.duplicates >= written
    deployment = catalog.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None
    assert requests_served(catalog, DEPLOYMENT_QN) == 60
    assert before <= 60
    assert committed_total(bootstrap, config) == 4


def test_target_outage_pauses_and_resumes_without_losing_or_repeating(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    produce(
        bootstrap,
        topics.events,
        [
            encode(event(model_loaded(), seq=1, seconds=1)),
            encode(event(stats(10, 2), seq=2, seconds=62)),
        ],
    )
    config = sink_config(bootstrap, topics)
    flaky = FlakyTarget(open_catalog(tmp_path / "c.sqlite"), 2, TargetUnavailable("down"))
    sink = start_sink(config, flaky)
    try:
        step_until(sink, lambda: sink.metrics.paused._value.get() == 1)
        ready, detail = sink.health.readiness()
        assert not ready and "target unavailable" in " ".join(detail["problems"])
        assert committed_total(bootstrap, config) == 0
        step_until(sink, lambda: sink.totals.committed >= 2)
        assert sink.metrics.paused._value.get() == 0
        assert sink.health.readiness()[0]
    finally:
        sink.close()
    assert sink.totals.batches == 1  # processed once, after two refused attempts
    deployment = flaky.inner.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
    assert deployment is not None and requests_served(flaky.inner, DEPLOYMENT_QN) == 10


def test_refused_credentials_stop_the_sink_without_committing(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    produce(bootstrap, topics.events, [encode(event(model_loaded(), seq=1, seconds=1))])
    config = sink_config(bootstrap, topics)
    refusing = FlakyTarget(open_catalog(tmp_path / "c.sqlite"), 99, TargetAuthError("401"))
    sink = start_sink(config, refusing)
    try:
        with pytest.raises(SinkFatal) as stopped:
            step_until(sink, lambda: False)
    finally:
        sink.close()
    assert stopped.value.exit_code == EXIT_TARGET_AUTH
    assert "refused the sink's credentials" in str(stopped.value)
    assert committed_total(bootstrap, config) == 0


def test_offsets_wait_for_the_dead_letters_to_be_stored(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    produce(
        bootstrap,
        topics.events,
        [encode(event(stats(10, 2), seq=1, seconds=62)), b"\x7fnot an event"],
    )
    config = sink_config(bootstrap, topics)

    class FailingOnce(DeadLetterProducer):
        """The DLQ refuses the first attempt (say, its leader is moving)."""

        attempts = 0

        def send(self, letters: Sequence[DeadLetter], *args: Any) -> list[DeadLetter]:
            self.attempts += 1
            return list(letters) if self.attempts == 1 else super().send(letters, *args)

    dlq = FailingOnce(config)
    catalog = open_catalog(tmp_path / "catalog.sqlite")
    sink = SinkConsumer(config, wiring.pipeline_factory(config, catalog), dlq=dlq)
    sink.start()
    try:
        step_until(sink, lambda: dlq.attempts == 1)
        assert sink.metrics.paused._value.get() == 1
        assert committed_total(bootstrap, config) == 0  # written, but not committed
        step_until(sink, lambda: sink.totals.committed >= 2)
    finally:
        sink.close()
    assert dlq.attempts == 2
    assert sink.totals.batches == 1  # the target write was not repeated
    assert [r.reason for r in read_dlq(config)] == ["framing"]  # stored once
    assert committed_total(bootstrap, config) == 2


def test_dlq_redrive_after_fixing_the_cause(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    produce(
        bootstrap,
        topics.events,
        [
            encode(event(model_loaded(), seq=1, seconds=1)),
            encode(event(stats(10, 2), seq=2, seconds=62)),
        ],
    )
    config = sink_config(bootstrap, topics)
    # The cause: the catalog has no type definitions, so it refuses every entity.
    catalog = open_catalog(tmp_path / "catalog.sqlite", with_types=False)
    sink = start_sink(config, catalog)
    try:
        step_until(sink, lambda: sink.totals.committed >= 2)
        assert sink.totals.dead_lettered == {"target_rejected": 2}
        assert catalog.find() == []

        catalog.ensure_types()  # the fix
        assert redrive(config, "target_rejected", dry_run=True).redriven == 2
        assert redrive(config, "framing").redriven == 0
        result = redrive(config, "target_rejected")
        assert (result.examined, result.redriven, result.by_topic) == (
            2,
            2,
            {topics.events: 2},
        )
        step_until(sink, lambda: sink.totals.committed >= 4)
        assert sink.totals.dead_lettered == {"target_rejected": 2}  # none added
        deployment = catalog.entity(DEPLOYMENT_TYPE, DEPLOYMENT_QN)
        assert deployment is not None and requests_served(catalog, DEPLOYMENT_QN) == 10

        # Re-driving again delivers duplicates, which change nothing.
        before = catalog_dump(catalog)
        redrive(config, "target_rejected")
        step_until(sink, lambda: sink.totals.committed >= 6)
        assert catalog_dump(catalog) == before
    finally:
        sink.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_sigterm_stops_a_running_sink_within_the_bound(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    bound = 5.0
    env = sink_env(
        bootstrap,
        topics,
        SINK_CATALOG_PATH=str(tmp_path / "catalog.sqlite"),
        SINK_SHUTDOWN_TIMEOUT_SECONDS=str(bound),
    )
    sink = SinkProcess(env)
    try:
        deadline = time.monotonic() + DEADLINE

        def left() -> float:
            return deadline - time.monotonic()

        url = sink.metrics_url(left())
        sink.wait_for("/healthz", lambda: _get(f"{url}/healthz")[0] == 200, left())
        sink.wait_for("/readyz", lambda: _get(f"{url}/readyz")[0] == 200, left())
        produce(bootstrap, topics.events, [encode(event(model_loaded(), seq=1, seconds=1))])
        consumed = "servemeta_sink_messages_consumed_total 1.0"
        sink.wait_for("a consumed message", lambda: consumed in _get(f"{url}/metrics")[1], left())
        # Lag per partition, from positions and watermarks: 0 once the message is committed.
        lag = f'servemeta_sink_consumer_lag{{partition="0",topic="{topics.events}"}} 0.0'
        sink.wait_for("the lag gauge", lambda: lag in _get(f"{url}/metrics")[1], left())
        assert json.loads(_get(f"{url}/healthz")[1])["status"] == "ok"

        signalled = time.monotonic()
        code = sink.stop(timeout=bound + 5)
        elapsed = time.monotonic() - signalled
    finally:
        sink.stop()
    logged = sink.rest()
    assert code == 0, logged
    assert elapsed < bound, f"took {elapsed:.1f} s"
    # Structured logs: every line one JSON object.
    entries = [json.loads(line) for line in logged.splitlines() if line.strip()]
    assert any(e["msg"] == "consumer closed" for e in entries)
    assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)


def test_a_rebalance_hands_partitions_over_without_loss_or_double_counting(
    bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Three models, keyed as the emitter keys them (cluster/model), spread over the partitions.
    models = ("wine", "beer", "cider")

    def windows(model: str, first_seq: int, count: int) -> list[bytes | tuple[bytes, bytes]]:
        return [
            (
                encode(event(stats(1, s * 60), seq=s, seconds=s * 60 + 60, model=model)),
                f"{CLUSTER}/{model}".encode(),
            )
            for s in range(first_seq, first_seq + count)
        ]

    def committed(*sinks: SinkConsumer) -> int:
        return sum(s.totals.committed for s in sinks)

    produce(bootstrap, topics.events, [m for model in models for m in windows(model, 1, 4)])
    config = sink_config(bootstrap, topics, batch_max_messages=3)
    catalog = open_catalog(tmp_path / "catalog.sqlite")
    first = start_sink(config, catalog)
    second: SinkConsumer | None = None
    try:
        step_until([first], lambda: committed(first) >= 12)
        # A second member joins: partitions are revoked from the first and shared.
        second = start_sink(config, catalog)
        pair = [first, second]
        step_until(pair, lambda: bool(first.health.assigned and second.health.assigned))
        assert first.health.assigned + second.health.assigned == 3
        produce(bootstrap, topics.events, [m for model in models for m in windows(model, 5, 4)])
        step_until(pair, lambda: committed(first, second) >= 24)
        assert second.totals.committed > 0  # it did take partitions over
        # It leaves: the first gets those partitions back, whose entities changed meanwhile.
        second.close()
        step_until([first], lambda: first.health.assigned == 3)
        produce(bootstrap, topics.events, [m for model in models for m in windows(model, 9, 4)])
        step_until([first], lambda: committed(first, second) >= 36)
    finally:
        first.close()
        if second is not None:
            second.close()
    for model in models:
        deployment_qn = naming.deployment("wine-scorer", model, CLUSTER)
        assert catalog.entity(DEPLOYMENT_TYPE, deployment_qn) is not None
        assert requests_served(catalog, deployment_qn) == 12, model  # each window once
    assert committed_total(bootstrap, config) == 36


def test_run_exits_4_naming_a_topic_that_does_not_exist(bootstrap: str, tmp_path: Path) -> None:
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    env = sink_env(
        bootstrap,
        Topics(events=missing, dlq=f"{missing}.dlq"),
        SINK_CATALOG_PATH=str(tmp_path / "catalog.sqlite"),
        SINK_TOPIC_WAIT_SECONDS="2",
    )
    sink = SinkProcess(env)
    try:
        code = sink.proc.wait(timeout=DEADLINE)
    finally:
        sink.stop()
    logged = sink.rest()
    assert code == EXIT_KAFKA, logged
    entries = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert any(e["msg"] == "waiting for topics to exist" for e in entries), logged
    [final] = [e for e in entries if "exit_code" in e]
    assert f"topics ['{missing}'] do not exist" in final["msg"]
    assert "SINK_TOPIC_WAIT_SECONDS" in final["msg"]
