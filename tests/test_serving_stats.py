"""Live figures per (deployment, version): every window of every replica merged exactly once,
in any arrival order, with rollups and replicas bounded. Pure: translate + coalesce, no I/O.

The expected figures are computed here directly from the distinct windows sent (sums, and one
sketch merged bucket by bucket), not through the sink's merging code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_sink.core import naming
from atlas_sink.core.coalesce import coalesce
from atlas_sink.core.entities import Entity, EntityState, Ref
from atlas_sink.core.serving_stats import (
    MAX_BUCKETS,
    Counts,
    StatsPolicy,
    as_words,
    from_words,
)
from atlas_sink.core.translate import SERVING_STATS, Rules, translate
from capture.events import (
    Deployment,
    Envelope,
    FeatureSummary,
    LatencySummary,
    LogSketch,
    ModelEvent,
    ModelIdentity,
    Producer,
    ScoringStats,
)
from capture.stats import MAX_ERROR_KINDS, Sketch
from tests.conftest import T0

CLUSTER = "local"
SERVER = "wine-scorer"


def _window(
    rng: random.Random, start_s: int, length_s: int = 60, *, timed: bool = True
) -> ScoringStats:
    latencies = [rng.lognormvariate(math.log(0.005), 0.6) for _ in range(rng.randint(5, 60))]
    sketch = Sketch()
    if timed:
        sketch.add_many(latencies)
    requests = len(latencies)
    errors = rng.randint(0, requests // 4)
    start = T0 + timedelta(seconds=start_s)
    return ScoringStats(
        window_start=start,
        window_end=start + timedelta(seconds=length_s),
        request_count=requests,
        error_count=errors,
        errors_by_kind={"timeout": errors} if errors else {},
        latency=LatencySummary(
            min=min(latencies) if timed else 0.0,
            max=max(latencies) if timed else 0.0,
            mean=sum(latencies) / requests if timed else 0.0,
            p50=sketch.quantile(0.5) if timed else 0.0,
            p95=sketch.quantile(0.95) if timed else 0.0,
            p99=sketch.quantile(0.99) if timed else 0.0,
            sketch=sketch.to_event(),
        ),
    )


def _event(instance: str, sequence: int, version: str, window: ScoringStats) -> ModelEvent:
    return ModelEvent(
        envelope=Envelope(
            event_id=f"{instance}-{sequence}",
            event_time=window.window_end,
            producer=Producer(
                emitter_name="test",
                emitter_version="0",
                host=f"host-{instance}",
                pid=1,
                instance_id=instance,
            ),
            sequence=sequence,
            deployment=Deployment(server_kind="python", server_name=SERVER, cluster=CLUSTER),
            model=ModelIdentity(name="wine", version=version),
        ),
        payload=window,
    )


def _fleet(seed: int, replicas: int = 3, windows: int = 8) -> list[ModelEvent]:
    """Each replica serves version 1, then version 2; one window a minute, one sequence each."""
    rng = random.Random(seed)
    events = []
    for r in range(replicas):
        instance = f"replica-{r}"
        for w in range(windows):
            version = "1" if w < windows // 2 else "2"
            events.append(_event(instance, w + 1, version, _window(rng, 60 * w + r)))
    return events


def _apply(
    events: Iterable[ModelEvent],
    batch_size: int,
    rules: Rules | None = None,
    *,
    round_trip: bool = True,
) -> dict[Ref, Entity]:
    """Translate and coalesce in batches, states carried over as a catalog holds them (read
    back from the attributes written, as the pipeline does) or, without ``round_trip``, as
    the objects the coalescer returned."""
    rules = rules or Rules()
    states: dict[Ref, EntityState] = {}
    entities: dict[Ref, Entity] = {}
    pending = list(events)
    for first in range(0, len(pending), batch_size):
        updates = [u for e in pending[first : first + batch_size] for u in translate(e, rules)]
        needed = {u.ref for u in updates if u.key is not None}
        if round_trip:
            states = {
                ref: EntityState.from_attributes(entities[ref].attributes)
                for ref in needed
                if ref in entities
            }
        stored = {ref: states.get(ref) or EntityState() for ref in needed}
        result = coalesce(updates, stored)
        for entity in result.entities:
            held = entities.get(entity.ref)
            if held is None:
                entities[entity.ref] = entity
            else:
                held.attributes.update(entity.attributes)
                held.references.update(entity.references)
        states.update(result.states)
    return entities


def _expected(windows: Sequence[ScoringStats]) -> dict[str, float]:
    merged: dict[int, int] = {}
    zero = 0
    for w in windows:
        sketch = w.latency.sketch
        zero += sketch.zero_count
        for k, count in enumerate(sketch.counts):
            merged[sketch.first_index + k] = merged.get(sketch.first_index + k, 0) + count
    direct = Sketch()
    direct.buckets = {i: c for i, c in merged.items() if c}
    direct.zero_count = zero
    direct.count = zero + sum(merged.values())
    requests = sum(w.request_count for w in windows)
    errors = sum(w.error_count for w in windows)
    timed = [w for w in windows if w.latency.sketch.counts]
    weights = [sum(w.latency.sketch.counts) for w in timed]
    return {
        "requests": requests,
        "errors": errors,
        "windows": len(windows),
        "errorRate": errors / requests,
        "latencyMinSeconds": min(w.latency.min for w in timed),
        "latencyMaxSeconds": max(w.latency.max for w in timed),
        "latencyMeanSeconds": sum(w.latency.mean * n for w, n in zip(timed, weights, strict=True))
        / sum(weights),
        "latencyP50Seconds": direct.quantile(0.5),
        "latencyP95Seconds": direct.quantile(0.95),
        "latencyP99Seconds": direct.quantile(0.99),
    }


def _stats_entity(entities: dict[Ref, Entity], version: str) -> Entity:
    return entities[Ref(SERVING_STATS, naming.serving_stats(SERVER, "wine", version, CLUSTER))]


def _json_map(entity: Entity, name: str) -> dict[str, dict[str, Any]]:
    """A map attribute of ``key=value; ...`` entries (replicas, rollups, features), read back."""
    return {key: from_words(text) for key, text in entity.attributes[name].items()}


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


def _assert_figures(entity: Entity, windows: Sequence[ScoringStats]) -> None:
    lifetime = entity.attributes["lifetime"]
    expected = _expected(windows)
    assert set(lifetime) == set(expected)
    for name, value in expected.items():
        # Exact for counts, extremes and sketch quantiles; the sink sums latencies in whole
        # picoseconds (so its mean is the same in any order), this test in floats.
        tolerance = 1e-9 if name == "latencyMeanSeconds" else 1e-15
        assert math.isclose(lifetime[name], value, rel_tol=tolerance), (name, lifetime[name], value)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    order=st.randoms(use_true_random=False),
    duplicates=st.lists(st.integers(0, 47), max_size=12),
    batch_size=st.integers(1, 30),
)
def test_every_window_of_every_replica_is_merged_once_in_any_order(
    seed: int, order: random.Random, duplicates: list[int], batch_size: int
) -> None:
    sent = _fleet(seed)
    arrivals = sent + [sent[i % len(sent)] for i in duplicates]
    order.shuffle(arrivals)
    entities = _apply(arrivals, batch_size)
    for version in ("1", "2"):
        windows = [
            e.payload
            for e in sent
            if e.envelope.model.version == version and isinstance(e.payload, ScoringStats)
        ]
        entity = _stats_entity(entities, version)
        _assert_figures(entity, windows)
        replicas = _json_map(entity, "replicas")
        assert sorted(replicas) == ["replica-0", "replica-1", "replica-2"]
        for instance, replica in replicas.items():
            own = [
                e.payload
                for e in sent
                if e.envelope.producer.instance_id == instance
                and e.envelope.model.version == version
                and isinstance(e.payload, ScoringStats)
            ]
            assert replica["requests"] == sum(w.request_count for w in own)
            assert replica["host"] == f"host-{instance}"
            assert _ms(replica["firstHeard"]) == min(w.window_start for w in own).timestamp() * 1000
            assert _ms(replica["lastHeard"]) == max(w.window_end for w in own).timestamp() * 1000
            assert replica["windowSeconds"] == 60


def test_the_figures_are_those_of_a_single_batch_in_order() -> None:
    """Arrival order and batching change nothing: the attributes are equal, not merely close."""
    sent = _fleet(7)
    in_order = _apply(sent, len(sent))
    shuffled = list(sent)
    random.Random(3).shuffle(shuffled)
    other = _apply(shuffled + shuffled[:5], 4)
    for version in ("1", "2"):
        a = _stats_entity(in_order, version).attributes
        b = _stats_entity(other, version).attributes
        for name in ("replicas", "rollups", "errorsByKind", "firstWindowStart", "lastWindowEnd"):
            assert a[name] == b[name], name
        for name in ("requests", "errors", "windows", "latencyP50Seconds", "latencyP99Seconds"):
            assert a["lifetime"][name] == b["lifetime"][name], name


def test_rollups_cover_their_period_and_only_the_recent_past() -> None:
    rng = random.Random(1)
    # Windows every 20 minutes over 5 hours from two replicas, rollups of an hour kept 2 hours.
    events = [
        _event(f"r{r}", n + 1, "1", _window(rng, 1200 * n + r)) for r in range(2) for n in range(15)
    ]
    policy = StatsPolicy(rollup_seconds=3600, rollup_period_seconds=7200)
    reversed_order = list(reversed(events))
    for arrivals in (events, reversed_order):
        entity = _stats_entity(_apply(arrivals, 7, Rules(stats=policy)), "1")
        rollups = [
            {**r, "start": _ms(start), "end": _ms(r["end"])}
            for start, r in sorted(_json_map(entity, "rollups").items())
        ]
        newest_end = max(
            e.payload.window_end for e in events if isinstance(e.payload, ScoringStats)
        )
        cutoff_ms = (newest_end.timestamp() - 7200) * 1000
        assert rollups, "no rollup kept"
        assert all(r["end"] > cutoff_ms for r in rollups)
        assert all(r["end"] - r["start"] == 3_600_000 for r in rollups)
        for rollup in rollups:
            inside = [
                e.payload
                for e in events
                if isinstance(e.payload, ScoringStats)
                and rollup["start"] <= e.payload.window_start.timestamp() * 1000 < rollup["end"]
            ]
            assert rollup["requests"] == sum(w.request_count for w in inside)
            assert rollup["errors"] == sum(w.error_count for w in inside)
            assert rollup["latencyP99Seconds"] == _expected(inside)["latencyP99Seconds"]
        # The lifetime keeps every window, pruned periods included.
        windows = [e.payload for e in events if isinstance(e.payload, ScoringStats)]
        assert entity.attributes["lifetime"]["requests"] == sum(w.request_count for w in windows)


def test_only_the_rollup_windows_come_to_keeps_live_buckets() -> None:
    """Every other rollup is sealed (its buckets deflated); a late window opens it again and
    its figures are still those of every window in its hour."""
    rng = random.Random(6)
    events = [_event("r", n + 1, "1", _window(rng, 1200 * n)) for n in range(15)]
    late = _event("r", 99, "1", _window(rng, 1200 * 3 + 30))
    policy = StatsPolicy(rollup_seconds=3600, rollup_period_seconds=7 * 3600)
    rules = Rules(stats=policy)
    ref = Ref(SERVING_STATS, naming.serving_stats(SERVER, "wine", "1", CLUSTER))
    updates = [u for e in events for u in translate(e, rules)]
    state = coalesce(updates, {ref: EntityState()}).states[ref]
    assert state.stats is not None
    rollups = state.stats.rollups
    assert len(rollups) == 5
    live = [period for period, rollup in rollups.items() if rollup.latency is not None]
    assert live == [max(rollups)]
    assert all(rollup.sealed for period, rollup in rollups.items() if period != live[0])
    # As text: the state's lists are cached and shared, so a change in place would change a
    # snapshot of the objects too.
    before = json.dumps(state.stats.to_state())
    # The late window lands in the second hour: that rollup opens, the newest is sealed.
    again = coalesce(translate(late, rules), {ref: state})
    # In a copy: the state it was given (the sink's cache) is as it was.
    assert json.dumps(state.stats.to_state()) == before
    reopened = again.states[ref].stats
    assert reopened is not None
    assert [p for p, r in reopened.rollups.items() if r.latency is not None] == [
        min(rollups) + 3_600_000_000
    ]
    entity = next(e for e in again.entities if e.ref == ref)
    hours = sorted(_json_map(entity, "rollups").items())
    windows = [e.payload for e in [*events, late] if isinstance(e.payload, ScoringStats)]
    for start, rollup in hours:
        inside = [
            w
            for w in windows
            if _ms(start) <= w.window_start.timestamp() * 1000 < _ms(rollup["end"])
        ]
        assert rollup["requests"] == sum(w.request_count for w in inside)
        for name in ("latencyP50Seconds", "latencyP99Seconds", "latencyMaxSeconds"):
            assert rollup[name] == _expected(inside)[name], (start, name)


def test_a_period_whose_requests_were_all_untimed_has_no_latency() -> None:
    rng = random.Random(2)
    entity = _stats_entity(_apply([_event("r", 1, "1", _window(rng, 0, timed=False))], 1), "1")
    lifetime = entity.attributes["lifetime"]
    assert lifetime["requests"] > 0
    assert not any(name.startswith("latency") for name in lifetime)
    (rollup,) = _json_map(entity, "rollups").values()
    assert rollup["requests"] > 0
    assert not any(name.startswith("latency") for name in rollup)


def test_replicas_are_bounded_keeping_the_most_recently_heard() -> None:
    rng = random.Random(4)
    policy = StatsPolicy(max_replicas=3)
    events = [_event(f"r{n}", 1, "1", _window(rng, 60 * n)) for n in range(6)]
    random.Random(5).shuffle(events)
    entity = _stats_entity(_apply(events, 2, Rules(stats=policy)), "1")
    assert list(_json_map(entity, "replicas")) == ["r3", "r4", "r5"]
    windows = [e.payload for e in events if isinstance(e.payload, ScoringStats)]
    assert entity.attributes["lifetime"]["requests"] == sum(w.request_count for w in windows)


def test_the_state_survives_being_written_and_read_back() -> None:
    """A restarted sink reads its sketches back from the catalog and merges on as if it had
    never stopped: one batch per event makes every merge go through the round trip."""
    sent = _fleet(11)
    kept = _apply(sent, 1, round_trip=False)
    read_back = _apply(sent, 1)
    for version in ("1", "2"):
        a = _stats_entity(kept, version).attributes
        b = _stats_entity(read_back, version).attributes
        assert a == b


def test_merged_sketches_stay_bounded() -> None:
    counts = Counts(0.01)
    counts.add(LogSketch(relative_accuracy=0.01, first_index=-3000, counts=[1] * 10))
    counts.add(LogSketch(relative_accuracy=0.01, first_index=3000, counts=[2] * 10))
    assert len(counts.counts) == MAX_BUCKETS
    assert counts.total == 30
    # The lowest buckets folded together; the highest kept apart.
    assert counts.counts[-10:] == [2] * 10


def test_a_sketch_of_another_accuracy_is_re_bucketed_the_same_in_any_order() -> None:
    """An emitter with another accuracy (a rollout of a new setting, another language's
    emitter) neither loses its latencies nor decides, by coming first, how the others merge."""
    rng = random.Random(6)
    first = _window(rng, 0)
    coarse = Sketch(0.05)
    coarse.add_many([0.01, 0.02])
    other = dataclasses.replace(
        _window(rng, 60), latency=dataclasses.replace(first.latency, sketch=coarse.to_event())
    )
    events = [_event("r", 1, "1", first), _event("r", 2, "1", other)]
    ab = _stats_entity(_apply(events, 2), "1").attributes["lifetime"]
    ba = _stats_entity(_apply(events[::-1], 2), "1").attributes["lifetime"]
    assert ab == ba
    assert ab["requests"] == first.request_count + other.request_count
    assert ab["latencyMaxSeconds"] == max(first.latency.max, other.latency.max)


def test_feature_means_stay_exact_and_finite_near_the_largest_double() -> None:
    """Two windows of one value near the largest double each: a float sum would overflow
    (and crash every write of the entity); the mean is that value, in either order."""
    rng = random.Random(8)
    huge = FeatureSummary(name="f", count=1, min=1e308, max=1e308, mean=1e308)
    negative = FeatureSummary(name="f", count=1, min=-1e308, max=-1e308, mean=-1e308)
    windows = [
        dataclasses.replace(_window(rng, 60 * n), features=[summary])
        for n, summary in enumerate((huge, huge, negative))
    ]
    events = [_event("r", n + 1, "1", w) for n, w in enumerate(windows)]
    for order in (events, events[::-1]):
        features = _json_map(_stats_entity(_apply(order, 1), "1"), "features")
        assert features["f"]["servingMean"] == pytest.approx(1e308 / 3)


def test_error_kinds_are_bounded_the_same_in_any_order() -> None:
    """Kinds are free text (an exception's message): past the bound the names that sort last
    are counted as ``other``, and since a kind kept at the end was kept all along, the counts
    do not depend on the order windows come in."""
    rng = random.Random(9)
    windows = []
    for n in range(30):
        kinds = {f"kind-{rng.randrange(400):03d}": 1 for _ in range(8)}
        window = _window(rng, 60 * n)
        windows.append(
            dataclasses.replace(
                window,
                error_count=sum(kinds.values()),
                errors_by_kind=kinds,
                request_count=max(window.request_count, sum(kinds.values())),
            )
        )
    events = [_event("r", n + 1, "1", w) for n, w in enumerate(windows)]
    shuffled = list(events)
    random.Random(10).shuffle(shuffled)
    first = _stats_entity(_apply(events, 3), "1").attributes["errorsByKind"]
    again = _stats_entity(_apply(shuffled, 7), "1").attributes["errorsByKind"]
    assert first == again
    assert len(first) == MAX_ERROR_KINDS
    assert sum(first.values()) == sum(w.error_count for w in windows)
    everything: dict[str, int] = {}
    for w in windows:
        for kind, count in w.errors_by_kind.items():
            everything[kind] = everything.get(kind, 0) + count
    kept = sorted(everything)[: MAX_ERROR_KINDS - 1]
    assert {k: first[k] for k in kept} == {k: everything[k] for k in kept}


@given(
    host=st.text(min_size=1, max_size=40),
    count=st.integers(0, 2**63 - 1),
    seconds=st.floats(allow_nan=False, allow_infinity=False),
)
def test_map_entries_read_back_as_written_whatever_the_text(
    host: str, count: int, seconds: float
) -> None:
    """A replica's host is the producer's free text: ``;``, ``=``, ``%``, digits alone, any
    script; it reads back as it was, and numbers to the last digit."""
    entry = {"host": host, "lastHeard": "2026-12-06T03:00:00+00:00", "requests": count}
    entry["windowSeconds"] = seconds
    assert from_words(as_words(entry)) == entry
