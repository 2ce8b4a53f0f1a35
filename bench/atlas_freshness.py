"""Live freshness against the real Atlas: how long a scoring window takes from its emitter to
Atlas, with the whole sink (consumer, pipeline, target) running at a steady event rate.

A producer thread sends ScoringStats for N deployments at a fixed rate, each deployment with
its own emitter instance and sequence, keyed by model as the emitter keys them. One more
deployment, the probe, gets a window every PROBE_INTERVAL whose ``window_end`` is the moment
it was sent; a poller reads the probe's live figures (its version's ``servemeta_serving_stats``)
from Atlas and, when their ``latestWindow.end`` changes,
records how old every probe window sent up to that one is (a window the sink coalesced into
a newer one is fresh when the newer one shows). The probe rides in the same batches and
writes as the load, so its age is what any deployment's freshness is. The p99 over every
probe window is the figure; the rate the producer kept is reported beside it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from capture.events import (
    Deployment,
    Envelope,
    LatencySummary,
    LogSketch,
    ModelEvent,
    ModelIdentity,
    Producer,
    ScoringStats,
    to_avro,
)
from capture.framing import single_object_framer

PROBE = "probe"
PROBE_INTERVAL = 0.2  # seconds between probe windows
POLL_INTERVAL = 0.05  # seconds between reads of the probe in Atlas
FRAME = single_object_framer()


@dataclass
class Run:
    ages: list[float] = field(default_factory=list)  # seconds, one per probe window seen
    sent: int = 0
    seconds: float = 0.0
    probes_sent: int = 0

    def p(self, quantile: float) -> float:
        ordered = sorted(self.ages)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class _Senders:
    """One emitter instance per deployment: its own sequence, in order."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.sequences: dict[str, int] = {}

    def event(self, model: str, now: datetime, requests: int) -> bytes:
        sequence = self.sequences[model] = self.sequences.get(model, 0) + 1
        window = ScoringStats(
            window_start=now - timedelta(seconds=1),
            window_end=now,
            request_count=requests,
            error_count=0,
            latency=LatencySummary(
                min=0.001,
                max=0.004,
                mean=0.002,
                p50=0.002,
                p95=0.003,
                p99=0.004,
                sketch=LogSketch(relative_accuracy=0.01, first_index=-620, counts=[requests]),
            ),
        )
        envelope = Envelope(
            event_id=str(uuid.uuid4()),
            event_time=now,
            producer=Producer(
                emitter_name="bench", emitter_version="0", host="h", pid=1, instance_id=model
            ),
            sequence=sequence,
            deployment=Deployment(server_kind="python", server_name="fresh", cluster=self.cluster),
            model=ModelIdentity(name=model, version="1"),
        )
        return FRAME(to_avro(ModelEvent(envelope=envelope, payload=window)))


def measure(
    *,
    bootstrap: str,
    topic: str,
    cluster: str,
    deployments: int,
    rate: float,
    seconds: float,
    run_sink: Callable[[threading.Event], None],
    probe_window_end: Callable[[], int | None],
) -> Run:
    """``run_sink(stop)`` runs the sink until ``stop`` is set; ``probe_window_end()`` reads
    the probe's ``latestWindow.end`` (epoch ms) from Atlas, None while absent."""
    from confluent_kafka import Producer as KafkaProducer

    producer = KafkaProducer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    senders = _Senders(cluster)
    models = [f"m{n:03}" for n in range(deployments)]
    # Every deployment, the probe too, exists in Atlas before anything is timed.
    now = datetime.now(UTC)
    for model in [*models, PROBE]:
        producer.produce(topic, senders.event(model, now, 1), key=model.encode())
    producer.flush(30)
    stop = threading.Event()
    sink = threading.Thread(target=run_sink, args=(stop,), daemon=True)
    sink.start()
    run = Run()
    try:
        _wait(lambda: probe_window_end() is not None, 300, "the probe deployment in Atlas")
        seen = probe_window_end()
        poller_stop = threading.Event()
        pending: list[int] = []  # probe ends sent and not yet visible, oldest first
        lock = threading.Lock()

        def poll() -> None:
            nonlocal seen
            while not poller_stop.is_set():
                end = probe_window_end()
                if end is not None and end != seen:
                    seen, now = end, time.time()
                    # A window is fresh in Atlas once it or a newer one shows: windows the sink
                    # coalesced into a newer one count with the newer one's arrival.
                    with lock:
                        while pending and pending[0] <= end:
                            run.ages.append(now - pending.pop(0) / 1000)
                poller_stop.wait(POLL_INTERVAL)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        began = time.monotonic()
        next_probe = began
        last = 0
        n = 0
        while (elapsed := time.monotonic() - began) < seconds:
            due = int(elapsed * rate)
            while n < due:
                model = models[n % len(models)]
                producer.produce(
                    topic, senders.event(model, datetime.now(UTC), 10), key=model.encode()
                )
                n += 1
            if time.monotonic() >= next_probe:
                # Whole milliseconds: Atlas keeps the window's end as epoch ms.
                millis = int(time.time() * 1000)
                with lock:
                    pending.append(millis)
                last = millis
                moment = datetime.fromtimestamp(millis / 1000, UTC)
                producer.produce(topic, senders.event(PROBE, moment, 1), key=PROBE.encode())
                run.probes_sent += 1
                next_probe += PROBE_INTERVAL
            producer.poll(0)
            time.sleep(0.002)
        run.sent, run.seconds = n, time.monotonic() - began
        producer.flush(30)
        _wait(lambda: seen == last, 120, "the last probe window in Atlas")
        poller_stop.set()
        poller.join(5)
    finally:
        stop.set()
        sink.join(60)
    return run


def _wait(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not appear within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)
