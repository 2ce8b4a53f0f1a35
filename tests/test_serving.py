"""Applying model descriptors (demo.serving, demo.descriptor, demo.control_topic), whatever
engine serves: what is announced, what is refused and why, and where a start begins. The
emitter's producer keeps what it is given; no Kafka."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastavro import schemaless_writer

from atlas_sink.core.decode import Decoder
from capture import contract
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import Deployment, ModelLoaded, ModelLoadFailed, Runtime, plain
from capture.framing import single_object_header
from demo import descriptor as descriptors
from demo.control_topic import ControlMessage, newest_applicable
from demo.descriptor import DescriptorError, ModelDescriptor
from demo.model import load_data
from demo.publish_model import build
from demo.serving import ModelHost
from tests.hostile import CapturingProducer

MODEL = "wine-classifier"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> ModelDescriptor:
    return build("1", tmp_path_factory.mktemp("publisher"))


@pytest.fixture
def kafka() -> CapturingProducer:
    return CapturingProducer()


@pytest.fixture
def emitter(kafka: CapturingProducer) -> Iterator[Emitter]:
    opened = Emitter(
        EmitterConfig(bootstrap_servers="127.0.0.1:9", topic="events"),
        Deployment(server_kind="flink", server_name="job", cluster="test"),
        producer=kafka,
    )
    yield opened
    opened.close(10)


@pytest.fixture
def host(emitter: Emitter) -> ModelHost:
    return ModelHost(
        emitter,
        model_name=MODEL,
        feature_names=load_data().feature_names,
        runtime=Runtime(language="python", language_version="3.11", host="h"),
        inputs=["kafka://requests"],
        outputs=["kafka://scores"],
    )


def _sent(kafka: CapturingProducer) -> list[object]:
    decoder = Decoder()
    return [decoder.decode(value).payload for value, _key in kafka.sent]


def test_a_descriptor_is_announced_with_what_the_server_checked(
    host: ModelHost, emitter: Emitter, kafka: CapturingProducer, published: ModelDescriptor
) -> None:
    # The publisher's artifact facts say something else: the server's checked facts win.
    lying = dataclasses.replace(
        published,
        announcement=dataclasses.replace(
            published.announcement,
            artifact=dataclasses.replace(
                published.announcement.artifact, content_hash="sha256:00", size_bytes=1
            ),
        ),
    )
    applied = host.apply(descriptors.encode(lying))
    assert applied.outcome == "loaded"
    assert host.apply(descriptors.encode(lying)).outcome == "unchanged"
    assert emitter.flush(10)
    (loaded,) = _sent(kafka)
    assert isinstance(loaded, ModelLoaded)
    assert loaded.artifact.content_hash == published.content_hash
    assert loaded.artifact.size_bytes == len(published.artifact_bytes or b"")
    assert loaded.runtime.host == "h" and loaded.inputs == ["kafka://requests"]
    assert not loaded.restored


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"version": ""}, "InvalidDescriptor"),
        ({"version": "2\n3"}, "InvalidDescriptor"),
        ({"version": "v" * 5000}, "InvalidDescriptor"),
        ({"artifact_bytes": None}, "InvalidDescriptor"),  # neither bytes nor location
    ],
)
def test_a_descriptor_the_contract_cannot_name_is_refused_not_raised(
    host: ModelHost, published: ModelDescriptor, change: dict[str, object], kind: str
) -> None:
    bad = descriptors.encode(dataclasses.replace(published, **change))  # type: ignore[arg-type]
    with pytest.raises(DescriptorError) as refused:
        descriptors.decode(bad)
    assert refused.value.kind == kind
    applied = host.apply(bad)
    assert applied.outcome == "failed" and kind in applied.detail
    assert host.live is None


def test_an_artifact_location_must_be_a_regular_file(
    host: ModelHost,
    emitter: Emitter,
    kafka: CapturingProducer,
    published: ModelDescriptor,
    tmp_path: Path,
) -> None:
    for location in ("file:///dev/zero", tmp_path.as_uri(), (tmp_path / "absent").as_uri()):
        remote = dataclasses.replace(published, artifact_bytes=None, artifact_location=location)
        assert host.apply(descriptors.encode(remote)).outcome == "failed"
    assert emitter.flush(10)
    failures = _sent(kafka)
    assert [f.error_kind for f in failures if isinstance(f, ModelLoadFailed)] == [
        "ArtifactUnreadable"
    ] * 3
    # A hash mismatch says how many bytes there were, not what they hash to.
    stored = tmp_path / "model.joblib"
    stored.write_bytes(b"other bytes")
    moved = dataclasses.replace(published, artifact_bytes=None, artifact_location=stored.as_uri())
    detail = host.apply(descriptors.encode(moved)).detail
    assert (
        "ContentHashMismatch" in detail and descriptors.content_hash(b"other bytes") not in detail
    )


def test_a_descriptor_written_with_an_earlier_contract_is_read(published: ModelDescriptor) -> None:
    """A descriptor published before a contract release stays readable after it."""
    v3 = next(c for c in contract.released() if c.source.name == "model_event.v3.avsc")
    writer = descriptors._self_contained(v3.text)
    record = {f.name: plain(getattr(published, f.name)) for f in dataclasses.fields(published)}
    del record["announcement"]["restored"]  # v3 has no such field
    body = io.BytesIO()
    schemaless_writer(body, writer.parsed, record)
    read = descriptors.decode(single_object_header(writer.fingerprint) + body.getvalue())
    assert read == published
    assert writer.fingerprint != descriptors._schema().fingerprint


def test_a_start_applies_the_newest_descriptor_it_can(published: ModelDescriptor) -> None:
    other_model = dataclasses.replace(published, name="another-model", version="9")
    corrupt = dataclasses.replace(published, version="3", artifact_bytes=b"tampered")
    messages = [
        ControlMessage(0, 0, descriptors.encode(published)),
        ControlMessage(0, 1, descriptors.encode(dataclasses.replace(published, version="2"))),
        ControlMessage(0, 2, descriptors.encode(corrupt)),
        ControlMessage(0, 3, b"not a descriptor"),
        ControlMessage(0, 4, descriptors.encode(other_model)),
    ]
    chosen = newest_applicable(messages, MODEL)
    assert chosen is not None and chosen.offset == 1
    assert newest_applicable(messages[2:], MODEL) is None
    assert json.dumps(descriptors.decode(chosen.value).version) == '"2"'
