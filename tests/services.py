"""Real services for integration tests: named by the environment, else the project's own,
else testcontainers where a Docker engine runs; and what the tests do with them (topics of
their own, a sink stepped in-process or run as a subprocess), on local_services.harness."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from local_services import harness

if TYPE_CHECKING:
    from local_services.atlas import AtlasService
    from local_services.process import ManagedService

REPO = Path(__file__).resolve().parent.parent
TEST_STATE = REPO / ".run" / "tests"
T = TypeVar("T")


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
def _project_service(kind: Callable[[Path], ManagedService], name: str) -> Iterator[str]:
    """The project's own server in a state dir of its own: concurrent test sessions never stop
    each other's. The dir goes once the server is stopped; one that failed to start keeps its
    logs there."""
    state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_test_state()))
    service = kind(state)
    address = service.start().address
    try:
        yield address
    finally:
        service.stop()
        shutil.rmtree(state, ignore_errors=True)


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
        with _project_service(local_kafka.KafkaService, "kafka") as address:
            yield address
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
        from local_services.registry import RegistryService

        with _project_service(RegistryService, "registry") as address:
            yield address
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
    with own_atlas(kafka_bootstrap) as server:
        yield server


@contextmanager
def own_atlas(
    kafka_bootstrap: str, model_files: Sequence[str] | None = None
) -> Iterator[AtlasServer]:
    """The project's own Atlas, whatever ATLAS_URL says; ``model_files``: a subset of
    deploy/atlas/builtin to start it with (an Atlas lacking some of Atlas's own models)."""
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
        model_files=model_files,
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


@dataclass(frozen=True)
class Topics:
    """A test's events topic and its dead-letter topic, both of its own."""

    events: str
    dlq: str


def new_topics(bootstrap: str, prefix: str) -> Topics:
    events = unique_topic(prefix)
    topics = Topics(events, f"{events}.dlq")
    harness.create_topics(bootstrap, [topics.events, topics.dlq])
    return topics


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` messages from the beginning of ``topic`` (or fail at the deadline)."""
    consumer = harness.topic_reader(bootstrap, [topic], prefix="test")
    messages: list[Any] = []

    def read() -> int:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            messages.append(message)
        return len(messages)

    try:
        # poll() is the pause between tries.
        harness.wait_for(
            f"{count} messages on {topic}", read, timeout, 0, until=lambda n: n >= count
        )
    finally:
        consumer.close()
    return messages


class _Stepped(Protocol):
    """An in-process sink (atlas_sink's SinkConsumer), as far as waiting on it goes."""

    @property
    def totals(self) -> object: ...

    def step(self) -> object: ...


def step_until(
    sinks: _Stepped | Sequence[_Stepped], until: Callable[[], object], timeout: float = 20.0
) -> None:
    """Step in-process sinks until ``until()`` holds. Each step consumes with a timeout of its
    own, so the steps are the pause between tries; the failure shows every sink's totals."""
    group = list(sinks) if isinstance(sinks, Sequence) else [sinks]

    def step() -> None:
        for sink in group:
            sink.step()

    harness.wait_for(
        "the sink's condition",
        until,
        timeout,
        between=step,
        context=lambda: "totals " + ", ".join(str(s.totals) for s in group),
    )


class SinkProcess:
    """``python -m atlas_sink`` with ``env`` on a clean environment (nothing of this machine's
    own sink settings), its stderr read on a thread as it comes: a full pipe would block the
    sink, and a wait takes the next log line as its pause."""

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ("run",)) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atlas_sink", *args],
            cwd=REPO,
            env={**harness.child_environment(), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr or []:
            self.lines.put(line)

    def next_line(self, timeout: float) -> str | None:
        try:
            line = self.lines.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None
        self.seen.append(line)
        return line

    def rest(self) -> str:
        """Everything it logged (all of it once it has exited)."""
        self._reader.join(5)
        while self.next_line(0) is not None:
            pass
        return "".join(self.seen)

    def wait_for(
        self,
        what: str,
        probe: Callable[[], T],
        timeout: float,
        *,
        until: Callable[[T], object] = bool,
    ) -> T:
        """``harness.wait_for`` that fails at once, with the log, when the sink exits."""
        return harness.wait_for(
            what,
            probe,
            timeout,
            until=until,
            between=lambda: self.next_line(0.05),
            context=self.rest,
            process=self.proc,
        )

    def metrics_url(self, timeout: float) -> str:
        """The address of /metrics, which the sink logs once it serves them."""

        def logged() -> str:
            for line in self.seen:
                if "serving /metrics" in line:
                    return str(json.loads(line)["url"])
            return ""

        return self.wait_for("the sink to log its metrics address", logged, timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        return harness.stop_process(self.proc, timeout)


def catalog_dump(catalog: Any) -> list[tuple[str, str, str, str, tuple[str, ...], str]]:
    """Every entity of an embedded catalog, in a form two catalogs can be compared by (the
    benchmarks' own definition of equal)."""
    from bench.faults import dump

    return dump(Path(catalog.path))
