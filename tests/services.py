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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_services.atlas import AtlasService

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


@dataclass(frozen=True)
class AtlasServer:
    """An Atlas for the tests: the project's own (``service`` set) or one named by ATLAS_URL."""

    url: str
    auth: tuple[str, str]
    # The broker and topic Atlas consumes hook notifications from; None when not known (an
    # ATLAS_URL without KAFKA_BOOTSTRAP_SERVERS: the tests' broker is not Atlas's).
    kafka_bootstrap: str | None
    hook_topic: str | None
    # The project's own server, which tests may stop and start (the address stays the same).
    service: AtlasService | None = None


@contextmanager
def atlas(kafka_bootstrap: str) -> Iterator[AtlasServer]:
    """ATLAS_URL (with ATLAS_USERNAME / ATLAS_PASSWORD, default admin/admin) when set, else the
    project's own Atlas consuming a hook topic of its own on ``kafka_bootstrap``."""
    if os.environ.get("ATLAS_URL"):
        auth = (
            os.environ.get("ATLAS_USERNAME") or os.environ.get("ATLAS_USER") or "admin",
            os.environ.get("ATLAS_PASSWORD") or "admin",
        )
        # Only a broker named by the environment can be the one that Atlas consumes.
        shared_broker = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
        hook_topic = os.environ.get("ATLAS_HOOK_TOPIC") or "ATLAS_HOOK"
        yield AtlasServer(
            url=os.environ["ATLAS_URL"].rstrip("/"),
            auth=auth,
            kafka_bootstrap=kafka_bootstrap if shared_broker else None,
            hook_topic=hook_topic if shared_broker else None,
        )
        return
    from local_services.atlas import PASSWORD, USER, AtlasService
    from local_services.process import free_port, pid_alive, port_is_free

    state = Path(tempfile.mkdtemp(prefix="atlas-", dir=_test_state()))
    suffix = uuid.uuid4().hex[:10]
    service = AtlasService(
        state,
        kafka_bootstrap=kafka_bootstrap,
        # Its own hook topic and group: never the ATLAS_HOOK of a session Atlas on the broker.
        hook_topic=f"ATLAS_HOOK_test_{suffix}",
        consumer_group=f"atlas-test-{suffix}",
        # A fixed port: a test that stops and starts Atlas finds it at the same address.
        port=free_port(),
        start_timeout=600,
    )
    started = service.start()
    try:
        yield AtlasServer(
            url=started.address,
            auth=(USER, PASSWORD),
            kafka_bootstrap=kafka_bootstrap,
            hook_topic=service.hook_topic,
            service=service,
        )
    finally:
        pid = service.status().pid
        service.stop()
        # The embedded Solr and ZooKeeper live in Atlas's JVM: nothing of it may remain.
        leftovers = []
        if pid is not None and pid_alive(pid):
            leftovers.append(f"pid {pid} still alive")
        if service.port is not None and not port_is_free(service.port):
            leftovers.append(f"port {service.port} still taken")
        if not leftovers:
            shutil.rmtree(state, ignore_errors=True)
    if leftovers:
        raise RuntimeError(f"Atlas left {', '.join(leftovers)} after stop(); state in {state}")


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
