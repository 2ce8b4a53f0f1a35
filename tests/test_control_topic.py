"""Models from the control topic, in the Python serving service (demo.server) against the real
broker: the newest version at start, a replacement, a corrupt or unloadable artifact refused
while the previous version serves on, a redelivery ignored; and what the catalog makes of it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from atlas_sink.core import naming
from atlas_sink.core.translate import DEPLOYMENT, MODEL_VERSION
from capture.events import ModelLoaded, ModelLoadFailed
from demo import descriptor
from demo.descriptor import ModelDescriptor
from demo.publish_model import build, publish
from demo.server import ServerSettings, WineScoringServer
from local_services import harness
from local_services.harness import wait_for
from tests.serving_io import Reader, into_catalog, scored

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


def _version_of(topics: Topics, scores: Reader, request_id: str) -> str:
    return str(scored(topics.bootstrap, topics.requests, scores, request_id)["model_version"])


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
    loads = wait_for("the first load", lambda: events.payloads(ModelLoaded), 60)
    assert [(v, p.replaces_version) for v, p in loads] == [("2", None)]
    first = next(e for e in events.events() if isinstance(e.payload, ModelLoaded))
    assert first.envelope.model.content_hash == versions["2"].content_hash

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

    failed = wait_for(
        "two refused loads",
        lambda: [(v, p.error_kind) for v, p in events.payloads(ModelLoadFailed)],
        60,
        until=lambda found: len(found) >= 2,
    )
    assert [version for version, _ in failed] == ["3", "4"]
    assert failed[0][1] == "ContentHashMismatch"
    # joblib's own error on bytes that are no pickle: named, and not the hash's.
    assert failed[1][1] not in ("ContentHashMismatch", "")
    assert _version_of(topics, scores, "after-the-refusals") == "2"

    # Version 1 published again replaces version 2: models may go back, and it is a load.
    send(descriptor.encode(replace(versions["1"], version="5")))
    replaced = wait_for(
        "the replacement",
        lambda: [p for v, p in events.payloads(ModelLoaded) if v == "5"],
        60,
    )
    assert replaced[0].replaces_version == "2"
    assert _version_of(topics, scores, "after-the-replacement") == "5"
    assert [v for v, _ in events.payloads(ModelLoaded)] == ["2", "5"]

    # The catalog: 3 and 4 FAILED, the deployment serves 5, which replaced 2.
    with into_catalog(tmp_path / "catalog.sqlite", events) as catalog:
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
