"""Hostile input for the sink: valid events from the real emitter interleaved with malformed
messages of every kind the sink must dead-letter, each with the reasons it may be given.

``hostile_messages(malformed, valid, seed)`` is deterministic for a seed (event ids and
instance ids aside), so a failure reproduces; tests/test_hostile_input.py runs a small mix in CI
and the >= 10,000 one under ``-m slow``. ``entity_problems`` is the check every entity the sink
stored must pass.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastavro import parse_schema

from atlas_sink.core import naming
from capture import contract
from capture.config import EmitterConfig
from capture.dataschema import data_schema
from capture.emitter import Emitter
from capture.events import (
    Artifact,
    DataSchema,
    DataSource,
    Deployment,
    FieldSpec,
    Metric,
    ModelIdentity,
    ModelLoaded,
    ModelType,
    Runtime,
    Training,
)
from capture.framing import confluent_header, encode_body, single_object_header

# Reasons the decoder gives before it has a typed event, and those of semantic checks.
DECODE_REASONS = frozenset({"avro", "validation", "shape", "unknown_payload", "timestamp"})
CHECK_REASONS = frozenset(
    {"sequence", "inconsistent", "oversized", "not_finite", "name", "fingerprint_mismatch"}
)
RANDOM_REASONS = frozenset({"empty", "framing", "unknown_schema_id", "unknown_fingerprint"})

# Identity names: printable ones are valid whatever their script or punctuation (they are
# percent-encoded in qualified names); control characters, blanks and > 256 characters are not
# (capture.typecheck.check_names).
VALID_NAMES = (
    "wine",
    "user@example.com",
    'it\'s "quoted"',
    "a/b\\c",
    "модель",
    "模型-漢字",
    "نموذج",
    "🍷 emoji",
    "dots.and%25percent",
    "x" * 256,
)
INVALID_NAMES = (
    "tab\there",
    "new\nline",
    "nul\x00",
    "bell\x07",
    "del\x7f",
    "nel\x85",  # C1: a line break to many readers
    "csi\x9b",
    "",
    "   ",
    "y" * 257,
)
VALID_CLUSTERS = ("it", "eu/west", "кластер", "team@corp")

# Invalid UTF-8 byte strings: a lone continuation byte, an overlong slash, an encoded
# surrogate, a truncated 3-byte sequence, a code point past U+10FFFF, bytes never in UTF-8.
INVALID_UTF8 = (
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xe6\xbc",
    b"\xf4\x90\x80\x80",
    b"\xff\xfe",
)


@dataclass(frozen=True)
class Case:
    """One message: ``reasons`` empty for a valid event, else the DLQ reasons allowed."""

    kind: str
    value: bytes
    key: bytes
    reasons: frozenset[str] = frozenset()
    note: str = ""

    @property
    def valid(self) -> bool:
        return not self.reasons


# -- valid events, from the real emitter --------------------------------------------------------


class CapturingProducer:
    """The emitter's Kafka producer, for tests that never reach Kafka: keeps (value, key) of
    what it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class _Clock:
    """Event times a millisecond apart, from ``start``."""

    def __init__(self, start: datetime) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> datetime:
        return self.start + timedelta(milliseconds=next(self._ticks))


def _schema(rng: random.Random, width: int = 3) -> DataSchema:
    types = ("double", "long", "string", "boolean")
    return data_schema(
        [
            FieldSpec(name=f"f{i}_{rng.randrange(1000)}", type=rng.choice(types))
            for i in range(width)
        ]
    )


def _loaded(rng: random.Random, version: str, huge: str | None = None) -> ModelLoaded:
    schema_text = None
    tags = ["demo"]
    properties = {"team": "ml"}
    if huge == "schema_text":
        schema_text = "s" * (200 * 1024)  # under the 256 KiB text limit
    elif huge == "tags":
        tags = [f"t{i}" for i in range(1000)]  # exactly the list limit
    elif huge == "property":
        properties = {"blob": "p" * (250 * 1024)}
    inputs = data_schema(
        [FieldSpec(name="alcohol", type="double"), FieldSpec(name="hue", type="double")],
        schema_text=schema_text,
    )
    return ModelLoaded(
        model_type=ModelType(framework="sklearn", framework_version="1.5", algorithm="RF"),
        artifact=Artifact(uri=f"s3://models/{version}/model.pkl", scheme="s3", size_bytes=1234),
        training=Training(
            sources=[DataSource(uri=f"file:///data/src{rng.randrange(5)}.csv", schema=inputs)],
            run_id=f"run-{rng.randrange(100)}",
            hyper_parameters={"depth": str(rng.randrange(1, 9))},
        ),
        metrics=[Metric(name="accuracy", value=rng.random(), split="test")],
        input_schema=inputs,
        output_schema=_schema(rng, 1),
        runtime=Runtime(language="python", language_version="3.11", host="h1"),
        inputs=[f"kafka://requests-{rng.randrange(3)}"],
        outputs=["kafka://scores"],
        owner="data-science",
        tags=tags,
        classifications=rng.choice([[], ["Confidential"]]),
        properties=properties,
    )


def valid_events(count: int, seed: int, start: datetime) -> list[tuple[bytes, bytes, str]]:
    """``count`` framed events (value, key, what) written by a real ``Emitter``: every lifecycle
    call, scoring windows from its recorders, and names of every script and punctuation."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes, str]] = []
    clusters = itertools.cycle(VALID_CLUSTERS)
    names = itertools.cycle(VALID_NAMES)
    per_emitter = 40
    while len(out) < count:
        capture = CapturingProducer()
        deployment = Deployment(
            server_kind="python", server_name=next(names)[:60] + " scorer", cluster=next(clusters)
        )
        config = EmitterConfig(bootstrap_servers="127.0.0.1:9", topic="hostile", tick_seconds=5)
        clock = _Clock(start + timedelta(seconds=len(out)))
        emitter = Emitter(config, deployment, producer=capture, clock=clock)
        models = [ModelIdentity(name=next(names), version=v) for v in ("1", "2 β", "v@3")]
        kinds: list[str] = []
        recorders = []
        for i in range(min(per_emitter, count - len(out))):
            model = rng.choice(models)
            roll = rng.random()
            if i < len(models):
                model = models[i]
                huge = rng.choice([None, None, "schema_text", "tags", "property"])
                emitter.model_loaded(model, _loaded(rng, model.version, huge))
                kinds.append(f"loaded{'+' + huge if huge else ''}")
            elif roll < 0.45:
                recorder = emitter.scoring_recorder(model, window_seconds=3600)
                for _ in range(rng.randint(1, 30)):
                    latency = rng.expovariate(200)
                    error = rng.choice([None, None, None, "timeout", TimeoutError("t"), ""])
                    recorder.record(latency, error=error)
                recorders.append(recorder)
                kinds.append("stats")
            elif roll < 0.6:
                emitter.schema_changed(model, rng.choice(["INPUT", "OUTPUT"]), _schema(rng))
                kinds.append("schema_changed")
            elif roll < 0.75:
                emitter.model_load_failed(model, "no such file", "FileNotFoundError")
                kinds.append("load_failed")
            elif roll < 0.85:
                emitter.model_unloaded(model, reason=rng.choice([None, "scaled down"]))
                kinds.append("unloaded")
            else:
                emitter.model_loaded(model, _loaded(rng, model.version))
                kinds.append("loaded")
        # Lifecycle events are sent in call order; each recorder's window at close().
        emitter.close()
        lifecycle = [k for k in kinds if k != "stats"]
        what = lifecycle + ["stats"] * (len(capture.sent) - len(lifecycle))
        stats = emitter.stats()
        assert stats.dropped_total == 0 and len(capture.sent) == len(kinds), (stats, len(kinds))
        out += [(value, key, w) for (value, key), w in zip(capture.sent, what, strict=True)]
    return out[:count]


# -- malformed messages ---------------------------------------------------------------------------


@dataclass
class _Templates:
    """Plain records (as fastavro writes them) of one valid event per payload type."""

    now: datetime
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.now - timedelta(hours=1)
        micros = int(t.timestamp() * 1_000_000)
        envelope = {
            "event_id": "00000000-0000-4000-8000-000000000000",
            "event_time": micros,
            "producer": {
                "emitter_name": "hostile",
                "emitter_version": "0",
                "host": "h",
                "pid": 1,
                "instance_id": "hostile-instance",
            },
            "sequence": 1,
            "deployment": {
                "server_kind": "python",
                "server_name": "scorer",
                "cluster": "it",
                "environment": "",
            },
            "model": {"name": "wine", "version": "1", "content_hash": None},
        }
        rng = random.Random(0)
        loaded = _plain(_loaded(rng, "1"))
        schema = _plain(_schema(rng))
        self.records = {
            "ModelLoaded": {"envelope": envelope, "payload": ("ModelLoaded", loaded)},
            "ModelLoadFailed": {
                "envelope": envelope,
                "payload": (
                    "ModelLoadFailed",
                    {"reason": "gone", "error_kind": "IOError", "artifact_uri": None},
                ),
            },
            "ModelUnloaded": {"envelope": envelope, "payload": ("ModelUnloaded", {"reason": "x"})},
            "SchemaChanged": {
                "envelope": envelope,
                "payload": (
                    "SchemaChanged",
                    {
                        "side": "INPUT",
                        "new_fingerprint": schema["fingerprint"],
                        "new_schema": schema,
                        "previous_fingerprint": None,
                        "compatibility": "UNKNOWN",
                    },
                ),
            },
            "ScoringStats": {
                "envelope": envelope,
                "payload": (
                    "ScoringStats",
                    {
                        "window_start": micros - 60_000_000,
                        "window_end": micros,
                        "request_count": 10,
                        "error_count": 2,
                        "errors_by_kind": {"timeout": 2},
                        "latency": {
                            "min": 0.001,
                            "max": 0.02,
                            "mean": 0.005,
                            "p50": 0.004,
                            "p95": 0.015,
                            "p99": 0.02,
                            "sketch": {
                                "relative_accuracy": 0.01,
                                "counts": [4, 0, 6],
                                "first_index": -301,
                                "zero_count": 0,
                            },
                        },
                        "features": [],
                    },
                ),
            },
        }

    def record(self, kind: str) -> dict[str, Any]:
        record = copy.deepcopy(self.records[kind])
        name, payload = record["payload"]
        record["payload"] = (f"servemeta.events.{name}", payload)
        return record


def _plain(value: Any) -> Any:
    from capture.events import plain

    return plain(value)


_HEADER = single_object_header(contract.current().fingerprint)


def frame(record: dict[str, Any]) -> bytes:
    return _HEADER + encode_body(contract.current().parsed, record)


def _mutated_schema(mutate: Callable[[dict[str, Any]], None]) -> Any:
    schema = json.loads(contract.current().text)
    mutate(schema)
    return parse_schema(schema)


def _find(schema: Any, name: str) -> dict[str, Any]:
    """The named record or enum definition inside the schema."""
    if isinstance(schema, dict):
        if schema.get("name") == name and schema.get("type") in ("record", "enum"):
            return schema
        for value in schema.values():
            found = _find_in(value, name)
            if found is not None:
                return found
    raise KeyError(name)


def _find_in(value: Any, name: str) -> dict[str, Any] | None:
    if isinstance(value, dict):
        try:
            return _find(value, name)
        except KeyError:
            return None
    if isinstance(value, list):
        for item in value:
            found = _find_in(item, name)
            if found is not None:
                return found
    return None


def _set_type(record_name: str, field_name: str, new_type: Any) -> Callable[[Any], None]:
    def mutate(schema: Any) -> None:
        record = _find(schema, record_name)
        for f in record["fields"]:
            if f["name"] == field_name:
                f["type"] = new_type

    return mutate


class _Generator:
    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.templates = _Templates(now)
        self.key = b"it/hostile"

    def case(self, kind: str, value: bytes, reasons: frozenset[str], note: str = "") -> Case:
        return Case(kind, value, self.key, reasons, note)

    def any_record(self) -> tuple[str, dict[str, Any]]:
        kind = self.rng.choice(sorted(self.templates.records))
        return kind, self.templates.record(kind)

    # Each maker returns one Case; ``makers`` cycles through them all.

    def random_bytes(self) -> Case:
        length = self.rng.choice([0, 1, 4, 9, 10, 64, 500, 4096])
        value = self.rng.randbytes(length)
        return self.case("random_bytes", value, RANDOM_REASONS, f"{length} bytes")

    def truncated(self) -> Case:
        _, record = self.any_record()
        whole = frame(record)
        # Every length class: nothing, a partial header, the header alone, a partial body.
        cut = self.rng.choice(
            [0, 1, 2, 9, 10, 11, len(whole) // 2, len(whole) - 1, self.rng.randrange(len(whole))]
        )
        value = whole[:cut]
        reasons = {"empty"} if cut == 0 else {"framing"} if cut < 10 else {"avro"}
        return self.case("truncated", value, frozenset(reasons), f"{cut} of {len(whole)} bytes")

    def trailing_bytes(self) -> Case:
        _, record = self.any_record()
        value = frame(record) + self.rng.randbytes(self.rng.randint(1, 16))
        return self.case("trailing_bytes", value, frozenset({"avro"}))

    def unknown_fingerprint(self) -> Case:
        _, record = self.any_record()
        body = frame(record)[10:]
        fingerprint = self.rng.randbytes(8)
        while fingerprint in contract.by_fingerprint():
            fingerprint = self.rng.randbytes(8)
        value = single_object_header(fingerprint) + body
        return self.case("unknown_fingerprint", value, frozenset({"unknown_fingerprint"}))

    def unknown_schema_id(self) -> Case:
        _, record = self.any_record()
        value = confluent_header(self.rng.randrange(1, 2**31)) + frame(record)[10:]
        return self.case("unknown_schema_id", value, frozenset({"unknown_schema_id"}))

    def wrong_type(self) -> Case:
        """A record written with a mutated schema, framed as if written with the real one."""
        choice = self.rng.randrange(5)
        if choice == 0:  # an enum symbol the reader does not have
            schema = _mutated_schema(lambda s: _find(s, "SchemaSide")["symbols"].append("SIDEWAYS"))
            record = self.templates.record("SchemaChanged")
            record["payload"][1]["side"] = "SIDEWAYS"
            note = "enum symbol out of range"
        elif choice == 1:  # a payload union branch the reader does not have

            def extra_branch(s: Any) -> None:
                payload = next(f for f in s["fields"] if f["name"] == "payload")
                payload["type"].append(
                    {"type": "record", "name": "Rogue", "fields": [{"name": "x", "type": "long"}]}
                )

            schema = _mutated_schema(extra_branch)
            record = self.templates.record("ModelUnloaded")
            record["payload"] = ("servemeta.events.Rogue", {"x": 7})
            note = "union branch out of range"
        elif choice == 2:  # the event time as a string
            schema = _mutated_schema(_set_type("Envelope", "event_time", "string"))
            record = self.templates.record("ModelUnloaded")
            record["envelope"]["event_time"] = "yesterday noon"
            note = "event_time long -> string"
        elif choice == 3:  # the sequence as a double
            schema = _mutated_schema(_set_type("Envelope", "sequence", "double"))
            record = self.templates.record("ScoringStats")
            record["envelope"]["sequence"] = float(self.rng.randint(1, 1000))
            note = "sequence long -> double"
        else:  # the model identity as a long
            schema = _mutated_schema(_set_type("Envelope", "model", "long"))
            record = self.templates.record("ModelUnloaded")
            record["envelope"]["model"] = -(2**40)
            note = "model record -> long"
        value = _HEADER + encode_body(schema, record)
        return self.case("wrong_type", value, DECODE_REASONS | CHECK_REASONS, note)

    def oversized(self) -> Case:
        choice = self.rng.randrange(6)
        record = self.templates.record("ModelLoaded")
        payload = record["payload"][1]
        if choice == 0:  # the whole message over the 1 MB limit
            payload["input_schema"]["schema_text"] = "s" * 1_100_000
            note = "1.1 MB message"
        elif choice == 1:
            payload["input_schema"]["schema_text"] = "s" * (300 * 1024)
            note = "300 KiB schema text"
        elif choice == 2:
            payload["tags"] = [f"t{i}" for i in range(1001)]
            note = "1001 tags"
        elif choice == 3:
            payload["properties"] = {"blob": "p" * (257 * 1024)}
            note = "257 KiB property"
        elif choice == 4:
            payload["input_schema"]["fields"] = [
                {
                    "name": f"c{i}",
                    "type": "long",
                    "nullable": False,
                    "doc": None,
                    "classifications": [],
                }
                for i in range(5001)
            ]
            note = "5001 schema fields"
        else:
            record = self.templates.record("ScoringStats")
            stats = record["payload"][1]
            stats["errors_by_kind"] = {f"kind{i}": 1 for i in range(1001)}
            stats["error_count"] = stats["request_count"] = 1001
            note = "1001 error kinds"
        return self.case("oversized", frame(record), frozenset({"oversized"}), note)

    def invalid_utf8(self) -> Case:
        marker = "\u2603MARK\u2603"  # 11 bytes of UTF-8, found once in the frame
        _, record = self.any_record()
        where = self.rng.choice(["model", "server", "event_id", "producer"])
        if where == "model":
            record["envelope"]["model"]["name"] = marker
        elif where == "server":
            record["envelope"]["deployment"]["server_name"] = marker
        elif where == "event_id":
            record["envelope"]["event_id"] = marker
        else:
            record["envelope"]["producer"]["host"] = marker
        whole = frame(record)
        bad = self.rng.choice(INVALID_UTF8)
        encoded = marker.encode()
        replacement = (bad * len(encoded))[: len(encoded)]
        assert whole.count(encoded) == 1
        value = whole.replace(encoded, replacement)
        return self.case("invalid_utf8", value, frozenset({"avro"}), f"{where}: {bad!r}")

    def bad_name(self) -> Case:
        name = self.rng.choice(INVALID_NAMES)
        _, record = self.any_record()
        field_choice = self.rng.choice(["name", "version", "server_name", "cluster"])
        if field_choice in ("name", "version"):
            record["envelope"]["model"][field_choice] = name
        else:
            record["envelope"]["deployment"][field_choice] = name
        return self.case("bad_name", frame(record), frozenset({"validation"}), f"{field_choice}")

    def bad_derived_name(self) -> Case:
        """Strings that become entity names other than identities: URIs, fingerprints."""
        record = self.templates.record("ModelLoaded")
        payload = record["payload"][1]
        control = self.rng.choice(["\n", "\x00", "\x1b[31m", "\x85", "\x7f"])
        choice = self.rng.randrange(5)
        if choice == 0:
            payload["inputs"] = [f"kafka://requests{control}"]
        elif choice == 1:
            payload["outputs"] = ["kafka://"]  # no topic at all
        elif choice == 2:
            payload["training"]["sources"][0]["uri"] = f"file:///data/{control}x.csv"
        elif choice == 3:
            payload["output_schema"]["fingerprint"] = f"sha256:{control}"
        else:
            payload["replaces_version"] = f"0{control}"
        # A fingerprint that is not the fields' own is refused for that first, whatever it holds.
        reasons = frozenset({"fingerprint_mismatch"} if choice == 3 else {"name"})
        return self.case("bad_derived_name", frame(record), reasons, repr(control))

    def bad_timestamp(self) -> Case:
        far = self.rng.choice(
            [
                0,
                -1,
                int(datetime(1999, 12, 31, tzinfo=UTC).timestamp() * 1_000_000),
                int((self.now + timedelta(hours=2)).timestamp() * 1_000_000),
                int(datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1_000_000),
                2**62,
                -(2**62),
                2**63 - 1,
                -(2**63),
            ]
        )
        record = self.templates.record("ScoringStats")
        where = self.rng.choice(["event_time", "window_start", "window_end"])
        if where == "event_time":
            record["envelope"]["event_time"] = far
        else:
            stats = record["payload"][1]
            stats[where] = far
            if far > stats["window_end"] and where == "window_start":
                stats["window_end"] = far  # keep the order: the time itself is the fault
            if far < stats["window_start"] and where == "window_end":
                stats["window_start"] = far
        return self.case("bad_timestamp", frame(record), frozenset({"timestamp"}), where)

    def negative_count(self) -> Case:
        choice = self.rng.randrange(6)
        if choice == 0:
            record = self.templates.record("ScoringStats")
            record["payload"][1]["request_count"] = -1
            reasons, note = {"inconsistent"}, "request_count"
        elif choice == 1:
            record = self.templates.record("ScoringStats")
            stats = record["payload"][1]
            stats["error_count"], stats["errors_by_kind"] = -2, {"timeout": -2}
            reasons, note = {"inconsistent"}, "error_count"
        elif choice == 2:  # adds up, but one kind is negative
            record = self.templates.record("ScoringStats")
            record["payload"][1]["errors_by_kind"] = {"timeout": 5, "refused": -3}
            reasons, note = {"inconsistent"}, "errors_by_kind"
        elif choice == 3:
            record = self.templates.record("ModelUnloaded")
            record["envelope"]["sequence"] = self.rng.choice([0, -1, -(2**63)])
            reasons, note = {"sequence"}, "sequence"
        elif choice == 4:
            record = self.templates.record("ModelLoaded")
            record["payload"][1]["runtime"]["replicas"] = -3
            reasons, note = {"inconsistent"}, "replicas"
        else:
            record = self.templates.record("ScoringStats")
            record["payload"][1]["latency"]["min"] = -0.5
            reasons, note = {"inconsistent"}, "latency"
        return self.case("negative_count", frame(record), frozenset(reasons), note)

    def not_finite(self) -> Case:
        bad = self.rng.choice([math.nan, math.inf, -math.inf])
        if self.rng.random() < 0.5:
            record = self.templates.record("ScoringStats")
            field_name = self.rng.choice(["min", "max", "mean", "p50", "p95", "p99"])
            record["payload"][1]["latency"][field_name] = bad
            reasons, note = {"inconsistent"}, f"latency.{field_name}"
        else:
            record = self.templates.record("ModelLoaded")
            record["payload"][1]["metrics"][0]["value"] = bad
            reasons, note = {"not_finite"}, "metric"
        return self.case("not_finite", frame(record), frozenset(reasons), f"{note}={bad}")

    def errors_mismatch(self) -> Case:
        record = self.templates.record("ScoringStats")
        stats = record["payload"][1]
        if self.rng.random() < 0.5:
            stats["errors_by_kind"] = {"timeout": 1, "refused": 3}  # 4, not 2
        else:
            stats["error_count"] = stats["errors_by_kind"]["timeout"] = 11  # > 10 requests
        return self.case("errors_mismatch", frame(record), frozenset({"inconsistent"}))

    def duplicated_field(self) -> Case:
        if self.rng.random() < 0.5:  # one name twice in a data schema
            record = self.templates.record("SchemaChanged")
            fields = record["payload"][1]["new_schema"]["fields"]
            fields.append(dict(fields[0]))
            return self.case("duplicated_field", frame(record), frozenset({"inconsistent"}))
        # A field's bytes twice in the body (the event id written again after itself).
        record = self.templates.record("ModelUnloaded")
        record["envelope"]["event_id"] = "dup-" + "d" * self.rng.randint(1, 40)
        whole = frame(record)
        encoded = encode_body({"type": "string"}, record["envelope"]["event_id"])
        at = 10 + len(encoded)
        value = whole[:at] + encoded + whole[at:]
        return self.case("duplicated_field", value, DECODE_REASONS | CHECK_REASONS, "event_id")

    def makers(self) -> list[Callable[[], Case]]:
        return [
            self.random_bytes,
            self.truncated,
            self.trailing_bytes,
            self.unknown_fingerprint,
            self.unknown_schema_id,
            self.wrong_type,
            self.oversized,
            self.invalid_utf8,
            self.bad_name,
            self.bad_derived_name,
            self.bad_timestamp,
            self.negative_count,
            self.not_finite,
            self.errors_mismatch,
            self.duplicated_field,
        ]


def malformed(count: int, seed: int, now: datetime) -> Iterator[Case]:
    """``count`` malformed messages, every kind in turn (each with its own random choices)."""
    generator = _Generator(seed, now)
    makers = itertools.cycle(generator.makers())
    for _ in range(count):
        yield next(makers)()


def hostile_messages(malformed_count: int, valid_count: int, seed: int) -> list[Case]:
    """Valid events and malformed messages, interleaved at random positions (seeded)."""
    now = datetime.now(UTC)
    start = now.replace(microsecond=0) - timedelta(days=1)
    valid = [
        Case(f"valid:{what}", value, key)
        for value, key, what in valid_events(valid_count, seed, start)
    ]
    bad = list(malformed(malformed_count, seed, now))
    rng = random.Random(seed)
    # Merge keeping each list's own order (the emitter's order matters within a producer).
    slots = [True] * len(valid) + [False] * len(bad)
    rng.shuffle(slots)
    valid_iter, bad_iter = iter(valid), iter(bad)
    return [next(valid_iter) if is_valid else next(bad_iter) for is_valid in slots]


# -- what the catalog may hold ------------------------------------------------------------------


def _control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def entity_problems(
    type_name: str, qualified_name: str, attributes: dict[str, Any], clusters: set[str] | None
) -> list[str]:
    """What is malformed about a stored entity: empty if nothing. ``clusters``: the clusters
    the entity may belong to (None: any)."""
    problems = []
    name = attributes.get("name")
    if qualified_name.startswith("@") or "@" not in qualified_name or _control(qualified_name):
        problems.append(f"qualifiedName {qualified_name!r}")
    if isinstance(name, str) and _control(name):
        problems.append(f"name {name!r}")
    if type_name.startswith("servemeta_"):
        # Our own names parse back: components and cluster, percent-encoded.
        components, cluster = naming.split(qualified_name)
        if naming.qualified(components, cluster) != qualified_name:
            problems.append(f"qualifiedName {qualified_name!r} does not parse back")
        if clusters is not None and cluster not in clusters:
            problems.append(f"qualifiedName {qualified_name!r}: unknown cluster {cluster!r}")
    elif clusters is not None and not any(qualified_name.endswith("@" + c) for c in clusters):
        # Atlas's hooks' convention for topics and paths: '<name>@<namespace>', not encoded.
        problems.append(f"qualifiedName {qualified_name!r} names no known cluster")
    if _non_finite(attributes):
        problems.append("a non-finite number")
    return problems
