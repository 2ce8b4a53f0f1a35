"""Models from the control topic, in the Python serving service (demo.server) against the real
broker: the newest version at start, a replacement, a corrupt or unloadable artifact refused
while the previous version serves on, a redelivery ignored; and what the catalog makes of it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from atlas_sink.core import naming
from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import DEPLOYMENT, MODEL_VERSION, Rules
from atlas_sink.targets.local import LocalCatalog
from capture.events import ModelEvent, ModelLoaded, ModelLoadFailed
from demo import descriptor
from demo.descriptor import ModelDescriptor
from demo.publish_model import build, publish
from demo.server import ServerSettings, WineScoringServer
from local_services import harness

pytestmark = pytest.mark.integration

MODEL = "wine-classifier"


@dataclass
class Topics:
    bootstrap: str
    requests: str
    scores: str
    models: str
    events: str


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    run = uuid.uuid4().hex[:8]
    made = Topics(
        kafka_bootstrap,
        f"ct-requests.{run}",
        f"ct-scores.{run}",
        f"ct-models.{run}",
        f"ct-events.{run}",
    )
    harness.create_topics(
        kafka_bootstrap, [made.requests, made.scores, made.models, made.events], partitions=1
    )
    return made


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelDescriptor]:
    work = tmp_path_factory.mktemp("publisher")
    return {v: build(v, work) for v in ("1", "2")}


def _poll(what: str, check: Callable[[], Any], deadline: float = 60.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {deadline:g} s waiting for {what}")


class Reader:
    """Everything a topic held so far, read on demand."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = harness.topic_reader(bootstrap, [topic], prefix="ct")
        self.messages: list[Any] = []

    def read(self) -> list[Any]:
        for message in self._consumer.consume(500, timeout=0.5):
            if message.error() is None:
                self.messages.append(message)
        return self.messages

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def server(topics: Topics, tmp_path: Path) -> Iterator[Callable[[], WineScoringServer]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start() -> WineScoringServer:
        settings = ServerSettings(
            bootstrap=topics.bootstrap,
            input_topic=topics.requests,
            output_topic=topics.scores,
            control_topic=topics.models,
            events_topic=topics.events,
            model_name=MODEL,
            cluster="ct",
            group_id=f"ct-{uuid.uuid4().hex[:8]}",
            window_seconds=1.0,
        )
        running = WineScoringServer(settings)
        running.start()
        thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)
        return running

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=30)


def _events(reader: Reader) -> list[ModelEvent]:
    decoder = Decoder()
    return [decoder.decode(m.value()) for m in reader.read()]


def _request(topics: Topics, request_id: str) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": topics.bootstrap})
    features = dict.fromkeys(_feature_names(), 1.0)
    features["alcohol"] = 13.0
    body = json.dumps({"request_id": request_id, "features": features}).encode()
    producer.produce(topics.requests, body, key=request_id.encode())
    producer.flush(10)


def _feature_names() -> tuple[str, ...]:
    from demo.model import load_data

    return load_data().feature_names


def _scored_by(scores: Reader, request_id: str) -> str | None:
    for message in scores.read():
        result = json.loads(message.value())
        if result["request_id"] == request_id:
            return str(result["model_version"])
    return None


def test_models_come_from_the_control_topic_and_bad_ones_leave_the_served_one_serving(
    topics: Topics,
    versions: dict[str, ModelDescriptor],
    server: Callable[[], WineScoringServer],
    tmp_path: Path,
) -> None:
    def send(value: bytes) -> None:
        publish(topics.bootstrap, topics.models, value, MODEL)

    # Both versions were published before the server started: it serves the newest and
    # announces that one only (version 1 was history before it started).
    send(descriptor.encode(versions["1"]))
    send(descriptor.encode(versions["2"]))
    events = Reader(topics.bootstrap, topics.events)
    scores = Reader(topics.bootstrap, topics.scores)
    server()
    loads = _poll(
        "the first load", lambda: [e for e in _events(events) if isinstance(e.payload, ModelLoaded)]
    )
    assert [(e.envelope.model.version, e.payload.replaces_version) for e in loads] == [("2", None)]
    assert loads[0].envelope.model.content_hash == versions["2"].content_hash

    # Bytes altered after hashing, and bytes that hash right but are no model: both refused,
    # version 2 serves on.
    corrupt = replace(
        versions["1"],
        version="3",
        artifact_bytes=b"\x00" + (versions["1"].artifact_bytes or b"")[1:],
    )
    garbage = b"not a pickled model"
    unloadable = replace(
        versions["1"],
        version="4",
        artifact_bytes=garbage,
        content_hash=descriptor.content_hash(garbage),
    )
    send(descriptor.encode(corrupt))
    send(descriptor.encode(unloadable))
    send(b"\xc3\x01 this is not a descriptor")
    send(descriptor.encode(versions["2"]))  # a redelivery of what serves: nothing happens

    def refused() -> list[tuple[str, str]]:
        return [
            (e.envelope.model.version, e.payload.error_kind)
            for e in _events(events)
            if isinstance(e.payload, ModelLoadFailed)
        ]

    failed = _poll("two refused loads", lambda: refused() if len(refused()) >= 2 else None)
    assert [version for version, _ in failed] == ["3", "4"]
    assert failed[0][1] == "ContentHashMismatch"
    # joblib's own error on bytes that are no pickle: named, and not the hash's.
    assert failed[1][1] not in ("ContentHashMismatch", "")
    _request(topics, "after-the-refusals")
    assert _poll("a score", lambda: _scored_by(scores, "after-the-refusals")) == "2"

    # Version 1 published again replaces version 2: models may go back, and it is a load.
    send(descriptor.encode(replace(versions["1"], version="5")))
    replaced = _poll(
        "the replacement",
        lambda: [
            e
            for e in _events(events)
            if isinstance(e.payload, ModelLoaded) and e.envelope.model.version == "5"
        ],
    )
    assert replaced[0].payload.replaces_version == "2"
    _request(topics, "after-the-replacement")
    assert _poll("a score", lambda: _scored_by(scores, "after-the-replacement")) == "5"
    loads = [e for e in _events(events) if isinstance(e.payload, ModelLoaded)]
    assert [e.envelope.model.version for e in loads] == ["2", "5"]

    # The catalog: 3 and 4 FAILED, the deployment serves 5, which replaced 2.
    with LocalCatalog(tmp_path / "catalog.sqlite") as catalog:
        catalog.ensure_types()

        def later() -> datetime:
            return datetime.now(UTC) + timedelta(minutes=1)

        pipeline = Pipeline(catalog, Decoder(), Rules(), clock=later)
        raw = [RawMessage(m.topic(), m.partition(), m.offset(), m.value()) for m in events.read()]
        assert not pipeline.process(raw).dead
        status = {
            v: catalog.entity(MODEL_VERSION, naming.model_version(MODEL, v, "ct"))
            for v in ("2", "3", "4", "5")
        }
        assert {v: e.attributes["status"] for v, e in status.items() if e} == {
            "2": "REPLACED",
            "3": "FAILED",
            "4": "FAILED",
            "5": "LOADED",
        }
        deployment = catalog.entity(DEPLOYMENT, naming.deployment("wine-scorer", MODEL, "ct"))
        assert deployment is not None
        assert (deployment.attributes["status"], deployment.attributes["currentVersion"]) == (
            "IN_SERVICE",
            "5",
        )
    events.close()
    scores.close()
