"""The emitter a serving job embeds: lifecycle calls and scoring recorders in, Kafka out.

The serving path only validates arguments and appends to a bounded in-memory queue; encoding,
schema registration and producing happen on one background thread. When the queue is full,
the broker is gone past the delivery timeout or the emitter is closed, events are dropped and
counted by reason (``stats()``, the Prometheus collector, and a warning at most once per
interval): never silently, and never by blocking or raising into the caller.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from capture import __version__
from capture.config import EmitterConfig
from capture.contract import current
from capture.dataschema import compatibility
from capture.encoding import EventEncoder, micros
from capture.events import (
    DataSchema,
    Deployment,
    ModelIdentity,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    Payload,
    Producer,
    SchemaChanged,
    SchemaSide,
    plain,
)
from capture.framing import confluent_header, register_schema, single_object_header
from capture.stats import ScoringRecorder
from capture.typecheck import EventValueError, check_fields

log = logging.getLogger("servemeta.capture")

DROP_LOG_INTERVAL_SECONDS = 10.0


class KafkaProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` the emitter uses."""

    def produce(self, topic: str, value: bytes, key: bytes) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class EmitterStats:
    enqueued: int
    delivered: int
    dropped: dict[str, int]
    queue_depth: int
    in_flight: int

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass
class _Counters:
    enqueued: int = 0
    # Handed to librdkafka; delivered = handed - failed - still in librdkafka's queue, since
    # delivery reports come for failures only (a callback per success costs a microsecond).
    handed: int = 0
    failed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Emitter:
    def __init__(
        self,
        config: EmitterConfig,
        deployment: Deployment,
        *,
        producer: KafkaProducer | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        check_fields(deployment)
        self.config = config
        self.deployment = deployment
        self._clock = clock
        self.producer_identity = Producer(
            emitter_name=config.emitter_name,
            emitter_version=__version__,
            host=socket.gethostname(),
            pid=os.getpid(),
            instance_id=uuid.uuid4().hex,
        )
        self._producer_plain = plain(self.producer_identity)
        self._deployment_plain = plain(deployment)
        self._encoder = EventEncoder(self._producer_plain, self._deployment_plain)
        self._sequence = itertools.count(1)
        # Event ids need uniqueness, not secrecy: a seeded PRNG avoids a syscall per event.
        self._ids = random.Random(os.urandom(16))
        self._models: dict[ModelIdentity, dict[str, Any]] = {}
        self._queue: deque[tuple[bytes, dict[str, Any], Payload]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._counters = _Counters()
        self._drop_lock = threading.Lock()
        self._drops_since_log: dict[str, int] = {}
        self._last_drop_log = 0.0
        self._recorders: list[tuple[ModelIdentity, ScoringRecorder]] = []
        self._recorders_lock = threading.Lock()
        self._closed = False
        self._stopping = threading.Event()
        self._kafka: KafkaProducer = producer or _confluent_producer(config, self._on_delivery)
        self._header: bytes | None = None
        self._next_registry_try = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"servemeta-emitter-{config.topic}", daemon=True
        )
        self._thread.start()
        # A weak reference, so registering for exit does not keep a dropped emitter alive.
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- the serving-path API --------------------------------------------------------------

    def model_loaded(self, model: ModelIdentity, loaded: ModelLoaded) -> str:
        """A model version became available (``loaded.replaces_version`` for a replacement)."""
        return self._emit(model, _require(loaded, ModelLoaded, "loaded"))

    def model_load_failed(
        self, model: ModelIdentity, reason: str, error_kind: str, artifact_uri: str | None = None
    ) -> str:
        return self._emit(
            model,
            ModelLoadFailed(reason=reason, error_kind=error_kind, artifact_uri=artifact_uri),
        )

    def model_unloaded(self, model: ModelIdentity, reason: str | None = None) -> str:
        return self._emit(model, ModelUnloaded(reason=reason))

    def schema_changed(
        self,
        model: ModelIdentity,
        side: SchemaSide | str,
        new_schema: DataSchema,
        previous: DataSchema | None = None,
    ) -> str:
        """The model's input or output schema changed; the verdict is computed here."""
        _require(new_schema, DataSchema, "new_schema")
        if previous is not None:
            _require(previous, DataSchema, "previous")
        payload = SchemaChanged(
            side=side,  # type: ignore[arg-type]  # a string is checked and converted
            new_fingerprint=new_schema.fingerprint,
            new_schema=new_schema,
            previous_fingerprint=previous.fingerprint if previous else None,
            compatibility=compatibility(previous, new_schema) if previous else "UNKNOWN",  # type: ignore[arg-type]
        )
        return self._emit(model, payload)

    def scoring_recorder(
        self, model: ModelIdentity, window_seconds: float | None = None
    ) -> ScoringRecorder:
        """A recorder whose windows this emitter closes and sends as ScoringStats."""
        _require(model, ModelIdentity, "model")
        recorder = ScoringRecorder(window_seconds or self.config.window_seconds, now=self._clock())
        with self._recorders_lock:
            self._recorders.append((model, recorder))
        return recorder

    def stats(self) -> EmitterStats:
        with self._drop_lock:
            dropped = dict(self._counters.dropped)
        counters = self._counters
        return EmitterStats(
            enqueued=counters.enqueued,
            delivered=max(counters.handed - counters.failed - len(self._kafka), 0),
            dropped=dropped,
            queue_depth=len(self._queue),
            in_flight=len(self._kafka),
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is handed to Kafka and acknowledged or dropped."""
        deadline = time.monotonic() + (timeout or self.config.close_timeout_seconds)
        self._wake.set()
        with self._idle:
            while self._queue and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, self.config.tick_seconds))
        remaining = max(deadline - time.monotonic(), 0.0)
        return self._kafka.flush(remaining) == 0 and not self._queue

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered (open windows included) within ``timeout``, then stop."""
        if self._closed:
            return
        timeout = timeout or self.config.close_timeout_seconds
        deadline = time.monotonic() + timeout
        self._close_windows(force=True)
        self._closed = True
        self.flush(timeout)
        self._stopping.set()
        self._wake.set()
        self._thread.join(max(deadline - time.monotonic(), 0.1))
        left = len(self._queue)
        if left:
            self._queue.clear()
            self._drop("close_timeout", left)
        unacknowledged = self._kafka.flush(max(deadline - time.monotonic(), 0.0))
        if unacknowledged:
            self._drop("close_timeout", unacknowledged)
        self._log_drops(force=True)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _emit(self, model: ModelIdentity, payload: Payload) -> str:
        _require(model, ModelIdentity, "model")
        event_id = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
        envelope = {
            "event_id": event_id,
            "event_time": micros(self._clock()),
            "producer": self._producer_plain,
            "sequence": next(self._sequence),
            "deployment": self._deployment_plain,
            "model": self._model_plain(model),
        }
        self._enqueue(model, envelope, payload)
        return event_id

    def _enqueue(self, model: ModelIdentity, envelope: dict[str, Any], payload: Payload) -> None:
        if self._closed:
            self._drop("closed")
            return
        if len(self._queue) >= self.config.queue_size:
            self._drop("queue_full")
            return
        key = f"{self.deployment.cluster}/{model.name}".encode()
        self._queue.append((key, envelope, payload))
        self._counters.enqueued += 1
        if not self._wake.is_set():
            self._wake.set()

    def _drop(self, reason: str, count: int = 1) -> None:
        with self._drop_lock:
            dropped = self._counters.dropped
            dropped[reason] = dropped.get(reason, 0) + count
            self._drops_since_log[reason] = self._drops_since_log.get(reason, 0) + count

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_drop_log < DROP_LOG_INTERVAL_SECONDS:
            return
        with self._drop_lock:
            since, self._drops_since_log = self._drops_since_log, {}
        self._last_drop_log = now
        if since:
            log.warning(
                "dropped %d events since the last report",
                sum(since.values()),
                extra={"dropped_by_reason": since, "topic": self.config.topic},
            )

    def _run(self) -> None:
        tick = self.config.tick_seconds
        while not self._stopping.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            try:
                self._close_windows(force=False)
                self._send_queued()
                self._kafka.poll(0)
                self._log_drops()
            except Exception:  # the worker must outlive any single bad event
                log.exception("emitter worker error; continuing")
            with self._idle:
                self._idle.notify_all()

    def _close_windows(self, force: bool) -> None:
        now = self._clock()
        with self._recorders_lock:
            recorders = list(self._recorders)
        for model, recorder in recorders:
            if force or recorder.due(now):
                stats = recorder.close_window(now)
                if stats is not None:
                    self._emit(model, stats)
            else:
                recorder.drain()

    def _ensure_header(self) -> bytes | None:
        if self._header is not None:
            return self._header
        if self.config.registry_url is None:
            self._header = single_object_header(current().fingerprint)
            return self._header
        if time.monotonic() < self._next_registry_try:
            return None
        try:
            self._header = confluent_header(register_schema(self.config))
        except Exception as exc:
            self._next_registry_try = time.monotonic() + 5.0
            log.warning(
                "schema registry not reachable; events wait in the queue",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
        return self._header

    def _send_queued(self) -> None:
        header = self._ensure_header()
        if header is None:
            return
        queue = self._queue
        topic = self.config.topic
        produce = self._kafka.produce
        encode = self._encoder.encode
        while queue:
            key, envelope, payload = queue[0]
            try:
                value = header + encode(envelope, payload)
            except Exception as exc:
                queue.popleft()
                self._drop("encoding")
                log.error("event could not be encoded: %s", exc)
                continue
            try:
                produce(topic, value=value, key=key)
                # Serves delivery reports, and releases the GIL once per event, so a serving
                # thread waits for at most one event's encoding, not a whole queue's.
                self._kafka.poll(0)
            except BufferError:
                # librdkafka's own queue is full (broker slow or down): keep the event queued.
                self._kafka.poll(0.05)
                return
            except Exception as exc:
                queue.popleft()
                self._drop("produce_error")
                log.error("event could not be produced: %s", exc)
                continue
            queue.popleft()
            self._counters.handed += 1

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._counters.failed += 1
            self._drop(f"delivery:{err.name()}")

    def _model_plain(self, model: ModelIdentity) -> dict[str, Any]:
        cached = self._models.get(model)
        if cached is None:
            if len(self._models) >= 1024:
                self._models.clear()
            cached = self._models[model] = plain(model)
        return cached


def _require(value: Any, cls: type, name: str) -> Any:
    if not isinstance(value, cls):
        raise EventValueError(
            f"{name}: expected a {cls.__name__}, got {type(value).__name__}; "
            f"build it with capture.events.{cls.__name__}(...)"
        )
    return value


def _close_at_exit(ref: weakref.ref[Emitter]) -> None:
    emitter = ref()
    if emitter is not None:
        emitter.close()


def _confluent_producer(
    config: EmitterConfig, on_delivery: Callable[[Any, Any], None]
) -> KafkaProducer:
    from confluent_kafka import Producer as ConfluentProducer

    def on_error(err: Any) -> None:
        log.warning("Kafka client error: %s", err)

    conf = config.producer_config()
    conf["error_cb"] = on_error
    conf["on_delivery"] = on_delivery
    conf["delivery.report.only.error"] = True
    # librdkafka's own log lines go through Python logging, not straight to stderr.
    conf["logger"] = logging.getLogger("servemeta.capture.librdkafka")
    return ConfluentProducer(conf)
