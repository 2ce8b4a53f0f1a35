"""What every Kafka client of the sink shares: consumer settings, the errors that stop it, and
the plain form of a consumed message."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from atlas_sink import __version__
from atlas_sink.core.pipeline import RawMessage
from atlas_sink.runtime.config import SinkConfig
from atlas_sink.runtime.logs import throttled

# A consumer loop or a snapshot read checks for a stop request (and the live loop beats its
# heartbeat) at least this often.
SLICE_SECONDS = 0.2

# What librdkafka reports (its log lines and error callbacks), once per kind per 30 s.
kafka_log = throttled("servemeta.sink.kafka")

# Commit errors that mean the partitions moved to another member: the batch is theirs now.
LOST_GENERATION = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._STATE,
}
FATAL_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._SSL,
}
# Of those, what the error callback may report: refused credentials. (An _SSL error there may
# be a connection cut mid-handshake, which librdkafka's reconnect handles.)
REFUSED_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}


class SinkFatal(Exception):
    """The sink must stop: retrying cannot help. ``exit_code`` is the process's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def topic_partitions(kafka: Consumer, topic: str, timeout: float = 10.0) -> list[int] | str:
    """The topic's partition ids, or why there are none (it does not exist, or cannot be
    described). The consumer never creates a topic by asking (allow.auto.create.topics)."""
    try:
        info = kafka.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        return str(exc.args[0] if exc.args else exc)
    if info is None:
        return "no metadata"
    if info.error is not None or not info.partitions:
        return str(info.error or "no partitions")
    return sorted(info.partitions)


def consumer_config(config: SinkConfig, group_id: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **config.kafka_client_config(),
        "group.id": group_id,
        "client.id": f"{group_id}-{__version__}",
        # Offsets are committed by hand, after the target and the DLQ acknowledged.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(config.session_timeout_seconds * 1000),
        # Events of aborted transactions never reach the catalog.
        "isolation.level": "read_committed",
        "log.connection.close": False,
        "error_cb": client_error,
        # librdkafka's own log lines go through logging, so they come out as JSON too.
        "logger": kafka_log,
        # Prefetch a few seconds of work, not librdkafka's default 64 MiB: memory must not
        # grow with the backlog, and the sink is never faster than this allows.
        "queued.max.messages.kbytes": 2048,
        "fetch.max.bytes": 1024 * 1024,
    }
    conf.update(extra)
    return conf


def client_error(err: KafkaError) -> None:
    # librdkafka reconnects by itself; a fatal error surfaces again from consume().
    level = logging.ERROR if err.fatal() else logging.WARNING
    kafka_log.log(level, "Kafka client error: %s", err.str(), extra={"code": err.name()})


def raw_message(msg: Message) -> RawMessage:
    ts_type, ts = msg.timestamp()
    return RawMessage(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        value=msg.value(),
        key=msg.key(),
        timestamp_ms=ts if ts_type else None,
    )


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """What to commit after ``messages``: per partition, the offset after the last one."""
    highest: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic() or "", m.partition() or 0)
        highest[key] = max(highest.get(key, -1), m.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


def fatal_message(err: KafkaError) -> str:
    return (
        f"Kafka refused the sink: {err.name()}: {err.str()}. Check KAFKA_SECURITY_PROTOCOL, "
        "KAFKA_SASL_* / KAFKA_SSL_* and the ACLs for the topics and the consumer group, then "
        "restart; nothing was committed."
    )
