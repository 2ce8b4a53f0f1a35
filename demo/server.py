"""The demo model server: JSON scoring requests from Kafka in, scores out, lifecycle reported.

The streaming model-serving shape: a consumer reads requests from the input topic in small
batches, a real scikit-learn model (trained at start-up on the bundled wine data) scores
them, a producer writes one result per request to the output topic, and the consumer's
offsets are stored only after the results were handed to the producer (at least once).

``capture`` is embedded as a server would embed it:

- at start, ``ModelLoaded`` for version 1, built from the saved artifact (MLflow model when
  mlflow is installed, else joblib) with its training data, hyper-parameters, metrics,
  storage facts and schemas;
- a ``ScoringRecorder`` per version: latency and outcome of every request, per-feature
  summaries; the emitter sends one ``ScoringStats`` per window;
- mid-run (after ``--swap-after-requests`` requests or ``--swap-after-seconds`` seconds of
  traffic, whichever comes first) version 2 with other hyper-parameters, announced as
  ``ModelLoaded`` replacing version 1, and the output's new ``probability`` field announced
  with ``SchemaChanged``.

Nothing on the serving path waits for the emitter. SIGTERM or SIGINT stop the loop; the
output is flushed, offsets committed and the emitter closed (its open windows sent).

    python -m demo.server --swap-after-seconds 15     # KAFKA_BOOTSTRAP_SERVERS names the broker
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast, get_args

import numpy as np

from capture.artifacts import ModelFacts
from capture.config import DEFAULT_TOPIC, ConfigError, EmitterConfig, KafkaSecurity
from capture.emitter import Emitter
from capture.events import (
    DataSchema,
    DataSource,
    Deployment,
    ModelIdentity,
    Runtime,
    SchemaSide,
)
from capture.stats import ScoringRecorder
from demo.model import (
    V1_PARAMS,
    V2_PARAMS,
    ArtifactFormat,
    TrainedModel,
    WineData,
    load_data,
    model_loaded,
    save_artifact,
    train,
    write_training_csv,
)

log = logging.getLogger("demo.server")

SERVER_KIND = "python-kafka-scorer"


class RequestError(ValueError):
    """A request the server cannot score; ``kind`` is the error kind its stats count."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def parse_request(value: bytes | None, feature_names: Sequence[str]) -> tuple[str, list[float]]:
    """The request id and the feature row (in ``feature_names`` order) of one request."""
    try:
        body = json.loads(value or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_json", f"not a JSON document ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("features"), dict):
        raise RequestError(
            "invalid_json", 'expected {"request_id": ..., "features": {name: number, ...}}'
        )
    features: dict[str, Any] = body["features"]
    row = []
    for name in feature_names:
        if name not in features:
            raise RequestError("missing_feature", f"feature {name!r} is missing")
        raw = features[name]
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise RequestError("not_a_number", f"feature {name!r} is {raw!r}, not a number")
        if not math.isfinite(raw):
            raise RequestError("not_a_number", f"feature {name!r} is {raw!r}, not finite")
        row.append(float(raw))
    request_id = body.get("request_id")
    return (str(request_id) if request_id is not None else ""), row


@dataclass(frozen=True)
class ServerSettings:
    bootstrap: str
    input_topic: str = "wine-requests"
    output_topic: str = "wine-scores"
    events_topic: str = DEFAULT_TOPIC
    model_name: str = "wine-classifier"
    server_name: str = "wine-scorer"
    cluster: str = "demo"
    environment: str = "demo"
    group_id: str = "wine-scorer"
    work_dir: Path = Path(".run/demo/server")
    # 0 disables a trigger; with both 0 the server never swaps.
    swap_after_requests: int = 300
    swap_after_seconds: float = 15.0
    window_seconds: float = 5.0
    seed: int = 42
    artifact_format: ArtifactFormat = "auto"
    owner: str = "wine-data-science"
    ready_file: Path | None = None
    unload_on_exit: bool = False
    max_batch: int = 100


@dataclass
class _Live:
    """The version being served and its recorder."""

    model: TrainedModel
    identity: ModelIdentity
    facts: ModelFacts
    output: DataSchema
    recorder: ScoringRecorder
    with_probability: bool


@dataclass
class ServerTotals:
    scored: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)

    def describe(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"scored {self.scored} requests, rejected {sum(self.errors.values())} ({errors}); "
            f"model versions served: {' -> '.join(self.versions)}"
        )


class WineScoringServer:
    def __init__(self, settings: ServerSettings, emitter: Emitter | None = None) -> None:
        self.settings = settings
        self.totals = ServerTotals()
        self._emitter = emitter
        self._security = KafkaSecurity.from_env()
        self._data: WineData | None = None
        self._source: DataSource | None = None
        self._live: _Live | None = None
        self._swapped = False
        self._first_request_at: float | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._assigned_once = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Train and announce version 1, then connect to Kafka."""
        s = self.settings
        self._data = load_data()
        self._source = write_training_csv(self._data, s.work_dir / "data" / "wine.csv")
        if self._emitter is None:
            config = EmitterConfig.from_env(
                bootstrap_servers=s.bootstrap,
                topic=s.events_topic,
                window_seconds=s.window_seconds,
                emitter_name=f"{s.server_name}-capture",
            )
            deployment = Deployment(
                server_kind=SERVER_KIND,
                server_name=s.server_name,
                cluster=s.cluster,
                environment=s.environment,
            )
            self._emitter = Emitter(config, deployment)
        model = train("1", V1_PARAMS, seed=s.seed, data=self._data)
        self._live = self._load(model, with_probability=False, replaces=None)
        from confluent_kafka import Consumer, Producer

        client = {"bootstrap.servers": s.bootstrap, **self._security.librdkafka()}
        self._consumer = Consumer(
            {
                **client,
                "group.id": s.group_id,
                "auto.offset.reset": "earliest",
                # Offsets are stored by hand once the results are with the producer, and
                # committed in the background: at least once, without a commit per batch.
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
            }
        )
        self._producer = Producer({**client, "linger.ms": 5, "enable.idempotence": True})

    def run(self, stop: threading.Event) -> ServerTotals:
        """Serve until ``stop`` is set; then shut down cleanly."""
        if self._live is None:
            self.start()
        consumer = self._consumer
        consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign)
        try:
            while not stop.is_set():
                messages = consumer.consume(self.settings.max_batch, timeout=0.2)
                if messages:
                    self._handle(messages)
                self._producer.poll(0)
                if self._swap_due():
                    self._swap()
        finally:
            self.close()
        return self.totals

    def close(self) -> None:
        s = self.settings
        if self._producer is not None:
            left = self._producer.flush(10.0)
            if left:
                log.error("%d results not delivered to %s at shutdown", left, s.output_topic)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()  # commits the offsets stored so far
            self._consumer = None
        if self._emitter is not None:
            if s.unload_on_exit and self._live is not None:
                self._emitter.model_unloaded(self._live.identity, reason="server shut down")
            self._emitter.close()
            stats = self._emitter.stats()
            log.info(
                "emitter closed: %d events enqueued, %d delivered, %d dropped %s",
                stats.enqueued,
                stats.delivered,
                stats.dropped_total,
                stats.dropped or "",
            )
            self._emitter = None
        log.info("stopped: %s", self.totals.describe())

    # -- model versions -------------------------------------------------------------------

    def _load(self, model: TrainedModel, *, with_probability: bool, replaces: str | None) -> _Live:
        s = self.settings
        assert self._emitter is not None and self._source is not None
        began = time.monotonic()
        facts = save_artifact(
            model, s.work_dir / "models" / s.model_name / model.version, s.artifact_format
        )
        identity = ModelIdentity(
            name=s.model_name, version=model.version, content_hash=facts.artifact.content_hash
        )
        loaded = model_loaded(
            model,
            facts,
            source=self._source,
            runtime=Runtime(
                language="python",
                language_version=platform.python_version(),
                host=socket.gethostname(),
                endpoint=f"kafka://{s.input_topic}",
            ),
            inputs=[f"kafka://{s.input_topic}"],
            outputs=[f"kafka://{s.output_topic}"],
            owner=s.owner,
            with_probability=with_probability,
            replaces_version=replaces,
        )
        self._emitter.model_loaded(identity, loaded)
        self.totals.versions.append(model.version)
        test_accuracy = next(
            m.value for m in model.metrics if m.name == "accuracy" and m.split == "test"
        )
        log.info(
            "model %s version %s loaded from %s (%s, test accuracy %.3f, %s) in %.2f s",
            s.model_name,
            model.version,
            facts.artifact.uri,
            facts.properties.get("artifact.format", "?"),
            test_accuracy,
            facts.artifact.access_mode,
            time.monotonic() - began,
        )
        return _Live(
            model=model,
            identity=identity,
            facts=facts,
            output=loaded.output_schema,
            recorder=self._emitter.scoring_recorder(identity),
            with_probability=with_probability,
        )

    def _swap_due(self) -> bool:
        s = self.settings
        if self._swapped or self._first_request_at is None:
            return False
        by_count = (
            0 < s.swap_after_requests <= self.totals.scored + sum(self.totals.errors.values())
        )
        elapsed = time.monotonic() - self._first_request_at
        by_time = 0 < s.swap_after_seconds <= elapsed
        return by_count or by_time

    def _swap(self) -> None:
        """Train version 2 with other hyper-parameters and put it in version 1's place.

        Done on the serving thread: requests wait in Kafka for the second it takes, which a
        demo can afford; a production server would load beside the old version.
        """
        self._swapped = True
        old = self._live
        assert old is not None and self._data is not None and self._emitter is not None
        identity = ModelIdentity(name=self.settings.model_name, version="2")
        try:
            model = train("2", V2_PARAMS, seed=self.settings.seed, data=self._data)
            new = self._load(model, with_probability=True, replaces=old.model.version)
        except Exception as exc:
            # The catalog learns of the failure; serving goes on with the old version.
            log.exception("version 2 could not be loaded; still serving version 1")
            self._emitter.model_load_failed(identity, str(exc), type(exc).__name__)
            return
        self._emitter.schema_changed(new.identity, SchemaSide.OUTPUT, new.output, old.output)
        self._live = new
        added = sorted({f.name for f in new.output.fields} - {f.name for f in old.output.fields})
        log.info(
            "version %s replaces %s; output schema changed, new field(s) %s",
            new.model.version,
            old.model.version,
            added,
        )

    # -- serving --------------------------------------------------------------------------

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info(
            "consuming %s partitions %s",
            self.settings.input_topic,
            sorted(p.partition for p in partitions),
        )
        if not self._assigned_once and self.settings.ready_file is not None:
            ready = self.settings.ready_file
            ready.parent.mkdir(parents=True, exist_ok=True)
            partial = ready.with_suffix(".partial")
            info = {"pid": os.getpid(), "model_version": self._live and self._live.model.version}
            partial.write_text(json.dumps(info) + "\n", encoding="utf-8")
            partial.replace(ready)  # readers see the whole file or none
        self._assigned_once = True

    def _handle(self, messages: list[Any]) -> None:
        live = self._live
        assert live is not None
        began = time.perf_counter()
        if self._first_request_at is None and any(m.error() is None for m in messages):
            self._first_request_at = time.monotonic()
        features = live.model.feature_names
        valid: list[tuple[str, list[float]]] = []
        for message in messages:
            if message.error() is not None:
                log.warning("consumer error: %s", message.error())
                continue
            try:
                valid.append(parse_request(message.value(), features))
            except RequestError as exc:
                self.totals.errors[exc.kind] = self.totals.errors.get(exc.kind, 0) + 1
                live.recorder.record(time.perf_counter() - began, error=exc.kind)
                if sum(self.totals.errors.values()) <= 5:
                    log.warning("request at %s rejected: %s", _position(message), exc)
        if valid:
            scores = live.model.score(np.array([row for _, row in valid], dtype=np.float64))
            version = live.model.version
            for (request_id, row), (cultivar, probability) in zip(valid, scores, strict=True):
                result: dict[str, Any] = {
                    "request_id": request_id,
                    "cultivar": cultivar,
                    "model_version": version,
                }
                if live.with_probability:
                    result["probability"] = round(probability, 6)
                self._produce(request_id, json.dumps(result, separators=(",", ":")).encode())
                live.recorder.record_features(dict(zip(features, row, strict=True)))
            # Every request of the batch waited for the whole batch: that is its latency.
            elapsed = time.perf_counter() - began
            for _ in valid:
                live.recorder.record(elapsed)
            self.totals.scored += len(valid)
        for message in messages:
            if message.error() is None:
                self._consumer.store_offsets(message=message)

    def _produce(self, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.settings.output_topic, value=value, key=key.encode())
                return
            except BufferError:
                self._producer.poll(0.1)  # the output broker is slow: wait for room


def _position(message: Any) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


# -- command line ------------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    d = ServerSettings(bootstrap="")
    parser = argparse.ArgumentParser(
        prog="python -m demo.server",
        description="The demo wine classifier served from Kafka, reporting its lifecycle with "
        "capture. Every flag defaults to the environment variable named in its help. The "
        "emitter also reads SCHEMA_REGISTRY_URL, SERVEMETA_* and KAFKA_SECURITY_* / "
        "KAFKA_SASL_* / KAFKA_SSL_*.",
    )
    a = parser.add_argument
    a(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="KAFKA_BOOTSTRAP_SERVERS",
    )
    a("--input-topic", default=_env("DEMO_INPUT_TOPIC", d.input_topic), help="DEMO_INPUT_TOPIC")
    a("--output-topic", default=_env("DEMO_OUTPUT_TOPIC", d.output_topic), help="DEMO_OUTPUT_TOPIC")
    a(
        "--events-topic",
        default=_env("SERVEMETA_TOPIC", d.events_topic),
        help="lifecycle events topic (SERVEMETA_TOPIC)",
    )
    a("--model-name", default=_env("DEMO_MODEL_NAME", d.model_name), help="DEMO_MODEL_NAME")
    a("--server-name", default=_env("DEMO_SERVER_NAME", d.server_name), help="DEMO_SERVER_NAME")
    a("--cluster", default=_env("DEMO_CLUSTER", d.cluster), help="DEMO_CLUSTER")
    a("--environment", default=_env("DEMO_ENVIRONMENT", d.environment), help="DEMO_ENVIRONMENT")
    a("--group-id", default=_env("DEMO_GROUP_ID", d.group_id), help="DEMO_GROUP_ID")
    a(
        "--work-dir",
        type=Path,
        default=Path(_env("DEMO_WORK_DIR", str(d.work_dir))),
        help="training data and model artifacts go here (DEMO_WORK_DIR)",
    )
    a(
        "--swap-after-requests",
        type=int,
        default=int(_env("DEMO_SWAP_AFTER_REQUESTS", str(d.swap_after_requests))),
        help="load version 2 after this many requests; 0: never (DEMO_SWAP_AFTER_REQUESTS)",
    )
    a(
        "--swap-after-seconds",
        type=float,
        default=float(_env("DEMO_SWAP_AFTER_SECONDS", str(d.swap_after_seconds))),
        help="or after this many seconds since the first request; 0: never "
        "(DEMO_SWAP_AFTER_SECONDS)",
    )
    a(
        "--window-seconds",
        type=float,
        default=float(_env("DEMO_WINDOW_SECONDS", str(d.window_seconds))),
        help="scoring statistics window (DEMO_WINDOW_SECONDS)",
    )
    a("--seed", type=int, default=int(_env("DEMO_SEED", str(d.seed))), help="DEMO_SEED")
    a(
        "--artifact-format",
        choices=get_args(ArtifactFormat),
        default=_env("DEMO_ARTIFACT_FORMAT", d.artifact_format),
        help="auto: an MLflow model when mlflow is installed, else joblib (DEMO_ARTIFACT_FORMAT)",
    )
    a("--owner", default=_env("DEMO_OWNER", d.owner), help="DEMO_OWNER")
    a("--ready-file", type=Path, help="written once the model is loaded and partitions assigned")
    a(
        "--unload-on-exit",
        action="store_true",
        help="announce ModelUnloaded at shutdown (off: the demo stops the server only to end "
        "the demo, and the catalog should show the deployment as it was serving)",
    )
    a("--log-level", default=_env("DEMO_LOG_LEVEL", "INFO"), help="DEMO_LOG_LEVEL")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    if not args.bootstrap:
        raise ConfigError(
            "no Kafka broker: pass --bootstrap host:port or set KAFKA_BOOTSTRAP_SERVERS"
        )
    if args.window_seconds <= 0:
        raise ConfigError(f"--window-seconds must be positive, got {args.window_seconds}")
    if args.swap_after_requests < 0 or args.swap_after_seconds < 0:
        raise ConfigError("--swap-after-requests and --swap-after-seconds must be 0 or more")
    return ServerSettings(
        bootstrap=args.bootstrap,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        events_topic=args.events_topic,
        model_name=args.model_name,
        server_name=args.server_name,
        cluster=args.cluster,
        environment=args.environment,
        group_id=args.group_id,
        work_dir=args.work_dir,
        swap_after_requests=args.swap_after_requests,
        swap_after_seconds=args.swap_after_seconds,
        window_seconds=args.window_seconds,
        seed=args.seed,
        artifact_format=cast(ArtifactFormat, args.artifact_format),
        owner=args.owner,
        ready_file=args.ready_file,
        unload_on_exit=args.unload_on_exit,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ValueError as exc:  # a DEMO_* variable that is not a number
        print(f"error: {exc}; fix the DEMO_* variable", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = WineScoringServer(settings)
    try:
        server.start()
    except ConfigError as exc:
        log.error("%s", exc)
        server.close()
        return 2
    except Exception:
        log.exception("the server could not start")
        server.close()
        return 1
    try:
        server.run(stop)  # closes the server however it ends
    except Exception:
        log.exception("the server failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
