"""The dead-letter topic: what goes in (value and key unchanged, the failure in headers), how
to list it, and how to re-drive records to their original topic once the cause is fixed.

Headers of a dead letter (UTF-8 text)::

    servemeta.dlq.reason              stable class: framing, avro, validation, target_rejected, ...
    servemeta.dlq.error               what was wrong, in words
    servemeta.dlq.original.topic      where the message was read
    servemeta.dlq.original.partition
    servemeta.dlq.original.offset
    servemeta.dlq.original.timestamp  milliseconds since the epoch, empty when unknown
    servemeta.dlq.failed.at           when the sink gave up on it (milliseconds)
    servemeta.dlq.sink                the sink's consumer group and version
    servemeta.dlq.value.dropped       only when the value itself was too large for the DLQ

Headers the original message carried are kept beside these. A re-drive sends the value, key
and original headers back (plus ``servemeta.dlq.redriven.from``); re-driving an event that was
already applied is harmless, since the sink recognises it as a duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from atlas_sink import __version__
from atlas_sink.core.pipeline import DeadLetter
from atlas_sink.kafka.snapshot import read_snapshot
from atlas_sink.runtime.config import SinkConfig
from atlas_sink.runtime.logs import throttled

log = logging.getLogger("servemeta.sink.dlq")

PREFIX = "servemeta.dlq."
REASON = PREFIX + "reason"
ERROR = PREFIX + "error"
ORIGINAL_TOPIC = PREFIX + "original.topic"
ORIGINAL_PARTITION = PREFIX + "original.partition"
ORIGINAL_OFFSET = PREFIX + "original.offset"
ORIGINAL_TIMESTAMP = PREFIX + "original.timestamp"
FAILED_AT = PREFIX + "failed.at"
SINK = PREFIX + "sink"
VALUE_DROPPED = PREFIX + "value.dropped"
REDRIVEN_FROM = PREFIX + "redriven.from"

# Error texts can quote whole schemas; a header is not the place for megabytes.
MAX_ERROR_CHARS = 4096
# Each dead letter gets this long to be acknowledged before the batch counts as not stored.
DELIVERY_TIMEOUT_SECONDS = 15.0
# Delivery failures that no retry can fix: the value goes, the failure record stays.
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD}

# What confluent_kafka's produce() takes; read headers are normalised by ``header_list``.
Headers = list[tuple[str, str | bytes | None]]
HeaderBytes = list[tuple[str, bytes]]
# What Message.headers() may return.
HeadersType = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]]
Position = tuple[str, int, int]


class DlqUnavailable(Exception):
    """Dead letters could not be stored: the batch must not be committed."""


def position(letter: DeadLetter) -> Position:
    m = letter.message
    return (m.topic, m.partition, m.offset)


def header_list(headers: HeadersType | None) -> HeaderBytes:
    """A message's headers as (name, bytes) pairs, whichever form the client gave."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def dead_letter_headers(
    letter: DeadLetter, group_id: str, original: Sequence[tuple[str, bytes]] = ()
) -> Headers:
    m = letter.message
    # The original's own headers are kept; an older failure's would contradict this one.
    headers: Headers = [(k, v) for k, v in original if not k.startswith(PREFIX)]
    headers += [
        (REASON, letter.reason.encode()),
        (ERROR, letter.detail[:MAX_ERROR_CHARS].encode()),
        (ORIGINAL_TOPIC, m.topic.encode()),
        (ORIGINAL_PARTITION, str(m.partition).encode()),
        (ORIGINAL_OFFSET, str(m.offset).encode()),
        (ORIGINAL_TIMESTAMP, b"" if m.timestamp_ms is None else str(m.timestamp_ms).encode()),
        (FAILED_AT, str(int(time.time() * 1000)).encode()),
        (SINK, f"{group_id} atlas_sink/{__version__}".encode()),
    ]
    return headers


def producer_config(config: SinkConfig) -> dict[str, Any]:
    return {
        **config.kafka_client_config(),
        "client.id": f"{config.group_id}-dlq",
        # Idempotent, acks=all: a dead letter stored once is stored, in order.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(DELIVERY_TIMEOUT_SECONDS * 1000),
        # Dead letters may be as large as the messages the broker accepted on the source topic,
        # plus headers; librdkafka's own default (1 MB) would refuse those locally.
        "message.max.bytes": 16 * 1024 * 1024,
        "log.connection.close": False,
        "logger": throttled("servemeta.sink.kafka"),
    }


class DeadLetterProducer:
    """Stores dead letters and waits until the broker acknowledged each one (or refused)."""

    def __init__(
        self,
        config: SinkConfig,
        *,
        producer: Producer | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.topic = config.dlq_topic
        self.group_id = config.group_id
        self._stop = stop or threading.Event()
        self._producer = producer or Producer(
            {**producer_config(config), "error_cb": _log_client_error}
        )

    def send(
        self,
        letters: Sequence[DeadLetter],
        headers_of: Callable[[DeadLetter], HeaderBytes] = lambda _: [],
    ) -> list[DeadLetter]:
        """Produce and flush; returns the letters not stored (empty when all were)."""
        failed: dict[Position, DeadLetter] = {}
        pending: dict[Position, DeadLetter] = {}
        errors: list[str] = []

        def produce(letter: DeadLetter, value: bytes | None, extra: HeaderBytes) -> None:
            headers = dead_letter_headers(letter, self.group_id, headers_of(letter)) + extra
            pending[position(letter)] = letter
            self._producer.produce(
                self.topic,
                value=value,
                key=letter.message.key,
                headers=headers,
                on_delivery=lambda err, _msg: delivered(letter, err),
            )

        def delivered(letter: DeadLetter, err: KafkaError | None) -> None:
            key = position(letter)
            pending.pop(key, None)
            if err is None:
                return
            if err.code() in _TOO_LARGE and letter.message.value is not None:
                size = str(len(letter.message.value)).encode()
                log.warning(
                    "dead letter too large for the DLQ; storing it without its value",
                    extra={"position": key, "size": len(letter.message.value)},
                )
                produce(letter, None, [(VALUE_DROPPED, size)])
                return
            failed[key] = letter
            errors.append(f"{err.name()}: {err.str()}")

        for letter in letters:
            try:
                produce(letter, letter.message.value, [])
            except BufferError:
                self._producer.poll(0.5)
                failed[position(letter)] = letter
            except Exception as exc:  # KafkaException: bad config or a closed producer
                failed[position(letter)] = letter
                errors.append(str(exc))
        deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS + 5
        while pending and time.monotonic() < deadline and not self._stop.is_set():
            self._producer.flush(0.2)
        failed.update(pending)
        if failed:
            log.warning(
                "dead letters not stored",
                extra={
                    "dlq_topic": self.topic,
                    "not_stored": len(failed),
                    "errors": sorted(set(errors))[:5],
                    "hint": f"check that topic {self.topic} exists and accepts writes",
                },
            )
        return list(failed.values())

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)


def _log_client_error(err: KafkaError) -> None:
    throttled("servemeta.sink.kafka").warning(
        "Kafka client error (DLQ producer): %s", err.str(), extra={"code": err.name()}
    )


# -- reading the DLQ ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqRecord:
    partition: int
    offset: int
    timestamp_ms: int | None
    reason: str
    error: str
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    size: int
    value_dropped: bool
    # The original message's own headers, without the DLQ's.
    headers: HeaderBytes = field(default_factory=list)

    @classmethod
    def from_message(cls, msg: Message) -> DlqRecord:
        raw = header_list(msg.headers())
        text = {k: v.decode("utf-8", "replace") for k, v in raw if k.startswith(PREFIX)}
        value = msg.value()
        ts_type, ts = msg.timestamp()
        return cls(
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            timestamp_ms=ts if ts_type else None,
            reason=text.get(REASON, "unknown"),
            error=text.get(ERROR, ""),
            original_topic=text.get(ORIGINAL_TOPIC) or None,
            original_partition=_int(text.get(ORIGINAL_PARTITION)),
            original_offset=_int(text.get(ORIGINAL_OFFSET)),
            original_timestamp_ms=_int(text.get(ORIGINAL_TIMESTAMP)),
            key=msg.key(),
            value=value,
            size=len(value) if value is not None else int(text.get(VALUE_DROPPED) or 0),
            value_dropped=VALUE_DROPPED in text,
            headers=[(k, v) for k, v in raw if not k.startswith(PREFIX)],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "dlq_timestamp_ms": self.timestamp_ms,
            "reason": self.reason,
            "error": self.error,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp_ms": self.original_timestamp_ms,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "size": self.size,
            "value_dropped": self.value_dropped,
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def read_dlq(
    config: SinkConfig, reason: str | None = None, stop: threading.Event | None = None
) -> Iterator[DlqRecord]:
    """Every record in the DLQ up to its end when called, oldest first per partition."""

    for batch in read_snapshot(config, [config.dlq_topic], stop=stop, purpose="dlq"):
        for msg in batch:
            record = DlqRecord.from_message(msg)
            if reason is None or record.reason == reason:
                yield record


@dataclass
class RedriveResult:
    examined: int = 0
    redriven: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "redriven": self.redriven,
            "by_topic": self.by_topic,
            "skipped": self.skipped,
        }


def redrive(
    config: SinkConfig,
    reason: str | None = None,
    *,
    dry_run: bool = False,
    producer: Producer | None = None,
    stop: threading.Event | None = None,
) -> RedriveResult:
    """Send matching dead letters back to their original topics; counts what happened.

    The DLQ itself is left as it is (it is a log of failures, not a queue): a record re-driven
    twice is an event delivered twice, which the sink drops as a duplicate.
    """
    result = RedriveResult()
    out = producer or Producer(
        {**producer_config(config), "client.id": f"{config.group_id}-redrive"}
    )
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err.name()}: {err.str()}")

    for record in read_dlq(config, reason, stop):
        result.examined += 1
        skip = _skip_reason(record, config)
        if skip is not None:
            result.skipped[skip] = result.skipped.get(skip, 0) + 1
            continue
        assert record.original_topic is not None
        result.redriven += 1
        result.by_topic[record.original_topic] = result.by_topic.get(record.original_topic, 0) + 1
        if dry_run:
            continue
        headers: Headers = [
            *record.headers,
            (REDRIVEN_FROM, f"{config.dlq_topic}/{record.partition}/{record.offset}".encode()),
        ]
        while True:
            try:
                out.produce(
                    record.original_topic,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                out.poll(0.5)
    left = out.flush(DELIVERY_TIMEOUT_SECONDS + 5)
    if failures or left:
        raise DlqUnavailable(
            f"{len(failures) + left} of {result.redriven} re-driven records were not "
            f"acknowledged ({'; '.join(sorted(set(failures))[:3]) or 'timed out'}); the ones "
            "that were are delivered. Run the re-drive again once the cause is fixed: "
            "duplicates are dropped by the sink."
        )
    return result


def _skip_reason(record: DlqRecord, config: SinkConfig) -> str | None:
    if record.value_dropped or record.value is None:
        return "value_not_kept"
    if not record.original_topic:
        return "no_original_topic"
    if record.original_topic == config.dlq_topic:
        return "original_is_dlq"
    return None


def summarise(records: Sequence[DlqRecord]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.reason] = counts.get(record.reason, 0) + 1
    return dict(sorted(counts.items()))
