"""Prometheus metrics and the small HTTP server with /metrics, /healthz and /readyz.

Counting happens in-process (prometheus_client counters cost well under a microsecond);
exposition runs on its own thread, so a slow scrape never slows the loop. Each ``SinkMetrics``
has its own registry, so tests and replays can build as many as they like.

/healthz answers "is the loop alive": the loop beats a heartbeat on every turn, also while
it waits out a backoff, so only a wedged loop fails it. /readyz answers "is it doing its
job": partitions assigned and the target taking writes (not in backoff).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from atlas_sink.core.entities import Entity, Ref
from atlas_sink.core.pipeline import BatchOutcome

log = logging.getLogger("servemeta.sink.metrics")

# A heartbeat older than this means the loop is stuck. Longer than any single target write
# can take with its own retries (the loop cannot beat while a write blocks it).
DEFAULT_STALE_SECONDS = 120.0

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Health:
    """What the probes report; written by the loop, read by the HTTP threads."""

    def __init__(
        self,
        stale_after_seconds: float = DEFAULT_STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after_seconds = stale_after_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._heartbeat = clock()
        self._assigned = 0
        self._backoff_reason: str | None = None
        self._stopping = False

    def beat(self) -> None:
        self._heartbeat = self._clock()  # a float store: atomic enough without the lock

    @property
    def assigned(self) -> int:
        return self._assigned

    def set_assigned(self, count: int) -> None:
        with self._lock:
            self._assigned = count

    def set_backoff(self, reason: str | None) -> None:
        with self._lock:
            self._backoff_reason = reason

    def set_stopping(self) -> None:
        with self._lock:
            self._stopping = True

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = self._clock() - self._heartbeat
        return age <= self.stale_after_seconds, {"heartbeat_age_seconds": round(age, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive, detail = self.liveness()
        with self._lock:
            problems = []
            if not alive:
                problems.append("the consumer loop has not run recently")
            if self._stopping:
                problems.append("shutting down")
            if self._assigned == 0:
                problems.append("no partitions assigned")
            if self._backoff_reason is not None:
                problems.append(f"target unavailable, retrying: {self._backoff_reason}")
            detail.update(assigned_partitions=self._assigned, problems=problems)
        return not problems, detail


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_versions: int = 1000) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            "servemeta_sink_messages_consumed", "Kafka messages taken into batches", registry=r
        )
        self.decoded = Counter(
            "servemeta_sink_messages_decoded", "messages decoded into valid events", registry=r
        )
        self.dead_lettered = Counter(
            "servemeta_sink_dead_letters",
            "messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            "servemeta_sink_events_dropped",
            "messages that changed nothing in the catalog, by reason: every dead-letter reason, "
            "redelivered (a known event id, same body), already_applied (its sequence was "
            "applied), beyond_dedup_window (taken for applied only because its producer's "
            "oldest sequence gaps were given up: possibly a late event never applied)",
            ["reason"],
            registry=r,
        )
        self.schema_changes = Counter(
            "servemeta_sink_schema_changes",
            "schema changes by how the sink's own compatibility verdict met the producer's "
            "claim: agreed, overruled, unjudged (the previous schema was not known)",
            ["verdict"],
            registry=r,
        )
        self.updates_in = Counter(
            "servemeta_sink_updates_in", "entity updates produced by translation", registry=r
        )
        self.entities_out = Counter(
            "servemeta_sink_entities_written", "entities written after coalescing", registry=r
        )
        self.writes = Counter(
            "servemeta_sink_target_requests", "requests made to the target", registry=r
        )
        self.write_seconds = Histogram(
            "servemeta_sink_write_seconds",
            "time to write one batch's entities to the target",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "servemeta_sink_batch_messages",
            "messages per processed batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.target_failures = Counter(
            "servemeta_sink_target_unavailable",
            "batches that failed because the target (or the DLQ) could not take them",
            ["stage"],
            registry=r,
        )
        self.commits = Counter(
            "servemeta_sink_commits", "synchronous offset commits that succeeded", registry=r
        )
        self.lag = Gauge(
            "servemeta_sink_consumer_lag",
            "messages between the consumer's position and the high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.paused = Gauge(
            "servemeta_sink_paused", "1 while partitions are paused for a backoff", registry=r
        )
        self.assigned = Gauge(
            "servemeta_sink_assigned_partitions", "partitions assigned to this consumer", registry=r
        )
        self._lag_labels: set[tuple[str, str]] = set()
        self.live = LiveFigures(r, max_versions)

    def record_batch(self, outcome: BatchOutcome) -> None:
        self.consumed.inc(outcome.consumed)
        self.decoded.inc(outcome.decoded)
        for reason, count in outcome.dropped_by_reason().items():
            self.dropped.labels(reason).inc(count)
        for verdict, count in outcome.compatibility.items():
            self.schema_changes.labels(verdict).inc(count)
        self.updates_in.inc(outcome.updates)
        self.entities_out.inc(outcome.entities_written)
        self.writes.inc(outcome.write_requests)
        if outcome.write_requests:
            self.write_seconds.observe(outcome.write_seconds)
        self.batch_size.observe(outcome.consumed)
        for letter in outcome.dead:
            self.dead_lettered.labels(letter.reason).inc()
        for entity in outcome.live_figures:
            self.live.show(entity)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace the per-partition lag; partitions no longer assigned disappear."""
        labels = {(topic, str(partition)) for topic, partition in lags}
        for gone in self._lag_labels - labels:
            self.lag.remove(*gone)
        for (topic, partition), value in lags.items():
            self.lag.labels(topic, str(partition)).set(value)
        self._lag_labels = labels


class LiveFigures:
    """The merged live figures the sink holds per (model, version, deployment), as gauges.

    Label sets are bounded: past ``max_versions`` the one updated longest ago is removed from
    every gauge, so a fleet that churns through versions cannot grow /metrics without end.
    """

    _LATENCIES = ("p50", "p95", "p99")

    def __init__(self, registry: CollectorRegistry, max_versions: int) -> None:
        labels = ["model", "version", "deployment"]
        self.max_versions = max_versions
        self._shown: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.requests = Gauge(
            "servemeta_version_requests",
            "requests scored by a model version on a deployment, every replica's windows merged",
            labels,
            registry=registry,
        )
        self.errors = Gauge(
            "servemeta_version_errors",
            "failed requests of a model version on a deployment, every window merged",
            labels,
            registry=registry,
        )
        self.latency = Gauge(
            "servemeta_version_latency_seconds",
            "latency quantiles of a model version on a deployment, from the merged sketch",
            [*labels, "quantile"],
            registry=registry,
        )
        self.replicas = Gauge(
            "servemeta_version_replicas",
            "emitter instances heard from serving a model version on a deployment",
            labels,
            registry=registry,
        )
        self.drifted = Gauge(
            "servemeta_version_drifted_features",
            "input features of a model version whose serving values drifted from training",
            labels,
            registry=registry,
        )

    def show(self, entity: Entity) -> None:
        a = entity.attributes
        lifetime = a.get("lifetime")
        if not lifetime or self.max_versions == 0:
            return
        deployment = entity.references.get("deployment")
        key = (
            str(a.get("modelName")),
            str(a.get("version")),
            deployment.qualified_name if isinstance(deployment, Ref) else "",
        )
        self._shown[key] = None
        self._shown.move_to_end(key)
        while len(self._shown) > self.max_versions:
            self._forget(self._shown.popitem(last=False)[0])
        self.requests.labels(*key).set(lifetime.get("requests", 0))
        self.errors.labels(*key).set(lifetime.get("errors", 0))
        for quantile in self._LATENCIES:
            value = lifetime.get(f"latency{quantile.title()}Seconds")
            if value is not None:
                self.latency.labels(*key, quantile).set(value)
        self.replicas.labels(*key).set(len(a.get("replicas") or ()))
        self.drifted.labels(*key).set(len(a.get("driftedFeatures") or ()))

    def _forget(self, key: tuple[str, str, str]) -> None:
        for gauge in (self.requests, self.errors, self.replicas, self.drifted):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for quantile in self._LATENCIES:
            with contextlib.suppress(KeyError):
                self.latency.remove(*key, quantile)


class MetricsServer:
    """/metrics, /healthz, /readyz on a daemon thread; ``port`` 0 picks a free port."""

    def __init__(self, metrics: SinkMetrics, health: Health, host: str, port: int) -> None:
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="servemeta-sink-metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        host, port = self.address
        log.info("serving /metrics, /healthz, /readyz", extra={"url": f"http://{host}:{port}"})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _handler(metrics: SinkMetrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif path in ("/healthz", "/readyz"):
                ok, detail = health.liveness() if path == "/healthz" else health.readiness()
                detail["status"] = "ok" if ok else "unavailable"
                body = json.dumps(detail).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"expected /metrics, /healthz or /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # One line per scrape would drown the sink's own logs.
            log.debug("http " + format, *args)

    return Handler
