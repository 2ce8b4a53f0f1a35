"""The sink against a real Apache Atlas: types, entities, lineage, the hook path, replays,
classification propagation, refusals, outages and search.

Events travel the real way: framed Avro on the real Kafka broker, read by the sink's consumer
(``SinkConsumer`` with the target the CLI builds), written to the Atlas of the session
(``atlas_server`` in tests/conftest.py: ATLAS_URL when set, else the project's own, started
once for all Atlas tests). Every test works in clusters of its own (qualified names end in
``@<cluster>``), so tests never see each other's entities, also in a long-lived Atlas.

Nothing sleeps: the sink is stepped, and Atlas is polled, until a condition holds or a
deadline passes. What Atlas answered where it disagreed with the sink's first design is
written beside the test that found it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import random
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from confluent_kafka import KafkaError, Message, Producer

from atlas_sink.atlas.client import AtlasClient
from atlas_sink.atlas.typedefs import load_project_typedefs, type_names
from atlas_sink.catalog.atlas_reader import AtlasCatalog, plain
from atlas_sink.catalog.report import build_report, render_text
from atlas_sink.core import naming
from atlas_sink.core.decode import Decoder
from atlas_sink.core.entities import SINK_STATE, Entity
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.target import TargetUnavailable
from atlas_sink.core.translate import (
    DATA_SCHEMA,
    DATASET,
    DEPLOYMENT,
    FS_PATH,
    KAFKA_TOPIC,
    MODEL,
    MODEL_VERSION,
    SCHEMA_CHANGE,
    SERVING_STATS,
    TRAINING,
    ClassificationRule,
    Rules,
)
from atlas_sink.kafka.consumer import SinkConsumer
from atlas_sink.kafka.dlq import (
    ERROR,
    ORIGINAL_OFFSET,
    ORIGINAL_TOPIC,
    REASON,
    header_list,
    read_dlq,
)
from atlas_sink.kafka.replay import ReplayResult, replay
from atlas_sink.runtime import exit_codes, logs
from atlas_sink.runtime.config import SinkConfig, load_config
from atlas_sink.runtime.metrics import Health, MetricsServer, SinkMetrics
from atlas_sink.service import cli, wiring
from atlas_sink.targets.atlas_rest import AtlasRestTarget
from atlas_sink.targets.local import LocalCatalog
from capture.dataschema import data_schema
from capture.events import (
    Artifact,
    Deployment,
    Envelope,
    FieldSpec,
    LatencySummary,
    LogSketch,
    ModelEvent,
    ModelIdentity,
    ModelLoaded,
    ModelLoadFailed,
    ModelType,
    ModelUnloaded,
    Payload,
    Runtime,
    SchemaChanged,
    ScoringStats,
    Training,
    to_avro,
)
from capture.events import Producer as EventProducer
from capture.framing import single_object_framer
from capture.profile import profile_features
from local_services import harness
from tests import services
from tests.conftest import INPUT, OUTPUT, model_loaded
from tests.services import AtlasServer, Topics

pytestmark = pytest.mark.atlas

# Per test, the session's Atlas start included (about a minute; the first on a machine also
# fetches about 330 MB).
BUDGET = 900
DEADLINE = 60.0
API = "/api/atlas/v2"
# Event times in the recent past: the sink refuses events from the future.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
FRAME = single_object_framer()
SERVER = "wine-scorer"
TRAINING_DATA = "file:///data/wine.csv"
PII_RULES = [{"classification": "PII", "dataset_pattern": r"wine\.csv$"}]
OUTPUT_V2 = data_schema(
    [
        FieldSpec(name="cultivar", type="long", doc="predicted class"),
        FieldSpec(name="probability", type="double", doc="of the predicted class"),
    ]
)
SCHEMA_CHANGE_AT = 50  # seconds after T0
# (request_count, error_count) of the scoring windows the demo events report, in order.
WINDOWS = ((10, 1), (20, 0), (30, 2))
# What Atlas itself changes on every write; compared entities leave these out.
VOLATILE = ("updateTime", "version", "updatedBy")


# -- Atlas over plain HTTP ----------------------------------------------------------------------


class Atlas:
    """Reads for assertions, by plain HTTP: what the tests check is Atlas's own answer."""

    def __init__(self, server: AtlasServer) -> None:
        self.server = server
        self.url = server.url
        self.session = requests.Session()
        self.session.auth = server.auth

    def get(self, path: str, **params: str) -> requests.Response:
        return self.session.get(self.url + API + path, params=params, timeout=60)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.url + API + path, json=body, timeout=60)

    def entity(self, type_name: str, qualified_name: str) -> dict[str, Any] | None:
        """AtlasEntity (without referred entities), or None when Atlas has none."""
        response = self.get(
            f"/entity/uniqueAttribute/type/{type_name}", **{"attr:qualifiedName": qualified_name}
        )
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        entity: dict[str, Any] = response.json()["entity"]
        return entity

    def must(self, type_name: str, qualified_name: str) -> dict[str, Any]:
        entity = self.entity(type_name, qualified_name)
        assert entity is not None, f"Atlas has no {type_name} {qualified_name!r}"
        return entity

    def lineage(
        self, type_name: str, qualified_name: str, direction: str = "BOTH", depth: int = 3
    ) -> dict[str, Any]:
        response = self.get(
            f"/lineage/uniqueAttribute/type/{type_name}",
            **{"attr:qualifiedName": qualified_name, "direction": direction, "depth": str(depth)},
        )
        assert response.status_code == 200, response.text
        lineage: dict[str, Any] = response.json()
        return lineage

    def search(self, **body: Any) -> list[dict[str, Any]]:
        response = self.post("/search/basic", {"excludeDeletedEntities": True, **body})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json().get("entities") or []
        return found

    def typedef(self, name: str) -> dict[str, Any]:
        response = self.get(f"/types/typedef/name/{name}")
        assert response.status_code == 200, response.text
        definition: dict[str, Any] = response.json()
        return definition


@pytest.fixture(scope="module")
def atlas(atlas_server: AtlasServer) -> Atlas:
    return Atlas(atlas_server)


@pytest.fixture
def in_process_cli() -> Iterator[None]:
    """``cli.main`` installs a log handler on the captured stderr: take it away afterwards."""
    yield
    logs.unconfigure()


class RecordingSession(requests.Session):
    """A requests session that remembers (method, path, status) of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        response = super().request(method, url, *args, **kwargs)
        path = urlsplit(url if isinstance(url, str) else url.decode()).path
        self.calls.append((str(method), path, response.status_code))
        return response

    def writes(self) -> list[tuple[str, str, int]]:
        return [call for call in self.calls if call[0] != "GET"]


def rest_target(
    server: AtlasServer, typedefs: dict[str, Any] | None = None, **client_options: Any
) -> AtlasRestTarget:
    return AtlasRestTarget(
        AtlasClient(server.url, server.auth, **client_options), typedefs=typedefs
    )


def poll(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """``check()``'s first true value; the pause grows to 1 s, since every try asks Atlas."""
    return harness.wait_for(what, check, timeout, 0.1, max_interval=1.0)


# -- events on Kafka, the sink -----------------------------------------------------------------


def new_topics(bootstrap: str) -> Topics:
    return services.new_topics(bootstrap, "atlas-it")


def new_cluster(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sink_config(
    server: AtlasServer, bootstrap: str, topics: Topics, **overrides: Any
) -> SinkConfig:
    settings: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topics": [topics.events],
        "dlq_topic": topics.dlq,
        "group_id": f"atlas-it-{uuid.uuid4().hex[:8]}",
        "batch_max_wait_seconds": 0.3,
        "retry_max_seconds": 1.0,
        "target": "atlas-rest",
        "atlas_url": server.url,
        "atlas_user": server.auth[0],
        "atlas_password": server.auth[1],
        "classification_rules": PII_RULES,
    }
    if server.hook_topic is not None:
        settings["atlas_hook_topic"] = server.hook_topic
    settings.update(overrides)
    # No environment: only what the test says.
    return load_config({}, overrides=settings)


@dataclass
class Demo:
    """The entities the demo events make in one cluster."""

    cluster: str
    events: list[ModelEvent] = field(default_factory=list)

    @property
    def version(self) -> str:
        return naming.model_version("wine", "1", self.cluster)

    @property
    def deployment(self) -> str:
        return naming.deployment(SERVER, "wine", self.cluster)

    @property
    def training(self) -> str:
        return naming.training("wine", "1", self.cluster)

    @property
    def source(self) -> str:
        return naming.uri_dataset(TRAINING_DATA, self.cluster)

    def topic(self, name: str) -> str:
        return naming.kafka_topic(name, self.cluster)

    def schema(self, fingerprint: str) -> str:
        return naming.data_schema(fingerprint, self.cluster)

    @property
    def source_schema(self) -> str:
        """The training source's own copy of its schema (the model's input schema's fields)."""
        return naming.source_schema(INPUT.fingerprint, self.source, self.cluster)

    @property
    def schema_change(self) -> str:
        at = micros(T0 + timedelta(seconds=SCHEMA_CHANGE_AT))
        return naming.schema_change("wine", "1", "output", at, self.cluster)

    def refs(self) -> list[tuple[str, str]]:
        """Every entity the demo events make."""
        return [
            (MODEL, naming.model("wine", self.cluster)),
            (MODEL_VERSION, self.version),
            (TRAINING, self.training),
            (DEPLOYMENT, self.deployment),
            (FS_PATH, self.source),
            (KAFKA_TOPIC, self.topic("wine-requests")),
            (KAFKA_TOPIC, self.topic("wine-scores")),
            (DATA_SCHEMA, self.schema(INPUT.fingerprint)),
            (DATA_SCHEMA, self.source_schema),
            (DATA_SCHEMA, self.schema(OUTPUT.fingerprint)),
            (DATA_SCHEMA, self.schema(OUTPUT_V2.fingerprint)),
            (SCHEMA_CHANGE, self.schema_change),
            (SERVING_STATS, naming.serving_stats(SERVER, "wine", "1", self.cluster)),
        ]


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def event_id(cluster: str, model: str, instance: str, seq: int) -> str:
    # Known in advance, so that entities of two clusters compare (see ``portable``).
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"servemeta-it/{cluster}/{model}/{instance}/{seq}"))


def event(
    cluster: str,
    payload: Payload,
    *,
    seq: int,
    seconds: int,
    model: str = "wine",
    version: str = "1",
    instance: str = "replica-a",
) -> ModelEvent:
    return ModelEvent(
        envelope=Envelope(
            event_id=event_id(cluster, model, instance, seq),
            event_time=T0 + timedelta(seconds=seconds),
            producer=EventProducer(
                emitter_name="it", emitter_version="0", host="h1", pid=1, instance_id=instance
            ),
            sequence=seq,
            deployment=Deployment(server_kind="python", server_name=SERVER, cluster=cluster),
            model=ModelIdentity(name=model, version=version),
        ),
        payload=payload,
    )


def stats(requests_: int, errors: int, seconds: int) -> ScoringStats:
    start = T0 + timedelta(seconds=seconds)
    return ScoringStats(
        window_start=start,
        window_end=start + timedelta(seconds=60),
        request_count=requests_,
        error_count=errors,
        errors_by_kind={"timeout": errors} if errors else {},
        latency=LatencySummary(
            min=0.001,
            max=0.004 * (1 + errors),
            mean=0.002,
            p50=0.002,
            p95=0.003,
            p99=0.004,
            sketch=LogSketch(relative_accuracy=0.01, first_index=-620, counts=[requests_]),
        ),
    )


def demo_events(cluster: str) -> list[ModelEvent]:
    """wine 1 loaded, its output schema changed, then three scoring windows of a minute."""
    changed = SchemaChanged(
        side="OUTPUT",  # type: ignore[arg-type]
        new_fingerprint=OUTPUT_V2.fingerprint,
        new_schema=OUTPUT_V2,
        previous_fingerprint=OUTPUT.fingerprint,
        compatibility="BACKWARD",  # type: ignore[arg-type]
    )
    return [
        event(cluster, model_loaded("1"), seq=1, seconds=0),
        event(cluster, changed, seq=2, seconds=SCHEMA_CHANGE_AT),
        *(
            event(cluster, stats(r, e, 60 * (i + 1)), seq=3 + i, seconds=60 * (i + 2))
            for i, (r, e) in enumerate(WINDOWS)
        ),
    ]


def encode(ev: ModelEvent) -> bytes:
    return FRAME(to_avro(ev))


def produce(bootstrap: str, topic: str, events: Sequence[ModelEvent]) -> None:
    """In order, keyed by model: one model's events stay in one partition, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failures: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    for ev in events:
        key = f"{ev.envelope.deployment.cluster}/{ev.envelope.model.name}".encode()
        producer.produce(topic, value=encode(ev), key=key, on_delivery=delivered)
    assert producer.flush(15) == 0
    assert not failures, failures


def start_sink(config: SinkConfig) -> SinkConsumer:
    """The sink as ``atlas-sink run`` wires it: the CLI's target, types registered."""
    target = wiring.build_target(config)
    target.ensure_types()
    sink = SinkConsumer(config, wiring.pipeline_factory(config, target))
    sink.start()
    return sink


def step_until(sink: SinkConsumer, until: Callable[[], bool], timeout: float = DEADLINE) -> None:
    services.step_until(sink, until, timeout)


def run_sink(config: SinkConfig, committed: int) -> SinkConsumer:
    """A sink that consumes until ``committed`` messages are committed, then closes."""
    sink = start_sink(config)
    try:
        step_until(sink, lambda: sink.totals.committed >= committed)
    finally:
        sink.close()
        sink.pipeline.target.close()
    return sink


def replay_all(config: SinkConfig) -> ReplayResult:
    """A replay from the beginning with a fresh group and fresh caches (library API)."""
    target = wiring.build_target(config)
    try:
        return replay(config, wiring.build_pipeline(config, target))
    finally:
        target.close()


# -- comparing entities ------------------------------------------------------------------------


def stable(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity without what Atlas changes by itself on a write (update time, version)."""
    out = {k: v for k, v in entity.items() if k not in VOLATILE}
    out["relationshipAttributes"] = _sorted_relations(entity.get("relationshipAttributes") or {})
    out["classifications"] = sorted(
        entity.get("classifications") or [], key=lambda c: (c["typeName"], c.get("entityGuid"))
    )
    return out


def _sorted_relations(relations: dict[str, Any]) -> dict[str, Any]:
    def key(item: dict[str, Any]) -> str:
        return str(item.get("guid"))

    return {
        name: sorted(value, key=key) if isinstance(value, list) else value
        for name, value in relations.items()
    }


def portable(atlas: Atlas, entity: dict[str, Any], demo: Demo) -> dict[str, Any]:
    """What an entity says, independent of guids, of who wrote it and of the demo's cluster:
    its attributes, what each relationship attribute points at (type and qualifiedName) and
    its classifications (name, and from which entity, by qualifiedName)."""
    qualified: dict[str, str] = {}

    def name_of(guid: str) -> str:
        if guid not in qualified:
            response = atlas.get(f"/entity/guid/{guid}", minExtInfo="true")
            assert response.status_code == 200, response.text
            qualified[guid] = response.json()["entity"]["attributes"]["qualifiedName"]
        return qualified[guid]

    def related(value: Any) -> Any:
        if isinstance(value, list):
            return sorted(related(v) for v in value)
        if isinstance(value, dict) and "guid" in value:
            return f"{value['typeName']}:{name_of(value['guid'])}"
        return value

    # Unset attributes come back as null; an Atlas whose type has more attributes (a later
    # revision of the types) shows more of them, which says nothing about the entity.
    attributes = {
        name: related(value) if name in ("inputs", "outputs") else _set_only(value)
        for name, value in entity["attributes"].items()
        if value is not None
    }
    relations = {
        name: related(value)
        for name, value in (entity.get("relationshipAttributes") or {}).items()
        if value  # empty lists / None: nothing points anywhere
    }
    classifications = sorted(
        f"{c['typeName']} from {name_of(c['entityGuid'])}"
        for c in entity.get("classifications") or []
    )
    text = json.dumps(
        {
            "typeName": entity["typeName"],
            "status": entity["status"],
            "attributes": attributes,
            "relations": relations,
            "classifications": classifications,
        },
        sort_keys=True,
    )
    text = text.replace(demo.cluster, "<cluster>")
    for index, ev in enumerate(demo.events):
        text = text.replace(ev.envelope.event_id, f"<event {index}>")
    return dict(json.loads(text))


def portable_of(atlas: Atlas, ref: tuple[str, str], demo: Demo) -> dict[str, Any]:
    return portable(atlas, atlas.must(*ref), demo)


def _set_only(value: Any) -> Any:
    """``value`` without null members of the structs in it."""
    if isinstance(value, list):
        return [_set_only(v) for v in value]
    if isinstance(value, dict):
        return {k: _set_only(v) for k, v in value.items() if v is not None}
    return value


def assert_same(found: dict[str, Any], expected: dict[str, Any], what: object) -> None:
    """Equal, or fail naming what differs (pytest's own diff truncates nested dicts)."""
    if found == expected:
        return
    differences = []
    for part in sorted(set(found) | set(expected)):
        mine, theirs = found.get(part), expected.get(part)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for key in sorted(set(mine) | set(theirs)):
                if mine.get(key) != theirs.get(key):
                    differences.append(f"{part}.{key}: {mine.get(key)!r} != {theirs.get(key)!r}")
        elif mine != theirs:
            differences.append(f"{part}: {mine!r} != {theirs!r}")
    pytest.fail(f"{what} differs:\n  " + "\n  ".join(differences))


def assert_becomes(
    found: Callable[[], dict[str, Any]], expected: dict[str, Any], what: object
) -> None:
    """``found()`` equals ``expected`` before the deadline (classification propagation is
    asynchronous in some Atlas versions), else fail naming what differs."""
    try:
        current = harness.wait_for(str(what), found, DEADLINE, 0.5, until=expected.__eq__)
    except harness.WaitTimeout as timeout:
        current = timeout.last  # type: ignore[assignment]
    assert_same(current, expected, what)


def edges(lineage: dict[str, Any]) -> set[tuple[str, str]]:
    """Lineage relations as (from, to) pairs of ``type:qualifiedName``."""
    nodes = lineage["guidEntityMap"]

    def name(guid: str) -> str:
        node = nodes[guid]
        return f"{node['typeName']}:{node['attributes']['qualifiedName']}"

    return {(name(r["fromEntityId"]), name(r["toEntityId"])) for r in lineage["relations"]}


def classification_sources(atlas: Atlas, entity: dict[str, Any]) -> dict[str, set[str]]:
    """classification name -> qualifiedNames of the entities it comes from (itself or
    propagated from upstream)."""
    out: dict[str, set[str]] = {}
    for c in entity.get("classifications") or []:
        source = atlas.get(f"/entity/guid/{c['entityGuid']}", minExtInfo="true")
        assert source.status_code == 200, source.text
        out.setdefault(c["typeName"], set()).add(
            source.json()["entity"]["attributes"]["qualifiedName"]
        )
    return out


# -- the demo written over REST: shared by several tests ----------------------------------------


@dataclass
class RestRun:
    demo: Demo
    topics: Topics
    config: SinkConfig
    sink: SinkConsumer


@pytest.fixture(scope="module")
def rest_run(atlas_server: AtlasServer, kafka_bootstrap: str) -> Iterator[RestRun]:
    """The demo events through Kafka and the sink (target atlas-rest), all committed."""
    demo = Demo(new_cluster("rest"))
    demo.events = demo_events(demo.cluster)
    topics = new_topics(kafka_bootstrap)
    produce(kafka_bootstrap, topics.events, demo.events)
    config = sink_config(atlas_server, kafka_bootstrap, topics)
    sink = run_sink(config, committed=len(demo.events))
    assert sink.totals.dead_lettered == {}
    yield RestRun(demo, topics, config, sink)


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(BUDGET)
def test_typedefs_register_then_again_change_nothing_and_grow_in_place(
    atlas: Atlas, atlas_server: AtlasServer
) -> None:
    project = load_project_typedefs()
    names = type_names(project)
    session = RecordingSession()
    target = rest_target(atlas_server, session=session)
    before = {n for n in names if atlas.get(f"/types/typedef/name/{n}").status_code == 200}
    target.ensure_types()
    if not before:  # a fresh Atlas: one request creates them all
        assert session.writes() == [("POST", f"{API}/types/typedefs", 200)]
    for definition in project["entityDefs"]:
        stored = atlas.typedef(definition["name"])
        assert stored["superTypes"] == definition["superTypes"]
        assert {a["name"] for a in definition["attributeDefs"]} <= {
            a["name"] for a in stored["attributeDefs"]
        }
    for relationship in project["relationshipDefs"]:
        stored = atlas.typedef(relationship["name"])
        assert stored["endDef1"]["name"] == relationship["endDef1"]["name"]
        assert stored["endDef2"]["type"] == relationship["endDef2"]["type"]
    versions = {n: (atlas.typedef(n)["guid"], atlas.typedef(n)["version"]) for n in names}

    # Again: reads only, and Atlas's definitions keep their versions.
    session.calls.clear()
    target.ensure_types()
    assert session.calls, "expected the target to read the types"
    assert session.writes() == []
    assert {n: (atlas.typedef(n)["guid"], atlas.typedef(n)["version"]) for n in names} == versions

    # A later revision of the file adds optional attributes: Atlas updates the types in place.
    # (To a type the demo does not use, and a string to the struct: unset there, the demo's
    # entities look the same with or without them.)
    probe = f"probe{uuid.uuid4().hex[:8]}"
    grown = copy.deepcopy(project)
    dataset_def = next(d for d in grown["entityDefs"] if d["name"] == DATASET)
    dataset_def["typeVersion"] = "1.1"
    dataset_def["attributeDefs"].append(
        {
            "name": probe,
            "typeName": "double",
            "isOptional": True,
            "cardinality": "SINGLE",
            "isUnique": False,
            "isIndexable": False,
        }
    )
    field_def = next(d for d in grown["structDefs"] if d["name"] == "servemeta_field")
    field_def["attributeDefs"].append(
        {
            "name": probe,
            "typeName": "string",
            "isOptional": True,
            "cardinality": "SINGLE",
            "isUnique": False,
            "isIndexable": False,
        }
    )
    session = RecordingSession()
    newer = rest_target(atlas_server, session=session, typedefs=grown)
    newer.ensure_types()
    assert session.writes() == [("PUT", f"{API}/types/typedefs", 200)]
    stored = atlas.typedef(DATASET)
    assert stored["guid"] == versions[DATASET][0]  # the same type, not a new one
    assert stored["version"] == versions[DATASET][1] + 1
    assert stored["typeVersion"] == "1.1"
    added = next(a for a in stored["attributeDefs"] if a["name"] == probe)
    assert (added["typeName"], added["isOptional"]) == ("double", True)
    # Nothing was dropped.
    assert {a["name"] for a in dataset_def["attributeDefs"]} <= {
        a["name"] for a in stored["attributeDefs"]
    }
    assert probe in {a["name"] for a in atlas.typedef("servemeta_field")["attributeDefs"]}

    # The new attribute takes values at once, and neither revision has more to do.
    uri = f"feast://features/{probe}"
    qualified_name = naming.uri_dataset(uri, "types-it")
    written = newer.write(
        [Entity(DATASET, qualified_name, {"name": probe, "uri": uri, probe: 0.25})]
    )
    assert written.rejected == {} and written.written == 1
    assert atlas.must(DATASET, qualified_name)["attributes"][probe] == 0.25
    session.calls.clear()
    newer.ensure_types()
    target.ensure_types()  # an older sink never takes the attribute away again
    assert session.writes() == []
    assert probe in {a["name"] for a in atlas.typedef(DATASET)["attributeDefs"]}
    target.close()
    newer.close()


@pytest.mark.timeout(BUDGET)
def test_events_become_entities_with_their_attributes_and_relationships(
    atlas: Atlas, rest_run: RestRun
) -> None:
    demo = rest_run.demo
    version = atlas.must(MODEL_VERSION, demo.version)
    attributes = version["attributes"]
    assert version["status"] == "ACTIVE"
    assert attributes["name"] == "wine 1"
    assert (attributes["modelName"], attributes["version"]) == ("wine", "1")
    assert attributes["framework"] == "sklearn"
    assert attributes["frameworkVersion"] == "1.5.0"
    assert attributes["algorithm"] == "RandomForestClassifier"
    assert attributes["metrics"] == {"test.accuracy": 0.97}
    assert attributes["artifactUri"] == "s3://models/wine/1/model.pkl"
    assert attributes["artifactScheme"] == "s3"
    assert attributes["artifactEncryption"] == "ENCRYPTED_AT_REST"
    assert attributes["accessMode"] == "private"
    assert attributes["trainingRunId"] == "run-42"
    assert attributes["hyperParameters"] == {"n_estimators": "50"}
    assert attributes["tags"] == ["demo"]
    assert attributes["properties"] == {"team": "ml"}
    assert attributes["owner"] == "data-science"
    assert attributes["status"] == "LOADED"
    assert attributes["loadedAt"] == millis(T0)
    relations = version["relationshipAttributes"]
    input_schema = atlas.must(DATA_SCHEMA, demo.schema(INPUT.fingerprint))
    output_v2 = atlas.must(DATA_SCHEMA, demo.schema(OUTPUT_V2.fingerprint))
    model = atlas.must(MODEL, naming.model("wine", demo.cluster))
    assert relations["inputSchema"]["guid"] == input_schema["guid"]
    # The SchemaChanged event moved the output schema on.
    assert relations["outputSchema"]["guid"] == output_v2["guid"]
    assert relations["model"]["guid"] == model["guid"]
    change = atlas.must(SCHEMA_CHANGE, demo.schema_change)
    assert [c["guid"] for c in relations["schemaChanges"]] == [change["guid"]]
    assert change["attributes"]["previousFingerprint"] == OUTPUT.fingerprint
    # The demo's producer claims BACKWARD; a new required field leaves old data unreadable
    # by the new schema's readers: the sink's own verdict is FORWARD, the claim kept beside.
    assert change["attributes"]["compatibility"] == "FORWARD"
    assert change["attributes"]["claimedCompatibility"] == "BACKWARD"
    fields = input_schema["attributes"]["fields"]
    assert [(f["typeName"], f["attributes"]["name"], f["attributes"]["type"]) for f in fields] == [
        ("servemeta_field", "alcohol", "double"),
        ("servemeta_field", "color_intensity", "double"),
    ]
    assert input_schema["attributes"]["fingerprint"] == INPUT.fingerprint
    assert model["attributes"]["latestVersion"] == "1"

    deployment = atlas.must(DEPLOYMENT, demo.deployment)
    attributes = deployment["attributes"]
    assert attributes["status"] == "IN_SERVICE"
    assert attributes["currentVersion"] == "1"
    assert (attributes["serverKind"], attributes["serverName"]) == ("python", SERVER)
    assert attributes["cluster"] == demo.cluster
    assert (attributes["language"], attributes["languageVersion"]) == ("python", "3.11")
    assert (attributes["host"], attributes["replicas"]) == ("h1", 2)
    # The live figures are the version's, on its own entity beside the deployment.
    figures = atlas.must(SERVING_STATS, naming.serving_stats(SERVER, "wine", "1", demo.cluster))
    linked = deployment["relationshipAttributes"]["versionStats"]
    assert [r["guid"] for r in linked] == [figures["guid"]]
    assert figures["attributes"]["version"] == "1"
    last_requests, last_errors = WINDOWS[-1]
    last_start = T0 + timedelta(seconds=60 * len(WINDOWS))
    window = figures["attributes"]["latestWindow"]
    assert window["typeName"] == "servemeta_scoring_window"
    window = window["attributes"]
    assert (window["requests"], window["errors"]) == (last_requests, last_errors)
    assert window["start"] == millis(last_start)
    assert window["end"] == millis(last_start + timedelta(seconds=60))
    assert window["errorsByKind"] == {"timeout": last_errors}
    assert window["latencyMaxSeconds"] == pytest.approx(0.004 * (1 + last_errors))
    assert window["latencyP99Seconds"] == pytest.approx(0.004)
    lifetime = figures["attributes"]["lifetime"]
    assert (lifetime["requests"], lifetime["errors"], lifetime["windows"]) == (
        sum(r for r, _ in WINDOWS),
        sum(e for _, e in WINDOWS),
        len(WINDOWS),
    )
    # Nothing of a window is written on the deployment itself any more.
    assert "latestWindow" not in attributes or attributes["latestWindow"] is None
    inputs = {r["guid"] for r in deployment["relationshipAttributes"]["inputs"]}
    outputs = {r["guid"] for r in deployment["relationshipAttributes"]["outputs"]}
    assert inputs == {version["guid"], atlas.must(KAFKA_TOPIC, demo.topic("wine-requests"))["guid"]}
    assert outputs == {atlas.must(KAFKA_TOPIC, demo.topic("wine-scores"))["guid"]}
    topic = atlas.must(KAFKA_TOPIC, demo.topic("wine-requests"))["attributes"]
    assert (topic["topic"], topic["uri"]) == ("wine-requests", "kafka://wine-requests")
    source = atlas.must(FS_PATH, demo.source)
    assert source["attributes"]["path"] == "/data/wine.csv"
    assert source["attributes"]["description"] == "training source wine"


def in_cluster(atlas: Atlas, cluster: str, type_name: str = "Referenceable") -> list[str]:
    """``type:qualifiedName`` of the entities of one cluster, by Atlas's basic search."""
    found = atlas.search(
        typeName=type_name,
        limit=1000,
        entityFilters={
            "attributeName": "qualifiedName",
            "operator": "endsWith",
            "attributeValue": f"@{cluster}",
        },
    )
    return sorted(f"{e['typeName']}:{e['attributes']['qualifiedName']}" for e in found)


@pytest.mark.timeout(BUDGET)
def test_lineage_runs_from_training_data_to_the_output_topic(
    atlas: Atlas,
    rest_run: RestRun,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    in_process_cli: None,
) -> None:
    demo = rest_run.demo
    source = f"{FS_PATH}:{demo.source}"
    training = f"{TRAINING}:{demo.training}"
    version = f"{MODEL_VERSION}:{demo.version}"
    deployment = f"{DEPLOYMENT}:{demo.deployment}"
    requests_topic = f"{KAFKA_TOPIC}:{demo.topic('wine-requests')}"
    scores_topic = f"{KAFKA_TOPIC}:{demo.topic('wine-scores')}"

    lineage = atlas.lineage(MODEL_VERSION, demo.version)
    assert lineage["guidEntityMap"][lineage["baseEntityGuid"]]["attributes"]["qualifiedName"] == (
        demo.version
    )
    chain = {
        (source, training),
        (training, version),
        (version, deployment),
        (deployment, scores_topic),
    }
    assert chain <= edges(lineage)
    # What Atlas 2.1 answered: the lineage of a data set holds the processes downstream and
    # their outputs, not the other inputs of those processes; the deployment's input topic is
    # not in the model version's lineage. The deployment's own lineage has it.
    deployment_lineage = atlas.lineage(DEPLOYMENT, demo.deployment, direction="INPUT")
    assert {(requests_topic, deployment), (version, deployment)} <= edges(deployment_lineage)
    assert (training, version) in edges(deployment_lineage)

    # `atlas-sink lineage` reads the same graph from Atlas (search, then lineage).
    monkeypatch.setenv("ATLAS_URL", atlas.url)
    monkeypatch.setenv("ATLAS_USERNAME", atlas.server.auth[0])
    monkeypatch.setenv("ATLAS_PASSWORD", atlas.server.auth[1])
    capsys.readouterr()
    code = cli.main(["lineage", "wine", "--target", "atlas-rest", "--cluster", demo.cluster])
    assert code == exit_codes.EXIT_OK
    text = capsys.readouterr().out
    upstream, downstream = text.split("downstream:")
    assert upstream.startswith(f"{MODEL_VERSION} {demo.version} (wine 1)")
    assert f"<- {TRAINING} {demo.training}" in upstream
    assert f"<- {FS_PATH} {demo.source}" in upstream
    assert f"-> {DEPLOYMENT} {demo.deployment}" in downstream
    assert f"-> {KAFKA_TOPIC} {demo.topic('wine-scores')}" in downstream


@pytest.mark.timeout(BUDGET)
def test_pii_on_a_training_source_propagates_to_the_model_and_the_deployment(
    atlas: Atlas, rest_run: RestRun
) -> None:
    demo = rest_run.demo
    # The sink's rule classified the training data set itself...
    source = atlas.must(FS_PATH, demo.source)
    assert [
        (c["typeName"], c["entityGuid"], c["propagate"]) for c in source["classifications"]
    ] == [("PII", source["guid"], True)]

    # ...and Atlas carries it down the lineage (asynchronously in some versions: poll).
    def propagated() -> dict[str, dict[str, set[str]]]:
        found = {
            name: classification_sources(atlas, atlas.must(type_name, qualified_name))
            for name, type_name, qualified_name in (
                ("version", MODEL_VERSION, demo.version),
                ("deployment", DEPLOYMENT, demo.deployment),
                ("training", TRAINING, demo.training),
                ("scores", KAFKA_TOPIC, demo.topic("wine-scores")),
            )
        }
        return found if all("PII" in f for f in found.values()) else {}

    found = poll("PII propagated along the lineage", propagated)
    for sources in found.values():
        assert sources["PII"] == {demo.source}
    # The event's own classification of the model version flows downstream too.
    assert found["version"]["Confidential"] == {demo.version}
    assert found["deployment"]["Confidential"] == {demo.version}
    assert found["scores"]["Confidential"] == {demo.version}
    assert "Confidential" not in found["training"]  # upstream of the version: untouched
    requests_topic = atlas.must(KAFKA_TOPIC, demo.topic("wine-requests"))
    assert requests_topic.get("classifications") in (None, [])


@pytest.mark.timeout(BUDGET)
def test_the_governance_report_reads_atlas(
    atlas: Atlas,
    rest_run: RestRun,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    in_process_cli: None,
) -> None:
    demo = rest_run.demo
    monkeypatch.setenv("ATLAS_URL", atlas.url)
    monkeypatch.setenv("ATLAS_USERNAME", atlas.server.auth[0])
    monkeypatch.setenv("ATLAS_PASSWORD", atlas.server.auth[1])
    capsys.readouterr()
    code = cli.main(
        ["report", "wine", "--target", "atlas-rest", "--cluster", demo.cluster, "--json"]
    )
    assert code == exit_codes.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["version"]["qualifiedName"] == demo.version
    assert [s["qualifiedName"] for s in report["training"]["sources"]] == [demo.source]
    assert report["training"]["runId"] == "run-42"
    assert report["type"]["algorithm"] == "RandomForestClassifier"
    assert report["artifact"]["storage"]["verdict"] == "secure"
    assert report["quality"]["trained"] == {"test.accuracy": 0.97}
    (deployment,) = report["processes"]
    assert deployment["qualifiedName"] == demo.deployment
    assert deployment["inputs"] == [demo.topic("wine-requests")]
    assert deployment["outputs"] == [demo.topic("wine-scores")]
    relations = {tuple(r) for r in report["lineage"]["relations"]}
    requests_topic = f"{KAFKA_TOPIC}:{demo.topic('wine-requests')}"
    assert (requests_topic, f"{DEPLOYMENT}:{demo.deployment}") in relations
    assert [f["name"] for f in report["schemas"]["input"]["fields"]] == [
        "alcohol",
        "color_intensity",
    ]


@pytest.mark.timeout(BUDGET)
def test_search_by_type_and_by_classification_finds_the_demo_model(
    atlas: Atlas, atlas_server: AtlasServer, rest_run: RestRun
) -> None:
    demo = rest_run.demo
    version = atlas.must(MODEL_VERSION, demo.version)
    exact = {"attributeName": "qualifiedName", "operator": "eq", "attributeValue": demo.version}
    by_type = atlas.search(typeName=MODEL_VERSION, entityFilters=exact)
    assert [e["guid"] for e in by_type] == [version["guid"]]
    assert by_type[0]["attributes"]["name"] == "wine 1"
    by_classification = atlas.search(classification="Confidential", limit=1000)
    assert version["guid"] in {e["guid"] for e in by_classification}
    # A propagated classification finds the entities it reached, too, once it reached them:
    # from Atlas 2.2 propagation runs in background tasks, so poll.
    both = poll(
        "the propagated PII found by search",
        lambda: atlas.search(typeName=MODEL_VERSION, classification="PII", entityFilters=exact),
    )
    assert [e["guid"] for e in both] == [version["guid"]]
    assert set(both[0]["classificationNames"]) == {"Confidential", "PII"}
    deployments = poll(
        "the deployment found by its propagated PII",
        lambda: [
            e
            for e in atlas.search(typeName=DEPLOYMENT, classification="PII", limit=1000)
            if e["attributes"]["qualifiedName"] == demo.deployment
        ],
    )
    assert [e["attributes"]["qualifiedName"] for e in deployments] == [demo.deployment]
    # Every entity of the demo, by one search over the cluster's names.
    assert in_cluster(atlas, demo.cluster) == sorted(f"{t}:{q}" for t, q in demo.refs())

    # The sink's own search (free text on the model's name), page after page.
    client = AtlasClient(atlas_server.url, atlas_server.auth)
    try:
        found = list(
            client.search_all(MODEL, query="wine", attributes=["latestVersion"], page_size=2)
        )
    finally:
        client.close()
    models = {e["attributes"]["qualifiedName"]: e["attributes"].get("latestVersion") for e in found}
    assert models[naming.model("wine", demo.cluster)] == "1"


@pytest.mark.timeout(BUDGET)
def test_a_replay_of_the_topics_changes_no_entity(
    atlas: Atlas,
    rest_run: RestRun,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    in_process_cli: None,
) -> None:
    demo = rest_run.demo
    before = {ref: stable(atlas.must(*ref)) for ref in demo.refs()}
    assert len({e["guid"] for e in before.values()}) == len(before)

    # `atlas-sink replay` with the live sink's settings: a fresh group, fresh caches.
    config = rest_run.config
    env = harness.sink_environment(
        config.kafka_bootstrap_servers or "",
        config.topics,
        group=config.group_id,
        dlq_topic=config.dlq_topic,
        atlas_url=atlas.url,
        atlas_auth=atlas.server.auth,
        base={},
        settings={"SINK_CLASSIFICATION_RULES": json.dumps(PII_RULES)},
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = cli.main(["replay", "--from-beginning", "--target", "atlas-rest", "--json"])
    assert code == exit_codes.EXIT_OK
    counts = json.loads(capsys.readouterr().out)
    assert counts["messages"] == len(demo.events)
    assert counts["decoded"] == len(demo.events)
    assert counts["dead_letters"] == {}
    assert counts["complete"] is True

    after = {ref: stable(atlas.must(*ref)) for ref in demo.refs()}
    for ref in demo.refs():
        assert after[ref] == before[ref], ref
    # No second entity anywhere: the cluster holds exactly the demo's entities.
    assert in_cluster(atlas, demo.cluster) == sorted(f"{t}:{q}" for t, q in demo.refs())

    # A second consumer group over the same topics, with the library API: the same.
    second = replay_all(config)
    assert (second.consumed, second.dead_lettered) == (len(demo.events), {})
    assert {ref: stable(atlas.must(*ref)) for ref in demo.refs()} == before


@pytest.mark.timeout(BUDGET)
def test_a_classification_a_later_event_adds_reaches_the_existing_entity(
    atlas: Atlas, atlas_server: AtlasServer, kafka_bootstrap: str
) -> None:
    # Atlas applies the classifications of a bulk write only to the entities it creates
    # (EntityGraphMapper touches an updated entity's only with replaceClassifications): the
    # sink adds the missing ones through POST /entity/guid/{guid}/classifications.
    cluster = new_cluster("reclassified")
    first = model_loaded("1")
    again = dataclasses.replace(first, classifications=["Confidential", "Sensitive"])
    topics = new_topics(kafka_bootstrap)
    sink = start_sink(sink_config(atlas_server, kafka_bootstrap, topics))
    try:
        produce(kafka_bootstrap, topics.events, [event(cluster, first, seq=1, seconds=0)])
        step_until(sink, lambda: sink.totals.committed == 1)
        produce(kafka_bootstrap, topics.events, [event(cluster, again, seq=2, seconds=30)])
        step_until(sink, lambda: sink.totals.committed == 2)
    finally:
        sink.close()
        sink.pipeline.target.close()
    assert sink.totals.dead_lettered == {}
    version = atlas.must(MODEL_VERSION, naming.model_version("wine", "1", cluster))
    direct = {
        c["typeName"] for c in version["classifications"] if c["entityGuid"] == version["guid"]
    }
    assert direct == {"Confidential", "Sensitive"}
    assert version["attributes"]["loadedAt"] == millis(T0 + timedelta(seconds=30))
    deployment_name = naming.deployment(SERVER, "wine", cluster)
    poll(
        "Sensitive propagated to the deployment",
        lambda: (
            "Sensitive" in classification_sources(atlas, atlas.must(DEPLOYMENT, deployment_name))
        ),
    )


@pytest.mark.timeout(BUDGET)
def test_the_hook_target_makes_the_same_entities_as_rest(
    atlas: Atlas, atlas_server: AtlasServer, kafka_bootstrap: str, rest_run: RestRun
) -> None:
    if atlas_server.hook_topic is None:
        pytest.skip("ATLAS_URL without KAFKA_BOOTSTRAP_SERVERS: Atlas's hook broker is unknown")
    demo = Demo(new_cluster("hook"))
    demo.events = demo_events(demo.cluster)
    topics = new_topics(kafka_bootstrap)
    produce(kafka_bootstrap, topics.events, demo.events)
    # The topic Atlas consumes (the launcher configured it); ATLAS_URL lets the hook target
    # register the types and read entity state over REST.
    config = sink_config(atlas_server, kafka_bootstrap, topics, target="atlas-hook")
    assert config.atlas_hook_topic == atlas_server.hook_topic
    sink = run_sink(config, committed=len(demo.events))
    assert sink.totals.dead_lettered == {}
    assert sink.totals.entities_written >= len(demo.refs())

    # Atlas applies the notifications on its own time: wait for the last event's values.
    expected_total = sum(r for r, _ in WINDOWS)

    def applied() -> bool:
        figures = atlas.entity(
            SERVING_STATS, naming.serving_stats(SERVER, "wine", "1", demo.cluster)
        )
        return (
            figures is not None
            and (figures["attributes"]["lifetime"] or {}).get("requests") == expected_total
            and all(atlas.entity(*ref) is not None for ref in demo.refs())
        )

    poll("Atlas applied the hook notifications", applied)
    for via_hook, via_rest in zip(demo.refs(), rest_run.demo.refs(), strict=True):
        assert_becomes(
            functools.partial(portable_of, atlas, via_hook, demo),
            portable(atlas, atlas.must(*via_rest), rest_run.demo),
            f"{via_hook} (hook) against {via_rest} (REST)",
        )
        # Who wrote it is the difference: the hook message's user.
        assert atlas.must(*via_hook)["createdBy"] == atlas_server.auth[0]
    assert in_cluster(atlas, demo.cluster) == sorted(f"{t}:{q}" for t, q in demo.refs())


@pytest.mark.timeout(BUDGET)
def test_an_entity_atlas_refuses_lands_in_the_dlq_with_atlas_s_error_code(
    atlas: Atlas, atlas_server: AtlasServer, kafka_bootstrap: str
) -> None:
    # A server may name any classification; one Atlas has no type for is refused. (Atlas 2.1
    # itself answers such a bulk write with a bare HTTP 500, a NullPointerException: the
    # sink asks for the classification's type first, and Atlas answers that with a 404.)
    cluster = new_cluster("refused")
    refused = dataclasses.replace(model_loaded("1"), classifications=["Restricted"])
    fine = model_loaded("1")
    events = [
        event(cluster, refused, seq=1, seconds=0),
        event(cluster, fine, seq=1, seconds=1, model="iris"),
        event(cluster, stats(7, 0, 60), seq=2, seconds=120, model="iris"),
    ]
    topics = new_topics(kafka_bootstrap)
    produce(kafka_bootstrap, topics.events, events)
    config = sink_config(atlas_server, kafka_bootstrap, topics)
    sink = run_sink(config, committed=len(events))
    assert sink.totals.dead_lettered == {"target_rejected": 1}

    (letter,) = list(read_dlq(config, None, threading.Event()))
    assert letter.reason == "target_rejected"
    assert letter.original_topic == topics.events
    assert letter.value == encode(events[0])
    assert "ATLAS-404-00-001" in letter.error  # TYPE_NAME_NOT_FOUND, Atlas's own code
    assert "Restricted" in letter.error
    (raw,) = services.consume(kafka_bootstrap, topics.dlq, 1)
    headers = dict(header_list(raw.headers()))
    assert headers[REASON] == b"target_rejected"
    assert b"ATLAS-404-00-001" in headers[ERROR]
    assert headers[ORIGINAL_TOPIC] == topics.events.encode()
    assert int(headers[ORIGINAL_OFFSET]) == letter.original_offset

    # Nothing of the refused model version (nor what refers to it) is in Atlas; the rest is.
    assert atlas.entity(MODEL_VERSION, naming.model_version("wine", "1", cluster)) is None
    assert atlas.entity(DEPLOYMENT, naming.deployment(SERVER, "wine", cluster)) is None
    assert atlas.entity(TRAINING, naming.training("wine", "1", cluster)) is None
    atlas.must(DEPLOYMENT, naming.deployment(SERVER, "iris", cluster))
    iris = atlas.must(SERVING_STATS, naming.serving_stats(SERVER, "iris", "1", cluster))
    assert iris["attributes"]["lifetime"]["requests"] == 7
    iris_version = atlas.must(MODEL_VERSION, naming.model_version("iris", "1", cluster))
    assert "Confidential" in {c["typeName"] for c in iris_version["classifications"]}


@pytest.mark.timeout(BUDGET)
def test_a_500_is_retried_and_the_classification_checked_again(
    atlas: Atlas, atlas_server: AtlasServer
) -> None:
    """The real Atlas's 500: an entity with a classification whose type was deleted after
    the sink confirmed it. Atlas 2.1 answers POST /entity/bulk with
    "There was an error processing your request. It has been logged (ID ...)" (HTTP 500, a
    NullPointerException in EntityGraphMapper.createClassificationVertex); a JanusGraph lock
    conflict answers the same bare 500, which is why 500s are retried."""
    name = f"Ephemeral{uuid.uuid4().hex[:8]}"
    created = atlas.post("/types/typedefs", {"classificationDefs": [{"name": name}]})
    assert created.status_code == 200, created.text
    session = RecordingSession()
    target = rest_target(
        atlas_server, session=session, max_retries=2, backoff_base=0.05, backoff_max=0.1
    )
    try:
        assert target._classifications.problems([name]) == {}  # confirmed, and remembered
        deleted = atlas.session.delete(f"{atlas.url}{API}/types/typedef/name/{name}", timeout=30)
        assert deleted.status_code == 204, deleted.text
        topic = f"ephemeral-{uuid.uuid4().hex[:8]}"
        entity = Entity(
            KAFKA_TOPIC,
            f"{topic}@retry-it",
            {"name": topic, "topic": topic, "uri": f"kafka://{topic}"},
            classifications=[name],
        )
        session.calls.clear()
        with pytest.raises(TargetUnavailable, match="HTTP 500") as unavailable:
            target.write([entity])
        assert "still after 3 attempts" in str(unavailable.value)
        assert session.writes() == [("POST", f"{API}/entity/bulk", 500)] * 3

        # The next attempt asks Atlas about the type again and refuses the entity for good.
        session.calls.clear()
        result = target.write([entity])
        assert result.written == 0
        assert result.rejected[entity.ref].code == "ATLAS-404-00-001"
        assert session.writes() == []
        assert session.calls == [("GET", f"{API}/types/classificationdef/name/{name}", 404)]
        assert atlas.entity(KAFKA_TOPIC, entity.qualified_name) is None
    finally:
        target.close()


def readyz(server: MetricsServer) -> tuple[int, dict[str, Any]]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.timeout(BUDGET)
def test_atlas_stopped_mid_run_pauses_the_sink_which_then_catches_up(
    atlas: Atlas, atlas_server: AtlasServer, kafka_bootstrap: str
) -> None:
    """Stop Atlas under a running sink, produce, start Atlas again.

    The project's Atlas starts empty every time (local_services.atlas rebuilds its home, graph
    and Solr cores included), and what Atlas answered while it started again was "connection
    refused" until the server was ACTIVE: no 503 phase. So the events produced during the
    outage are a whole demo of their own, whose entities must appear exactly as the same
    events made them before the outage; and a replay afterwards rebuilds what the restart
    wiped. The sink finds its types gone (400 ATLAS-400-00-014) and registers them again.
    Runs last in this module: every later test would find an empty Atlas."""
    service = atlas_server.service
    if service is None:
        pytest.skip("ATLAS_URL names an Atlas this session cannot stop and start")
    before = Demo(new_cluster("before"), [])
    before.events = demo_events(before.cluster)
    during = Demo(new_cluster("during"), [])
    during.events = demo_events(during.cluster)
    topics = new_topics(kafka_bootstrap)
    config = sink_config(atlas_server, kafka_bootstrap, topics, retry_max_seconds=2.0)
    target = wiring.build_target(config)
    target.ensure_types()
    metrics, health = SinkMetrics(), Health()
    server = MetricsServer(metrics, health, "127.0.0.1", 0).start()
    sink = SinkConsumer(
        config, wiring.pipeline_factory(config, target), metrics=metrics, health=health
    )
    sink.start()

    def paused() -> float | None:
        return metrics.registry.get_sample_value("servemeta_sink_paused")

    starter: threading.Thread | None = None
    try:
        produce(kafka_bootstrap, topics.events, before.events)
        step_until(sink, lambda: sink.totals.committed == len(before.events))
        assert readyz(server)[0] == 200
        expected = {ref: portable(atlas, atlas.must(*ref), before) for ref in before.refs()}

        assert service.stop()
        produce(kafka_bootstrap, topics.events, during.events)
        step_until(sink, lambda: paused() == 1.0)
        status, detail = readyz(server)
        assert status == 503
        assert any("target unavailable" in p for p in detail["problems"]), detail
        assert sink.totals.committed == len(before.events)
        assert sink.totals.dead_lettered == {}

        # Atlas starts again (about a minute) while the sink keeps retrying.
        failures: list[BaseException] = []

        def start() -> None:
            try:
                service.start()
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)

        starter = threading.Thread(target=start, name="atlas-restart", daemon=True)
        starter.start()
        step_until(
            sink,
            lambda: (
                failures != [] or sink.totals.committed == len(before.events) + len(during.events)
            ),
            timeout=600,
        )
        assert failures == []
        starter.join(60)
        assert paused() == 0.0
        assert readyz(server)[0] == 200
        assert sink.totals.dead_lettered == {}
        failed_batches = metrics.registry.get_sample_value(
            "servemeta_sink_target_unavailable_total", {"stage": "target"}
        )
        assert failed_batches is not None and failed_batches >= 1
    finally:
        sink.close()
        server.stop()
        target.close()
        if starter is not None:
            starter.join(600)
        if service.status().state != "running":
            service.start()  # the Atlas tests after this one need it

    # Nothing produced during the outage was lost: its entities are what the same events made
    # before the outage, attribute for attribute, relationships and propagated PII included.
    for ref_during, ref_before in zip(during.refs(), before.refs(), strict=True):
        assert_becomes(
            functools.partial(portable_of, atlas, ref_during, during),
            expected[ref_before],
            ref_during,
        )
    assert in_cluster(atlas, during.cluster) == sorted(f"{t}:{q}" for t, q in during.refs())

    # The restart wiped what came before it; a replay of the topic writes it all again.
    assert atlas.entity(MODEL_VERSION, before.version) is None
    result = replay_all(config)
    assert (result.consumed, result.dead_lettered) == (len(before.events) + len(during.events), {})
    for ref in before.refs():
        assert_becomes(
            functools.partial(portable_of, atlas, ref, before),
            expected[ref],
            ref,
        )


def _exactly_once_log(cluster: str) -> tuple[list[ModelEvent], list[ModelEvent]]:
    """(the distinct events, the arrival log) of a rolling update out of order: replica-a
    loads version 1 (its source has a PII field, and no rule names the data set), replica-b
    loads version 2; windows arrive late and twice, an id comes again with another body, the
    old version's unload comes last, a failed load of version 3 comes first."""
    pii_fields = [
        dataclasses.replace(f, classifications=["PII"]) if f.name == "alcohol" else f
        for f in INPUT.fields
    ]
    loaded = model_loaded()
    source = dataclasses.replace(loaded.training.sources[0], schema=data_schema(pii_fields))
    loaded = dataclasses.replace(
        loaded, training=dataclasses.replace(loaded.training, sources=[source])
    )
    a = functools.partial(event, cluster, instance="replica-a")
    b = functools.partial(event, cluster, instance="replica-b", version="2")
    load_1 = a(loaded, seq=1, seconds=1)
    windows_a = [a(stats(10 * n, n % 2, 10 * n), seq=1 + n, seconds=10 * n + 60) for n in (1, 2, 3)]
    load_2 = b(dataclasses.replace(model_loaded(), replaces_version="1"), seq=1, seconds=100)
    windows_b = [b(stats(7 * n, 0, 100 + 10 * n), seq=1 + n, seconds=160 + 10 * n) for n in (1, 2)]
    unload_1 = a(ModelUnloaded(reason="replaced"), seq=5, seconds=200)
    failed_3 = event(
        cluster,
        ModelLoadFailed(reason="corrupt", error_kind="ValueError"),
        instance="replica-b",
        version="3",
        seq=4,
        seconds=300,
    )
    distinct = [load_1, *windows_a, load_2, *windows_b, unload_1, failed_3]
    resent = windows_a[1]
    assert isinstance(resent.payload, ScoringStats)
    conflicting = ModelEvent(
        envelope=resent.envelope,
        payload=dataclasses.replace(resent.payload, request_count=999),
    )
    log = [
        failed_3,
        windows_b[1],
        load_2,
        windows_a[2],
        windows_a[0],
        windows_b[1],  # redelivered
        load_1,
        windows_a[1],
        conflicting,
        windows_b[0],
        windows_a[2],  # redelivered
        unload_1,
        load_2,  # redelivered
    ]
    return distinct, log


MUTABLE_ATTRIBUTES = {
    DEPLOYMENT: (
        "status",
        "statusReason",
        "currentVersion",
        "servedVersions",
        SINK_STATE,
    ),
    SERVING_STATS: ("latestWindow", "lifetime", "replicas", "rollups", SINK_STATE),
    MODEL_VERSION: ("status", "statusReason", "replacesVersion", SINK_STATE),
    MODEL: ("latestVersion", SINK_STATE),
}


@pytest.mark.timeout(BUDGET)
def test_exactly_once_on_atlas_equals_the_distinct_events_in_order(
    atlas: Atlas, tmp_path: Path
) -> None:
    """The fixed scenario of the property test (tests/test_exactly_once.py) on the real
    Atlas: three sink lifetimes over an arrival log out of order, with redeliveries and a
    conflicting id, end where the distinct events in order end in the embedded catalog, and
    a second pass of the whole log changes nothing."""
    cluster = new_cluster("once")
    distinct, log = _exactly_once_log(cluster)
    messages = [RawMessage("events", 0, i, FRAME(to_avro(e))) for i, e in enumerate(log)]
    dead: list[str] = []
    for lifetime in (messages[:4], messages[4:9], messages[9:]):  # a restart between each
        target = rest_target(atlas.server)
        target.ensure_types()
        pipeline = Pipeline(target, Decoder(), Rules())
        for at in range(0, len(lifetime), 3):
            dead += [d.reason for d in pipeline.process(lifetime[at : at + 3]).dead]
        target.close()
    assert dead == ["conflicting_duplicate"]

    with LocalCatalog(tmp_path / "ordered.sqlite") as ordered:
        ordered.ensure_types()
        in_order = sorted(distinct, key=lambda e: e.envelope.event_time)
        framed = [RawMessage("events", 0, i, FRAME(to_avro(e))) for i, e in enumerate(in_order)]
        assert Pipeline(ordered, Decoder(), Rules()).process(framed).dead == []
        figures = [f.qualified_name for f in ordered.find(SERVING_STATS)]
        refs = [
            (DEPLOYMENT, naming.deployment(SERVER, "wine", cluster)),
            *((MODEL_VERSION, naming.model_version("wine", v, cluster)) for v in "123"),
            (MODEL, naming.model("wine", cluster)),
            *((SERVING_STATS, qualified_name) for qualified_name in figures),
        ]
        for type_name, qualified_name in refs:
            expected = ordered.entity(type_name, qualified_name)
            assert expected is not None
            found = atlas.must(type_name, qualified_name)["attributes"]
            for name in MUTABLE_ATTRIBUTES[type_name]:
                value = plain(found.get(name))
                assert value == expected.attributes.get(name), (qualified_name, name)
    deployment = atlas.must(DEPLOYMENT, naming.deployment(SERVER, "wine", cluster))
    attributes = deployment["attributes"]
    assert (attributes["status"], attributes["currentVersion"]) == ("IN_SERVICE", "2")
    lifetimes = [
        atlas.must(SERVING_STATS, qualified_name)["attributes"]["lifetime"]
        for qualified_name in figures
    ]
    assert sum(life["requests"] for life in lifetimes) == 10 + 20 + 30 + 7 + 14
    before = stable(deployment)

    # The field's PII reached the lineage below its data set, as a data set's own does.
    def propagated() -> dict[str, set[str]] | None:
        found = {
            qualified_name: set(classification_sources(atlas, atlas.must(t, qualified_name)))
            for t, qualified_name in (
                (MODEL_VERSION, naming.model_version("wine", "1", cluster)),
                (DEPLOYMENT, naming.deployment(SERVER, "wine", cluster)),
                (KAFKA_TOPIC, naming.kafka_topic("wine-scores", cluster)),
            )
        }
        return found if all("PII" in names for names in found.values()) else None

    poll("PII of a source field propagated", propagated)

    # A second pass of the whole log over the catalog it built, by a fresh sink: every
    # event is known (its sequence is applied, or it came twice in the pass), the
    # conflicting one is refused again, and the deployment does not change.
    target = rest_target(atlas.server)
    outcome = Pipeline(target, Decoder(), Rules()).process(messages)
    target.close()
    assert outcome.dropped_by_reason() == {
        "already_applied": len(distinct),
        "redelivered": 3,
        "conflicting_duplicate": 1,
    }
    assert stable(atlas.must(DEPLOYMENT, naming.deployment(SERVER, "wine", cluster))) == before


@pytest.mark.timeout(BUDGET)
def test_report_and_lineage_find_one_model_among_many_by_name(
    atlas: Atlas,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    in_process_cli: None,
) -> None:
    """More models than one search page holds (Atlas's default is 100), and names that a
    loose match would confuse: the one asked for is found, without --cluster."""
    cluster = new_cluster("many")
    tag = cluster.replace("-", "")
    names = [f"{tag}m{i:03}" for i in range(160)]
    asked, lookalikes = f"{tag}target", [f"{tag}Target", f"{tag}target-2", f"{tag}target 2"]
    events = [
        event(cluster, model_loaded(), seq=1, seconds=n, model=name, instance=f"i{n}")
        for n, name in enumerate([*names, asked, *lookalikes])
    ]
    target = rest_target(atlas.server)
    try:
        target.ensure_types()
        messages = [RawMessage("events", 0, i, FRAME(to_avro(e))) for i, e in enumerate(events)]
        outcome = Pipeline(target, Decoder(), Rules()).process(messages)
    finally:
        target.close()
    assert outcome.dead == []
    monkeypatch.setenv("ATLAS_URL", atlas.url)
    monkeypatch.setenv("ATLAS_USERNAME", atlas.server.auth[0])
    monkeypatch.setenv("ATLAS_PASSWORD", atlas.server.auth[1])
    capsys.readouterr()
    assert cli.main(["report", asked, "--target", "atlas-rest", "--json"]) == exit_codes.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["version"]["qualifiedName"] == naming.model_version(asked, "1", cluster)
    assert cli.main(["lineage", asked, "--target", "atlas-rest", "--json"]) == exit_codes.EXIT_OK
    lineage = json.loads(capsys.readouterr().out)
    assert f"{MODEL_VERSION}:{naming.model_version(asked, '1', cluster)}" in {
        f"{n['typeName']}:{n['attributes']['qualifiedName']}"
        for n in lineage["guidEntityMap"].values()
    }
    # A name no model has: the hint counts the models known, all pages of them.
    assert cli.main(["report", f"{tag}absent", "--target", "atlas-rest"]) != exit_codes.EXIT_OK
    hint = re.search(r"\.\.\. (\d+) more", capsys.readouterr().err)
    assert hint is not None and 20 + int(hint.group(1)) >= len(events)


@pytest.mark.timeout(BUDGET)
def test_an_s3_source_is_written_with_its_bucket(atlas: Atlas) -> None:
    """Atlas refuses an aws_s3_v2_object without its container (ATLAS-404-00-007): the sink
    writes the bucket, and the object in it."""
    cluster = new_cluster("s3")
    loaded = model_loaded()
    source = dataclasses.replace(loaded.training.sources[0], uri="s3://crm/customers.parquet")
    loaded = dataclasses.replace(
        loaded, training=dataclasses.replace(loaded.training, sources=[source])
    )
    target = rest_target(atlas.server)
    try:
        target.ensure_types()
        message = RawMessage(
            "events", 0, 0, FRAME(to_avro(event(cluster, loaded, seq=1, seconds=1)))
        )
        outcome = Pipeline(target, Decoder(), Rules()).process([message])
    finally:
        target.close()
    assert outcome.dead == []
    bucket = atlas.must("aws_s3_v2_bucket", naming.uri_dataset("s3://crm", cluster))
    found = atlas.must("aws_s3_v2_object", naming.uri_dataset(source.uri, cluster))
    assert found["attributes"]["bucketName"] == "crm"
    container = found["relationshipAttributes"]["container"]
    assert container["guid"] == bucket["guid"]
    training = atlas.must(TRAINING, naming.training("wine", "1", cluster))
    assert found["guid"] in {i["guid"] for i in training["relationshipAttributes"]["inputs"]}


def as_json(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, default=str)


def assert_same_lines(found: str, expected: str, what: str) -> None:
    """With the lines that differ, whole: pytest would cut long texts short."""
    diff = difflib.unified_diff(
        expected.splitlines(), found.splitlines(), "embedded", "atlas", lineterm=""
    )
    assert found == expected, f"{what}:\n" + "\n".join(diff)


def _report_scenario(cluster: str) -> list[ModelEvent]:
    """One model told everything (two versions, a schema change, windows), and one told the
    least the contract allows: nothing optional, no window."""
    least = ModelLoaded(
        model_type=ModelType(framework="sklearn"),
        artifact=Artifact(uri="file:///m.pkl", scheme="file"),
        training=Training(sources=[]),
        input_schema=INPUT,
        output_schema=OUTPUT,
        runtime=Runtime(language="python", language_version="3.11", host="h1"),
    )
    rng = random.Random(13)
    trained = profile_features({"alcohol": [rng.gauss(13, 0.8) for _ in range(500)]})
    version_2 = dataclasses.replace(model_loaded("2", replaces="1"), training_profile=trained)

    def window(seconds: int, shift: float) -> ScoringStats:
        served = profile_features({"alcohol": [rng.gauss(13 + shift, 0.8) for _ in range(50)]})
        return dataclasses.replace(stats(50, 1, seconds), features=served)

    return [
        *demo_events(cluster),
        event(cluster, version_2, seq=6, seconds=400, version="2"),
        # Version 2 on two replicas, its inputs drifted: live figures per version side by side.
        event(cluster, window(460, 3.0), seq=7, seconds=520, version="2"),
        event(cluster, window(470, 3.0), seq=1, seconds=530, version="2", instance="replica-b"),
        event(cluster, window(520, 3.0), seq=8, seconds=580, version="2"),
        event(cluster, least, seq=1, seconds=1, model="least", instance="replica-l"),
    ]


@pytest.mark.timeout(BUDGET)
def test_atlas_and_the_embedded_catalog_report_the_same_words(atlas: Atlas, tmp_path: Path) -> None:
    """The same events into both catalogs: the reports agree word for word, text and JSON,
    and what was never reported reads as unknown in both (no Atlas default, no None)."""
    cluster = new_cluster("same")
    messages = [
        RawMessage("events", 0, i, encode(e)) for i, e in enumerate(_report_scenario(cluster))
    ]
    rules = Rules((ClassificationRule("PII", dataset_pattern=re.compile(r"wine\.csv$")),))
    target = rest_target(atlas.server)
    try:
        target.ensure_types()
        assert Pipeline(target, Decoder(), rules).process(messages).dead == []
    finally:
        target.close()
    with LocalCatalog(tmp_path / "same.sqlite") as local:
        local.ensure_types()
        assert Pipeline(local, Decoder(), rules).process(messages).dead == []
        reports = {"local": {m: build_report(local, m, cluster) for m in ("wine", "least")}}
    client = AtlasClient(atlas.url, atlas.server.auth)
    try:
        remote = AtlasCatalog(client)
        reports["atlas"] = {m: build_report(remote, m, cluster) for m in ("wine", "least")}
    finally:
        client.close()
    for model in ("wine", "least"):
        local_report, atlas_report = reports["local"][model], reports["atlas"][model]
        assert_same_lines(render_text(atlas_report), render_text(local_report), model)
        assert_same_lines(as_json(atlas_report.data), as_json(local_report.data), model)
        assert "None" not in render_text(atlas_report)
    least = reports["atlas"]["least"].data
    assert least["artifact"]["sizeBytes"] is None
    assert least["artifact"]["encryptedAtRest"] is None
    assert least["artifact"]["storage"]["verdict"] == "unknown"
    (live,) = least["quality"]["live"]
    assert (live["windowEnd"], live["latencySeconds"]["p99"]) == (None, None)
    # The live figures per version, read back from Atlas's own entities.
    (served,) = reports["atlas"]["wine"].data["quality"]["byVersion"]
    versions = {v["version"]: v for v in served["versions"]}
    assert [versions["1"]["requests"], versions["2"]["requests"]] == [60, 150]
    assert len(versions["2"]["replicas"]) == 2
    assert versions["2"]["driftedFeatures"] == ["alcohol"]
    assert "versions served on" in render_text(reports["atlas"]["wine"])
