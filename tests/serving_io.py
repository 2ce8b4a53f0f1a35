"""What the serving tests (the Python server, the Flink job) do on the real broker: read back
what topics hold, send scoring requests, and turn lifecycle events into a catalog."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import Rules
from atlas_sink.targets.local import LocalCatalog
from capture.events import ModelEvent
from local_services import harness

P = TypeVar("P")


class Reader:
    """Everything a topic held so far, read on demand."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = harness.topic_reader(bootstrap, [topic], prefix="serving-test")
        self.messages: list[Any] = []

    def read(self) -> list[Any]:
        for message in self._consumer.consume(500, timeout=0.5):
            if message.error() is None:
                self.messages.append(message)
        return self.messages

    def events(self) -> list[ModelEvent]:
        decoder = Decoder()
        return [decoder.decode(m.value()) for m in self.read()]

    def payloads(self, kind: type[P]) -> list[tuple[str, P]]:
        """(model version, payload) of every event of one kind, in the order they came."""
        return [
            (e.envelope.model.version, e.payload)
            for e in self.events()
            if isinstance(e.payload, kind)
        ]

    def results(self) -> dict[str, dict[str, Any]]:
        """Scores by request id."""
        out = {}
        for message in self.read():
            result = json.loads(message.value())
            if "request_id" in result:
                out[result["request_id"]] = result
        return out

    def close(self) -> None:
        self._consumer.close()


@cache
def feature_names() -> tuple[str, ...]:
    from demo.model import load_data

    return load_data().feature_names


def send_requests(bootstrap: str, topic: str, request_ids: Sequence[str]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    features = dict.fromkeys(feature_names(), 1.0)
    features["alcohol"] = 13.0
    for request_id in request_ids:
        body = json.dumps({"request_id": request_id, "features": features}).encode()
        producer.produce(topic, body, key=request_id.encode())
    assert producer.flush(10) == 0, "requests not delivered"


def into_catalog(path: Path, events: Reader) -> LocalCatalog:
    """A fresh embedded catalog holding every event the topic held, through the sink's
    pipeline; nothing may be dead-lettered."""
    catalog = LocalCatalog(path)
    catalog.ensure_types()

    def later() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=1)

    pipeline = Pipeline(catalog, Decoder(), Rules(), clock=later)
    raw = [RawMessage(m.topic(), m.partition(), m.offset(), m.value()) for m in events.read()]
    outcome = pipeline.process(raw)
    assert not outcome.dead, outcome.dead
    return catalog


def scored(bootstrap: str, requests: str, scores: Reader, request_id: str) -> dict[str, Any]:
    """Send one request and wait for its score."""
    send_requests(bootstrap, requests, [request_id])
    return harness.wait_for(
        f"the score of {request_id}", lambda: scores.results().get(request_id, {}), 60
    )
