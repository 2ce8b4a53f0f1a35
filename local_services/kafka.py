"""A single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1.

The broker jars come from Maven (see maven/kafka/pom.xml) and are cached in
``<cache>/kafka-<version>/libs``. Every start formats a fresh, empty data dir: this broker is for
development and tests, and a fresh log also avoids a stale controller endpoint recorded by an
earlier run on different ports. ``keep_data=True`` (with fixed ports) instead restarts on the
data dir of the previous run, as a real broker restart does: tests/test_faults.py uses it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from local_services.fetch import (
    DEPENDENCY_PLUGIN,
    MARKER,
    find_java,
    read_marker,
    run_maven,
    write_marker,
)
from local_services.process import (
    LOOPBACK,
    TAIL_LINES,
    Launch,
    ManagedService,
    ServiceError,
    StartResult,
    Status,
    file_lock,
    free_port,
    port_accepts,
)

KAFKA_VERSION = "4.4.0"
# Kafka 4.x brokers require Java 17.
MIN_JAVA = 17

PropertyValue = str | int | bool


def cluster_id() -> str:
    """A KRaft cluster id: the 22-character unpadded base64url form of a random UUID.

    Never one starting with '-' (1 in 64 would): `StorageTool format -t -abc...` takes it for
    an option and fails, which is why Kafka's own Uuid.randomUuid() draws again too.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _escape(value: str) -> str:
    # Backslash and line breaks are the only characters that change meaning in a .properties value.
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def render_properties(props: Mapping[str, PropertyValue]) -> str:
    lines = []
    for key, value in props.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        lines.append(f"{key}={_escape(text)}")
    return "\n".join(lines) + "\n"


def _silent_logger() -> logging.Logger:
    # librdkafka reports every refused connection while the broker boots; readiness probes
    # expect those, so they go nowhere.
    logger = logging.getLogger("local_services.kafka.probe")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.CRITICAL + 1)
    return logger


class KafkaService(ManagedService):
    name = "kafka"
    title = f"Kafka {KAFKA_VERSION}"

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        overlay: Mapping[str, PropertyValue] | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        format_args: Sequence[str] = (),
        keep_data: bool = False,
        heap: str = "512m",
        cache_dir: Path | str | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """
        overlay: extra server.properties entries applied last, so they may also replace ours
            (e.g. listeners for a SASL_SSL variant). Readiness and address() keep using the
            PLAINTEXT listener on `port`, so keep one there.
        port, controller_port: fixed ports instead of free ones picked at each start; fixing them
            lets an overlay refer to them.
        format_args: extra arguments of `StorageTool format`, e.g. ``("--add-scram",
            "SCRAM-SHA-512=[name=alice,password=...]")`` for SCRAM credentials in KRaft.
        keep_data: start on the data dir a previous start formatted (topics, messages and
            committed offsets kept), formatting only when there is none. Give the same `port`
            and `controller_port` as that start: the quorum recorded its controller address.
        """
        super().__init__(state_dir, cache_dir, start_timeout, stop_timeout)
        self.overlay = dict(overlay or {})
        self.port = port
        self.controller_port = controller_port
        self.format_args = tuple(format_args)
        self.keep_data = keep_data
        self.heap = heap

    # -- cache --

    @property
    def install_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}"

    @property
    def libs_dir(self) -> Path:
        return self.install_dir / "libs"

    def _pom_bytes(self) -> bytes:
        return resources.files("local_services").joinpath("maven/kafka/pom.xml").read_bytes()

    def _fingerprint(self) -> str:
        # A changed pom (say, another Log4j version) must not reuse jars copied for the old one.
        digest = hashlib.sha256(self._pom_bytes() + KAFKA_VERSION.encode()).hexdigest()
        return digest[:16]

    def _installed(self) -> bool:
        marker = read_marker(self.install_dir)
        return (
            marker is not None
            and marker.get("fingerprint") == self._fingerprint()
            and self.libs_dir.is_dir()
        )

    def install(self) -> bool:
        if self._installed():
            return True
        with file_lock(self.cache_dir / f"kafka-{KAFKA_VERSION}.lock"):
            if self._installed():  # another process finished it while we waited
                return True
            staging = self.install_dir / "libs.partial"
            shutil.rmtree(staging, ignore_errors=True)
            (self.install_dir / MARKER).unlink(missing_ok=True)
            with resources.as_file(
                resources.files("local_services").joinpath("maven/kafka/pom.xml")
            ) as pom:
                run_maven(
                    [
                        "-f",
                        str(pom),
                        f"-Dkafka.version={KAFKA_VERSION}",
                        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                        "-DincludeScope=runtime",
                        f"-DoutputDirectory={staging}",
                    ],
                    what=f"Kafka {KAFKA_VERSION} jars",
                    cwd=self.install_dir,
                )
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if not any(name.startswith("kafka_2.13-") for name in jars):
                raise ServiceError(
                    f"Maven finished but {staging} holds no kafka_2.13 jar (found: {jars}); "
                    "expected the broker's runtime jars. Delete that directory and start again."
                )
            # A broker started from the old jars may still be running and load classes lazily:
            # move them aside rather than delete them under it.
            stale = self.install_dir / "libs.stale"
            shutil.rmtree(stale, ignore_errors=True)
            if self.libs_dir.exists():
                self.libs_dir.rename(stale)
            staging.rename(self.libs_dir)
            write_marker(
                self.install_dir,
                {"fingerprint": self._fingerprint(), "version": KAFKA_VERSION, "jars": jars},
            )
        return False

    # -- run --

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "kafka-data"

    @property
    def properties_file(self) -> Path:
        return self.state_dir / "kafka-server.properties"

    @property
    def log_files(self) -> tuple[Path, ...]:
        return (self.console_log, self.log_dir / "kafka-server.log")

    def server_properties(self, port: int, controller_port: int) -> dict[str, PropertyValue]:
        plaintext = f"PLAINTEXT://{LOOPBACK}:{port}"
        controller = f"CONTROLLER://{LOOPBACK}:{controller_port}"
        props: dict[str, PropertyValue] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "listeners": f"{plaintext},{controller}",
            "advertised.listeners": f"{plaintext},{controller}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # Dynamic quorum (format --standalone); controller.quorum.voters must stay unset.
            "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{controller_port}",
            "log.dirs": str(self.data_dir),
            "num.partitions": 3,
            "auto.create.topics.enable": True,
            # One broker: internal topics cannot have more replicas than that.
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # The first consumer group would otherwise wait for 50 offsets partitions.
            "offsets.topic.num.partitions": 1,
            # Tests join groups and expect assignments at once, not after the default 3 s.
            "group.initial.rebalance.delay.ms": 0,
            # The cleaner allocates this up front; the 128 MiB default is a quarter of our heap.
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        }
        props.update(self.overlay)
        return props

    def prepare(self) -> Launch:
        java = find_java(MIN_JAVA, purpose=self.title)
        port = self.port or free_port()
        controller_port = self.controller_port or free_port(exclude={port})
        reuse = self.keep_data and (self.data_dir / "meta.properties").is_file()
        if not reuse:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir.mkdir(parents=True)
        self.properties_file.write_text(
            "# Written by local_services.kafka at each start; edits are overwritten.\n"
            + render_properties(self.server_properties(port, controller_port))
        )
        log4j = self.state_dir / "kafka-log4j2.properties"
        log4j.write_bytes(
            resources.files("local_services").joinpath("conf/kafka-log4j2.properties").read_bytes()
        )
        common = [
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={log4j}",
            "-Djava.awt.headless=true",
            "-cp",
            f"{self.libs_dir}/*",
        ]
        if reuse:
            return self._launch(java.executable, common, port, controller_port)
        fmt = subprocess.run(
            [
                java.executable,
                "-Xmx256m",
                *common,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id(),
                "-c",
                str(self.properties_file),
                *self.format_args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            output = "\n".join((fmt.stdout + fmt.stderr).splitlines()[-TAIL_LINES:])
            raise ServiceError(
                f"formatting the Kafka data dir {self.data_dir} failed (exit code "
                f"{fmt.returncode}); expected `StorageTool format` to succeed. Its output:\n"
                f"{output}\nCheck {self.properties_file} (and any overlay) "
                "and start again."
            )
        return self._launch(java.executable, common, port, controller_port)

    def _launch(self, java: str, common: list[str], port: int, controller_port: int) -> Launch:
        argv = [
            java,
            "-Xms128m",
            f"-Xmx{self.heap}",
            # The flags Kafka's own kafka-run-class.sh uses for a broker.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            self.identity,
            *common,
            "kafka.Kafka",
            str(self.properties_file),
        ]
        return Launch(argv=argv, address=f"{LOOPBACK}:{port}", ports=(port, controller_port))

    def readiness_problem(self, address: str) -> str | None:
        host, _, port = address.rpartition(":")
        if not port_accepts(host, int(port)):
            return f"nothing accepts connections on {address} yet"
        # Imported here so the CLI's stop/address/status work even without confluent_kafka.
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {"bootstrap.servers": address, "logger": _silent_logger()}
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=5)
        except KafkaException as exc:
            return f"metadata request failed: {exc}"
        if not metadata.brokers:
            return "metadata lists no live broker yet"
        expected = self._cluster_id()
        if expected and metadata.cluster_id != expected:
            return (
                f"the broker at {address} belongs to cluster {metadata.cluster_id}, "
                f"not to ours ({expected}) formatted in {self.data_dir}"
            )
        return None

    def _cluster_id(self) -> str | None:
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "cluster.id":
                return value.strip()
        return None


def start(
    state_dir: Path | str | None = None,
    *,
    overlay: Mapping[str, PropertyValue] | None = None,
    port: int | None = None,
    controller_port: int | None = None,
    format_args: Sequence[str] = (),
    keep_data: bool = False,
    start_timeout: float = 90.0,
) -> StartResult:
    return KafkaService(
        state_dir,
        overlay=overlay,
        port=port,
        controller_port=controller_port,
        format_args=format_args,
        keep_data=keep_data,
        start_timeout=start_timeout,
    ).start()


def stop(state_dir: Path | str | None = None) -> bool:
    return KafkaService(state_dir).stop()


def address(state_dir: Path | str | None = None) -> str | None:
    return KafkaService(state_dir).address()


def status(state_dir: Path | str | None = None) -> Status:
    return KafkaService(state_dir).status()
