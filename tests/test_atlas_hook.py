"""The Atlas hook target against a real Kafka broker: what lands on the topic has the envelope
Atlas's hook consumer reads (AtlasNotificationMessage around HookNotification's
EntityCreateRequestV2), keyed by model, in messages under 1 MB. That Atlas applies them is
tested against the real Atlas in tests/test_atlas_integration.py.

The broker is KAFKA_BOOTSTRAP_SERVERS when set, else the project's own (local_services), as
the session fixture ``kafka_bootstrap`` provides it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import socket
import time
import uuid
from typing import Any

import pytest

from atlas_sink.core import naming
from atlas_sink.core.coalesce import coalesce, refs_needing_state
from atlas_sink.core.entities import Entity, EntityState, Ref
from atlas_sink.core.target import TargetUnavailable
from atlas_sink.core.translate import MODEL_VERSION, Rules, translate
from atlas_sink.targets.atlas_hook import AtlasHookTarget
from capture.events import ModelEvent
from local_services import harness
from tests.conftest import all_payloads, envelope

pytestmark = pytest.mark.integration

LIMIT = 1_000_000
# The fields of Atlas's notification envelope (AtlasNotificationBaseMessage: version,
# msgCompressionKind, msgSplitIdx, msgSplitCount, msgId only when compressed or split;
# AtlasNotificationMessage: msgSourceIP, msgCreatedBy, msgCreationTime, message), of the
# message (HookNotification: type, user; EntityCreateRequestV2: entities) and of an
# AtlasEntitiesWithExtInfo (entities, referredEntities).
ENVELOPE_KEYS = {
    "version",
    "msgCompressionKind",
    "msgSplitIdx",
    "msgSplitCount",
    "msgSourceIP",
    "msgCreatedBy",
    "msgCreationTime",
    "message",
}
MESSAGE_KEYS = {"type", "user", "entities"}
ENTITIES_KEYS = {"entities", "referredEntities"}
# AtlasEntity's fields a hook sets on a new entity.
ENTITY_KEYS = {"typeName", "guid", "attributes", "relationshipAttributes", "classifications"}


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's broker (tests/conftest.py): KAFKA_BOOTSTRAP_SERVERS, else the project's."""
    return kafka_bootstrap


@pytest.fixture
def topic(bootstrap: str) -> str:
    # A topic per test, made before anything is produced: a topic the broker auto-creates on
    # first produce can reach a new consumer's metadata with some partitions missing, and the
    # messages there then stay unread until the next metadata refresh (minutes).
    name = f"ATLAS_HOOK_test_{uuid.uuid4().hex[:12]}"
    harness.create_topics(bootstrap, [name], partitions=3)
    return name


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic``: polls until ``expected`` arrived, then briefly for extras."""
    consumer = harness.topic_reader(bootstrap, [topic], prefix="test")
    received: list[Any] = []

    def read() -> int:
        message = consumer.poll(0.5)
        if message is not None:
            assert message.error() is None, message.error()
            received.append(message)
        return len(received)

    try:
        # Short of ``expected`` at the deadline: the count assertion below says by how many.
        with contextlib.suppress(harness.WaitTimeout):
            harness.wait_for(
                f"{expected} messages on {topic}", read, timeout, 0, until=lambda n: n >= expected
            )
        # Then a second more, to catch messages beyond those expected.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                received.append(message)
    finally:
        consumer.close()
    assert len(received) == expected, f"expected {expected} messages, got {len(received)}"
    return received


def _sample_entities() -> list[Entity]:
    events = [ModelEvent(envelope=envelope(i + 1), payload=p) for i, p in enumerate(all_payloads())]
    updates = [u for event in events for u in translate(event, Rules())]
    states = {ref: EntityState() for ref in refs_needing_state(updates)}
    return coalesce(updates, states).entities


def test_notifications_have_the_envelope_of_atlas_s_hooks(bootstrap: str, topic: str) -> None:
    entities = _sample_entities()
    target = AtlasHookTarget(bootstrap, topic=topic, user="scorer", typedefs=None)
    try:
        result = target.write(entities)
    finally:
        target.close()
    assert result.written == len(entities) and not result.rejected
    received = _consume(bootstrap, topic, result.requests)

    seen: list[tuple[str, str]] = []
    model_key = naming.model("wine", "local").encode()
    for message in received:
        value = json.loads(message.value())
        assert len(message.value()) < LIMIT
        assert set(value) == ENVELOPE_KEYS
        assert set(value["message"]) == MESSAGE_KEYS
        assert set(value["message"]["entities"]) == ENTITIES_KEYS
        assert value["message"]["entities"]["referredEntities"] == {}
        assert isinstance(value["msgCreationTime"], int)
        assert isinstance(value["msgSourceIP"], str) and isinstance(value["msgCreatedBy"], str)
        assert value["version"] == {"version": "1.0.0", "versionParts": [1]}
        assert (value["msgCompressionKind"], value["msgSplitIdx"], value["msgSplitCount"]) == (
            "NONE",
            1,
            1,
        )
        assert value["message"]["type"] == "ENTITY_CREATE_V2"
        assert value["message"]["user"] == "scorer"
        assert abs(value["msgCreationTime"] - time.time() * 1000) < 600_000
        for entity in value["message"]["entities"]["entities"]:
            assert {"typeName", "guid", "attributes"} <= set(entity) <= ENTITY_KEYS
            assert entity["guid"].startswith("-")
            seen.append((entity["typeName"], entity["attributes"]["qualifiedName"]))
        # The model's entities, and the data sets and schemas around them, travel together.
        assert message.key() == model_key
    assert sorted(seen) == sorted((e.type_name, e.qualified_name) for e in entities)


def test_a_batch_over_1_mb_is_split_by_entities(bootstrap: str, topic: str) -> None:
    padding = {f"p{i}": "x" * 100 for i in range(50)}  # about 6 kB per entity
    entities = [
        Entity(
            MODEL_VERSION,
            naming.model_version("big", str(n), "local"),
            {"name": f"big {n}", "modelName": "big", "version": str(n), "properties": padding},
        )
        for n in range(400)
    ]
    target = AtlasHookTarget(bootstrap, topic=topic)
    try:
        result = target.write(entities)
    finally:
        target.close()
    assert result.requests >= 3
    received = _consume(bootstrap, topic, result.requests)
    order: list[str] = []
    for message in received:
        assert len(message.value()) < LIMIT
        assert message.key() == naming.model("big", "local").encode()
        value = json.loads(message.value())
        assert (value["msgSplitIdx"], value["msgSplitCount"]) == (1, 1)
        order += [e["attributes"]["version"] for e in value["message"]["entities"]["entities"]]
    # One key, one partition: the entities arrive once each, in the order written.
    assert order == [str(n) for n in range(400)]


def test_one_entity_over_1_mb_goes_gzipped_in_parts(bootstrap: str, topic: str) -> None:
    noise = base64.b64encode(os.urandom(1_200_000)).decode()  # incompressible
    big = Entity(
        "servemeta_data_schema",
        naming.data_schema("sha256:big", "local"),
        {"name": "big", "fingerprint": "sha256:big", "schemaText": noise},
    )
    target = AtlasHookTarget(bootstrap, topic=topic)
    try:
        result = target.write([big])
    finally:
        target.close()
    received = _consume(bootstrap, topic, result.requests)
    parts = [json.loads(m.value()) for m in received]
    assert len(parts) >= 2 and all(len(m.value()) < LIMIT for m in received)
    assert {m.key() for m in received} == {big.qualified_name.encode()}
    assert [p["msgSplitIdx"] for p in parts] == list(range(len(parts)))
    assert len({p["msgId"] for p in parts}) == 1
    joined = "".join(p["message"] for p in parts)
    inner = json.loads(gzip.decompress(base64.b64decode(joined)))
    (entity,) = inner["message"]["entities"]["entities"]
    assert entity["attributes"]["schemaText"] == noise
    assert Ref(entity["typeName"], entity["attributes"]["qualifiedName"]) == big.ref


def test_undeliverable_messages_raise_target_unavailable() -> None:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        target = AtlasHookTarget(f"127.0.0.1:{port}", delivery_timeout=2.0)
        started = time.monotonic()
        # Unreachable before anything is produced: the topic's partitions cannot be read.
        with pytest.raises(TargetUnavailable, match=r"did not describe the Atlas hook topic"):
            target.write(_sample_entities()[:1])
        assert time.monotonic() - started < 15
        target.close()  # nothing left to flush: the message timed out


def test_fetch_without_rest_reads_nothing() -> None:
    target = AtlasHookTarget("127.0.0.1:9")
    assert target.fetch([Ref("servemeta_model", "wine@local")], ["zInternalSinkState"]) == {}


def test_many_models_share_few_messages_and_each_keeps_its_partition(
    bootstrap: str, topic: str
) -> None:
    def versions(version: str) -> list[Entity]:
        return [
            Entity(
                MODEL_VERSION,
                naming.model_version(f"m{n}", version, "local"),
                {"name": f"m{n} {version}", "modelName": f"m{n}", "version": version},
            )
            for n in range(60)
        ]

    target = AtlasHookTarget(bootstrap, topic=topic)
    try:
        first = target.write(versions("1"))
        second = target.write(versions("2"))
    finally:
        target.close()
    # 60 models, 3 partitions: one message per partition, not one per model.
    assert first.requests <= 3 and second.requests <= 3
    received = _consume(bootstrap, topic, first.requests + second.requests)
    partitions: dict[str, set[int]] = {}
    for message in received:
        value = json.loads(message.value())
        for entity in value["message"]["entities"]["entities"]:
            model = entity["attributes"]["modelName"]
            partitions.setdefault(model, set()).add(message.partition())
    assert len(partitions) == 60
    # A model's versions travelled in one partition, so they arrive in the order written.
    assert all(len(found) == 1 for found in partitions.values())
    assert len(set().union(*partitions.values())) > 1
