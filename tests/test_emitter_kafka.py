"""The emitter against the real broker and registry: both framings, ordering, broker outage."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from atlas_sink.core.decode import Decoder
from capture import contract
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import (
    Deployment,
    ModelIdentity,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    SchemaChanged,
    ScoringStats,
)
from capture.framing import parse_frame, subject_for
from local_services import harness
from tests import services
from tests.conftest import INPUT, OUTPUT, model_loaded

pytestmark = pytest.mark.integration

DEPLOYMENT = Deployment(server_kind="python", server_name="wine-scorer", cluster="it")
MODEL = ModelIdentity(name="wine", version="1", content_hash="sha256:00")


def _emit_every_type(emitter: Emitter) -> None:
    emitter.model_loaded(MODEL, model_loaded())
    emitter.model_load_failed(MODEL, reason="missing file", error_kind="FileNotFoundError")
    emitter.schema_changed(MODEL, "OUTPUT", OUTPUT, previous=INPUT)
    recorder = emitter.scoring_recorder(MODEL, window_seconds=3600)
    recorder.record(0.004)
    recorder.record(0.002, error="timeout")
    emitter.model_unloaded(MODEL, reason="shutdown")


def _check_every_type(events: list) -> None:  # type: ignore[type-arg]
    kinds = [type(e.payload) for e in events]
    assert kinds[:3] == [ModelLoaded, ModelLoadFailed, SchemaChanged]
    assert set(kinds[3:]) == {ModelUnloaded, ScoringStats}
    loaded = events[0].payload
    assert loaded == model_loaded()
    assert events[0].envelope.model == MODEL
    assert events[0].envelope.deployment == DEPLOYMENT
    changed = events[2].payload
    assert (changed.side, changed.compatibility) == ("OUTPUT", "NONE")
    stats = next(e.payload for e in events if isinstance(e.payload, ScoringStats))
    assert (stats.request_count, stats.error_count) == (2, 1)
    assert (stats.latency.min, stats.latency.max) == (0.002, 0.004)
    sequences = [e.envelope.sequence for e in events]
    assert sorted(sequences) == list(range(1, 6))


def test_single_object_round_trip_of_every_type(kafka_bootstrap: str) -> None:
    topic = services.unique_topic("it.single")
    emitter = Emitter(EmitterConfig(bootstrap_servers=kafka_bootstrap, topic=topic), DEPLOYMENT)
    _emit_every_type(emitter)
    emitter.close(10)
    stats = emitter.stats()
    assert (stats.delivered, stats.dropped_total) == (5, 0)
    messages = services.consume(kafka_bootstrap, topic, 5)
    assert {m.key() for m in messages} == {b"it/wine"}
    assert all(
        parse_frame(m.value()).fingerprint == contract.current().fingerprint for m in messages
    )
    decoder = Decoder()
    _check_every_type([decoder.decode(m.value()) for m in messages])


def test_registry_framing_is_read_by_confluents_own_deserializer(
    kafka_bootstrap: str, registry_url: str
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = services.unique_topic("it.registry")
    config = EmitterConfig(
        bootstrap_servers=kafka_bootstrap, topic=topic, registry_url=registry_url
    )
    emitter = Emitter(config, DEPLOYMENT)
    _emit_every_type(emitter)
    emitter.close(10)
    assert emitter.stats().delivered == 5
    messages = services.consume(kafka_bootstrap, topic, 5)
    client = SchemaRegistryClient({"url": registry_url})
    registered = client.get_latest_version(subject_for(topic))
    assert all(parse_frame(m.value()).schema_id == registered.schema_id for m in messages)

    deserializer = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    first = deserializer(messages[0].value(), ctx)
    assert first["envelope"]["model"] == {
        "name": "wine",
        "version": "1",
        "content_hash": "sha256:00",
    }
    assert first["payload"]["artifact"]["uri"] == "s3://models/wine/1/model.pkl"
    assert first["payload"]["training"]["hyper_parameters"] == {"n_estimators": "50"}

    decoder = Decoder(registry=client, topics=(topic,))
    _check_every_type([decoder.decode(m.value()) for m in messages])


def test_registry_accepts_current_schema_as_backward_compatible(registry_url: str) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry_url})
    subject = subject_for(services.unique_topic("it.compat"))
    client.set_compatibility(subject, "BACKWARD")
    for released in contract.released():
        client.register_schema(subject, Schema(released.text, "AVRO"))
    current = Schema(contract.current().text, "AVRO")
    assert client.test_compatibility(subject, current) is True
    # The check can fail: a new required field without a default is refused.
    broken = json.loads(contract.current().text)
    broken["fields"].append({"name": "extra", "type": "long"})
    assert client.test_compatibility(subject, Schema(json.dumps(broken), "AVRO")) is False


def test_one_models_events_keep_their_order_across_partitions(kafka_bootstrap: str) -> None:
    topic = services.unique_topic("it.order")
    harness.create_topics(kafka_bootstrap, [topic], partitions=3)
    emitter = Emitter(EmitterConfig(bootstrap_servers=kafka_bootstrap, topic=topic), DEPLOYMENT)
    models = [ModelIdentity(name=f"model-{i}", version="1") for i in range(6)]
    for _ in range(50):
        for model in models:
            emitter.model_unloaded(model)
    emitter.close(15)
    messages = services.consume(kafka_bootstrap, topic, 300)
    decoder = Decoder()
    partitions: dict[str, set[int]] = defaultdict(set)
    sequences: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        event = decoder.decode(message.value())
        partitions[event.envelope.model.name].add(message.partition())
        sequences[event.envelope.model.name].append(event.envelope.sequence)
    assert len({p for ps in partitions.values() for p in ps}) > 1, "all models on one partition"
    for name in sequences:
        assert len(partitions[name]) == 1
        assert sequences[name] == sorted(sequences[name])
        assert len(sequences[name]) == 50


def test_broker_down_serving_path_goes_on_and_drops_are_counted(tmp_path: Path) -> None:
    from local_services import kafka as local_kafka

    state = tmp_path / "kafka"
    broker = local_kafka.start(state)
    topic = services.unique_topic("it.outage")
    config = EmitterConfig(
        bootstrap_servers=broker.address,
        topic=topic,
        queue_size=200,
        delivery_timeout_seconds=3,
        close_timeout_seconds=2,
    )
    emitter = Emitter(config, DEPLOYMENT)
    try:
        emitter.model_unloaded(MODEL)
        assert emitter.flush(15)
        assert emitter.stats().delivered == 1
        local_kafka.stop(state)

        recorder = emitter.scoring_recorder(MODEL, window_seconds=0.2)
        slowest = 0.0
        for i in range(2_000):
            started = time.perf_counter()
            emitter.model_unloaded(MODEL)
            recorder.record(0.001 * (i % 5 + 1))
            slowest = max(slowest, time.perf_counter() - started)
        # Far above any enqueue: proves no call waited on the dead broker.
        assert slowest < 0.1

        # Until the emitter has given up on what it held; close() counts whatever is left.
        with contextlib.suppress(harness.WaitTimeout):
            harness.wait_for(
                "the emitter's queue to empty",
                emitter.stats,
                30,
                until=lambda stats: stats.queue_depth == 0 and stats.in_flight == 0,
            )
        emitter.close(2)
        stats = emitter.stats()
        assert stats.dropped.get("queue_full", 0) > 0
        assert any(reason.startswith("delivery:") for reason in stats.dropped)
        # Every event is either delivered or counted as dropped.
        assert stats.delivered + stats.dropped_total == stats.enqueued + stats.dropped["queue_full"]
    finally:
        local_kafka.stop(state)
