"""Prometheus exposition of an emitter's counters (needs the optional prometheus-client).

The emitter keeps plain counters; this collector reads them at scrape time, so the serving
path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capture.emitter import Emitter


class EmitterCollector:
    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._emitter.stats()
        labels = ["topic"]
        topic = [self._emitter.config.topic]
        enqueued = CounterMetricFamily(
            "servemeta_emitter_enqueued", "Events accepted into the queue", labels=labels
        )
        enqueued.add_metric(topic, stats.enqueued)
        delivered = CounterMetricFamily(
            "servemeta_emitter_delivered", "Events acknowledged by Kafka", labels=labels
        )
        delivered.add_metric(topic, stats.delivered)
        dropped = CounterMetricFamily(
            "servemeta_emitter_dropped",
            "Events dropped, by reason (queue_full, delivery:<error>, close_timeout, ...)",
            labels=[*labels, "reason"],
        )
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([*topic, reason], count)
        depth = GaugeMetricFamily(
            "servemeta_emitter_queue_depth", "Events waiting to be encoded", labels=labels
        )
        depth.add_metric(topic, stats.queue_depth)
        in_flight = GaugeMetricFamily(
            "servemeta_emitter_in_flight",
            "Events handed to Kafka, not yet acknowledged",
            labels=labels,
        )
        in_flight.add_metric(topic, stats.in_flight)
        spooled = GaugeMetricFamily(
            "servemeta_emitter_spooled",
            "Events in the disk spool, not yet acknowledged by Kafka (0 without a spool)",
            labels=labels,
        )
        spooled.add_metric(topic, stats.spooled)
        yield from (enqueued, delivered, dropped, depth, in_flight, spooled)


def register(emitter: Emitter, registry: Any = None) -> EmitterCollector:
    """Expose ``emitter`` on ``registry`` (prometheus_client's default registry if None)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise ImportError(
            "emitter metrics need prometheus-client: pip install prometheus-client"
        ) from exc
    collector = EmitterCollector(emitter)
    (registry or REGISTRY).register(collector)
    return collector
