"""The demo model server: JSON scoring requests from Kafka in, scores out, lifecycle reported;
its models come from the model control topic.

The streaming model-serving shape: models arrive as descriptors on a control topic
(``demo.publish_model`` sends one) beside the data topic. The server reads the control topic
from its beginning and serves the newest version it holds, then applies each new descriptor
as it comes (``demo.serving.ModelHost``): a ``ModelLoaded`` replacing the version served
before (with ``SchemaChanged`` when the output changes), or a ``ModelLoadFailed`` while the
previous version serves on. Requests wait in Kafka until a first version is loaded.

Scoring: a consumer reads requests from the input topic in small batches, the model scores
them, a producer writes one result per request to the output topic, and the consumer's
offsets are stored only after the results were handed to the producer (at least once). A
``ScoringRecorder`` per version records latency, outcome and features; the emitter sends one
``ScoringStats`` per window.

Nothing on the serving path waits for the emitter. SIGTERM or SIGINT stop the loop; the
output is flushed, offsets committed and the emitter closed (its open windows sent).

    python -m demo.server                    # KAFKA_BOOTSTRAP_SERVERS names the broker
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.config import DEFAULT_TOPIC, ConfigError, EmitterConfig, KafkaSecurity
from capture.emitter import Emitter
from capture.events import Deployment, Runtime
from demo.control_topic import newest_applicable, read_to_end
from demo.model import load_data
from demo.publish_model import DEFAULT_CONTROL_TOPIC
from demo.serving import ModelHost
from demo.signals import stop_on_signals

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
    control_topic: str = DEFAULT_CONTROL_TOPIC
    events_topic: str = DEFAULT_TOPIC
    model_name: str = "wine-classifier"
    server_name: str = "wine-scorer"
    cluster: str = "demo"
    environment: str = "demo"
    group_id: str = "wine-scorer"
    window_seconds: float = 5.0
    ready_file: Path | None = None
    unload_on_exit: bool = False
    max_batch: int = 100


@dataclass
class ServerTotals:
    scored: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    failed_loads: int = 0

    def describe(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"scored {self.scored} requests, rejected {sum(self.errors.values())} ({errors}); "
            f"model versions served: {' -> '.join(self.versions) or 'none'}; "
            f"descriptors refused: {self.failed_loads}"
        )


class WineScoringServer:
    def __init__(self, settings: ServerSettings, emitter: Emitter | None = None) -> None:
        self.settings = settings
        self.totals = ServerTotals()
        self._emitter = emitter
        self._security = KafkaSecurity.from_env()
        self._host: ModelHost | None = None
        self._consumer: Any = None
        self._control: Any = None
        self._producer: Any = None
        self._subscribed = False
        self._assigned_once = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to Kafka and serve the newest version the control topic holds, if any."""
        s = self.settings
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
        self._host = ModelHost(
            self._emitter,
            model_name=s.model_name,
            feature_names=load_data().feature_names,
            runtime=Runtime(
                language="python",
                language_version=platform.python_version(),
                host=socket.gethostname(),
                endpoint=f"kafka://{s.input_topic}",
            ),
            inputs=[f"kafka://{s.input_topic}"],
            outputs=[f"kafka://{s.output_topic}"],
        )
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
        # Every server reads every descriptor from the beginning: no group offsets to share.
        self._control = Consumer(
            {
                **client,
                "group.id": f"{s.group_id}-control-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.message.max.bytes": 16 * 1024 * 1024,
            }
        )
        self._producer = Producer({**client, "linger.ms": 5, "enable.idempotence": True})
        self._catch_up()

    def _catch_up(self, timeout: float = 60.0) -> None:
        """Serve the newest version the control topic holds now that can be applied; older
        ones were served before this server started: history, not loads of its own. Newer
        ones (which could not be applied) are tried again."""
        s = self.settings
        try:
            position = read_to_end(self._control, s.control_topic, timeout)
        except (LookupError, TimeoutError) as exc:
            raise ConfigError(str(exc)) from None
        chosen = newest_applicable(position.messages, s.model_name)
        log.info(
            "control topic %s: %d messages, %s",
            s.control_topic,
            len(position.messages),
            "none applicable yet"
            if chosen is None
            else f"the newest applicable at {chosen.offset}",
        )
        if chosen is not None:
            self._apply(chosen.value)
            # Those published after it could not be applied; they are tried (and reported)
            # again, as a job starting at the chosen one does.
            for later in position.messages:
                if later.partition == chosen.partition and later.offset > chosen.offset:
                    self._apply(later.value)

    def run(self, stop: threading.Event) -> ServerTotals:
        """Serve until ``stop`` is set; then shut down cleanly."""
        if self._host is None:
            self.start()
        try:
            while not stop.is_set():
                for message in self._control.consume(10, timeout=0):
                    if message.error() is None:
                        self._apply(message.value())
                if self._host is None or self._host.live is None:
                    stop.wait(0.2)  # requests wait in Kafka until a version is loaded
                    continue
                if not self._subscribed:
                    self._consumer.subscribe([self.settings.input_topic], on_assign=self._on_assign)
                    self._subscribed = True
                messages = self._consumer.consume(self.settings.max_batch, timeout=0.2)
                if messages:
                    self._handle(messages)
                self._producer.poll(0)
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
        for name in ("_consumer", "_control"):
            consumer = getattr(self, name)
            if consumer is not None:
                consumer.close()  # the data consumer commits the offsets stored so far
                setattr(self, name, None)
        if self._emitter is not None:
            if s.unload_on_exit and self._host is not None:
                self._host.unload("server shut down")
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

    def _apply(self, value: bytes | None) -> None:
        assert self._host is not None
        applied = self._host.apply(value)
        if applied.outcome == "loaded" and self._host.live is not None:
            self.totals.versions.append(self._host.live.version)
            log.info("model %s %s", self.settings.model_name, applied.detail)
        elif applied.outcome == "failed":
            self.totals.failed_loads += 1
            log.error("model %s: %s", self.settings.model_name, applied.detail)
        else:
            log.info("control message %s: %s", applied.outcome, applied.detail)

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
            live = self._host.live if self._host else None
            info = {"pid": os.getpid(), "model_version": live and live.version}
            partial.write_text(json.dumps(info) + "\n", encoding="utf-8")
            partial.replace(ready)  # readers see the whole file or none
        self._assigned_once = True

    def _handle(self, messages: list[Any]) -> None:
        host = self._host
        assert host is not None and host.live is not None
        live = host.live
        began = time.perf_counter()
        features = host.feature_names
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
            scores = host.score([row for _, row in valid])
            for (request_id, row), (cultivar, probability) in zip(valid, scores, strict=True):
                result: dict[str, Any] = {
                    "request_id": request_id,
                    "cultivar": cultivar,
                    "model_version": live.version,
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
        "--control-topic",
        default=_env("DEMO_CONTROL_TOPIC", d.control_topic),
        help="model descriptors (DEMO_CONTROL_TOPIC)",
    )
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
        "--window-seconds",
        type=float,
        default=float(_env("DEMO_WINDOW_SECONDS", str(d.window_seconds))),
        help="scoring statistics window (DEMO_WINDOW_SECONDS)",
    )
    a(
        "--ready-file",
        type=Path,
        help="written once a model version is loaded and the request partitions assigned",
    )
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
    return ServerSettings(
        bootstrap=args.bootstrap,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        control_topic=args.control_topic,
        events_topic=args.events_topic,
        model_name=args.model_name,
        server_name=args.server_name,
        cluster=args.cluster,
        environment=args.environment,
        group_id=args.group_id,
        window_seconds=args.window_seconds,
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
    stop = stop_on_signals(log, "stopping")
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
