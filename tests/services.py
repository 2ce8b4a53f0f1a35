"""Real services for integration tests: named by the environment, else the project's own,
else testcontainers where a Docker engine runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TEST_STATE = REPO / ".run" / "tests"


def _test_state() -> Path:
    TEST_STATE.mkdir(parents=True, exist_ok=True)
    return TEST_STATE


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


@contextmanager
def kafka() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    try:
        from local_services import kafka as local_kafka
    except ImportError:
        local_kafka = None  # type: ignore[assignment]
    if local_kafka is not None and shutil.which("java"):
        # A state dir per test session: concurrent sessions never stop each other's broker.
        state = Path(tempfile.mkdtemp(prefix="kafka-", dir=_test_state()))
        started = local_kafka.start(state)
        try:
            yield started.address
        finally:
            local_kafka.stop(state)
            shutil.rmtree(state, ignore_errors=True)
        return
    if _docker_engine():  # pragma: no cover - no Docker engine on the CI machine
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    raise RuntimeError(
        "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, install Java for the project's own "
        "broker, or run a Docker engine"
    )


@contextmanager
def registry() -> Iterator[str]:
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        yield os.environ["SCHEMA_REGISTRY_URL"]
        return
    if shutil.which("java"):
        from local_services import registry as local_registry

        state = Path(tempfile.mkdtemp(prefix="registry-", dir=_test_state()))
        started = local_registry.start(state)
        try:
            yield started.address
        finally:
            local_registry.stop(state)
            shutil.rmtree(state, ignore_errors=True)
        return
    raise RuntimeError(  # pragma: no cover
        "no schema registry: set SCHEMA_REGISTRY_URL or install Java for the project's own"
    )


def unique_topic(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    futures[topic].result(30)


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 30.0,
    stop: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Read ``count`` messages from the beginning of ``topic`` (or fail at the deadline)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            messages.append(message)
            if stop is not None and stop(messages):
                break
    finally:
        consumer.close()
    if len(messages) < count:
        raise AssertionError(f"expected {count} messages on {topic}, got {len(messages)}")
    return messages
