"""Emitter figures: record() cost, lifecycle-call latency (broker up and down), throughput.

Each figure is printed with the baseline measured in the same run, so the ratio holds on
whatever machine runs it.
"""

from __future__ import annotations

import socket
import statistics
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import Figure, kafka_bootstrap, realistic_scoring_stats
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import Deployment, ModelEvent, ModelIdentity, to_avro
from capture.framing import single_object_framer
from capture.stats import ScoringRecorder
from tests.conftest import INPUT, OUTPUT, envelope, scoring_stats

DEPLOYMENT = Deployment(server_kind="python", server_name="bench", cluster="bench")
MODEL = ModelIdentity(name="bench-model", version="1")


def _per_call_ns(fn: Callable[[], Any], number: int = 200_000, repeat: int = 15) -> float:
    """Median over repeats of the mean cost per call; the loop overhead is subtracted."""
    empty = min(timeit.repeat(lambda: None, number=number, repeat=5)) / number
    samples = [t / number - empty for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return statistics.median(samples) * 1e9


def record_cost() -> Iterator[Figure]:
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram("bench_latency_seconds", "bench", registry=CollectorRegistry())
    recorder = ScoringRecorder(3600, max_pending=10**9)
    baseline = _per_call_ns(lambda: histogram.observe(0.0123))
    ours = _per_call_ns(lambda: recorder.record(0.0123))
    yield Figure(
        "record_median_cost",
        ours,
        "ns/call",
        "prometheus_client Histogram.observe",
        baseline,
        target="ratio <= 0.5",
    )
    errors = _per_call_ns(lambda: recorder.record(0.0123, "timeout"), number=100_000)
    yield Figure(
        "record_error_median_cost",
        errors,
        "ns/call",
        "prometheus_client Histogram.observe",
        baseline,
    )


def _lifecycle_latencies(emitter: Emitter, calls: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        started = clock()
        if i % 2:
            emitter.model_unloaded(MODEL, reason="bench")
        else:
            emitter.schema_changed(MODEL, "OUTPUT", OUTPUT, previous=INPUT)
        samples.append((clock() - started) / 1000)
        if i % 1000 == 999:
            emitter.flush(30)  # keep the queue from filling: we time calls, not drops
    return samples


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def lifecycle_latency(bootstrap: str, calls: int = 20_000) -> Iterator[Figure]:
    from confluent_kafka import Producer

    # Floor: handing pre-encoded bytes of the same event straight to librdkafka.
    raw = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    value = single_object_framer()(
        to_avro(ModelEvent(envelope=envelope(), payload=scoring_stats()))
    )
    floor = []
    for i in range(calls):
        started = time.perf_counter_ns()
        raw.produce("bench.raw", value=value, key=b"k")
        floor.append((time.perf_counter_ns() - started) / 1000)
        if i % 1000 == 999:
            raw.flush(30)
    raw.flush(30)
    floor_p99 = _p99(floor)

    with socket.socket() as s:  # bound, never listening: a broker that is down
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        for label, servers in (("broker_up", bootstrap), ("broker_down", dead)):
            config = EmitterConfig(
                bootstrap_servers=servers,
                topic=f"bench.lifecycle.{uuid.uuid4().hex[:8]}",
                queue_size=5_000,
                delivery_timeout_seconds=2,
                close_timeout_seconds=2,
            )
            emitter = Emitter(config, DEPLOYMENT)
            samples = (
                _lifecycle_latencies(emitter, calls)
                if label == "broker_up"
                else [x for _ in range(1) for x in _unflushed_latencies(emitter, calls)]
            )
            emitter.close(2)
            yield Figure(
                f"lifecycle_call_p99_{label}",
                _p99(samples),
                "us",
                "confluent_kafka Producer.produce p99 (pre-encoded)",
                floor_p99,
                target="value <= 20 us",
                extra={"max_us": round(max(samples), 1), "dropped": emitter.stats().dropped_total},
            )


def _unflushed_latencies(emitter: Emitter, calls: int) -> list[float]:
    # With the broker down nothing drains: the queue fills and calls turn into counted drops,
    # which must be just as quick.
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        emitter.model_unloaded(MODEL, reason="bench")
        samples.append((clock() - started) / 1000)
    return samples


def throughput(bootstrap: str, events: int = 100_000) -> Iterator[Figure]:
    from confluent_kafka import Producer

    stats = realistic_scoring_stats()
    value = single_object_framer()(to_avro(ModelEvent(envelope=envelope(), payload=stats)))

    raw = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "queue.buffering.max.messages": events * 2,
        }
    )
    started = time.perf_counter()
    for _ in range(events):
        raw.produce("bench.raw", value=value, key=b"bench/bench-model")
        raw.poll(0)
    raw.flush(120)
    raw_rate = events / (time.perf_counter() - started)

    config = EmitterConfig(
        bootstrap_servers=bootstrap,
        topic=f"bench.throughput.{uuid.uuid4().hex[:8]}",
        queue_size=events,
        close_timeout_seconds=120,
    )
    emitter = Emitter(config, DEPLOYMENT)
    started = time.perf_counter()
    for _ in range(events):
        emitter._emit(MODEL, stats)
    emitter.flush(120)
    elapsed = time.perf_counter() - started
    delivered = emitter.stats().delivered
    emitter.close()
    yield Figure(
        "emitter_throughput",
        delivered / elapsed,
        "events/s",
        "confluent_kafka Producer of pre-encoded bytes",
        raw_rate,
        target="value >= 50000 events/s",
        extra={
            "events": events,
            "delivered": delivered,
            "bytes_per_event": len(value),
            "sketch_buckets": len(stats.latency.sketch.counts),
        },
    )


def run() -> Iterator[Figure]:
    yield from record_cost()
    bootstrap = kafka_bootstrap()
    yield from lifecycle_latency(bootstrap)
    yield from throughput(bootstrap)
