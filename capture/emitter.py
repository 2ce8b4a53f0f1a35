"""The emitter a serving job embeds: lifecycle calls and scoring recorders in, Kafka out.

The serving path only validates arguments and appends to a bounded in-memory queue; encoding,
schema registration and producing happen on one background thread. When the queue is full,
the broker is gone past the delivery timeout or the emitter is closed, events are dropped and
counted by reason (``stats()``, the Prometheus collector, and a warning at most once per
interval): never silently, and never by blocking or raising into the caller.

With the optional disk spool (``EmitterConfig.spool_dir``, capture/spool.py) the events that
the broker cannot take go to disk instead of being dropped, and are sent from there, oldest
first, once it can: see ``_spool_pass``.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

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
from capture.spool import Frame, Spool
from capture.stats import ScoringRecorder
from capture.typecheck import EventValueError, check_fields

log = logging.getLogger("servemeta.capture")

DROP_LOG_INTERVAL_SECONDS = 10.0
# librdkafka reports every reconnect attempt (several a second when the broker refuses the
# credentials): each kind of report is logged at most once per this many seconds.
CLIENT_LOG_INTERVAL_SECONDS = 30.0
# Delivery errors of messages the emitter itself withdrew from librdkafka (``purge``).
_PURGED = frozenset({"_PURGE_QUEUE", "_PURGE_INFLIGHT"})


class KafkaProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` the emitter uses."""

    def produce(self, topic: str, value: bytes, key: bytes) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


class _SpoolingProducer(KafkaProducer, Protocol):
    """What the spool needs besides: a callback per message, and taking messages back."""

    def produce(
        self, topic: str, value: bytes, key: bytes, on_delivery: Callable[[Any, Any], None] = ...
    ) -> None: ...
    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...


@dataclass(frozen=True)
class EmitterStats:
    enqueued: int
    delivered: int
    dropped: dict[str, int]
    queue_depth: int
    in_flight: int
    # With the spool on: events on disk not yet acknowledged, the bytes the spool takes, and
    # the events an earlier instance left there (this one sends them, and counts them in
    # ``delivered`` once acknowledged).
    spooled: int = 0
    spool_bytes: int = 0
    recovered: int = 0

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
    # With the spool on, every delivery is reported, so these count them directly.
    succeeded: int = 0
    spool_delivered: int = 0


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
        # Opened first: a spool directory in use fails the constructor before anything starts.
        self._spool = Spool(config.spool_dir, config.spool_max_bytes) if config.spool_dir else None
        # True while events go through the spool: from the first event the broker could not
        # take until the spool is empty again (at start, while an earlier run's events wait).
        self._spooling = self._spool is not None and not self._spool.empty
        self._handed_index = itertools.count()
        self._purged: list[tuple[int, bytes, bytes]] = []
        self._held: list[Frame] = []  # read from the spool, not yet taken by librdkafka
        self._spool_in_kafka = 0
        self._spool_window = min(max(config.queue_size, 100), 10_000)
        self._last_progress = time.monotonic()
        try:
            # Not ``producer or ...``: a producer with nothing in flight has len() 0: falsy.
            self._kafka: KafkaProducer = (
                producer if producer is not None else _confluent_producer(config, self._on_delivery)
            )
        except BaseException:
            if self._spool is not None:
                self._spool.close()
            raise
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
            previous_schema=previous,
        )
        return self._emit(model, payload)

    def scoring_recorder(
        self, model: ModelIdentity, window_seconds: float | None = None
    ) -> ScoringRecorder:
        """A recorder whose windows this emitter closes and sends as ScoringStats."""
        _require(model, ModelIdentity, "model")
        if window_seconds is not None and not (
            isinstance(window_seconds, int | float)
            and not isinstance(window_seconds, bool)
            and 0 < window_seconds < math.inf
        ):
            raise EventValueError(
                f"window_seconds: expected a positive, finite number of seconds or None, got "
                f"{type(window_seconds).__name__} {window_seconds!r:.80}"
            )
        recorder = ScoringRecorder(window_seconds or self.config.window_seconds, now=self._clock())
        with self._recorders_lock:
            self._recorders.append((model, recorder))
        return recorder

    def stats(self) -> EmitterStats:
        with self._drop_lock:
            dropped = dict(self._counters.dropped)
        counters = self._counters
        spool = self._spool
        if spool is None:
            delivered = max(counters.handed - counters.failed - len(self._kafka), 0)
        else:
            delivered = counters.succeeded + counters.spool_delivered
        return EmitterStats(
            enqueued=counters.enqueued,
            delivered=delivered,
            dropped=dropped,
            queue_depth=len(self._queue),
            in_flight=len(self._kafka),
            spooled=spool.pending if spool else 0,
            spool_bytes=spool.size_bytes if spool else 0,
            recovered=spool.recovered if spool else 0,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is handed to Kafka and acknowledged or dropped
        (with the spool on: until the spool is empty too)."""
        deadline = time.monotonic() + (timeout or self.config.close_timeout_seconds)
        self._wake.set()
        if self._spool is not None:
            return self._wait_idle(deadline)
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
        # With the spool, what is left goes to disk below: worth a second of waiting.
        self._thread.join(max(deadline - time.monotonic(), 1.0 if self._spool else 0.1))
        if self._spool is not None and not self._thread.is_alive():
            self._close_spool(deadline)
            self._log_drops(force=True)
            return
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
        if self._spool is not None:
            self._spool_pass(header)
            return
        if header is None:
            return
        queue = self._queue
        topic = self.config.topic
        produce = self._kafka.produce
        while queue:
            encoded = self._encode_first(header)
            if encoded is None:
                continue
            key, value = encoded
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

    # -- the disk spool ----------------------------------------------------------------------
    #
    # Order is what matters: the sink takes an event whose sequence is at or below the
    # watermark of its producer and model for one already applied, so no event may reach
    # Kafka after a newer one of this producer. Hence: librdkafka never times a message out
    # (config.py); when the broker makes no progress for delivery_timeout_seconds, or
    # librdkafka's queue is full, everything librdkafka holds is withdrawn (``purge``) and
    # spooled in the order it was produced, and from then on every event goes through the
    # spool, sent oldest first, until the spool is empty again. All of this, and every
    # librdkafka callback while the spool is on, runs on the worker thread (or in close(),
    # after the worker stopped): the spool is not shared between threads.

    def _spool_pass(self, header: bytes | None) -> None:
        spool = self._spool
        assert spool is not None
        if not self._spooling:
            now = time.monotonic()
            if len(self._kafka) == 0:
                self._last_progress = now
            elif now - self._last_progress >= self.config.delivery_timeout_seconds:
                self._enter_spool(
                    f"no delivery acknowledged for {self.config.delivery_timeout_seconds:g} s"
                )
        if not self._spooling and header is not None:
            self._produce_direct(header)
        if self._spooling:
            if header is not None:
                self._queue_to_spool(header)
            self._drain_spool()
            if self._spooling:
                # Acknowledgements to wait for: serve them here, and come straight back.
                self._kafka.poll(0.05)
                self._wake.set()

    def _encode_first(self, header: bytes) -> tuple[bytes, bytes] | None:
        """The queue's first event as (key, framed value); one that cannot be encoded is
        taken off the queue, counted and logged, and None comes back."""
        key, envelope, payload = self._queue[0]
        try:
            return key, header + self._encoder.encode(envelope, payload)
        except Exception as exc:
            self._queue.popleft()
            self._drop("encoding")
            log.error("event could not be encoded: %s", exc)
            return None

    def _produce_direct(self, header: bytes) -> None:
        queue = self._queue
        kafka = cast(_SpoolingProducer, self._kafka)
        topic = self.config.topic
        while queue:
            encoded = self._encode_first(header)
            if encoded is None:
                continue
            key, value = encoded
            # Each message carries its place in the order, should it have to be spooled.
            report = functools.partial(self._on_direct_delivery, next(self._handed_index))
            try:
                kafka.produce(topic, value=value, key=key, on_delivery=report)
                kafka.poll(0)
            except BufferError:
                self._enter_spool("librdkafka's queue is full")
                return
            except Exception as exc:
                queue.popleft()
                self._drop("produce_error")
                log.error("event could not be produced: %s", exc)
                continue
            queue.popleft()
            self._counters.handed += 1

    def _enter_spool(self, reason: str) -> None:
        """Withdraw everything from librdkafka into the spool, in the order it was produced."""
        spool = self._spool
        assert spool is not None
        kafka = cast(_SpoolingProducer, self._kafka)
        kafka.purge(True, True)
        # The purge reports every message at once; serving them fills self._purged.
        deadline = time.monotonic() + 5.0
        kafka.poll(0)
        while len(kafka) and time.monotonic() < deadline:
            kafka.poll(0.01)
        purged, self._purged = sorted(self._purged, key=lambda p: p[0]), []
        for _, key, value in purged:
            self._to_spool(key, value)
        spool.sync()
        self._spooling = True
        log.warning(
            "the broker is not taking events (%s): they go to the disk spool until it does",
            reason,
            extra={"moved_to_spool": len(purged), "spool_dir": str(spool.directory)},
        )

    def _to_spool(self, key: bytes, value: bytes) -> None:
        assert self._spool is not None
        result = self._spool.append(key, value)
        if result != "ok":
            self._drop("spool_full" if result == "full" else "spool_error")

    def _queue_to_spool(self, header: bytes) -> None:
        assert self._spool is not None
        queue = self._queue
        # What was queued when this pass began: a steady stream cannot keep the worker here.
        for _ in range(len(queue)):
            encoded = self._encode_first(header)
            if encoded is None:
                continue
            queue.popleft()
            self._to_spool(*encoded)
        self._spool.sync()

    def _drain_spool(self) -> None:
        spool = self._spool
        assert spool is not None
        kafka = cast(_SpoolingProducer, self._kafka)
        topic = self.config.topic
        while self._spool_in_kafka < self._spool_window and (self._held or spool.unsent):
            frames = self._held or spool.read(min(self._spool_window - self._spool_in_kafka, 500))
            self._held = []
            for i, frame in enumerate(frames):
                report = functools.partial(self._on_spool_delivery, frame.token)
                try:
                    kafka.produce(topic, value=frame.value, key=frame.key, on_delivery=report)
                except BufferError:
                    self._held = frames[i:]
                    return
                except Exception as exc:  # refused for what it is: it can never be sent
                    self._drop("produce_error")
                    log.error("spooled event could not be produced: %s", exc)
                    spool.ack(frame.token)
                    continue
                self._spool_in_kafka += 1
                kafka.poll(0)
        if spool.empty and not self._held:
            self._spooling = False
            self._last_progress = time.monotonic()
            log.info("the disk spool is empty: events are sent directly again")

    def _on_direct_delivery(self, index: int, err: Any, msg: Any) -> None:
        if err is None:
            self._counters.succeeded += 1
            self._last_progress = time.monotonic()
        elif err.name() in _PURGED:
            self._purged.append((index, msg.key() or b"", msg.value() or b""))
        else:
            self._counters.failed += 1
            self._drop(f"delivery:{err.name()}")

    def _on_spool_delivery(self, token: int, err: Any, _msg: Any) -> None:
        assert self._spool is not None
        self._spool_in_kafka -= 1
        if err is None:
            self._counters.spool_delivered += 1
            self._last_progress = time.monotonic()
            self._spool.ack(token)
        elif err.name() in _PURGED:
            return  # withdrawn at close: it stays on disk for the next instance
        else:
            self._drop(f"delivery:{err.name()}")
            self._spool.ack(token)

    def _wait_idle(self, deadline: float) -> bool:
        """flush() with the spool on: the worker serves librdkafka's callbacks, so wait for
        it to have sent everything, rather than flush librdkafka from this thread."""
        assert self._spool is not None
        spool = self._spool

        def idle() -> bool:
            return not self._queue and len(self._kafka) == 0 and spool.empty

        with self._idle:
            while not idle() and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, self.config.tick_seconds))
        return idle()

    def _close_spool(self, deadline: float) -> None:
        """At close, the worker stopped: whatever is not acknowledged ends up on disk."""
        spool = self._spool
        assert spool is not None
        kafka = cast(_SpoolingProducer, self._kafka)
        header = self._header
        if self._queue and header is None:
            # Without the registry's schema id these cannot be encoded, so not spooled.
            self._drop("close_timeout", len(self._queue))
            self._queue.clear()
        if not self._spooling and (len(kafka) or self._queue):
            self._enter_spool("closing with events not yet acknowledged")
        if self._queue and header is not None:
            self._queue_to_spool(header)
        if self._spool_in_kafka:
            # Spooled frames on their way: a last chance to be acknowledged (and deleted);
            # the rest are withdrawn, and stay on disk for the next start.
            kafka.flush(max(deadline - time.monotonic(), 0.0))
            kafka.purge(True, True)
            kafka.poll(0)
        spool.close()
        if spool.pending:
            log.warning(
                "closing with %d events in the disk spool; an emitter started with the same "
                "spool_dir sends them first",
                spool.pending,
                extra={"spool_dir": str(spool.directory)},
            )

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


class _Throttle(logging.Filter):
    """At most one record per kind (logger and message, digits ignored) per ``interval``; the
    next one that passes carries ``suppressed``, the count dropped meanwhile."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _DIGITS.sub("#", f"{record.name}|{record.getMessage()}")[:300]
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._dropped[kind] = self._dropped.get(kind, 0) + 1
                return False
            if len(self._last) >= 1000:  # bounded, whatever the variety of messages
                self._last.clear()
            self._last[kind] = now
            dropped = self._dropped.pop(kind, 0)
        if dropped:
            record.suppressed = dropped
        return True


_DIGITS = re.compile(r"\d+")


def _client_logger() -> logging.Logger:
    logger = logging.getLogger("servemeta.capture.librdkafka")
    if not any(isinstance(f, _Throttle) for f in logger.filters):
        logger.addFilter(_Throttle(CLIENT_LOG_INTERVAL_SECONDS))
    return logger


def _confluent_producer(
    config: EmitterConfig, on_delivery: Callable[[Any, Any], None]
) -> KafkaProducer:
    from confluent_kafka import Producer as ConfluentProducer

    client_log = _client_logger()

    def on_error(err: Any) -> None:
        client_log.warning("Kafka client error: %s", err)

    conf = config.producer_config()
    conf["error_cb"] = on_error
    conf["on_delivery"] = on_delivery
    # Without the spool, delivery reports come for failures only (a callback per success
    # costs a microsecond); the spool needs every one, to know what it may delete.
    conf["delivery.report.only.error"] = config.spool_dir is None
    # librdkafka's own log lines go through Python logging, not straight to stderr.
    conf["logger"] = client_log
    return ConfluentProducer(conf)
