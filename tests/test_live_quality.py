"""Live quality per version through the real broker, from a producer of the test's own.

Events are written from ``schemas/model_event.avsc`` alone: plain dicts, fastavro, Avro
single-object framing and a plain confluent-kafka producer; sketches are bucketed by the
contract's formula, not by ``capture``. Three replicas serve version 1, then version 2 (whose
inputs drift from training); the messages go out shuffled and partly twice. Every per-version
figure the sink keeps (report and /metrics) must equal the one computed here from the windows
sent, and the drift verdicts must follow the data.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from atlas_sink.catalog.report import build_report, render_text
from atlas_sink.core import naming
from atlas_sink.kafka.consumer import SinkConsumer
from atlas_sink.runtime.config import load_config
from atlas_sink.service import wiring
from atlas_sink.targets.local import LocalCatalog
from capture.stats import Sketch
from tests import services
from tests.services import Topics, step_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SCHEMA = parse_schema(json.loads((REPO / "schemas" / "model_event.avsc").read_text()))
HEADER = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(SCHEMA), "CRC-64-AVRO"))
CLUSTER = "live"
SERVER = "wine-scorer"
KEY = f"{CLUSTER}/wine".encode()
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
ACCURACY = 0.01  # the sink keeps latencies at the emitter's default; others are re-bucketed
FEATURES = ("alcohol", "hue")


# -- the contract, by hand ----------------------------------------------------------------------


def _bucketed(values: list[float], accuracy: float) -> dict[str, Any]:
    """A LogSketch as the contract's doc defines it: bucket i holds (gamma^(i-1), gamma^i]."""
    gamma = (1 + accuracy) / (1 - accuracy)
    zero = sum(1 for v in values if v <= 1e-9)
    indexes = [math.ceil(math.log(v) / math.log(gamma)) for v in values if v > 1e-9]
    if not indexes:
        return {"relative_accuracy": accuracy, "zero_count": zero, "first_index": 0, "counts": []}
    first = min(indexes)
    counts = [0] * (max(indexes) - first + 1)
    for i in indexes:
        counts[i - first] += 1
    return {
        "relative_accuracy": accuracy,
        "zero_count": zero,
        "first_index": first,
        "counts": counts,
    }


def _summary(name: str, values: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "count": len(values),
        "null_count": 0,
        "min": min(values),
        "max": max(values),
        "mean": sum(values) / len(values),
        "distribution": {
            "positive": _bucketed([v for v in values if v > 0], 0.05),
            "negative": {**_bucketed([-v for v in values if v < 0], 0.05), "zero_count": 0},
        },
    }


def _schema(*names: str) -> dict[str, Any]:
    fields = [[n, "double", False] for n in names]
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
    return {
        "fields": [{"name": n, "type": "double"} for n in names],
        "fingerprint": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
    }


def _frame(record: dict[str, Any]) -> bytes:
    from io import BytesIO

    body = BytesIO()
    schemaless_writer(body, SCHEMA, record)
    return HEADER + body.getvalue()


class Replica:
    def __init__(self, index: int) -> None:
        self.instance = f"replica-{index}-{uuid.uuid4().hex[:6]}"
        self.host = f"node-{index}"
        self.sequence = 0

    def event(self, version: str, at: datetime, payload: tuple[str, dict[str, Any]]) -> bytes:
        self.sequence += 1
        return _frame(
            {
                "envelope": {
                    "event_id": str(uuid.uuid4()),
                    "event_time": at,
                    "producer": {
                        "emitter_name": "test-own-producer",
                        "emitter_version": "1",
                        "host": self.host,
                        "pid": 1,
                        "instance_id": self.instance,
                    },
                    "sequence": self.sequence,
                    "deployment": {
                        "server_kind": "flink",
                        "server_name": SERVER,
                        "cluster": CLUSTER,
                    },
                    "model": {"name": "wine", "version": version},
                },
                "payload": payload,
            }
        )


def _loaded(version: str, training: dict[str, list[float]]) -> tuple[str, dict[str, Any]]:
    return (
        "servemeta.events.ModelLoaded",
        {
            "replaces_version": None if version == "1" else "1",
            "model_type": {"framework": "sklearn"},
            "artifact": {"uri": f"file:///models/wine/{version}", "scheme": "file"},
            "input_schema": _schema(*FEATURES),
            "output_schema": _schema("score"),
            "runtime": {"language": "java", "language_version": "17", "host": "node"},
            "training_profile": [_summary(n, v) for n, v in training.items()],
        },
    )


def _window(
    rng: random.Random, start: datetime, shift: float
) -> tuple[tuple[str, dict[str, Any]], dict[str, Any]]:
    """A window payload, and the same facts kept plainly for the expected figures."""
    requests = rng.randint(20, 80)
    latencies = [rng.lognormvariate(math.log(0.004), 0.5) for _ in range(requests)]
    errors = rng.randint(0, 5)
    sketch = _bucketed(latencies, ACCURACY)
    features = {
        "alcohol": [rng.gauss(13.0 + shift, 0.8) for _ in range(requests)],
        "hue": [rng.gauss(1.0, 0.2) for _ in range(requests)],
    }
    payload = {
        "window_start": start,
        "window_end": start + timedelta(seconds=30),
        "request_count": requests,
        "error_count": errors,
        "errors_by_kind": {"timeout": errors} if errors else {},
        "latency": {
            "min": min(latencies),
            "max": max(latencies),
            "mean": sum(latencies) / requests,
            "p50": 0.0,  # the sink recomputes quantiles from the merged sketches
            "p95": 0.0,
            "p99": 0.0,
            "sketch": sketch,
        },
        "features": [_summary(n, v) for n, v in features.items()],
    }
    return ("servemeta.events.ScoringStats", payload), payload


def _expected(windows: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[int, int] = {}
    for w in windows:
        sketch = w["latency"]["sketch"]
        for k, count in enumerate(sketch["counts"]):
            merged[sketch["first_index"] + k] = merged.get(sketch["first_index"] + k, 0) + count
    direct = Sketch(ACCURACY)
    direct.buckets = {i: c for i, c in merged.items() if c}
    direct.count = sum(merged.values())
    requests = sum(w["request_count"] for w in windows)
    errors = sum(w["error_count"] for w in windows)
    return {
        "requests": requests,
        "errors": errors,
        "windows": len(windows),
        "errorRate": errors / requests,
        "min": min(w["latency"]["min"] for w in windows),
        "max": max(w["latency"]["max"] for w in windows),
        "p50": direct.quantile(0.5),
        "p95": direct.quantile(0.95),
        "p99": direct.quantile(0.99),
    }


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with services.kafka() as address:
        yield address


def test_three_replicas_two_versions_out_of_order_and_duplicated(
    bootstrap: str, tmp_path: Path
) -> None:
    rng = random.Random(20261206)
    training = {
        "alcohol": [rng.gauss(13.0, 0.8) for _ in range(2000)],
        "hue": [rng.gauss(1.0, 0.2) for _ in range(2000)],
    }
    replicas = [Replica(i) for i in range(3)]
    messages: list[bytes] = []
    sent: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    per_replica: dict[tuple[str, str], int] = {}
    for version, shift, begin in (("1", 0.0, T0), ("2", 2.5, T0 + timedelta(minutes=30))):
        for replica in replicas:
            messages.append(replica.event(version, begin, _loaded(version, training)))
            for n in range(6):
                start = begin + timedelta(seconds=30 * n + 1)
                payload, plain = _window(rng, start, shift)
                messages.append(replica.event(version, start + timedelta(seconds=30), payload))
                sent[version].append(plain)
                key = (replica.instance, version)
                per_replica[key] = per_replica.get(key, 0) + plain["request_count"]
    # Out of order, and a third of them twice (a producer retrying, a replayed partition).
    arrivals = messages + rng.sample(messages, len(messages) // 3)
    rng.shuffle(arrivals)

    topics: Topics = services.new_topics(bootstrap, "live-quality")
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in arrivals:
        producer.produce(topics.events, value=value, key=KEY)
    assert producer.flush(30) == 0

    config = load_config(
        {},
        overrides={
            "kafka_bootstrap_servers": bootstrap,
            "topics": [topics.events],
            "dlq_topic": topics.dlq,
            "group_id": f"live-{uuid.uuid4().hex[:8]}",
            "batch_max_messages": 17,  # many batches: windows meet their duplicates apart
            "batch_max_wait_seconds": 0.3,
        },
    )
    catalog = LocalCatalog(tmp_path / "catalog.sqlite")
    catalog.ensure_types()
    sink = SinkConsumer(config, wiring.pipeline_factory(config, catalog))
    sink.start()
    try:
        step_until(sink, lambda: sink.totals.committed >= len(arrivals), timeout=60)
        assert sink.totals.dead_lettered == {}
        # Each message sent twice was recognised as a redelivery, and changed nothing.
        assert sink.totals.dropped == {"redelivered": len(arrivals) - len(messages)}
        report = build_report(catalog, "wine", CLUSTER, "2")
        metrics = sink.metrics.registry
    finally:
        sink.close()
        catalog.close()

    (served,) = report.data["quality"]["byVersion"]
    assert served["deployment"] == naming.deployment(SERVER, "wine", CLUSTER)
    by_version = {v["version"]: v for v in served["versions"]}
    assert sorted(by_version) == ["1", "2"]
    for version, figures in by_version.items():
        expected = _expected(sent[version])
        for name in ("requests", "errors", "windows"):
            assert figures[name] == expected[name], (version, name)
        assert math.isclose(figures["errorRate"], expected["errorRate"], rel_tol=1e-12)
        latency = figures["latencySeconds"]
        for name in ("min", "max", "p50", "p95", "p99"):
            assert latency[name] == expected[name], (version, name)
        assert {r["instance"]: r["requests"] for r in figures["replicas"]} == {
            instance: count for (instance, v), count in per_replica.items() if v == version
        }
        assert {r["host"] for r in figures["replicas"]} == {"node-0", "node-1", "node-2"}
        labels = {"model": "wine", "version": version, "deployment": served["deployment"]}
        assert (
            metrics.get_sample_value("servemeta_version_requests", labels) == expected["requests"]
        )
        assert (
            metrics.get_sample_value(
                "servemeta_version_latency_seconds", {**labels, "quantile": "p99"}
            )
            == expected["p99"]
        )
        assert metrics.get_sample_value("servemeta_version_replicas", labels) == 3
    # Version 1 served what it was trained on; version 2's alcohol moved by three deviations.
    assert by_version["1"]["drift"] == "stable"
    assert by_version["2"]["drift"] == "drifted"
    assert by_version["2"]["driftedFeatures"] == ["alcohol"]
    hue = {f["name"]: f for f in by_version["2"]["features"]}["hue"]
    assert hue["verdict"] == "stable"
    assert hue["servingCount"] == sum(w["request_count"] for w in sent["2"])
    # Every replica of version 1 went silent 30 minutes (60 windows) before version 2's newest.
    assert all(r["stale"] for r in by_version["1"]["replicas"])
    assert not any(r["stale"] for r in by_version["2"]["replicas"])

    text = render_text(report)
    assert f"versions served on {served['deployment']}" in text
    assert "drifted: alcohol" in text
    assert "inputs of version 2" in text
    assert "None" not in text
