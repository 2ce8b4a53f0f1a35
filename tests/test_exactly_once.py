"""Every distinct event applied exactly once, whatever order it arrives in, across sink restarts:
a property test (Hypothesis) on the embedded catalog.

Events are written from the contract alone (``to_avro`` + single-object framing), as any
producer may: replicas of one deployment, a restarted replica (a new instance id), windows out
of order, redeliveries, and a producer that resends an event id with another body. The live
run splits the arrival log into sink lifetimes (each a fresh pipeline with empty caches over
the same catalog, as after a crash or restart) and random batches. It must end where a replay
of the same log into an empty catalog ends, and where the distinct events alone lead.

What the generator holds fixed: event times differ between events (two events setting one
attribute at the same microsecond are applied in arrival order).
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_sink.core import naming
from atlas_sink.core.decode import Decoder
from atlas_sink.core.pipeline import Pipeline, RawMessage
from atlas_sink.core.translate import DEPLOYMENT, SERVING_STATS, Rules
from atlas_sink.targets.local import LocalCatalog
from capture.events import (
    Deployment,
    Envelope,
    ModelEvent,
    ModelIdentity,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    Payload,
    Producer,
    ScoringStats,
    to_avro,
)
from capture.framing import single_object_framer
from tests.conftest import T0, model_loaded, scoring_stats
from tests.services import catalog_dump

FRAME = single_object_framer()
DEPLOY = naming.deployment("wine-scorer", "wine", "local")


def _live_figures(catalog: LocalCatalog) -> dict[str, dict[str, Any]]:
    """Per model version, the attributes of its live figures on the deployment (where its
    windows go: the deployment holds none)."""
    found = {}
    for version in ("1", "2", "3", "9"):
        stats = catalog.entity(
            SERVING_STATS, naming.serving_stats("wine-scorer", "wine", version, "local")
        )
        if stats is not None:
            found[version] = stats.attributes
    return found


def _event(
    instance: str,
    sequence: int,
    offset_us: int,
    requests: int,
    *,
    version: str = "1",
    ending: str = "stats",
) -> ModelEvent:
    """Sequence 1 loads ``version``; later ones are windows, and the last may be ``ending``:
    an unload of it, or a failed load of another version (which leaves it serving)."""
    at = T0 + timedelta(seconds=10 * sequence, microseconds=offset_us)
    payload: Payload
    if sequence == 1:
        payload = model_loaded()
    elif ending == "unload":
        payload = ModelUnloaded(reason=f"{instance} stopped")
    elif ending == "fail":
        payload = ModelLoadFailed(reason="corrupt", error_kind="ValueError")
        version = "9"
    else:
        payload = dataclasses.replace(
            scoring_stats(),
            window_start=at - timedelta(seconds=10),
            window_end=at,
            request_count=requests,
            error_count=requests // 10,
            errors_by_kind={"timeout": requests // 10} if requests // 10 else {},
        )
    envelope = Envelope(
        event_id=f"{instance}-{sequence}",
        event_time=at,
        producer=Producer(
            emitter_name="own", emitter_version="0", host="h", pid=1, instance_id=instance
        ),
        sequence=sequence,
        deployment=Deployment(server_kind="python", server_name="wine-scorer", cluster="local"),
        model=ModelIdentity(name="wine", version=version),
    )
    return ModelEvent(envelope=envelope, payload=payload)


def _expected_status(distinct: list[ModelEvent]) -> tuple[str | None, str | None]:
    """(status, version served) computed directly: the version loaded last, and the newest
    word on that version."""
    loads = [e for e in distinct if isinstance(e.payload, ModelLoaded)]
    if not loads:
        return None, None
    served = max(loads, key=lambda e: e.envelope.event_time).envelope.model.version
    about = [
        e
        for e in distinct
        if e.envelope.model.version == served and not isinstance(e.payload, ScoringStats)
    ]
    newest = max(about, key=lambda e: e.envelope.event_time).payload
    status = {ModelLoaded: "IN_SERVICE", ModelUnloaded: "STOPPED"}[type(newest)]
    return status, served


@st.composite
def arrival_logs(draw: st.DrawFn) -> tuple[list[ModelEvent], list[ModelEvent], list[int]]:
    """(distinct events as first seen, the arrival log, sink lifetimes as cut points)."""
    # Replicas, and a restart of the first one under a new instance id; each loads a version
    # of its own (a rolling update), and may end unloading it or failing to load another.
    instances = ["r1", "r2", "r1-restarted"][: draw(st.integers(1, 3))]
    distinct: list[ModelEvent] = []
    for n, instance in enumerate(instances):
        length = draw(st.integers(1, 8))
        ending = draw(st.sampled_from(["stats", "unload", "fail"])) if length > 1 else "stats"
        for sequence in range(1, length + 1):
            requests = draw(st.integers(1, 50))
            last = ending if sequence == length else "stats"
            distinct.append(
                _event(instance, sequence, 1 + 97 * n, requests, version=str(n + 1), ending=last)
            )
    log = list(draw(st.permutations(distinct)))
    for _ in range(draw(st.integers(0, 6))):  # redeliveries, anywhere after the original
        at = draw(st.integers(0, len(log) - 1))
        log.insert(draw(st.integers(at + 1, len(log))), log[at])
    stats = [e for e in distinct if isinstance(e.payload, ScoringStats)]
    resend = draw(st.booleans())  # the same id resent with another body
    if stats and resend:
        original = draw(st.sampled_from(stats))
        assert isinstance(original.payload, ScoringStats)
        other = dataclasses.replace(
            original.payload, request_count=original.payload.request_count + 1000
        )
        log.insert(
            draw(st.integers(0, len(log))), ModelEvent(envelope=original.envelope, payload=other)
        )
    # The body that arrives first under an id is the one that stands.
    first: dict[str, ModelEvent] = {}
    for event in log:
        first.setdefault(event.envelope.event_id, event)
    cuts = sorted(draw(st.lists(st.integers(0, len(log)), max_size=4)))
    return list(first.values()), log, cuts


def _messages(events: list[ModelEvent]) -> list[RawMessage]:
    return [
        RawMessage("events", 0, offset, FRAME(to_avro(event)))
        for offset, event in enumerate(events)
    ]


def _pipeline(catalog: LocalCatalog) -> Pipeline:
    return Pipeline(catalog, Decoder(), Rules())


def _process(catalog: LocalCatalog, messages: list[RawMessage], batch_sizes: list[int]) -> None:
    pipeline = _pipeline(catalog)
    at = 0
    sizes = iter(batch_sizes)
    while at < len(messages):
        size = max(1, next(sizes, 3))
        outcome = pipeline.process(messages[at : at + size])
        assert {letter.reason for letter in outcome.dead} <= {"conflicting_duplicate"}
        at += size


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arrival_logs(), st.lists(st.integers(1, 6), max_size=40))
def test_live_runs_with_restarts_equal_a_replay_and_the_distinct_events(
    drawn: tuple[list[ModelEvent], list[ModelEvent], list[int]], batch_sizes: list[int]
) -> None:
    distinct, log, cuts = drawn
    messages = _messages(log)
    with tempfile.TemporaryDirectory() as folder:
        live = LocalCatalog(Path(folder) / "live.sqlite")
        replayed = LocalCatalog(Path(folder) / "replay.sqlite")
        ordered = LocalCatalog(Path(folder) / "ordered.sqlite")
        for catalog in (live, replayed, ordered):
            catalog.ensure_types()
        bounds = [0, *cuts, len(messages)]
        for start, end in itertools.pairwise(bounds):  # one sink lifetime each
            _process(live, messages[start:end], batch_sizes)
        _process(replayed, messages, [len(messages)])
        in_order = sorted(distinct, key=lambda e: (e.envelope.event_time, e.envelope.event_id))
        _process(ordered, _messages(in_order), [len(in_order)])

        assert catalog_dump(live) == catalog_dump(replayed)
        deployment = live.entity(DEPLOYMENT, DEPLOY)
        assert deployment is not None
        windows = [e for e in distinct if isinstance(e.payload, ScoringStats)]
        live_figures = _live_figures(live)
        # Each version served windows has live figures, and none other.
        assert set(live_figures) == {e.envelope.model.version for e in windows}
        for version, figures in live_figures.items():
            of_version = [
                e.payload
                for e in windows
                if e.envelope.model.version == version and isinstance(e.payload, ScoringStats)
            ]
            # Counters add each distinct event once.
            lifetime = figures["lifetime"]
            assert lifetime["requests"] == sum(w.request_count for w in of_version)
            assert lifetime["errors"] == sum(w.error_count for w in of_version)
            assert lifetime["windows"] == len(of_version)
            # State takes the newest by event time.
            newest = max(
                (e for e in windows if e.envelope.model.version == version),
                key=lambda e: e.envelope.event_time,
            )
            assert isinstance(newest.payload, ScoringStats)
            assert figures["latestWindow"]["requests"] == newest.payload.request_count
        # The deployment's totals, the sums over its versions, count each distinct event once.
        assert sum(f["lifetime"]["requests"] for f in live_figures.values()) == sum(
            e.payload.request_count for e in windows if isinstance(e.payload, ScoringStats)
        )
        assert not {"latestWindow", "lifetimeTotals"} & set(deployment.attributes)
        # The status is that of the version loaded last, whatever else was unloaded or failed.
        status, served = _expected_status(distinct)
        attributes = deployment.attributes
        assert (attributes.get("status"), attributes.get("currentVersion")) == (status, served)
        # The order of arrival leaves no trace: the distinct events in order end the same.
        ordered_deployment = ordered.entity(DEPLOYMENT, DEPLOY)
        assert ordered_deployment is not None
        for name in ("status", "currentVersion"):
            assert deployment.attributes.get(name) == ordered_deployment.attributes.get(name), name
        ordered_figures = _live_figures(ordered)
        assert set(ordered_figures) == set(live_figures)
        for version, figures in live_figures.items():
            for name in ("lifetime", "latestWindow"):
                assert figures.get(name) == ordered_figures[version].get(name), (version, name)
        for catalog in (live, replayed, ordered):
            catalog.close()


def test_a_known_event_id_with_another_body_is_dead_lettered_and_the_first_stands(
    tmp_path: Path,
) -> None:
    first = _event("r1", 2, 1, 10)
    assert isinstance(first.payload, ScoringStats)
    changed = ModelEvent(
        envelope=first.envelope, payload=dataclasses.replace(first.payload, request_count=999)
    )
    with LocalCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.ensure_types()
        pipeline = _pipeline(catalog)
        one, two, again = _messages([first, changed, first])
        same_batch = pipeline.process([one, two])
        assert [(d.reason, d.message.offset) for d in same_batch.dead] == [
            ("conflicting_duplicate", 1)
        ]
        assert "first one applied stands" in same_batch.dead[0].detail
        later = pipeline.process([two])  # in a later batch too
        assert [d.reason for d in later.dead] == ["conflicting_duplicate"]
        redelivered = pipeline.process([again])  # the same body again: a plain duplicate
        assert (redelivered.dead, redelivered.duplicates) == ([], 1)
        assert catalog.entity(DEPLOYMENT, DEPLOY) is not None
        figures = _live_figures(catalog)
        assert list(figures) == ["1"]
        assert (figures["1"]["lifetime"]["requests"], figures["1"]["lifetime"]["windows"]) == (
            10,
            1,
        )
        assert figures["1"]["latestWindow"]["requests"] == 10
