"""Atlas JSON, the typedef diff, the REST verdicts and the hook's message building. No I/O.

The entities checked are the ones the translation makes of the sample events; they are
checked against the project's definitions of Atlas's own types (deploy/atlas/builtin, which
the local Atlas is started with) plus the project's typedefs, read here with a registry of the
test's own rather than with the code under test.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from atlas_sink.atlas import entity_json
from atlas_sink.atlas.builtin_types import builtin_typedefs, load_model_files
from atlas_sink.atlas.client import AtlasClient, Verdict, classify, parse_error
from atlas_sink.atlas.typedefs import (
    CATEGORIES,
    TypedefPlan,
    load_project_typedefs,
    normalized,
    plan_typedefs,
    type_names,
)
from atlas_sink.core import naming
from atlas_sink.core.coalesce import coalesce, refs_needing_state
from atlas_sink.core.entities import Entity, EntityState, Ref
from atlas_sink.core.translate import Rules, translate
from atlas_sink.targets.atlas_hook import (
    MAX_MESSAGE_BYTES,
    Sender,
    build_messages,
    compressed_parts,
    message_keys,
)
from atlas_sink.targets.atlas_rest import AtlasRestTarget
from capture.events import ModelEvent
from tests.conftest import all_payloads, envelope

PROJECT = load_project_typedefs()
MODEL = entity_json.type_model(builtin_typedefs(), PROJECT)
SENDER = Sender(user="sink", created_by="sink", source_ip="127.0.0.1")


# -- Atlas's type system, as its model files define it --------------------------------------------


@dataclass
class Registry:
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    structs: dict[str, dict[str, Any]] = field(default_factory=dict)
    classifications: set[str] = field(default_factory=set)
    # (type, attribute) -> (relationship name, type at the other end)
    ends: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def add(self, document: dict[str, Any]) -> None:
        for definition in document.get("entityDefs") or []:
            self.entities[definition["name"]] = copy.deepcopy(definition)
        for definition in document.get("structDefs") or []:
            self.structs[definition["name"]] = copy.deepcopy(definition)
        for definition in document.get("classificationDefs") or []:
            self.classifications.add(definition["name"])
        for relationship in document.get("relationshipDefs") or []:
            one, two = relationship["endDef1"], relationship["endDef2"]
            self.ends[one["type"], one["name"]] = (relationship["name"], two["type"])
            self.ends[two["type"], two["name"]] = (relationship["name"], one["type"])

    def lineage(self, type_name: str) -> list[str]:
        order, pending = [], [type_name]
        while pending:
            current = pending.pop(0)
            if current not in order:
                order.append(current)
                pending += self.entities.get(current, {}).get("superTypes", [])
        return order

    def attributes(self, type_name: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for current in reversed(self.lineage(type_name)):
            definition = self.entities.get(current) or self.structs.get(current) or {}
            found.update({a["name"]: a for a in definition.get("attributeDefs", [])})
        return found

    def end(self, type_name: str, attribute: str) -> tuple[str, str] | None:
        for current in self.lineage(type_name):
            if (current, attribute) in self.ends:
                return self.ends[current, attribute]
        return None


@pytest.fixture(scope="module")
def registry() -> Registry:
    """Atlas's own types as the project defines them (deploy/atlas/builtin), then the project's:
    what a local Atlas holds once the sink registered its types."""
    found = Registry()
    for model in load_model_files():
        found.add(model.typedefs)
    found.add(PROJECT)
    return found


# -- the entities the translation makes ------------------------------------------------------


def _events() -> list[ModelEvent]:
    return [ModelEvent(envelope=envelope(i + 1), payload=p) for i, p in enumerate(all_payloads())]


def _entities(events: list[ModelEvent]) -> list[Entity]:
    updates = [u for event in events for u in translate(event, Rules())]
    states = {ref: EntityState() for ref in refs_needing_state(updates)}
    return coalesce(updates, states).entities


@pytest.fixture
def entities() -> list[Entity]:
    found = _entities(_events())
    assert {e.type_name for e in found} >= {
        "servemeta_model",
        "servemeta_model_version",
        "servemeta_training",
        "servemeta_deployment",
        "servemeta_data_schema",
        "servemeta_schema_change",
        "kafka_topic",
        "fs_path",
    }
    return found


def _check_value(registry: Registry, where: str, value: Any, type_name: str) -> None:
    if value is None:
        return
    if type_name == "date":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
        assert value > 10**12, f"{where}: {value} is not epoch milliseconds"
    elif type_name in ("int", "long"):
        assert isinstance(value, int), f"{where}: {value!r}"
    elif type_name in ("float", "double"):
        assert isinstance(value, int | float) and math.isfinite(value), f"{where}: {value!r}"
    elif type_name == "boolean":
        assert isinstance(value, bool), f"{where}: {value!r}"
    elif type_name == "string":
        assert isinstance(value, str), f"{where}: {value!r}"
    elif type_name.startswith("array<"):
        assert isinstance(value, list), f"{where}: {value!r}"
        for i, item in enumerate(value):
            _check_value(registry, f"{where}[{i}]", item, type_name[6:-1])
    elif type_name.startswith("map<"):
        assert isinstance(value, dict), f"{where}: {value!r}"
        key_type, value_type = type_name[4:-1].split(",")
        assert key_type == "string"
        for key, item in value.items():
            assert isinstance(key, str)
            _check_value(registry, f"{where}[{key!r}]", item, value_type)
    elif type_name in registry.structs:
        assert value["typeName"] == type_name, where
        known = registry.attributes(type_name)
        for name, item in value["attributes"].items():
            assert name in known, f"{where}: {type_name} has no attribute {name}"
            _check_value(registry, f"{where}.{name}", item, known[name]["typeName"])


def _check_object_id(
    registry: Registry, where: str, value: Any, end_type: str, guids: set[str]
) -> None:
    assert set(value) <= {"guid", "typeName", "uniqueAttributes", "relationshipType"}, where
    assert end_type in registry.lineage(value["typeName"]), (
        f"{where}: a {value['typeName']} where Atlas expects a {end_type}"
    )
    assert set(value["uniqueAttributes"]) == {"qualifiedName"}, where
    if "guid" in value:
        assert value["guid"] in guids, f"{where}: placeholder {value['guid']} not in the request"


def test_every_entity_matches_atlas_types(registry: Registry, entities: list[Entity]) -> None:
    body = entity_json.bulk_request(entity_json.topological_order(entities), MODEL)
    assert body["referredEntities"] == {}
    guids = [e["guid"] for e in body["entities"]]
    assert len(set(guids)) == len(guids)
    assert all(g.startswith("-") and int(g) < 0 for g in guids)
    for entity in body["entities"]:
        type_name = entity["typeName"]
        where = f"{type_name} {entity['attributes']['qualifiedName']}"
        assert type_name in registry.entities, where
        assert set(entity) <= {
            "typeName",
            "guid",
            "attributes",
            "relationshipAttributes",
            "classifications",
        }
        known = registry.attributes(type_name)
        for name, value in entity["attributes"].items():
            assert name in known, f"{where}: Atlas's {type_name} has no attribute {name}"
            assert registry.end(type_name, name) is None, (
                f"{where}: {name} is a relationship end, expected in relationshipAttributes"
            )
            _check_value(registry, f"{where}.{name}", value, known[name]["typeName"])
        for name, value in entity.get("relationshipAttributes", {}).items():
            end = registry.end(type_name, name)
            assert end is not None, f"{where}: {name} is no relationship end of {type_name}"
            relationship, end_type = end
            for item in value if isinstance(value, list) else [value]:
                _check_object_id(registry, f"{where}.{name}", item, end_type, set(guids))
                assert item["relationshipType"] == relationship, f"{where}.{name}"
        for classification in entity.get("classifications", []):
            assert classification == {"typeName": classification["typeName"], "propagate": True}
            assert classification["typeName"] in registry.classifications


def test_process_inputs_and_outputs_go_as_hooks_send_them(entities: list[Entity]) -> None:
    body = entity_json.bulk_request(entities, MODEL)
    training = next(e for e in body["entities"] if e["typeName"] == "servemeta_training")
    assert "inputs" not in training["attributes"] and "outputs" not in training["attributes"]
    (source,) = training["relationshipAttributes"]["inputs"]
    assert source["relationshipType"] == "dataset_process_inputs"
    assert source["typeName"] == "fs_path"
    (version,) = training["relationshipAttributes"]["outputs"]
    assert version["relationshipType"] == "process_dataset_outputs"
    # In the same request: the placeholder guid lets Atlas resolve it before it exists.
    placeholders = {e["attributes"]["qualifiedName"]: e["guid"] for e in body["entities"]}
    assert version["guid"] == placeholders[version["uniqueAttributes"]["qualifiedName"]]


def test_references_outside_the_request_have_no_guid(entities: list[Entity]) -> None:
    training = next(e for e in entities if e.type_name == "servemeta_training")
    body = entity_json.bulk_request([training], MODEL)
    (entity,) = body["entities"]
    for value in entity["relationshipAttributes"].values():
        for item in value:
            assert "guid" not in item
            assert item["uniqueAttributes"]["qualifiedName"]


def test_every_mandatory_attribute_is_sent_for_each_event_alone(registry: Registry) -> None:
    """Any event may be the first Atlas hears of an entity: it must be creatable from it."""
    for event in _events():
        for entity in _entities([event]):
            sent = entity_json.entity_json(entity, MODEL, {})
            given = {**sent["attributes"], **sent.get("relationshipAttributes", {})}
            for name, definition in registry.attributes(entity.type_name).items():
                if not definition.get("isOptional", True):
                    assert given.get(name) is not None, (
                        f"{type(event.payload).__name__}: {entity.type_name} "
                        f"{entity.qualified_name} lacks mandatory {name}"
                    )


def test_the_type_model_knows_every_date_and_relationship_end_of_the_types(
    registry: Registry,
) -> None:
    """The conversion reads the same definitions: every date attribute, own or inherited, is
    known as one (it needs converting), and every relationship end with its relationship."""
    for name in registry.entities:
        for attribute, definition in registry.attributes(name).items():
            if definition["typeName"] == "date":
                assert MODEL.attribute_type(name, attribute) == "date", f"{name}.{attribute}"
        for attribute in ("inputs", "outputs"):
            end = registry.end(name, attribute)
            if end is not None:
                assert MODEL.relationship_type(name, attribute) == end[0], f"{name}.{attribute}"
    assert MODEL.relationship_type("servemeta_deployment", "inputs") == "dataset_process_inputs"


def test_values_are_converted_to_atlas_forms() -> None:
    deployment = Entity(
        "servemeta_deployment",
        "s.m@c",
        {
            "statusSince": datetime(2026, 1, 1, tzinfo=UTC),
            "servedVersions": {"1": 3, "2": True, "3": None},
            "name": "n",
            "unknownAttribute": float("inf"),
        },
    )
    attributes = entity_json.entity_json(deployment, MODEL, {})["attributes"]
    assert attributes["statusSince"] == 1767225600000
    assert attributes["servedVersions"] == {"1": "3", "2": "true"}  # map<string,string>
    assert attributes["unknownAttribute"] is None
    entity_json.dumps(attributes)  # valid JSON: no Infinity left
    # A version's live figures, where the scoring windows go.
    figures = Entity(
        "servemeta_serving_stats",
        "s.m.1.stats@c",
        {
            "latestWindow": {"start": 1767225600000, "latencyMaxSeconds": float("nan")},
            "lifetime": {"requests": 3.0, "latencyMaxSeconds": float("nan"), "gone": None},
            "errorsByKind": {"timeout": 2, "gone": None},
            "name": "m 1 on s",
        },
    )
    attributes = entity_json.entity_json(figures, MODEL, {})["attributes"]
    window = attributes["latestWindow"]  # a struct
    assert window == {
        "typeName": "servemeta_scoring_window",
        "attributes": {"start": 1767225600000, "latencyMaxSeconds": None},
    }
    assert attributes["lifetime"] == {"requests": 3.0}  # map<string,double>
    assert attributes["errorsByKind"] == {"timeout": 2}  # map<string,long>
    entity_json.dumps(attributes)  # valid JSON: no NaN left


def test_topological_order_puts_referenced_entities_first() -> None:
    a = Entity("servemeta_training", "t@c", references={"outputs": [Ref("x", "v@c")]})
    b = Entity("x", "v@c", references={"model": Ref("y", "m@c")})
    c = Entity("y", "m@c")
    d = Entity("z", "alone@c")
    ordered = [e.qualified_name for e in entity_json.topological_order([a, d, b, c])]
    assert ordered == ["m@c", "v@c", "t@c", "alone@c"]
    # A cycle does not loop or drop anything.
    e = Entity("x", "1", references={"r": Ref("x", "2")})
    f = Entity("x", "2", references={"r": Ref("x", "1")})
    assert {x.qualified_name for x in entity_json.topological_order([e, f])} == {"1", "2"}


# -- typedef diff --------------------------------------------------------------------------------


def _as_atlas_returns(document: dict[str, Any]) -> dict[str, Any]:
    """What GET /types/typedefs answers for the same definitions: plus system fields."""
    stored = copy.deepcopy(normalized(document))
    for category in CATEGORIES:
        for index, definition in enumerate(stored[category]):
            definition.update(guid=f"guid-{category}-{index}", version=3, createdBy="admin")
            for attribute in definition.get("attributeDefs", []):
                attribute.update(searchWeight=-1, valuesMinCount=0, includeInNotification=False)
    return stored


def test_plan_on_empty_atlas_creates_everything() -> None:
    plan = plan_typedefs(PROJECT, normalized({}))
    assert sorted(type_names(plan.create)) == sorted(type_names(PROJECT))
    assert not any(plan.update.values()) and not plan.problems
    assert plan.needs_request


def test_plan_with_equal_types_sends_nothing() -> None:
    plan = plan_typedefs(PROJECT, _as_atlas_returns(PROJECT))
    assert plan == TypedefPlan(unchanged=tuple(type_names(PROJECT)))
    assert not plan.needs_request


def test_plan_adds_a_new_optional_attribute_keeping_atlas_s_own() -> None:
    stored = _as_atlas_returns(PROJECT)
    model = next(d for d in stored["entityDefs"] if d["name"] == "servemeta_model")
    model["attributeDefs"] = [a for a in model["attributeDefs"] if a["name"] != "latestVersion"]
    model["attributeDefs"].append({"name": "addedByOthers", "typeName": "string"})
    plan = plan_typedefs(PROJECT, stored)
    assert type_names(plan.update) == ["servemeta_model"] and not any(plan.create.values())
    (updated,) = plan.update["entityDefs"]
    names = [a["name"] for a in updated["attributeDefs"]]
    assert "latestVersion" in names and "addedByOthers" in names
    assert updated["guid"] == model["guid"]  # Atlas's definition, grown
    assert not plan.problems


def test_plan_creates_only_what_is_missing() -> None:
    stored = _as_atlas_returns(PROJECT)
    stored["relationshipDefs"] = stored["relationshipDefs"][1:]
    missing = PROJECT["relationshipDefs"][0]["name"]
    plan = plan_typedefs(PROJECT, stored)
    assert type_names(plan.create) == [missing] and not any(plan.update.values())


def test_plan_reports_what_atlas_would_refuse() -> None:
    wanted = copy.deepcopy(PROJECT)
    version = next(d for d in wanted["entityDefs"] if d["name"] == "servemeta_model_version")
    version["attributeDefs"].append({"name": "mandatoryNew", "typeName": "string"})
    version["attributeDefs"][0]["isOptional"] = False
    model = next(d for d in wanted["entityDefs"] if d["name"] == "servemeta_model")
    next(a for a in model["attributeDefs"] if a["name"] == "latestVersion")["typeName"] = "int"
    relationship = wanted["relationshipDefs"][0]
    relationship["endDef2"]["name"] = "renamed"
    plan = plan_typedefs(wanted, _as_atlas_returns(PROJECT))
    text = "\n".join(plan.problems)
    assert "servemeta_model_version.mandatoryNew: a new mandatory attribute" in text
    assert "servemeta_model.latestVersion: type int in the project, string in Atlas" in text
    assert f"{relationship['name']}.endDef2" in text
    assert not any(plan.update.values())


def test_plan_leaves_a_classification_defined_by_others_alone() -> None:
    stored = normalized({"classificationDefs": [{"name": "PII", "serviceType": "corp"}]})
    plan = plan_typedefs(PROJECT, stored)
    assert "PII" in plan.unchanged and "PII" not in type_names(plan.create)


def test_plan_appends_new_enum_elements() -> None:
    wanted = {"enumDefs": [{"name": "e", "elementDefs": [{"value": "A"}, {"value": "B"}]}]}
    stored = {
        "enumDefs": [{"name": "e", "guid": "g", "elementDefs": [{"value": "A", "ordinal": 0}]}]
    }
    plan = plan_typedefs(wanted, stored)
    (enum,) = plan.update["enumDefs"]
    assert enum["elementDefs"] == [{"value": "A", "ordinal": 0}, {"value": "B", "ordinal": 1}]


# -- REST verdicts -------------------------------------------------------------------------------


def _atlas(code: str, message: str = "m", cause: str | None = None) -> str:
    body = {"errorCode": code, "errorMessage": message}
    if cause:
        body["errorCause"] = cause
    return json.dumps(body)


BARE_500 = "There was an error processing your request. It has been logged (ID 3f2a...)."


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (None, None, Verdict.RETRY),  # connection refused, timeout
        (200, '{"mutatedEntities":{}}', Verdict.OK),
        (204, "", Verdict.OK),
        (401, "", Verdict.AUTH),
        (403, _atlas("ATLAS-403-00-001", "admin is not authorized"), Verdict.AUTH),
        (429, "", Verdict.RETRY),
        (408, "", Verdict.RETRY),
        (503, "", Verdict.RETRY),  # passive Atlas in HA, or starting
        (504, "<html>Gateway Timeout</html>", Verdict.RETRY),
        (500, BARE_500, Verdict.RETRY),  # how a JanusGraph lock exception comes back
        (500, _atlas("ATLAS-500-00-001", "Internal server error"), Verdict.RETRY),
        (400, _atlas("ATLAS-400-00-029", "x", "PermanentLockingException"), Verdict.RETRY),
        (409, _atlas("ATLAS-500-00-006", "import or export in progress"), Verdict.RETRY),
        (404, _atlas("ATLAS-404-00-007", "Invalid instance ... parameters"), Verdict.REJECT),
        (404, _atlas("ATLAS-404-00-00A", "Referenced entity ... not found"), Verdict.REJECT),
        (400, _atlas("ATLAS-400-00-014", "Type ENTITY ... does not exist"), Verdict.REJECT),
        (409, _atlas("ATLAS-409-00-001", "Given type x already exists"), Verdict.REJECT),
        (400, "Unrecognized token 'NaN'", Verdict.REJECT),
        (404, "<html>Not Found</html>", Verdict.RETRY),  # no Atlas behind that path
        (302, "", Verdict.RETRY),  # a login redirect or http -> https
    ],
)
def test_classify(status: int | None, body: str | None, verdict: Verdict) -> None:
    assert classify(status, body) is verdict


def test_parse_error_reads_atlas_s_body_or_quotes_what_came() -> None:
    error = parse_error(404, _atlas("ATLAS-404-00-007", "bad", "because"))
    assert (error.code, error.message, error.cause) == ("ATLAS-404-00-007", "bad", "because")
    other = parse_error(502, "<html>\n<body>Bad   Gateway</body></html>")
    assert other.code == "HTTP-502" and other.message == "<html> <body>Bad Gateway</body></html>"


def test_the_password_shows_nowhere() -> None:
    client = AtlasClient("http://atlas.invalid:21000", ("admin", "hunter2-secret"))
    target = AtlasRestTarget(client)
    try:
        shown = " ".join(
            [
                repr(target),
                repr(client),
                str(vars(target)),
                str(vars(client)),
                repr(client._session.auth),
            ]
        )
        assert "hunter2-secret" not in shown
        assert "admin" in repr(target)
    finally:
        target.close()
    with pytest.raises(ValueError) as refused:
        AtlasClient("http://admin:hunter2-secret@atlas:21000", ("a", "b"))
    assert "hunter2-secret" not in str(refused.value)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    target = AtlasClient(
        "http://atlas.invalid:21000",
        ("u", "p"),
        backoff_base=1.0,
        backoff_max=8.0,
        rng=random.Random(7),
    )
    try:
        delays = [target._backoff(attempt, None) for attempt in range(6)]
        for attempt, delay in enumerate(delays):
            step = min(8.0, 2.0**attempt)
            assert step / 2 <= delay <= step
        assert target._backoff(0, 5.0) >= 5.0
        assert target._backoff(0, 500.0) <= 8.0
    finally:
        target.close()


# -- hook messages ------------------------------------------------------------------------------


def _ids() -> Iterator[str]:
    return iter(f"id_{n}" for n in range(1000))


def test_hook_messages_are_keyed_by_model(entities: list[Entity]) -> None:
    keys = message_keys(entities)
    model = naming.model("wine", "local")
    for entity in entities:
        if entity.type_name.startswith("servemeta_") or entity.type_name in ("fs_path",):
            assert keys[entity.ref] == model, entity.ref
    messages = build_messages(entities, MODEL, SENDER, created_ms=1, msg_ids=_ids())
    assert [m.key for m in messages] == [model] + [m.key for m in messages[1:]]
    carried = [ref for m in messages for ref in m.refs]
    assert sorted(carried) == sorted(e.ref for e in entities)


def test_an_entity_too_big_for_a_message_takes_atlas_s_gzip_path() -> None:
    rng = random.Random(1)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1_600_000))
    big = Entity("servemeta_data_schema", "fp@c", {"name": "n", "fingerprint": "fp"})
    big.attributes["schemaText"] = noise
    messages = build_messages([big], MODEL, SENDER, created_ms=5, msg_ids=_ids())
    assert len(messages) >= 2
    parts = [json.loads(m.value) for m in messages]
    assert all(len(m.value) < MAX_MESSAGE_BYTES for m in messages)
    assert [p["msgSplitIdx"] for p in parts] == list(range(len(parts)))
    assert {p["msgSplitCount"] for p in parts} == {len(parts)}
    assert {p["msgId"] for p in parts} == {"id_0"}
    assert {p["msgCompressionKind"] for p in parts} == {"GZIP"}
    inner = json.loads(gzip.decompress(base64.b64decode("".join(p["message"] for p in parts))))
    (entity,) = inner["message"]["entities"]["entities"]
    assert entity["attributes"]["schemaText"] == noise
    assert inner["msgCreationTime"] == 5


def test_a_compressible_big_message_is_one_gzip_message() -> None:
    (part,) = compressed_parts(b'{"a":"' + b"x" * 2_000_000 + b'"}', "m_1")
    message = json.loads(part)
    assert (message["msgSplitIdx"], message["msgSplitCount"]) == (1, 1)
    assert gzip.decompress(base64.b64decode(message["message"])).startswith(b'{"a":"xxx')
