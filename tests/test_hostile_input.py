"""Hostile input: malformed messages interleaved with valid events through the real sink over
the real broker, the decoder fuzzed in-process, and the emitter's API under the same abuse.

The mixes come from tests/hostile.py. The CI run sends 2,000 messages; the full one
(``-m slow``) at least 10,000 malformed ones. RELIABILITY.md has the commands and figures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_sink.core.decode import DecodeError, Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import (
    DEPLOYMENT,
    MODEL_VERSION,
    SERVING_STATS,
    Rules,
    translate,
)
from atlas_sink.core.validate import InvalidEvent, Limits, check_event, check_names
from atlas_sink.kafka.consumer import SinkConsumer
from atlas_sink.kafka.dlq import read_dlq
from atlas_sink.runtime.config import SinkConfig, load_config
from atlas_sink.service import wiring
from atlas_sink.targets.local import LocalCatalog
from capture.config import EmitterConfig
from capture.contract import current
from capture.dataschema import data_schema
from capture.emitter import Emitter
from capture.encoding import EventEncoder, micros
from capture.events import (
    Artifact,
    DataSchema,
    Deployment,
    FeatureSketch,
    FieldSpec,
    Metric,
    ModelEvent,
    ModelIdentity,
    ModelLoaded,
    ModelType,
    Runtime,
    SchemaChanged,
    ScoringStats,
    Training,
    plain,
    to_avro,
)
from capture.framing import single_object_framer, single_object_header
from capture.stats import (
    MAX_ERROR_KINDS,
    MAX_LATENCY_SECONDS,
    OTHER_ERROR_KIND,
    ScoringRecorder,
    SignedSketch,
    Sketch,
    population_stability_index,
)
from capture.typecheck import EventValueError
from local_services import harness
from tests import hostile, services
from tests.conftest import INPUT, OUTPUT, model_loaded
from tests.conftest import envelope as conftest_envelope
from tests.services import catalog_dump

SEED = 20261128
CLUSTERS = {*hostile.VALID_CLUSTERS, "it"}


def _verdict(pipeline: Pipeline, value: bytes, offset: int = 0) -> str | None:
    """What the sink's pure stages make of a message: None (accepted) or the DLQ reason."""
    try:
        event = pipeline.decode(RawMessage("hostile", 0, offset, value))
        check_names(translate(event, pipeline.rules))
    except (DecodeError, InvalidEvent) as exc:
        return exc.reason
    return None


def _pure_pipeline() -> Pipeline:
    """decode() and the rules, without a target (nothing is written)."""
    return Pipeline(None, Decoder(), Rules(), Limits())  # type: ignore[arg-type]


# -- in-process: the generator's claims, and the decoder fuzzed -----------------------------------


def test_every_malformed_kind_gets_one_of_its_reasons_and_every_valid_event_passes() -> None:
    cases = hostile.hostile_messages(1500, 300, SEED)
    pipeline = _pure_pipeline()
    wrong = []
    verdicts: Counter[tuple[str, str | None]] = Counter()
    for offset, case in enumerate(cases):
        verdict = _verdict(pipeline, case.value, offset)
        verdicts[(case.kind.partition(":")[0], verdict)] += 1
        if (verdict is None) != case.valid or (verdict is not None and verdict not in case.reasons):
            wrong.append((case.kind, case.note, verdict))
    assert wrong == []
    kinds = {c.kind for c in cases if not c.valid}
    assert len(kinds) == 15  # every maker ran
    assert sum(n for (k, v), n in verdicts.items() if k == "valid") == 300
    # Each kind of fault is caught by the check meant for it.
    for kind, reason in (
        ("unknown_fingerprint", "unknown_fingerprint"),
        ("unknown_schema_id", "unknown_schema_id"),
        ("invalid_utf8", "avro"),
        ("bad_name", "validation"),
        ("bad_timestamp", "timestamp"),
        ("oversized", "oversized"),
        ("errors_mismatch", "inconsistent"),
        ("trailing_bytes", "avro"),
    ):
        assert verdicts[(kind, reason)] == 100, (kind, reason)
    # A made-up schema fingerprint is refused as not the fields' own; the other derived names
    # for the characters they hold.
    assert verdicts[("bad_derived_name", "name")] > 0
    assert verdicts[("bad_derived_name", "fingerprint_mismatch")] > 0
    assert sum(n for (k, _), n in verdicts.items() if k == "bad_derived_name") == 100
    assert verdicts[("not_finite", "not_finite")] > 0  # NaN metrics, since the fix
    assert verdicts[("negative_count", "sequence")] > 0


def _mutate(rng: random.Random, frame: bytes, others: Sequence[bytes]) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        op = rng.randrange(6)
        at = rng.randrange(len(data))
        if op == 0:  # bit flip
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncation
            del data[at:]
        elif op == 2:  # insertion
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # one byte set, often to a varint's extremes
            data[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 4:  # a slice repeated
            end = min(len(data), at + rng.randint(1, 16))
            data[at:at] = data[at:end]
        else:  # spliced with another frame
            other = rng.choice(others)
            data = data[:at] + other[rng.randrange(len(other)) :]
    return bytes(data)


def test_the_decoder_fuzzed_raises_only_decode_errors_and_stores_nothing_malformed(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    frames = [v for v, _, _ in hostile.valid_events(60, SEED, now - timedelta(hours=3))]
    rng = random.Random(SEED)
    mutated = [_mutate(rng, rng.choice(frames), frames) for _ in range(20_000)]
    catalog = LocalCatalog(tmp_path / "fuzz.sqlite")
    catalog.ensure_types()
    pipeline = Pipeline(catalog, Decoder(), Rules(), Limits(), clock=lambda: now)
    reasons: Counter[str] = Counter()
    unexpected: list[str] = []
    started = time.perf_counter()
    for offset, value in enumerate(mutated):
        try:
            event = pipeline.decode(RawMessage("fuzz", 0, offset, value))
        except (DecodeError, InvalidEvent) as exc:
            reasons[exc.reason] += 1
        except Exception as exc:  # what this test is for: nothing else may come out
            unexpected.append(f"{type(exc).__name__}: {exc} <- {value.hex()}")
        else:
            reasons["accepted"] += 1
            assert event.envelope.sequence >= 1
    decode_seconds = time.perf_counter() - started
    assert unexpected == []
    assert sum(reasons.values()) == 20_000
    assert reasons["avro"] > 5_000 and reasons["accepted"] > 500, reasons
    # The same frames through the whole pipeline into a catalog: nothing raises, nothing
    # malformed is stored, and nothing that passed the checks is refused by the catalog.
    dead: Counter[str] = Counter()
    for start in range(0, len(mutated), 500):
        batch = [
            RawMessage("fuzz", 0, start + i, v) for i, v in enumerate(mutated[start : start + 500])
        ]
        outcome = pipeline.process(batch)
        dead.update(letter.reason for letter in outcome.dead)
    assert "target_rejected" not in dead
    stored = catalog.find()
    assert len(stored) > 20
    problems = {
        e.qualified_name: hostile.entity_problems(e.type_name, e.qualified_name, e.attributes, None)
        for e in stored
    }
    assert {qn: p for qn, p in problems.items() if p} == {}
    print(f"fuzz: 20,000 frames decoded in {decode_seconds:.2f} s; {dict(reasons)}")


def _v3_frames(rng: random.Random, now: datetime) -> list[bytes]:
    """Windows with feature distributions of both signs, and loads with training profiles."""
    frame, frames = single_object_framer(), []
    for sequence in range(1, 41):
        recorder = ScoringRecorder(60, now=now - timedelta(minutes=10))
        for _ in range(rng.randint(1, 200)):
            recorder.record(rng.expovariate(100))
            recorder.record_features(
                {"a": rng.gauss(0, 10 ** rng.randint(-3, 6)), "b": rng.choice([None, 0.0, 2.5])}
            )
        stats = recorder.close_window(now - timedelta(minutes=9))
        assert stats is not None
        loaded = dataclasses.replace(model_loaded(), training_profile=stats.features)
        payload = stats if sequence % 2 else loaded
        env = dataclasses.replace(
            conftest_envelope(sequence), event_time=now - timedelta(minutes=8)
        )
        frames.append(frame(to_avro(ModelEvent(envelope=env, payload=payload))))
    return frames


def _use_every_sketch(event: ModelEvent, reference: FeatureSketch) -> None:
    """What the sink computes from an accepted event's sketches: none of it may raise."""
    payload = event.payload
    if isinstance(payload, ScoringStats):
        Sketch.from_event(payload.latency.sketch).quantile(0.99)
        features = payload.features
    else:
        assert isinstance(payload, ModelLoaded)
        features = payload.training_profile
    for feature in features:
        if feature.distribution is None:
            continue
        sketch = SignedSketch.from_event(feature.distribution)
        for q in (0.0, 0.5, 1.0):
            sketch.quantile(q)
        sketch.fraction_at_or_below(-1.0)
        for training, serving in (
            (feature.distribution, reference),
            (reference, feature.distribution),
        ):
            psi = population_stability_index(training, serving)
            assert psi is None or (psi >= 0.0 and math.isfinite(psi)), psi


def test_fuzzed_distributions_and_profiles_are_refused_or_safe_to_compute_with() -> None:
    """Contract v3's sketches, mutated: the decoder and the checks let through only what the
    sketch functions (quantiles, distribution function, PSI) can compute with."""
    now = datetime.now(UTC)
    rng = random.Random(SEED)
    frames = _v3_frames(rng, now)
    reference = SignedSketch()
    for number in (-3.0, 0.0, 0.5, 7.0, 1e6):
        reference.add(number)
    decoder = Decoder()
    reasons: Counter[str] = Counter()
    unexpected = []
    for _ in range(10_000):
        value = _mutate(rng, rng.choice(frames), frames)
        try:
            event = decoder.decode(value)
            check_event(event, Limits(), now)
        except (DecodeError, InvalidEvent) as exc:
            reasons[exc.reason] += 1
            continue
        reasons["accepted"] += 1
        try:
            _use_every_sketch(event, reference.to_event())
        except Exception as exc:  # what this test is for
            unexpected.append(f"{type(exc).__name__}: {exc} <- {value.hex()}")
    assert unexpected == []
    assert reasons["accepted"] > 300 and reasons["inconsistent"] > 100, reasons


# -- the real sink over the real broker ----------------------------------------------------------


@dataclass(frozen=True)
class _Sent:
    case: hostile.Case
    offset: int


def _produce(bootstrap: str, topic: str, cases: Sequence[hostile.Case]) -> list[_Sent]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "message.max.bytes": 4 * 1024 * 1024,
            "linger.ms": 5,
        }
    )
    offsets: list[int | None] = [None] * len(cases)

    def delivered(index: int, err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        offsets[index] = msg.offset()

    for index, case in enumerate(cases):
        while True:
            try:
                producer.produce(
                    topic,
                    value=case.value,
                    key=case.key,
                    on_delivery=functools.partial(delivered, index),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    return [_Sent(c, o) for c, o in zip(cases, offsets, strict=True) if o is not None]


def _run_hostile_stream(
    bootstrap: str, tmp_path: Path, malformed: int, valid: int, deadline_seconds: float
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    cases = hostile.hostile_messages(malformed, valid, SEED)
    timings["generate"] = time.monotonic() - started
    topic = f"hostile.{uuid.uuid4().hex[:10]}"
    # One partition keeps the mix's order; 4 MiB messages let the over-limit ones through.
    harness.create_topics(
        bootstrap,
        [topic, f"{topic}.dlq"],
        partitions=1,
        config={"max.message.bytes": "4194304"},
    )
    mark = time.monotonic()
    sent = _produce(bootstrap, topic, cases)
    timings["produce"] = time.monotonic() - mark
    assert len(sent) == len(cases)
    config: SinkConfig = load_config(
        {},
        overrides={
            "kafka_bootstrap_servers": bootstrap,
            "topics": [topic],
            "dlq_topic": f"{topic}.dlq",
            "group_id": f"hostile-{uuid.uuid4().hex[:8]}",
            "batch_max_wait_seconds": 0.3,
            "retry_max_seconds": 1.0,
        },
    )
    catalog = LocalCatalog(tmp_path / "catalog.sqlite")
    catalog.ensure_types()
    sink = SinkConsumer(config, wiring.pipeline_factory(config, catalog))
    sink.start()
    mark = time.monotonic()
    try:
        # Any exception out of step() is a crash of the sink: the test fails with it.
        services.step_until(sink, lambda: sink.totals.committed >= len(cases), deadline_seconds)
    finally:
        sink.close()
    timings["sink"] = time.monotonic() - mark
    bad = [s for s in sent if not s.case.valid]
    good = [s for s in sent if s.case.valid]
    assert sink.totals.consumed == len(cases)
    assert sum(sink.totals.dead_lettered.values()) == len(bad)
    assert "target_rejected" not in sink.totals.dead_lettered

    # Every bad message is in the DLQ once, with its reason, its bytes and key unchanged.
    mark = time.monotonic()
    records = list(read_dlq(config))
    timings["read_dlq"] = time.monotonic() - mark
    by_offset = {r.original_offset: r for r in records}
    assert len(by_offset) == len(records) == len(bad)
    assert set(by_offset) == {s.offset for s in bad}
    mismatches = []
    for s in bad:
        record = by_offset[s.offset]
        if (
            record.reason not in s.case.reasons
            or (record.value or b"") != s.case.value
            or record.key != s.case.key
            or record.value_dropped
            or not record.error
            or record.original_topic != topic
        ):
            mismatches.append((s.offset, s.case.kind, s.case.note, record.reason))
    assert mismatches == []

    # Nothing malformed in the catalog.
    stored = catalog.find()
    problems = {
        e.qualified_name: hostile.entity_problems(
            e.type_name, e.qualified_name, e.attributes, CLUSTERS
        )
        for e in stored
    }
    assert {qn: p for qn, p in problems.items() if p} == {}

    # Every valid event was applied: the catalog equals one built from the valid events alone.
    mark = time.monotonic()
    reference = LocalCatalog(tmp_path / "reference.sqlite")
    reference.ensure_types()
    only_valid = wiring.pipeline_factory(config, reference)()
    for start in range(0, len(good), config.batch_max_messages):
        chunk = good[start : start + config.batch_max_messages]
        outcome = only_valid.process(
            [RawMessage(topic, 0, s.offset, s.case.value, s.case.key) for s in chunk]
        )
        assert outcome.dead == []
    timings["reference"] = time.monotonic() - mark
    assert catalog_dump(catalog) == catalog_dump(reference)
    versions = catalog.find(type_name=MODEL_VERSION)
    deployments = catalog.find(type_name=DEPLOYMENT)
    assert len(versions) >= 10 and len(deployments) >= 10
    # Windows were applied: deployments' totals are their versions' live figures, summed.
    figures = catalog.find(type_name=SERVING_STATS)
    assert sum(f.attributes.get("lifetime", {}).get("requests", 0) for f in figures) > 0
    timings["total"] = time.monotonic() - started
    reasons = Counter(r.reason for r in records)
    print(
        f"hostile stream: {len(cases)} messages ({len(bad)} malformed, {len(good)} valid), "
        f"{len(stored)} entities; dead letters {dict(sorted(reasons.items()))}; "
        f"seconds { ({k: round(v, 1) for k, v in timings.items()}) }"
    )
    catalog.close()
    reference.close()
    return {"timings": timings, "reasons": reasons}


@pytest.mark.integration
def test_a_hostile_stream_through_the_real_sink(kafka_bootstrap: str, tmp_path: Path) -> None:
    """CI size: 2,000 messages, 1,600 of them malformed, in well under a minute."""
    result = _run_hostile_stream(kafka_bootstrap, tmp_path, 1600, 400, deadline_seconds=50)
    assert result["timings"]["total"] < 60


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hostile_stream_of_ten_thousand_malformed_messages(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = _run_hostile_stream(kafka_bootstrap, tmp_path, 10_000, 2_500, deadline_seconds=600)
    assert sum(result["reasons"].values()) == 10_000


# -- the emitter's API under the same abuse -------------------------------------------------------

MODEL = ModelIdentity(name="wine", version="1")
DEPLOYMENT_ID = Deployment(server_kind="python", server_name="scorer", cluster="it")


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    config = EmitterConfig(bootstrap_servers="127.0.0.1:9", topic="abuse")
    em = Emitter(config, DEPLOYMENT_ID, producer=hostile.CapturingProducer())
    yield em
    em.close()


def _loaded_with(**changes: Any) -> Callable[[], Any]:
    def build() -> Any:
        fields = vars_of(model_loaded())
        fields.update(changes)
        return ModelLoaded(**fields)

    return build


# The tables pass wrong types on purpose, so their callables take the emitter as Any.
Call = Callable[[Any], Any]
LIFECYCLE_ABUSE: list[tuple[str, Call, str]] = [
    ("payload a string", lambda e: e.model_loaded(MODEL, "x"), "loaded: expected a ModelLoaded"),
    ("payload a dict", lambda e: e.model_loaded(MODEL, {"a": 1}), "loaded: expected a ModelLoaded"),
    ("payload None", lambda e: e.model_loaded(MODEL, None), "loaded: expected a ModelLoaded"),
    (
        "payload quacks like one",
        lambda e: e.model_loaded(MODEL, SimpleNamespace(**vars_of(model_loaded()))),
        "loaded: expected a ModelLoaded, got SimpleNamespace",
    ),
    ("model a string", lambda e: e.model_loaded("wine", model_loaded()), "model: expected a"),
    (
        "model a dict",
        lambda e: e.model_unloaded({"name": "wine"}),
        "model: expected a ModelIdentity",
    ),
    (
        "reason None",
        lambda e: e.model_load_failed(MODEL, None, "IOError"),
        "ModelLoadFailed.reason: expected a string",
    ),
    (
        "error kind a class",
        lambda e: e.model_load_failed(MODEL, "gone", ValueError),
        "ModelLoadFailed.error_kind: expected a string",
    ),
    (
        "artifact uri a number",
        lambda e: e.model_load_failed(MODEL, "gone", "IOError", artifact_uri=7),
        "ModelLoadFailed.artifact_uri: expected a string",
    ),
    (
        "unload reason bytes",
        lambda e: e.model_unloaded(MODEL, reason=b"x"),
        "ModelUnloaded.reason: expected a string",
    ),
    (
        "unknown side",
        lambda e: e.schema_changed(MODEL, "SIDEWAYS", OUTPUT),
        "SchemaChanged.side: expected one of ['INPUT', 'OUTPUT']",
    ),
    (
        "side a number",
        lambda e: e.schema_changed(MODEL, 1, OUTPUT),
        "SchemaChanged.side: expected one of",
    ),
    (
        "schema a string",
        lambda e: e.schema_changed(MODEL, "INPUT", "a,b"),
        "new_schema: expected a DataSchema",
    ),
    (
        "previous a list",
        lambda e: e.schema_changed(MODEL, "INPUT", OUTPUT, previous=[INPUT]),
        "previous: expected a DataSchema",
    ),
    *(
        (
            f"window {value!r}",
            (lambda v: lambda e: e.scoring_recorder(MODEL, window_seconds=v))(value),
            "window_seconds: expected a positive, finite number",
        )
        for value in (math.nan, math.inf, -5, 0.0 - 1e-9, "60", True)
    ),
    (
        "recorder for no model",
        lambda e: e.scoring_recorder("wine"),
        "model: expected a ModelIdentity",
    ),
]


def vars_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@pytest.mark.parametrize(
    ("call", "expected"),
    [(c, m) for _, c, m in LIFECYCLE_ABUSE],
    ids=[n for n, _, _ in LIFECYCLE_ABUSE],
)
def test_lifecycle_calls_with_garbage_fail_at_the_call_naming_the_field(
    emitter: Emitter, call: Callable[[Emitter], Any], expected: str
) -> None:
    with pytest.raises(EventValueError) as raised:
        call(emitter)
    assert expected in str(raised.value)
    assert emitter.stats().enqueued == 0  # nothing half-sent
    emitter.model_unloaded(MODEL)  # and the emitter still works
    assert emitter.stats().enqueued == 1


def bad(cls: Any, **arguments: Any) -> Callable[[], Any]:
    """Building ``cls`` from ``arguments`` (wrong on purpose, hence Any)."""
    return lambda: cls(**arguments)


BUILD_ABUSE: list[tuple[str, Callable[[], Any], str]] = [
    ("empty name", bad(ModelIdentity, name="", version="1"), "ModelIdentity.name: expected a non"),
    (
        "blank version",
        bad(ModelIdentity, name="w", version="  "),
        "ModelIdentity.version: expected",
    ),
    (
        "huge name",
        bad(ModelIdentity, name="w" * 257, version="1"),
        "ModelIdentity.name: expected at most 256 characters, got 257",
    ),
    (
        "newline in name",
        bad(ModelIdentity, name="wi\nne", version="1"),
        "ModelIdentity.name: control characters are not allowed",
    ),
    (
        "right-to-left override in name",
        bad(ModelIdentity, name="wine\u202etxt.exe", version="1"),
        "ModelIdentity.name: control characters are not allowed (nor bidirectional",
    ),
    (
        "isolate in cluster",
        bad(Deployment, server_kind="python", server_name="s", cluster="prod\u2066x"),
        "Deployment.cluster: control characters",
    ),
    (
        "NUL in version",
        bad(ModelIdentity, name="wine", version="1\x00"),
        "ModelIdentity.version: control characters",
    ),
    (
        "C1 NEL in name",
        bad(ModelIdentity, name="wine\x85", version="1"),
        "ModelIdentity.name: control characters",
    ),
    (
        "ESC in cluster",
        bad(Deployment, server_kind="p", server_name="s", cluster="\x1b[31mred"),
        "Deployment.cluster: control characters",
    ),
    (
        "name a number",
        bad(ModelIdentity, name=5, version="1"),
        "ModelIdentity.name: expected a string, got int 5",
    ),
    (
        "metric NaN",
        bad(Metric, name="acc", value=math.nan),
        "Metric.value: expected a finite number, got float nan",
    ),
    (
        "metric inf",
        bad(Metric, name="acc", value=math.inf),
        "Metric.value: expected a finite number, got float inf",
    ),
    ("metric -inf", bad(Metric, name="acc", value=-math.inf), "Metric.value: expected a finite"),
    (
        "metric text",
        bad(Metric, name="acc", value="0.9"),
        "Metric.value: expected a number, got str '0.9'",
    ),
    (
        "metric bool",
        bad(Metric, name="acc", value=True),
        "Metric.value: expected a number, got bool True",
    ),
    ("metric Decimal", bad(Metric, name="a", value=Decimal("0.9")), "Metric.value: expected a num"),
    (
        "size past 64 bits",
        bad(Artifact, uri="s3://b/k", scheme="s3", size_bytes=2**64),
        "Artifact.size_bytes: expected an integer within 64 bits",
    ),
    (
        "replicas text",
        bad(Runtime, language="python", language_version="3", host="h", replicas="2"),
        "Runtime.replicas: expected an integer",
    ),
    ("framework None", bad(ModelType, framework=None), "ModelType.framework: expected a string"),
    (
        "fields a string",
        bad(DataSchema, fields="a,b", fingerprint="f"),
        "DataSchema.fields: expected a list",
    ),
    (
        "nullable text",
        bad(FieldSpec, name="a", type="long", nullable="yes"),
        "FieldSpec.nullable: expected true or false",
    ),
    (
        "parameter key a number",
        bad(Training, hyper_parameters={1: "x"}),
        "Training.hyper_parameters key: expected a string",
    ),
    (
        "parameter value a number",
        bad(Training, hyper_parameters={"depth": 3}),
        "Training.hyper_parameters['depth']: expected a string",
    ),
    ("tags a string", _loaded_with(tags="demo"), "ModelLoaded.tags: expected a list"),
    ("tag a number", _loaded_with(tags=["ok", 7]), "ModelLoaded.tags[1]: expected a string"),
    (
        "properties a list",
        _loaded_with(properties=[("a", "b")]),
        "ModelLoaded.properties: expected",
    ),
    (
        "runtime a dict",
        _loaded_with(runtime={"language": "py"}),
        "ModelLoaded.runtime: expected Runt",
    ),
    (
        "unknown compatibility",
        bad(SchemaChanged, side="INPUT", new_fingerprint="f", new_schema=OUTPUT, compatibility="?"),
        "SchemaChanged.compatibility: expected one of",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"), [(b, m) for _, b, m in BUILD_ABUSE], ids=[n for n, _, _ in BUILD_ABUSE]
)
def test_building_an_event_with_garbage_fails_naming_the_field(
    build: Callable[[], Any], expected: str
) -> None:
    with pytest.raises(EventValueError) as raised:
        build()
    assert expected in str(raised.value)


@pytest.mark.parametrize("name", hostile.VALID_NAMES)
def test_printable_names_of_any_script_or_punctuation_are_accepted(
    emitter: Emitter, name: str
) -> None:
    model = ModelIdentity(name=name, version=name)
    emitter.model_loaded(model, model_loaded())
    assert emitter.stats().enqueued == 1


class _RaisingFloat:
    def __float__(self) -> float:
        raise RuntimeError("no float for you")


class _IntWithRaisingFloat(int):
    def __float__(self) -> float:
        raise RuntimeError("no float for you")


def _good_latency(value: Any) -> bool:
    """What record() keeps: anything float() takes (Decimal too), but no bool or text."""
    if isinstance(value, bool | str | bytes):
        return False
    try:
        seconds = float(value)
    except Exception:
        return False
    return 0.0 <= seconds <= MAX_LATENCY_SECONDS


GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.just(_RaisingFloat()),
    st.just(_IntWithRaisingFloat(3)),
    st.just(Decimal("0.5")),
    st.just(Decimal("NaN")),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
)
ERROR_KINDS = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.sampled_from(["", "timeout", "\x00\n\x85", "x" * 10_000]),
    st.builds(ValueError, st.text(max_size=10)),
    st.just(KeyboardInterrupt()),
    st.lists(st.integers(), max_size=2),  # unhashable
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.builds(object),
    st.integers(),
    st.floats(allow_nan=True),
)


def _window_reaches_the_sink(recorder: ScoringRecorder, start: datetime) -> dict[str, Any]:
    """Close the window as the emitter would; its event must pass the sink's checks."""
    stats = recorder.close_window(start + timedelta(seconds=60))
    assert stats is not None
    producer = {
        "emitter_name": "t",
        "emitter_version": "0",
        "host": "h",
        "pid": 1,
        "instance_id": "i",
    }
    encoder = EventEncoder(producer, plain(DEPLOYMENT_ID))
    envelope = {
        "event_id": str(uuid.uuid4()),
        "event_time": micros(start + timedelta(seconds=60)),
        "sequence": 1,
        "model": plain(MODEL),
    }
    value = single_object_header(current().fingerprint) + encoder.encode(envelope, stats)
    event = Decoder().decode(value)
    check_event(event, Limits(), start + timedelta(minutes=2))
    return {"requests": stats.request_count, "errors": stats.errors_by_kind}


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(st.tuples(GARBAGE, ERROR_KINDS), min_size=1, max_size=40))
def test_record_takes_any_garbage_without_raising_and_counts_what_it_rejects(
    calls: list[tuple[Any, Any]],
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    recorder = ScoringRecorder(60, now=start)
    for latency, error in calls:
        recorder.record(latency, error=error)  # must not raise, whatever it is given
    recorder.record(0.001)  # one sane request, so the window is never empty
    successes = [lat for lat, err in calls if err is None]
    failures = [err for _, err in calls if err is not None]
    rejected = sum(not _good_latency(lat) for lat in successes)
    window = _window_reaches_the_sink(recorder, start)
    assert recorder.rejected == rejected
    # A request with an unusable latency is not counted; a failed one always is.
    assert window["requests"] == len(successes) - rejected + 1 + len(failures)
    assert sum(window["errors"].values()) == len(failures)
    assert all(len(kind) <= 200 for kind in window["errors"])


def test_record_rejects_the_cases_that_used_to_raise_or_lie() -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    recorder = ScoringRecorder(60, now=start)
    for latency in (10**400, -(10**400), _RaisingFloat(), True, False, None, "0.1", math.nan):
        recorder.record(latency)  # type: ignore[arg-type]
    recorder.record(10**400, error="overflow")  # used to raise OverflowError in drain()
    recorder.record(_IntWithRaisingFloat(1), error=ValueError("x"))
    recorder.record(0.002)
    recorder.record_features({5: 1.0, "ok": 10**400, "fine": 2.0})  # type: ignore[dict-item]
    window = _window_reaches_the_sink(recorder, start)
    assert recorder.rejected == 9  # 8 latencies and the feature named 5
    assert window == {"requests": 3, "errors": {"overflow": 1, "ValueError": 1}}


def test_a_flood_of_distinct_error_texts_keeps_the_window_acceptable() -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    recorder = ScoringRecorder(60, now=start)
    for i in range(5_000):
        recorder.record(0.01, error=f"KeyError: 'user-{i}'")
    window = _window_reaches_the_sink(recorder, start)
    assert window["requests"] == 5_000
    assert len(window["errors"]) == MAX_ERROR_KINDS + 1
    assert window["errors"][OTHER_ERROR_KIND] == 5_000 - MAX_ERROR_KINDS


def test_garbage_features_are_rejected_not_raised() -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    recorder = ScoringRecorder(60, now=start)
    recorder.record_features("not a mapping")  # type: ignore[arg-type]
    recorder.record_features({"a": "1.0", "b": None, "c": math.nan, "d": True, "e": 3})  # type: ignore[dict-item]
    recorder.record(0.01)
    stats = recorder.close_window(start + timedelta(seconds=60))
    assert stats is not None
    assert recorder.rejected == 3  # the mapping, "a" and "d"
    assert [(f.name, f.count, f.null_count, f.mean) for f in stats.features] == [
        ("b", 1, 1, None),
        ("c", 1, 1, None),
        ("e", 1, 0, 3.0),
    ]


def test_schema_abuse_at_the_data_schema_helper() -> None:
    with pytest.raises(EventValueError) as raised:
        data_schema([FieldSpec(name="a", type=7)])  # type: ignore[arg-type]
    assert "FieldSpec.type: expected a string" in str(raised.value)


def test_model_events_refuse_payloads_that_are_not_dataclasses() -> None:
    with pytest.raises(EventValueError) as raised:
        ModelEvent(envelope=object(), payload=object())  # type: ignore[arg-type]
    assert "ModelEvent.envelope: expected Envelope" in str(raised.value)
