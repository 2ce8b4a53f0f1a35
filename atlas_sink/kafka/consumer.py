"""The long-lived loop that owns Kafka and offsets: consume a batch, run it through the
pipeline, store its dead letters, and only then commit its offsets.

Guarantees, and what gives them:
- Nothing is committed before the target acknowledged the batch and the DLQ acknowledged
  its dead letters; a crash anywhere before the commit means the batch is read again, and
  the pipeline recognises what it had already applied (entity watermarks), so nothing
  counts twice.
- When the target is down, every assigned partition is paused and the one batch in hand
  is retried with exponential backoff; the consumer keeps polling (so it stays in the group)
  but fetches nothing, so memory stays at one batch whatever the backlog.
- Refused credentials stop the sink (``SinkFatal``) instead of dead-lettering every event;
  so does a broker refusing the sink's own SASL credentials, which librdkafka reports only
  to the error callback (and would otherwise retry several times a second, forever).
- On a revocation the batch in hand is finished and committed if the target takes it at
  once, and dropped uncommitted otherwise: the partition's next owner reads it again.

Bounded reads (``snapshot``) and ``replay`` live beside this module; what every Kafka client
shares in ``client``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from atlas_sink.core.pipeline import BatchOutcome, Counts, DeadLetter, Pipeline, RawMessage
from atlas_sink.core.target import TargetAuthError, TargetUnavailable
from atlas_sink.kafka.client import (
    FATAL_CODES,
    LOST_GENERATION,
    REFUSED_CODES,
    SLICE_SECONDS,
    SinkFatal,
    client_error,
    consumer_config,
    fatal_message,
    next_offsets,
    raw_message,
    topic_partitions,
)
from atlas_sink.kafka.dlq import DeadLetterProducer, header_list, position
from atlas_sink.runtime.config import SinkConfig
from atlas_sink.runtime.drop_log import DropLog
from atlas_sink.runtime.exit_codes import EXIT_KAFKA, EXIT_TARGET_AUTH
from atlas_sink.runtime.logs import throttled
from atlas_sink.runtime.metrics import Health, SinkMetrics
from atlas_sink.runtime.retry import backoff_seconds

log = logging.getLogger("servemeta.sink.consumer")
waiting_log = throttled("servemeta.sink.consumer.topics", 15.0)

LAG_INTERVAL_SECONDS = 2.0


@dataclass
class Totals(Counts):
    """What the live loop did since it started."""

    batches: int = 0
    committed: int = 0
    dropped_uncommitted: int = 0

    def add(self, outcome: BatchOutcome) -> None:
        super().add(outcome)
        self.batches += 1


@dataclass
class _InHand:
    """The one batch the loop holds: read, maybe written, not yet committed."""

    messages: list[Message]
    outcome: BatchOutcome | None = None
    undelivered: list[DeadLetter] = field(default_factory=list)
    attempts: int = 0
    retry_at: float = 0.0

    @property
    def raw(self) -> list[RawMessage]:
        return [raw_message(m) for m in self.messages]


class SinkConsumer:
    """``start()``, then ``step()`` until stopped (``run()`` does both), then ``close()``.

    ``make_pipeline`` builds a pipeline with empty caches; a new one is made at every
    assignment, because while a partition was owned by another member its entities changed
    in the target, and cached states from before would undo those changes (lost totals).
    """

    def __init__(
        self,
        config: SinkConfig,
        make_pipeline: Callable[[], Pipeline],
        *,
        metrics: SinkMetrics | None = None,
        health: Health | None = None,
        stop: threading.Event | None = None,
        consumer: Consumer | None = None,
        dlq: DeadLetterProducer | None = None,
    ) -> None:
        self.config = config
        self._make_pipeline = make_pipeline
        self.pipeline = make_pipeline()
        self.metrics = metrics or SinkMetrics()
        self.health = health or Health()
        self.stop = stop or threading.Event()
        self.totals = Totals()
        self._refused: KafkaError | None = None
        self._consumer = consumer or Consumer(
            consumer_config(config, config.group_id, error_cb=self._client_error)
        )
        self._dlq = dlq or DeadLetterProducer(config, stop=self.stop)
        self._in_hand: _InHand | None = None
        self._collecting: list[Message] = []
        self._paused = False
        self._closing = False
        self._closed = False
        self._last_lag = 0.0
        self._warned: set[str] = set()
        self._drops = DropLog(log, config.drop_log_seconds)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe once every topic exists; raises SinkFatal (exit 4) naming the topics
        still missing after ``topic_wait_seconds``, or returns early when stopped."""
        self._wait_for_topics()
        self._consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming",
            extra={
                "topics": list(self.config.topics),
                "group_id": self.config.group_id,
                "target": self.pipeline.target.name,
                "dlq_topic": self.config.dlq_topic,
            },
        )

    def _wait_for_topics(self) -> None:
        # A sink started with its producers may come up before their topics; a misspelt
        # topic, though, would leave it consuming nothing forever.
        wait = self.config.topic_wait_seconds
        deadline = time.monotonic() + wait
        while True:
            missing = {
                topic: why
                for topic in self.config.topics
                if isinstance(why := topic_partitions(self._consumer, topic, timeout=2.0), str)
            }
            if not missing:
                return
            # Refused credentials also leave topics undescribed: say so at once (the error
            # callback is served by poll), not after the wait.
            self._consumer.poll(0)
            self._stop_if_refused()
            if time.monotonic() >= deadline:
                raise SinkFatal(
                    f"topics {sorted(missing)} do not exist or cannot be described after "
                    f"{wait:g} s ({'; '.join(f'{t}: {w}' for t, w in sorted(missing.items()))})"
                    ": create them, correct SINK_TOPICS, or give them longer with "
                    "SINK_TOPIC_WAIT_SECONDS",
                    EXIT_KAFKA,
                )
            waiting_log.warning(
                "waiting for topics to exist",
                extra={
                    "missing": sorted(missing),
                    "seconds_left": round(deadline - time.monotonic()),
                },
            )
            # Alive while it waits (liveness), not ready (no partitions assigned).
            self.health.beat()
            if self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return

    def run(self) -> Totals:
        """Until ``stop`` is set or a ``SinkFatal``; the consumer is closed either way."""
        self.start()
        try:
            while not self.stop.is_set():
                self.step()
            self._finish_in_hand()
        finally:
            self.close()
        return self.totals

    def close(self) -> None:
        """Leave the group. Nothing unprocessed is committed: the batch in hand is dropped."""
        if self._closed:
            return
        self._closing = True
        self.health.set_stopping()
        if self._in_hand is not None or self._collecting:
            self._drop_in_hand("closing")
        self._dlq.close(timeout=2.0)
        self._consumer.close()
        self._drops.flush()
        self._closed = True
        log.info("consumer closed", extra={"totals": self.totals.__dict__})

    # -- one turn of the loop -------------------------------------------------------------

    def step(self) -> None:
        """Collect and handle one batch, or wait out (part of) a backoff."""
        self._stop_if_refused()
        self.health.beat()
        in_hand = self._in_hand
        if in_hand is not None:
            wait = in_hand.retry_at - time.monotonic()
            if wait > 0:
                self._poll_paused(min(wait, SLICE_SECONDS))
            else:
                self._advance(in_hand)
        else:
            batch = self._collect()
            if batch:
                self._in_hand = _InHand(batch)
                self._advance(self._in_hand)
        self._update_lag()

    def _collect(self) -> list[Message]:
        """Up to batch_max_messages, within batch_max_wait_seconds (or until stopped)."""
        limit = self.config.batch_max_messages
        deadline = time.monotonic() + self.config.batch_max_wait_seconds
        self._collecting = []
        while len(self._collecting) < limit and not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = self._consumer.consume(
                limit - len(self._collecting), timeout=min(remaining, SLICE_SECONDS)
            )
            self.health.beat()
            self._stop_if_refused()
            for msg in messages:
                if msg.error() is None:
                    self._collecting.append(msg)
                else:
                    self._message_error(msg)
        # A revocation during consume() may have handled (and emptied) what was collected.
        batch, self._collecting = self._collecting, []
        return batch

    def _advance(self, in_hand: _InHand) -> None:
        """Take the batch as far as it goes: write, dead letters, commit."""
        try:
            if in_hand.outcome is None:
                outcome = self.pipeline.process(in_hand.raw)
                in_hand.outcome = outcome
                in_hand.undelivered = list(outcome.dead)
                self.metrics.record_batch(outcome)
                self.totals.add(outcome)
                self._drops.record(outcome.dropped_by_reason(), outcome.drop_examples())
            if in_hand.undelivered:
                headers = {_position(m): header_list(m.headers()) for m in in_hand.messages}
                in_hand.undelivered = self._dlq.send(
                    in_hand.undelivered, lambda d: headers.get(position(d), [])
                )
                if in_hand.undelivered:
                    raise _Retry("dlq", f"{len(in_hand.undelivered)} dead letters not stored")
            self._commit(next_offsets(in_hand.messages))
        except TargetAuthError as exc:
            raise SinkFatal(
                f"the target {self.pipeline.target.name} refused the sink's credentials: {exc}. "
                "Fix ATLAS_USERNAME / ATLAS_PASSWORD (or the target's access rules) and restart; "
                "nothing was committed, so no event is lost.",
                EXIT_TARGET_AUTH,
            ) from None
        except TargetUnavailable as exc:
            self._back_off(in_hand, "target", str(exc))
            return
        except _Retry as exc:
            self._back_off(in_hand, exc.stage, exc.detail)
            return
        except _LostPartitions as exc:
            log.warning(
                "commit refused: the partitions moved to another member, which reads the "
                "batch again (its events are recognised as already applied)",
                extra={"error": str(exc), "messages": len(in_hand.messages)},
            )
            self.totals.dropped_uncommitted += len(in_hand.messages)
        else:
            self.totals.committed += len(in_hand.messages)
        self._in_hand = None
        if self._paused:
            self._resume()

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() in LOST_GENERATION:
                raise _LostPartitions(str(exc)) from None
            if err is not None and err.code() in FATAL_CODES:
                raise SinkFatal(fatal_message(err), EXIT_KAFKA) from None
            raise _Retry("commit", str(exc)) from None
        for tp in results or []:
            if tp.error is not None:
                if tp.error.code() in LOST_GENERATION:
                    raise _LostPartitions(tp.error.str())
                raise _Retry("commit", f"{tp.topic}[{tp.partition}]: {tp.error.str()}")
        self.metrics.commits.inc()

    # -- backoff --------------------------------------------------------------------------

    def _back_off(self, in_hand: _InHand, stage: str, detail: str) -> None:
        wait = backoff_seconds(in_hand.attempts, self.config.retry_max_seconds)
        in_hand.attempts += 1
        in_hand.retry_at = time.monotonic() + wait
        self.metrics.target_failures.labels(stage).inc()
        self.health.set_backoff(f"{stage}: {detail}")
        if not self._paused:
            assignment = self._consumer.assignment()
            self._consumer.pause(assignment)
            self._paused = True
            self.metrics.paused.set(1)
        log.warning(
            "batch not done, partitions paused; retrying",
            extra={
                "stage": stage,
                "error": detail,
                "attempt": in_hand.attempts,
                "retry_in_seconds": round(wait, 2),
                "messages": len(in_hand.messages),
            },
        )

    def _resume(self) -> None:
        self._consumer.resume(self._consumer.assignment())
        self._paused = False
        self.metrics.paused.set(0)
        self.health.set_backoff(None)
        log.info("target back; partitions resumed")

    def _poll_paused(self, timeout: float) -> None:
        """Stay in the group while paused. Nothing should arrive; if messages fetched before
        the pause do, seek back to the first of each partition so they are read after the
        resume (one seek per partition: a later seek would skip the earlier messages)."""
        first: dict[tuple[str, int], int] = {}
        for msg in self._consumer.consume(self.config.batch_max_messages, timeout=timeout):
            if msg.error() is not None:
                self._message_error(msg)
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            first[key] = min(first.get(key, msg.offset() or 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    # -- rebalances -----------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": _names(partitions)})
        self.pipeline = self._make_pipeline()
        self.health.set_assigned(len(partitions))
        self.metrics.assigned.set(len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", extra={"partitions": _names(partitions)})
        if not self._closing:
            self._finish_in_hand()
        self._in_hand = None
        self._collecting = []
        self._paused = False
        self.metrics.paused.set(0)
        self.health.set_backoff(None)
        self.health.set_assigned(0)
        self.metrics.assigned.set(0)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group already gave them away: committing would fail, processing is wasted.
        log.warning("partitions lost", extra={"partitions": _names(partitions)})
        self._paused = False
        self.metrics.paused.set(0)
        self.health.set_backoff(None)
        self._drop_in_hand("partitions lost")
        self.health.set_assigned(0)
        self.metrics.assigned.set(0)

    def _finish_in_hand(self) -> None:
        """One attempt to complete what is in hand (no backoff); otherwise drop it."""
        if self._collecting and self._in_hand is None:
            self._in_hand = _InHand(self._collecting)
            self._collecting = []
        in_hand = self._in_hand
        if in_hand is None:
            return
        if in_hand.attempts == 0 or time.monotonic() >= in_hand.retry_at:
            self._advance(in_hand)
        if self._in_hand is not None:
            self._drop_in_hand("target not available in time")

    def _drop_in_hand(self, why: str) -> None:
        messages = (self._in_hand.messages if self._in_hand else []) + self._collecting
        if messages:
            log.warning(
                "dropping the batch in hand uncommitted; it is read again later",
                extra={"why": why, "messages": len(messages)},
            )
            self.totals.dropped_uncommitted += len(messages)
        self._in_hand = None
        self._collecting = []

    # -- errors and lag -------------------------------------------------------------------

    def _client_error(self, err: KafkaError) -> None:
        """librdkafka's error callback, served by consume() on this thread."""
        client_error(err)
        if err.code() in REFUSED_CODES and self._refused is None:
            self._refused = err

    def _stop_if_refused(self) -> None:
        if self._refused is not None:
            raise SinkFatal(fatal_message(self._refused), EXIT_KAFKA)

    def _message_error(self, msg: Message) -> None:
        err = msg.error()
        assert err is not None
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal() or err.code() in FATAL_CODES:
            raise SinkFatal(fatal_message(err), EXIT_KAFKA)
        key = f"{err.name()}:{msg.topic()}"
        if key not in self._warned:  # e.g. a topic not created yet: once, not every poll
            self._warned.add(key)
            log.warning(
                "Kafka reported an error while consuming",
                extra={"code": err.name(), "error": err.str(), "topic": msg.topic()},
            )

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_SECONDS:
            return
        self._last_lag = now
        assignment = self._consumer.assignment()
        if not assignment:
            self.metrics.set_lag({})
            return
        lags: dict[tuple[str, int], int] = {}
        for tp in self._consumer.position(assignment):
            try:
                # Cached: the values of the last fetch response, no broker round trip.
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            current = tp.offset if tp.offset >= 0 else low
            if self._in_hand is not None:  # held but not committed: still lag
                held = [m.offset() or 0 for m in self._in_hand.messages if _same(m, tp)]
                current = min([current, *held])
            lags[(tp.topic, tp.partition)] = max(high - current, 0)
        self.metrics.set_lag(lags)


class _Retry(Exception):
    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(detail)
        self.stage = stage
        self.detail = detail


class _LostPartitions(Exception):
    pass


def _position(msg: Message) -> tuple[str, int, int]:
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


def _same(msg: Message, tp: TopicPartition) -> bool:
    return msg.topic() == tp.topic and msg.partition() == tp.partition


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
