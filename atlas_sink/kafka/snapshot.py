"""Bounded reads of topics, for replay and the DLQ tools: every message from the beginning (or
from a time) up to the end offsets the topics had when the read started, under a fresh
consumer group that commits nothing."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from atlas_sink.kafka.client import (
    FATAL_CODES,
    SLICE_SECONDS,
    SinkFatal,
    consumer_config,
    fatal_message,
    topic_partitions,
)
from atlas_sink.runtime.config import SinkConfig
from atlas_sink.runtime.exit_codes import EXIT_KAFKA

log = logging.getLogger("servemeta.sink.snapshot")


def read_snapshot(
    config: SinkConfig,
    topics: Sequence[str],
    *,
    since: datetime | None = None,
    stop: threading.Event | None = None,
    purpose: str = "replay",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    consumer: Consumer | None = None,
) -> Iterator[list[Message]]:
    """Batches of every message from the beginning (or from ``since``) up to the end offsets
    the topics had when this started; a fresh group id, nothing committed."""
    group = f"{config.group_id}.{purpose}.{uuid.uuid4().hex[:12]}"
    kafka = consumer or Consumer(consumer_config(config, group, **{"enable.partition.eof": True}))
    stop = stop or threading.Event()
    try:
        starts, ends = _bounds(kafka, topics, since)
        total = sum(ends[k] - starts[k] for k in starts)
        remaining = {k for k in starts if starts[k] < ends[k]}
        kafka.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in sorted(remaining)])
        done = 0
        if progress:
            progress(done, total)
        limit = batch_size or config.batch_max_messages
        while remaining and not stop.is_set():
            batch: list[Message] = []
            for msg in kafka.consume(limit, timeout=SLICE_SECONDS):
                key = (msg.topic() or "", msg.partition() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # EOF at or past the end seen at the start: nothing older is left.
                        if (msg.offset() or 0) >= ends.get(key, 0):
                            _finish(kafka, key, remaining)
                        continue
                    if err.fatal() or err.code() in FATAL_CODES:
                        raise SinkFatal(fatal_message(err), EXIT_KAFKA)
                    log.warning("error while reading %s: %s", key, err.str())
                    continue
                offset = msg.offset() or 0
                if key not in remaining or offset >= ends[key]:
                    continue  # newer than the snapshot
                batch.append(msg)
                if offset >= ends[key] - 1:
                    _finish(kafka, key, remaining)
            if batch:
                done += len(batch)
                yield batch
                if progress:
                    progress(done, total)
    finally:
        kafka.close()


def _bounds(
    kafka: Consumer, topics: Sequence[str], since: datetime | None
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    starts: dict[tuple[str, int], int] = {}
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        info = topic_partitions(kafka, topic)
        if isinstance(info, str):
            raise SinkFatal(
                f"topic {topic!r} does not exist or cannot be described ({info}): check "
                "SINK_TOPICS / SINK_DLQ_TOPIC and the broker",
                EXIT_KAFKA,
            )
        partitions = [TopicPartition(topic, p) for p in info]
        if since is not None:
            millis = int(since.timestamp() * 1000)
            found = kafka.offsets_for_times(
                [TopicPartition(topic, p.partition, millis) for p in partitions], timeout=10
            )
            by_partition = {tp.partition: tp.offset for tp in found}
        for tp in partitions:
            low, high = kafka.get_watermark_offsets(tp, timeout=10)
            key = (topic, tp.partition)
            ends[key] = high
            start = low
            if since is not None:
                found_offset = by_partition.get(tp.partition, -1)
                # -1: no message at or after that time, so nothing to read here.
                start = high if found_offset < 0 else max(found_offset, low)
            starts[key] = start
    return starts, ends


def _finish(kafka: Consumer, key: tuple[str, int], remaining: set[tuple[str, int]]) -> None:
    if key in remaining:
        remaining.discard(key)
        kafka.pause([TopicPartition(key[0], key[1])])
