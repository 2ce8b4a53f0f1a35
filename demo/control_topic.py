"""Where a serving process starts on the model control topic.

A fresh server serves the newest version the topic holds that it can apply, and only the
descriptors published after it are news: the older ones were served before it started, and
applying them again would announce history as new loads. So a start reads the topic to its end
once, picks that descriptor, and goes on from there (the Python service) or starts its control
stream at it (the Flink job).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from demo import descriptor as descriptors
from demo.descriptor import DescriptorError
from demo.serving import artifact_verifies


@dataclass(frozen=True)
class ControlMessage:
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class Position:
    """The topic as a start found it: its messages, and each partition's end offset."""

    messages: list[ControlMessage]
    ends: dict[int, int]


def read_to_end(consumer: Any, topic: str, timeout: float = 60.0) -> Position:
    """Every message ``topic`` holds now, oldest first per partition, read with ``consumer``
    (a confluent-kafka Consumer of its own group; left assigned at the ends). Raises
    TimeoutError when the topic cannot be read to its end within ``timeout`` seconds."""
    from confluent_kafka import TopicPartition

    deadline = time.monotonic() + timeout
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise LookupError(
            f"the control topic {topic} does not exist: create it, or publish a model "
            "(python -m demo.publish_model) first"
        )
    ranges = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in sorted(metadata.partitions)
    }
    # From the low watermark: messages below it are gone (retention), never to be read.
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in ranges.items()])
    pending = {p for p, (low, high) in ranges.items() if high > low}
    messages: list[ControlMessage] = []
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the control topic {topic} was not read to its end within {timeout:g} s "
                f"(partitions {sorted(pending)} left): is the broker healthy?"
            )
        for message in consumer.consume(100, timeout=0.5):
            if message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            messages.append(ControlMessage(partition, offset, message.value()))
            if offset + 1 >= ranges[partition][1]:
                pending.discard(partition)
    return Position(messages, {p: high for p, (_low, high) in ranges.items()})


def newest_applicable(messages: Sequence[ControlMessage], model_name: str) -> ControlMessage | None:
    """The newest descriptor of ``model_name`` whose artifact hashes as it says (offsets
    order messages within a partition; a model's descriptors share one, keyed by its name).
    Undecodable, other models' and corrupt ones before it are passed over."""
    for message in sorted(messages, key=lambda m: m.offset, reverse=True):
        try:
            found = descriptors.decode(message.value)
        except DescriptorError:
            continue
        if found.name == model_name and artifact_verifies(found):
            return message
    return None
