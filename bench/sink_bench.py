"""Sink figures: per-event pipeline cost against a consume+decode floor, events per write,
and peak memory as the backlog grows.

All messages are real: produced by the emitter to the real broker, consumed back with
confluent-kafka. The target is the embedded SQLite catalog; its own time is measured and
excluded from the pipeline figure, as the issue asks.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from atlas_sink.runtime.config import SinkConfig
from bench.common import Figure, kafka_bootstrap, realistic_scoring_stats
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import Deployment, ModelIdentity
from local_services import harness

# The sink's own default: the pipeline is measured as `atlas-sink run` batches.
BATCH = int(SinkConfig.model_fields["batch_max_messages"].default)


REPLICAS = 3
VERSIONS = ("1", "2")


def _fill(bootstrap: str, topic: str, events: int, deployments: int) -> None:
    """``events`` ScoringStats over ``deployments`` servers (one model each), via the emitter:
    each deployment has ``REPLICAS`` replicas (an emitter each) serving version 1 for the
    first half of their windows and version 2 for the second, so the sink merges every
    replica's windows per version. Replicas are filled one after the other, so a
    deployment's windows reach the topic out of time order."""
    harness.create_topics(bootstrap, [topic], partitions=3)
    base = realistic_scoring_stats()
    share = events // REPLICAS
    windows = -(-share // deployments)  # per deployment and replica
    # Windows end before now: the sink rightly refuses timestamps in the future.
    first = datetime.now(UTC) - timedelta(seconds=60 * (windows + 2))
    models = [ModelIdentity(name="model", version=v) for v in VERSIONS]
    for replica in range(REPLICAS):
        emitters = [
            Emitter(
                EmitterConfig(bootstrap_servers=bootstrap, topic=topic, queue_size=share + 1),
                Deployment(server_kind="python", server_name=f"server-{i}", cluster="bench"),
            )
            for i in range(deployments)
        ]
        count = share if replica < REPLICAS - 1 else events - share * (REPLICAS - 1)
        for n in range(count):
            emitter = emitters[n % deployments]
            window = n // deployments
            start = first + timedelta(seconds=60 * window, milliseconds=replica)
            model = models[window * len(VERSIONS) // windows]
            stats = type(base)(
                window_start=start,
                window_end=start + timedelta(seconds=60),
                request_count=10,
                error_count=1,
                errors_by_kind={"timeout": 1},
                latency=base.latency,
            )
            emitter._emit(model, stats)
        for emitter in emitters:
            emitter.close(120)
            if emitter.stats().delivered == 0:
                raise RuntimeError("the benchmark's events were not delivered")


def _floor(bootstrap: str, topic: str, events: int) -> float:
    """Seconds to consume and decode every message with confluent-kafka and fastavro alone."""
    from fastavro import schemaless_reader

    from capture import contract

    parsed = contract.current().parsed
    consumer = harness.topic_reader(bootstrap, [topic], prefix="bench")
    seen = 0
    started = None
    while seen < events:
        batch = consumer.consume(BATCH, 1.0)
        if started is None and batch:
            started = time.perf_counter()
        for message in batch:
            if message.error():
                continue
            schemaless_reader(io.BytesIO(cast(bytes, message.value())[10:]), parsed, None)
            seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return elapsed


def _pipeline(bootstrap: str, topic: str, events: int) -> tuple[float, dict[str, int]]:
    """Seconds of the sink's own per-event work (target time excluded), and write counts."""
    from atlas_sink.core.decode import Decoder
    from atlas_sink.core.pipeline import Pipeline
    from atlas_sink.core.translate import Rules
    from atlas_sink.kafka.client import raw_message
    from atlas_sink.targets.local import LocalCatalog

    with tempfile.TemporaryDirectory() as tmp:
        catalog = LocalCatalog(Path(tmp) / "bench.sqlite")
        catalog.ensure_types()
        pipeline = Pipeline(catalog, Decoder(), Rules())
        consumer = harness.topic_reader(bootstrap, [topic], prefix="bench")
        seen = 0
        started = None
        target_seconds = 0.0
        counts = {"batches": 0, "events": 0, "entities_written": 0, "writes": 0}
        while seen < events:
            batch = consumer.consume(BATCH, 1.0)
            if started is None and batch:
                started = time.perf_counter()
            # The sink's own conversion of a consumed message, as its live loop does it.
            raw = [raw_message(m) for m in batch if not m.error()]
            if not raw:
                continue
            outcome = pipeline.process(raw)
            seen += len(raw)
            target_seconds += outcome.write_seconds
            counts["batches"] += 1
            counts["events"] += outcome.decoded
            counts["entities_written"] += outcome.entities_written
            counts["writes"] += outcome.write_requests
        elapsed = time.perf_counter() - (started or time.perf_counter()) - target_seconds
        consumer.close()
        catalog.close()
    return elapsed, counts


def throughput_and_coalescing(bootstrap: str, events: int = 100_000) -> Iterator[Figure]:
    from atlas_sink.core.pipeline import tune_gc_for_streaming

    # As the sink process runs; the floor below is measured under the same settings.
    tune_gc_for_streaming()
    topic = f"bench.sink.{uuid.uuid4().hex[:8]}"
    deployments = 100
    _fill(bootstrap, topic, events, deployments)
    floor = _floor(bootstrap, topic, events)
    ours, counts = _pipeline(bootstrap, topic, events)
    yield Figure(
        "sink_pipeline_rate",
        events / ours,
        "events/s",
        "confluent-kafka consume + fastavro decode alone",
        events / floor,
        target="ratio >= 0.5",
        extra={"events": events, "batch": BATCH},
    )
    yield Figure(
        "sink_events_per_entity_write",
        counts["events"] / max(counts["entities_written"], 1),
        "events/entity written",
        extra={
            **counts,
            "deployments": deployments,
            "replicas": REPLICAS,
            "versions": len(VERSIONS),
            # A deployment and its (deployment, version) live figures per batch.
            "max_entities_per_batch": deployments * (1 + len(VERSIONS)),
            "target": "entities written per batch <= distinct entities changed (300)",
            "entities_per_batch": round(counts["entities_written"] / counts["batches"], 1),
        },
    )


def _peak_rss_of_replay(bootstrap: str, topic: str, events: int) -> tuple[int, int]:
    """Peak RSS (KiB) of ``atlas-sink replay`` over the topic into a fresh local catalog,
    measured by a wrapper process so each run's peak stands alone; and messages replayed."""
    code = (
        "import resource, subprocess, sys;"
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True);"
        "print(out.stdout.strip());"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        # Nothing of a shell's sink settings: the figure is of the defaults.
        env = harness.sink_environment(bootstrap, topic, settings={"SINK_LOG_LEVEL": "WARNING"})
        command = [
            sys.executable,
            "-m",
            "atlas_sink",
            "replay",
            "--from-beginning",
            "--target",
            "local",
            "--catalog",
            str(Path(tmp) / "replay.sqlite"),
            "--no-progress",
            "--json",
        ]
        out = subprocess.run(
            [sys.executable, "-c", code, *command],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
    summary, peak = out.stdout.strip().rsplit("\n", 1)
    return int(peak), int(json.loads(summary)["messages"])


def memory(bootstrap: str, small: int = 10_000, large: int = 1_000_000) -> Iterator[Figure]:
    peaks = {}
    for events in (small, large):
        topic = f"bench.sink.mem.{uuid.uuid4().hex[:8]}"
        _fill(bootstrap, topic, events, 100)
        peak, replayed = _peak_rss_of_replay(bootstrap, topic, events)
        if replayed != events:
            raise RuntimeError(f"replay read {replayed} of {events} messages")
        peaks[events] = peak
    yield Figure(
        "sink_peak_rss_growth",
        peaks[large] / 1024,
        "MiB",
        f"peak RSS of atlas-sink replay with a {small:,}-event backlog",
        peaks[small] / 1024,
        target="ratio close to 1 (flat)",
        extra={"backlog_small": small, "backlog_large": large},
    )


def run() -> Iterator[Figure]:
    bootstrap = kafka_bootstrap()
    yield from throughput_and_coalescing(bootstrap)
    yield from memory(bootstrap)
