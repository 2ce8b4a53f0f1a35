"""The local Apache Atlas launcher against the real server: start -> ACTIVE, the project's
definitions of Atlas's own types are loaded as written with no error in Atlas's log, entities
written over REST read back, and hook notifications on Kafka are applied.

The session's Atlas serves these tests (``atlas_server`` in tests/conftest.py: a start takes
about a minute on two cores; the first on a machine also fetches about 330 MB). It has its own
state dir, hook topic and consumer group, so it never touches a session Atlas started from
<repo>/.run, nor the ATLAS_HOOK topic of the session broker. With ATLAS_URL set, the tests of
the launcher itself are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from local_services import harness
from local_services.atlas import AtlasService, credentials_line, password_hash
from tests.services import AtlasServer

AUTH = ("admin", "admin")
# First start on a fresh machine: Maven fetch + unpack + pip + Atlas's own start.
START_BUDGET = 900


def test_credentials_use_atlas_s_salted_sha256() -> None:
    # The admin line of Atlas's own webapp test resources (users-credentials.properties).
    expected = "a4a88c0872bf652bb9ed803ece5fd6e82354838a9bf59ab4babb1dab322154e1"
    assert password_hash("admin", "admin") == expected
    assert credentials_line("admin", "admin") == f"admin=ADMIN::{expected}"


def test_cli_atlas_address_exits_1_when_not_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local_services", "atlas", "address", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "not running" in done.stderr


class Atlas:
    def __init__(self, server: AtlasServer) -> None:
        self.server = server
        self.address = server.url

    @property
    def service(self) -> AtlasService:
        if self.server.service is None:
            pytest.skip("ATLAS_URL names an Atlas this session did not start")
        return self.server.service

    def get(self, path: str, **params: str) -> Any:
        import requests

        return requests.get(self.address + path, params=params, auth=self.server.auth, timeout=30)

    def post(self, path: str, body: Any) -> Any:
        import requests

        return requests.post(self.address + path, json=body, auth=self.server.auth, timeout=120)

    def entity(self, type_name: str, qualified_name: str) -> Any:
        return self.get(
            f"/api/atlas/v2/entity/uniqueAttribute/type/{type_name}",
            **{"attr:qualifiedName": qualified_name},
        )


@pytest.fixture(scope="module")
def atlas(atlas_server: AtlasServer) -> Atlas:
    # The session's Atlas (tests/conftest.py): started once for every Atlas test. Its teardown
    # checks that stop() leaves neither a process nor the port behind.
    return Atlas(atlas_server)


@pytest.mark.atlas
@pytest.mark.timeout(START_BUDGET)
def test_start_reaches_active_and_a_second_start_reuses_the_server(atlas: Atlas) -> None:
    service = atlas.service
    assert atlas.address.startswith("http://127.0.0.1:")
    response = atlas.get("/api/atlas/admin/status")
    assert response.status_code == 200
    assert response.json() == {"Status": "ACTIVE"}
    status = service.status()
    assert status.state == "running", status.describe()
    assert service.address() == atlas.address
    again = service.start()
    assert again.already_running
    assert again.address == atlas.address


def _shape(category: str, definition: dict[str, Any]) -> dict[str, Any]:
    """What of a definition is a fact of Atlas's model, in the form Atlas answers with."""
    shape: dict[str, Any] = {"superTypes": sorted(definition.get("superTypes") or [])}
    shape["attributes"] = sorted(
        (a["name"], a["typeName"], a["cardinality"], a["isOptional"], a["isUnique"])
        for a in definition.get("attributeDefs") or []
    )
    if category == "relationshipDefs":
        shape["category"] = definition["relationshipCategory"]
        shape["propagate"] = definition.get("propagateTags")
        shape["ends"] = [
            (e["type"], e["name"], e["cardinality"], bool(e.get("isContainer")))
            for e in (definition["endDef1"], definition["endDef2"])
        ]
    if category == "enumDefs":
        shape["elements"] = [e["value"] for e in definition["elementDefs"]]
    return shape


@pytest.mark.atlas
@pytest.mark.timeout(START_BUDGET)
def test_atlas_holds_the_project_s_definitions_of_its_own_types_as_written(atlas: Atlas) -> None:
    """The local Atlas starts with exactly the types of deploy/atlas/builtin (Atlas's war has
    none), and stores each as the project wrote it: nothing refused, nothing changed."""
    from atlas_sink.atlas.builtin_types import builtin_typedefs
    from atlas_sink.atlas.typedefs import CATEGORIES

    assert atlas.service is not None  # the session's own: ATLAS_URL's may hold other models
    headers = atlas.get("/api/atlas/v2/types/typedefs/headers")
    assert headers.status_code == 200
    names = {header["name"] for header in headers.json()}
    ours = builtin_typedefs()
    expected = {d["name"] for c in CATEGORIES for d in ours[c]}
    # Atlas's own types, and the project's as the sink registered them (servemeta_*, tags).
    project = names - expected
    assert expected <= names
    assert all(n.startswith("servemeta_") or n[0].isupper() for n in project), project
    for category in CATEGORIES:
        for definition in ours[category]:
            answer = atlas.get("/api/atlas/v2/types/typedefs", name=definition["name"])
            stored = answer.json()[category]
            assert len(stored) == 1, definition["name"]
            assert _shape(category, stored[0]) == _shape(category, definition), definition["name"]


@pytest.mark.atlas
@pytest.mark.timeout(START_BUDGET)
def test_atlas_started_with_no_error_in_its_log(atlas: Atlas) -> None:
    """No model refused, no internal type missing: the start logs no ERROR line (later
    requests the tests make to be refused may log some; only the start is read)."""
    log = atlas.service.application_log.read_text(errors="replace").splitlines()
    ready = next(i for i, line in enumerate(log) if "Started ServerConnector" in line)
    errors = [line for line in log[: ready + 1] if " ERROR " in line]
    assert errors == []


def test_the_rendered_models_are_cached_and_reused(tmp_path: Path) -> None:
    """The YAML is rendered into Atlas model files once per content; later starts link them."""
    service = AtlasService(tmp_path / "state", cache_dir=tmp_path / "cache")
    first = service._rendered_models()
    files = sorted(first.glob("*.json"))
    assert [f.stem for f in files] == [
        "10-atlas-core",
        "11-glossary",
        "20-file-system",
        "21-avro",
        "22-kafka",
        "30-aws-s3",
    ]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = AtlasService(tmp_path / "other", cache_dir=tmp_path / "cache")._rendered_models()
    assert again == first
    assert [f.stat().st_mtime_ns for f in sorted(again.glob("*.json"))] == stamps
    document = json.loads((first / "22-kafka.json").read_text())
    assert [d["name"] for d in document["entityDefs"]] == ["kafka_topic"]
    subset = AtlasService(
        tmp_path / "s", cache_dir=tmp_path / "cache", model_files=["10-atlas-core"]
    )
    assert [f.stem for f in subset._rendered_models().glob("*.json")] == ["10-atlas-core"]
    with pytest.raises(Exception, match="expected names of deploy/atlas/builtin"):
        AtlasService(
            tmp_path / "x", cache_dir=tmp_path / "cache", model_files=["nope"]
        )._rendered_models()


@pytest.mark.atlas
@pytest.mark.timeout(START_BUDGET)
def test_entity_written_over_rest_reads_back(atlas: Atlas) -> None:
    topic = f"wine-requests-{uuid.uuid4().hex[:8]}"
    qualified_name = f"{topic}@local"
    created = atlas.post(
        "/api/atlas/v2/entity/bulk",
        {
            "entities": [
                {
                    "typeName": "kafka_topic",
                    "guid": "-1",
                    "attributes": {
                        "qualifiedName": qualified_name,
                        "name": topic,
                        "topic": topic,
                        "uri": f"kafka://{topic}",
                        "partitionCount": 3,
                    },
                }
            ]
        },
    )
    assert created.status_code == 200, created.text
    guid = created.json()["guidAssignments"]["-1"]
    read = atlas.entity("kafka_topic", qualified_name)
    assert read.status_code == 200, read.text
    entity = read.json()["entity"]
    assert entity["guid"] == guid
    assert entity["status"] == "ACTIVE"
    assert entity["attributes"]["topic"] == topic
    assert entity["attributes"]["partitionCount"] == 3
    by_guid = atlas.get(f"/api/atlas/v2/entity/guid/{guid}")
    assert by_guid.json()["entity"]["attributes"]["qualifiedName"] == qualified_name


def _hook_message(entity: dict[str, Any]) -> bytes:
    """An ENTITY_CREATE_V2 notification in the envelope of Atlas's own hooks."""
    return json.dumps(
        {
            "version": {"version": "1.0.0", "versionParts": [1]},
            "msgCompressionKind": "NONE",
            "msgSplitIdx": 1,
            "msgSplitCount": 1,
            "msgSourceIP": "127.0.0.1",
            "msgCreatedBy": "servemeta-test",
            "msgCreationTime": int(time.time() * 1000),
            "message": {
                "type": "ENTITY_CREATE_V2",
                "user": "servemeta-test",
                "entities": {"referredEntities": {}, "entities": [entity]},
            },
        }
    ).encode()


@pytest.mark.atlas
@pytest.mark.timeout(START_BUDGET)
def test_atlas_applies_hook_notifications_from_kafka(atlas: Atlas) -> None:
    from confluent_kafka import Producer

    if atlas.server.hook_topic is None or atlas.server.kafka_bootstrap is None:
        pytest.skip("ATLAS_URL without KAFKA_BOOTSTRAP_SERVERS: Atlas's hook broker is unknown")
    topic = f"wine-scores-{uuid.uuid4().hex[:8]}"
    qualified_name = f"{topic}@local"
    producer = Producer({"bootstrap.servers": atlas.server.kafka_bootstrap})
    producer.produce(
        atlas.server.hook_topic,
        _hook_message(
            {
                "typeName": "kafka_topic",
                "guid": "-1",
                "attributes": {
                    "qualifiedName": qualified_name,
                    "name": topic,
                    "topic": topic,
                    "uri": f"kafka://{topic}",
                },
            }
        ),
    )
    assert producer.flush(15) == 0, "the notification was not delivered to Kafka"

    try:
        read = harness.wait_for(
            f"Atlas to apply the hook message on {atlas.server.hook_topic}",
            lambda: atlas.entity("kafka_topic", qualified_name),
            90,
            0.5,
            until=lambda answer: answer.status_code != 404,
        )
    except harness.WaitTimeout as exc:
        failed = atlas.server.service.log_dir / "atlas-failed.log" if atlas.server.service else None
        pytest.fail(
            f"{exc}; failed messages: "
            f"{failed.read_text() if failed and failed.exists() else 'none logged'}"
        )
    assert read.status_code == 200, read.text
    entity = read.json()["entity"]
    assert entity["attributes"]["topic"] == topic
    assert entity["createdBy"] == "servemeta-test"
