"""The local Kafka and Apicurio Registry launchers: start -> address -> ready -> stop.

Every test uses its own state dir under tmp_path, so it never touches a session broker started
from <repo>/.run. The binary cache (~/.cache/servemeta or $SERVEMETA_CACHE_DIR) is shared on
purpose: the first test run on a machine fetches it, later runs reuse it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from local_services.kafka import KafkaService, cluster_id, render_properties
from local_services.process import pid_alive
from local_services.registry import RegistryService

AVRO = json.dumps(
    {"type": "record", "name": "Probe", "namespace": "servemeta.test",
     "fields": [{"name": "n", "type": "long"}]}
)  # fmt: skip


def test_cluster_id_is_22_chars_of_base64url_uuid() -> None:
    cid = cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to '-': `StorageTool format -t -...` would take the id for an option.
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(drawn))
    assert cluster_id() == "A" * 22


def test_properties_escape_backslashes_and_lowercase_booleans() -> None:
    text = render_properties({"a": True, "b": 3, "c": "x\\y"})
    assert text == "a=true\nb=3\nc=x\\\\y\n"


def test_cli_address_exits_1_when_not_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local_services", "kafka", "address", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "not running" in done.stderr


def _produce_and_count_partitions(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, b"probe")
    assert producer.flush(15) == 0, "the record was not delivered"
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


@pytest.mark.integration
def test_kafka_start_address_ready_stop_and_cached_restart(tmp_path: Path) -> None:
    service = KafkaService(tmp_path / "kafka")
    first = service.start()
    try:
        assert first.address.startswith("127.0.0.1:")
        assert service.address() == first.address
        assert service.status().state == "running"
        # auto.create.topics.enable with num.partitions=3
        assert _produce_and_count_partitions(first.address, f"t-{uuid.uuid4().hex}") == 3
        again = service.start()
        assert again.already_running
        assert again.pid == first.pid
    finally:
        assert service.stop()
    assert not pid_alive(first.pid)
    assert service.address() is None
    assert service.status().state == "stopped"
    assert (tmp_path / "kafka" / "logs" / "kafka-server.log").stat().st_size > 0

    second = service.start()
    try:
        assert second.used_cache, "the second start should not have run Maven"
        assert not second.already_running
    finally:
        service.stop()
    assert not pid_alive(second.pid)


@pytest.mark.integration
def test_second_independent_broker_with_overlay(tmp_path: Path) -> None:
    plain = KafkaService(tmp_path / "a")
    tuned = KafkaService(tmp_path / "b", overlay={"num.partitions": 1})
    a = plain.start()
    try:
        b = tuned.start()
        try:
            assert a.address != b.address
            assert _produce_and_count_partitions(b.address, "only-on-b") == 1
            from confluent_kafka.admin import AdminClient

            topics = AdminClient({"bootstrap.servers": a.address}).list_topics(timeout=10).topics
            assert "only-on-b" not in topics
        finally:
            tuned.stop()
        assert plain.status().state == "running", "stopping one broker must not touch the other"
    finally:
        plain.stop()


@pytest.mark.integration
def test_registry_start_register_fetch_stop_and_cached_restart(tmp_path: Path) -> None:
    sr = pytest.importorskip("confluent_kafka.schema_registry")
    service = RegistryService(tmp_path / "registry")
    first = service.start()
    try:
        assert first.address.startswith("http://127.0.0.1:")
        assert first.address.endswith("/apis/ccompat/v7")
        assert service.address() == first.address
        with sr.SchemaRegistryClient({"url": first.address}) as client:
            schema_id = client.register_schema("probe-value", sr.Schema(AVRO, "AVRO"))
            assert json.loads(client.get_schema(schema_id).schema_str) == json.loads(AVRO)
    finally:
        assert service.stop()
    assert not pid_alive(first.pid)
    assert service.status().state == "stopped"

    second = service.start()
    try:
        assert second.used_cache, "the second start should not have run Maven or unpacked"
    finally:
        service.stop()
