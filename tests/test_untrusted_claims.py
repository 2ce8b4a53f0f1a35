"""What a producer claims is checked, not taken: a DataSchema's fingerprint is recomputed from
its fields, so one model's events can never change another model's schema. Events are written
from the contract alone (to_avro + single-object framing), on the embedded catalog."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from atlas_sink.core import naming
from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import DATA_SCHEMA, SCHEMA_CHANGE, Rules
from atlas_sink.targets.local import LocalCatalog
from capture.dataschema import data_schema, fingerprint
from capture.events import (
    Compatibility,
    DataSchema,
    FieldSpec,
    ModelEvent,
    ModelIdentity,
    SchemaChanged,
    SchemaSide,
    to_avro,
)
from capture.framing import single_object_framer
from tests.conftest import INPUT, OUTPUT, envelope, model_loaded

FRAME = single_object_framer()
README = Path(__file__).resolve().parents[1] / "schemas" / "README.md"


def _loaded(model: str, sequence: int, input_schema: DataSchema) -> RawMessage:
    env = dataclasses.replace(envelope(sequence), model=ModelIdentity(name=model, version="1"))
    payload = dataclasses.replace(model_loaded(), input_schema=input_schema)
    return RawMessage(
        "events", 0, sequence, FRAME(to_avro(ModelEvent(envelope=env, payload=payload)))
    )


def test_a_schema_claiming_another_fingerprint_is_dead_lettered_with_both(tmp_path: Path) -> None:
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        pipeline = Pipeline(catalog, Decoder(), Rules())
        assert pipeline.process([_loaded("wine", 1, INPUT)]).dead == []
        wine_schema = catalog.entity(DATA_SCHEMA, naming.data_schema(INPUT.fingerprint, "local"))
        assert wine_schema is not None
        # Another model's event claims wine's fingerprint for other fields.
        forged = DataSchema(
            fields=[FieldSpec(name="ssn", type="string")], fingerprint=INPUT.fingerprint
        )
        outcome = pipeline.process([_loaded("beer", 2, forged)])
        assert [letter.reason for letter in outcome.dead] == ["fingerprint_mismatch"]
        detail = outcome.dead[0].detail
        assert INPUT.fingerprint in detail and fingerprint(forged.fields) in detail
        after = catalog.entity(DATA_SCHEMA, naming.data_schema(INPUT.fingerprint, "local"))
        assert after is not None and after.attributes == wine_schema.attributes


def test_the_readme_s_recipe_and_example_give_the_sink_s_fingerprint() -> None:
    """schemas/README.md is what a producer in another language follows."""
    text = README.read_text(encoding="utf-8")
    example = re.search(
        r"the JSON is `(\[\[.*?\]\])` and the\s+fingerprint `(sha256:[0-9a-f]+)`", text
    )
    assert example is not None
    assert example.group(1) == '[["alcohol","double",false],["color_intensity","double",false]]'
    assert fingerprint(INPUT.fields) == example.group(2) == INPUT.fingerprint


def test_a_name_with_a_right_to_left_override_is_refused_by_the_sink(tmp_path: Path) -> None:
    """The emitter refuses to build such an event; another producer can still send one."""
    record = to_avro(ModelEvent(envelope=envelope(1), payload=model_loaded()))
    record["envelope"]["model"]["name"] = "wine\u202etxt.exe"
    message = RawMessage("events", 0, 0, FRAME(record))
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        outcome = Pipeline(catalog, Decoder(), Rules()).process([message])
    assert [letter.reason for letter in outcome.dead] == ["validation"]
    assert "U+202E" in outcome.dead[0].detail


NEW_OUTPUT = data_schema([*OUTPUT.fields, FieldSpec(name="probability", type="double")])


def _changed(sequence: int, claimed: str, previous: DataSchema | None) -> RawMessage:
    payload = SchemaChanged(
        side=SchemaSide.OUTPUT,
        new_fingerprint=NEW_OUTPUT.fingerprint,
        new_schema=NEW_OUTPUT,
        previous_fingerprint=OUTPUT.fingerprint,
        compatibility=Compatibility(claimed),
        previous_schema=previous,
    )
    event = ModelEvent(envelope=envelope(sequence), payload=payload)
    return RawMessage("events", 0, sequence, FRAME(to_avro(event)))


def _verdicts(catalog: LocalCatalog) -> list[tuple[str, str]]:
    verdicts = []
    for name in catalog.qualified_names(SCHEMA_CHANGE):
        change = catalog.entity(SCHEMA_CHANGE, name)
        assert change is not None
        verdicts.append(
            (change.attributes["compatibility"], change.attributes["claimedCompatibility"])
        )
    return verdicts


def test_the_sink_overrules_a_wrong_compatibility_claim_with_its_own_verdict(
    tmp_path: Path,
) -> None:
    """The previous schema comes with the event (contract v2): judged from the event alone,
    on a catalog that has never seen it."""
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        outcome = Pipeline(catalog, Decoder(), Rules()).process([_changed(1, "FULL", OUTPUT)])
        assert (outcome.dead, outcome.compatibility) == ([], {"overruled": 1})
        assert _verdicts(catalog) == [("FORWARD", "FULL")]


def test_a_producer_naming_the_previous_schema_by_fingerprint_only_is_judged_from_the_catalog(
    tmp_path: Path,
) -> None:
    """A v1 producer sends no previous_schema: the sink finds it among the schemas it has
    stored, also after a restart (a new pipeline with empty caches); unknown, it says so."""
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        unknown = Pipeline(catalog, Decoder(), Rules()).process([_changed(1, "FULL", None)])
        assert unknown.compatibility == {"unjudged": 1}
        Pipeline(catalog, Decoder(), Rules()).process([_loaded("wine", 2, INPUT)])
        restarted = Pipeline(catalog, Decoder(), Rules())
        assert restarted.process([_changed(3, "FORWARD", None)]).compatibility == {"agreed": 1}
        assert sorted(_verdicts(catalog)) == [("FORWARD", "FORWARD"), ("UNKNOWN", "FULL")]


def test_a_previous_schema_that_is_not_the_one_named_is_dead_lettered(tmp_path: Path) -> None:
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        outcome = Pipeline(catalog, Decoder(), Rules()).process([_changed(1, "FULL", INPUT)])
        assert [letter.reason for letter in outcome.dead] == ["inconsistent"]
        assert INPUT.fingerprint in outcome.dead[0].detail
        assert OUTPUT.fingerprint in outcome.dead[0].detail
        assert _verdicts(catalog) == []
