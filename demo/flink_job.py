"""The wine classifier served inside Apache Flink (PyFlink, a local mini cluster), in the
streaming model-serving shape: requests on the data topic, model descriptors on the control
topic, the two connected through broadcast state, scores to the output topic.

Each parallel instance of the scoring operator is one replica of one deployment
(``server_kind="flink"``, ``server_name`` the job's name) and embeds ``capture``:

- ``open()`` opens the instance's emitter; ``close()`` announces ``ModelUnloaded`` for the
  version it serves and closes the emitter (its open window is sent). Flink calls ``close()``
  when the job is cancelled, and on a failure before it restarts the instances.
- A descriptor (``process_broadcast_element``) is applied as ``demo.serving.ModelHost`` applies
  it: ``ModelLoaded`` (replacing the version served), or ``ModelLoadFailed`` with the previous
  version serving on. Only a descriptor that loaded goes into the broadcast state.
- The broadcast state is what a checkpoint keeps. A job restored from one finds the version
  it served there, loads it on its first element and announces it with
  ``ModelLoaded.restored``: the catalog marks it serving again without a new load. (Flink's
  broadcast state cannot be read in ``open()``.)
- Every scored request is recorded (latency, outcome, features) by the version's recorder; the
  emitter sends one ``ScoringStats`` per window and instance.

    python -m demo.flink_job --bootstrap 127.0.0.1:9092 --work-dir .run/flink
    python -m demo.flink_job ... --restore-from latest     # the newest retained checkpoint

SIGTERM or SIGINT cancel the job; the process exits once Flink has closed every instance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import ByteArraySchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
    KafkaTopicPartition,
)
from pyflink.datastream.functions import BroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from capture.config import DEFAULT_TOPIC
from demo.publish_model import DEFAULT_CONTROL_TOPIC
from demo.signals import stop_on_signals

log = logging.getLogger("demo.flink_job")

SERVER_KIND = "flink"


@dataclass(frozen=True)
class JobSettings:
    """Everything an instance needs, plain values only: Flink pickles the function."""

    bootstrap: str
    work_dir: str
    input_topic: str = "wine-requests"
    output_topic: str = "wine-scores"
    control_topic: str = DEFAULT_CONTROL_TOPIC
    events_topic: str = DEFAULT_TOPIC
    model_name: str = "wine-classifier"
    job_name: str = "wine-scorer-flink"
    cluster: str = "demo"
    group_id: str = "wine-scorer-flink"
    parallelism: int = 2
    window_seconds: float = 5.0
    checkpoint_seconds: float = 2.0


def _models_state() -> MapStateDescriptor:
    # Made anew each time: a descriptor built once holds a handle on the JVM that cannot be
    # pickled with the function.
    return MapStateDescriptor("models", Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()))


class ScoreWithModels(BroadcastProcessFunction):  # type: ignore[misc]  # PyFlink is untyped
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        from capture.config import EmitterConfig
        from capture.emitter import Emitter
        from capture.events import Deployment, Runtime
        from demo.model import load_data
        from demo.serving import ModelHost

        s = JobSettings(**self.settings)
        self.index = runtime_context.get_index_of_this_subtask()
        self.state = _models_state()
        self.emitter = Emitter(
            EmitterConfig.from_env(
                bootstrap_servers=s.bootstrap,
                topic=s.events_topic,
                window_seconds=s.window_seconds,
                emitter_name=f"{s.job_name}-capture",
            ),
            Deployment(server_kind=SERVER_KIND, server_name=s.job_name, cluster=s.cluster),
        )
        self.host = ModelHost(
            self.emitter,
            model_name=s.model_name,
            feature_names=load_data().feature_names,
            runtime=Runtime(
                language="python",
                language_version=platform.python_version(),
                host=socket.gethostname(),
                endpoint=f"flink://{s.job_name}/{self.index}",
                replicas=runtime_context.get_number_of_parallel_subtasks(),
            ),
            inputs=[f"kafka://{s.input_topic}"],
            outputs=[f"kafka://{s.output_topic}"],
        )
        self.model_name = s.model_name
        self.checked_restore = False
        log.info(
            "instance %d opened (attempt %d)", self.index, runtime_context.get_attempt_number()
        )

    def close(self) -> None:
        # Flink closes an instance whose open() failed too: only what was opened is closed.
        if hasattr(self, "host"):
            self.host.unload("the Flink job stopped this instance")
        if hasattr(self, "emitter"):
            self.emitter.close()
        log.info("instance %s closed", getattr(self, "index", "(not opened)"))

    def _resume(self, stored: Any) -> None:
        """Once per instance: the version a restored job served, from its broadcast state."""
        self.checked_restore = True
        if stored is not None and self.host.live is None:
            applied = self.host.apply(bytes(stored), restored=True)
            log.info("instance %d: model %s %s", self.index, self.model_name, applied.detail)

    def process_broadcast_element(self, value: Any, ctx: Any) -> None:
        state = ctx.get_broadcast_state(self.state)
        if not self.checked_restore:
            self._resume(state.get(self.model_name))
        applied = self.host.apply(bytes(value))
        level = logging.ERROR if applied.outcome == "failed" else logging.INFO
        log.log(level, "instance %d: model %s %s", self.index, self.model_name, applied.detail)
        if applied.outcome == "loaded":
            # Every instance applies the same bytes the same way: the state stays the same in all.
            state.put(self.model_name, value)

    def process_element(self, value: Any, ctx: Any) -> Iterator[bytes]:
        from demo.server import RequestError, parse_request

        if not self.checked_restore:
            self._resume(ctx.get_broadcast_state(self.state).get(self.model_name))
        began = time.perf_counter()
        live = self.host.live
        if live is None:
            # Not dropped silently: the caller sees why its request was not scored.
            yield json.dumps(
                {"error": "no_model", "detail": "no model version loaded yet"}
            ).encode()
            return
        try:
            request_id, row = parse_request(bytes(value), self.host.feature_names)
        except RequestError as exc:
            live.recorder.record(time.perf_counter() - began, error=exc.kind)
            yield json.dumps({"error": exc.kind, "detail": str(exc)}).encode()
            return
        ((cultivar, probability),) = self.host.score([row])
        result: dict[str, Any] = {
            "request_id": request_id,
            "cultivar": cultivar,
            "model_version": live.version,
            "instance": self.index,
        }
        if live.with_probability:
            result["probability"] = round(probability, 6)
        live.recorder.record_features(dict(zip(self.host.feature_names, row, strict=True)))
        live.recorder.record(time.perf_counter() - began)
        yield json.dumps(result, separators=(",", ":")).encode()


def _source(s: JobSettings, topic: str, group: str, start: KafkaOffsetsInitializer) -> KafkaSource:
    return (
        KafkaSource.builder()
        .set_bootstrap_servers(s.bootstrap)
        .set_topics(topic)
        .set_group_id(group)
        .set_starting_offsets(start)
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("fetch.max.bytes", str(16 * 1024 * 1024))
        .set_property("max.partition.fetch.bytes", str(16 * 1024 * 1024))
        .build()
    )


def control_start(s: JobSettings) -> dict[int, int]:
    """Where a fresh job's control stream starts, per partition: at the newest descriptor it
    can apply, and at the end of the others, so that history is not announced as new loads.
    (A restored job starts where its checkpoint left off instead.)"""
    from confluent_kafka import Consumer

    from demo.control_topic import newest_applicable, read_to_end

    consumer = Consumer(
        {
            "bootstrap.servers": s.bootstrap,
            "group.id": f"{s.group_id}-control-start",
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        position = read_to_end(consumer, s.control_topic)
    finally:
        consumer.close()
    starts = dict(position.ends)
    chosen = newest_applicable(position.messages, s.model_name)
    if chosen is not None:
        starts[chosen.partition] = chosen.offset
    return starts


def _keep_temporary_files_in(directory: Path) -> None:
    """Flink's client writes jars and caches to java.io.tmpdir (tens of MB a run) unless told;
    FLINK_ENV_JAVA_OPTS replaces PyFlink's default JVM options (the --add-opens Java 17 needs),
    so those are read from PyFlink's own configuration and kept."""
    directory.mkdir(parents=True, exist_ok=True)
    if "FLINK_ENV_JAVA_OPTS" in os.environ:
        return
    import pyflink
    from pyflink import pyflink_gateway_server as gateway

    conf_dir = os.path.join(os.path.dirname(pyflink.__file__), "conf")
    keys = (gateway.KEY_ENV_JAVA_DEFAULT_OPTS, gateway.KEY_ENV_JAVA_OPTS)
    options = " ".join(gateway.read_from_config(k, "", conf_dir) for k in keys)
    os.environ["FLINK_ENV_JAVA_OPTS"] = f"{options} -Djava.io.tmpdir={directory}"


def checkpoint_dir(work_dir: Path) -> Path:
    return work_dir / "checkpoints"


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint any run of the job retained (its ``_metadata`` written)."""
    done = checkpoint_dir(work_dir).glob("*/chk-*/_metadata")
    newest = max(done, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent if newest is not None else None


def build(
    s: JobSettings,
    connector: Path,
    restore: Path | None = None,
    control_offsets: dict[int, int] | None = None,
) -> StreamExecutionEnvironment:
    """``control_offsets``: where a fresh job reads the control topic from (``control_start``);
    a restored job reads from its checkpoint's offsets whatever this says."""
    work = Path(s.work_dir).absolute()
    temporary = work / "tmp"
    _keep_temporary_files_in(temporary)
    os.environ.setdefault("FLINK_LOG_DIR", str(work / "flink-logs"))
    conf = Configuration()
    for key, value in {
        "parallelism.default": str(s.parallelism),
        "io.tmp.dirs": str(temporary),
        "web.tmpdir": str(temporary),
        "execution.checkpointing.interval": f"{int(s.checkpoint_seconds * 1000)}ms",
        "execution.checkpointing.dir": checkpoint_dir(work).as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        # A poison element must not restart the job forever: twice, then it fails.
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "2",
        "restart-strategy.fixed-delay.delay": "1s",
    }.items():
        conf.set_string(key, value)
    if restore is not None:
        conf.set_string("execution.state-recovery.path", restore.absolute().as_uri())
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.add_jars(connector.absolute().as_uri())
    env.set_python_executable(sys.executable)
    requests = env.from_source(
        _source(
            s,
            s.input_topic,
            s.group_id,
            KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST),
        ),
        WatermarkStrategy.no_watermarks(),
        "requests",
    )
    models_start = (
        KafkaOffsetsInitializer.offsets(
            {KafkaTopicPartition(s.control_topic, p): o for p, o in control_offsets.items()}
        )
        if control_offsets is not None
        else KafkaOffsetsInitializer.earliest()
    )
    models = env.from_source(
        _source(s, s.control_topic, f"{s.group_id}-control", models_start),
        WatermarkStrategy.no_watermarks(),
        "models",
    )
    scores = requests.connect(models.broadcast(_models_state())).process(
        ScoreWithModels(asdict(s)), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE())
    )
    sink = (
        KafkaSink.builder()
        .set_bootstrap_servers(s.bootstrap)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(s.output_topic)
            .set_value_serialization_schema(ByteArraySchema())
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .build()
    )
    scores.sink_to(sink).name("scores")
    return env


def _parser() -> argparse.ArgumentParser:
    d = JobSettings(bootstrap="", work_dir=".run/flink")
    parser = argparse.ArgumentParser(prog="python -m demo.flink_job", description=__doc__)
    a = parser.add_argument
    a(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="KAFKA_BOOTSTRAP_SERVERS",
    )
    a("--work-dir", default=d.work_dir, help="checkpoints, Flink's logs and temporary files")
    for name in ("input_topic", "output_topic", "control_topic", "events_topic", "model_name"):
        a(f"--{name.replace('_', '-')}", default=getattr(d, name))
    for name in ("job_name", "cluster", "group_id"):
        a(f"--{name.replace('_', '-')}", default=getattr(d, name))
    a("--parallelism", type=int, default=d.parallelism)
    a("--window-seconds", type=float, default=d.window_seconds)
    a("--checkpoint-seconds", type=float, default=d.checkpoint_seconds)
    a("--restore-from", help="a checkpoint directory, or `latest`: the newest one retained")
    a("--ready-file", type=Path, help="written once the job is running")
    a("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A handler of the demo's own: Beam, under PyFlink, takes the root logger's over once the
    # job runs, and the instances (in this process) log through these loggers.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    demo_log = logging.getLogger("demo")
    demo_log.addHandler(handler)
    demo_log.setLevel(args.log_level.upper())
    demo_log.propagate = False
    if not args.bootstrap:
        print("error: pass --bootstrap host:port or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    if args.parallelism < 1 or args.window_seconds <= 0 or args.checkpoint_seconds <= 0:
        print("error: --parallelism, --window-seconds and --checkpoint-seconds must be positive")
        return 2
    settings = JobSettings(
        **{k: getattr(args, k) for k in JobSettings.__dataclass_fields__ if hasattr(args, k)}
    )
    restore: Path | None = None
    if args.restore_from == "latest":
        restore = latest_checkpoint(Path(settings.work_dir))
        if restore is None:
            print(f"error: no retained checkpoint under {settings.work_dir}", file=sys.stderr)
            return 2
    elif args.restore_from:
        restore = Path(args.restore_from)
        if not (restore / "_metadata").is_file():
            print(f"error: {restore} is no checkpoint (no _metadata in it)", file=sys.stderr)
            return 2
    from local_services.flink import kafka_connector

    stop = stop_on_signals(log, "cancelling the job")
    try:
        offsets = None if restore is not None else control_start(settings)
    except (LookupError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = build(settings, kafka_connector(), restore, offsets)
    client = env.execute_async(settings.job_name)
    log.info(
        "job %s submitted (parallelism %d%s)",
        client.get_job_id(),
        settings.parallelism,
        f", restored from {restore}" if restore else "",
    )

    def status() -> str:
        return str(client.get_job_status().result().name)

    while status() not in ("RUNNING", "FAILED", "CANCELED"):
        if stop.wait(0.2):
            break
    if status() == "RUNNING" and args.ready_file is not None:
        args.ready_file.parent.mkdir(parents=True, exist_ok=True)
        args.ready_file.write_text(
            json.dumps({"pid": os.getpid(), "job": str(client.get_job_id())})
        )
    while not stop.wait(0.5):
        ended = status()
        if ended in ("FAILED", "FINISHED", "CANCELED"):
            log.error("the job ended by itself: %s (see %s)", ended, os.environ["FLINK_LOG_DIR"])
            return 1
    client.cancel().result()
    # Cancelling returns at once; the instances' close() (ModelUnloaded, the last windows)
    # runs as the job winds down.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if status() == "CANCELED":
                break
        except Exception:  # the mini cluster shuts down with the job
            break
        time.sleep(0.2)
    log.info("job cancelled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
