"""A bounded traffic generator: wine-like scoring requests at a chosen rate for a chosen time.

Rows are the wine data's own rows, picked per cultivar as often as the data has them, each
value nudged by a tenth of its cultivar's spread (clipped to the data's range): the model
sees realistic inputs, predicts all three classes, and the inputs served look like those it
was trained on (the sink's drift check finds them stable). A small share of
requests is malformed on purpose, so the server's error counts have something to count.

    python -m demo.traffic --rate 20 --duration 30      # KAFKA_BOOTSTRAP_SERVERS names the broker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

DEFAULT_TOPIC = "wine-requests"
MALFORMED_KINDS = ("invalid_json", "missing_feature", "not_a_number")


@dataclass(frozen=True)
class FeatureProfile:
    """Per-cultivar mean and spread of every feature, and each feature's observed range."""

    names: tuple[str, ...]
    priors: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]  # [cultivar][feature]
    spreads: tuple[tuple[float, ...], ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]
    rows: tuple[tuple[tuple[float, ...], ...], ...] = ()  # [cultivar][row][feature]

    @classmethod
    def from_wine(cls) -> FeatureProfile:
        from demo.model import load_data

        data = load_data()
        classes = sorted(set(data.target.tolist()))
        means, spreads, priors = [], [], []
        examples: list[tuple[tuple[float, ...], ...]] = []
        for label in classes:
            rows = data.features[data.target == label]
            means.append(tuple(float(v) for v in rows.mean(axis=0)))
            spreads.append(tuple(float(v) for v in rows.std(axis=0)))
            priors.append(len(rows) / len(data.target))
            examples.append(tuple(tuple(float(v) for v in row) for row in rows))
        return cls(
            names=data.feature_names,
            priors=tuple(priors),
            means=tuple(means),
            spreads=tuple(spreads),
            lows=tuple(float(v) for v in data.features.min(axis=0)),
            highs=tuple(float(v) for v in data.features.max(axis=0)),
            rows=tuple(examples),
        )


class RequestFactory:
    """Scoring requests as the server reads them: JSON ``{request_id, sent_at, features}``.

    Deterministic for a seed (``sent_at`` aside, which the caller passes in).
    """

    def __init__(self, profile: FeatureProfile, seed: int = 7, error_rate: float = 0.0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {error_rate}")
        self.profile = profile
        self.error_rate = error_rate
        self.seed = seed
        self._rng = random.Random(seed)

    def row(self) -> tuple[int, dict[str, float]]:
        """A cultivar and one of its rows in the data, each value nudged; without rows (a
        profile built by hand), drawn around the cultivar's means."""
        p = self.profile
        cultivar = self._rng.choices(range(len(p.priors)), weights=p.priors)[0]
        example = self._rng.choice(p.rows[cultivar]) if p.rows else p.means[cultivar]
        nudge = 0.1 if p.rows else 1.0
        values = {}
        for i, name in enumerate(p.names):
            value = self._rng.gauss(example[i], nudge * p.spreads[cultivar][i])
            values[name] = round(min(max(value, p.lows[i]), p.highs[i]), 3)
        return cultivar, values

    def request(self, number: int, sent_at: float) -> tuple[bytes, bytes, str | None]:
        """(key, value, malformed kind or None) of request ``number``."""
        request_id = f"req-{self.seed}-{number}"
        features: dict[str, Any] = self.row()[1]
        body: dict[str, Any] = {"request_id": request_id, "sent_at": sent_at, "features": features}
        kind = None
        if self.error_rate and self._rng.random() < self.error_rate:
            kind = self._rng.choice(MALFORMED_KINDS)
            name = self._rng.choice(self.profile.names)
            if kind == "missing_feature":
                del features[name]
            elif kind == "not_a_number":
                features[name] = "n/a"
        value = json.dumps(body, separators=(",", ":")).encode()
        if kind == "invalid_json":
            value = value[: len(value) // 2]
        return request_id.encode(), value, kind


def planned_count(rate: float, duration: float) -> int:
    """How many requests ``rate`` per second for ``duration`` seconds make."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive, got rate={rate} duration={duration}")
    return max(1, round(rate * duration))


@dataclass
class TrafficResult:
    sent: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def describe(self) -> str:
        bad = sum(self.malformed.values())
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.malformed.items())) or "none"
        line = (
            f"sent {self.sent} requests in {self.seconds:.1f} s "
            f"({self.sent / self.seconds if self.seconds else 0:.1f}/s), "
            f"{bad} malformed on purpose ({kinds})"
        )
        if self.failed:
            line += f", {self.failed} NOT delivered"
        if self.stopped_early:
            line += ", stopped early"
        return line


def send(
    bootstrap: str,
    topic: str,
    *,
    rate: float,
    duration: float,
    seed: int = 7,
    error_rate: float = 0.02,
    stop: threading.Event | None = None,
    progress: Callable[[TrafficResult], None] | None = None,
    progress_every: float = 10.0,
    producer_config: Mapping[str, Any] | None = None,
) -> TrafficResult:
    """Send ``rate`` requests per second for ``duration`` seconds, then flush and return."""
    from confluent_kafka import KafkaError, Message, Producer

    total = planned_count(rate, duration)
    factory = RequestFactory(FeatureProfile.from_wine(), seed=seed, error_rate=error_rate)
    stop = stop or threading.Event()
    result = TrafficResult()

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            result.failed += 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            # A broker that is not there fails the run in seconds, not after librdkafka's 5 min.
            "message.timeout.ms": 15_000,
            "log_level": 4,  # librdkafka's informational lines are noise here
            **(producer_config or {}),
        }
    )
    began = time.monotonic()
    next_report = began + progress_every
    try:
        for number in range(total):
            # Paced against the start, not the previous send: slow sends do not lower the rate.
            due = began + number / rate
            if stop.wait(max(due - time.monotonic(), 0.0)):
                result.stopped_early = True
                break
            key, value, kind = factory.request(number, time.time())
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)  # librdkafka's queue is full: let it drain
            producer.poll(0)
            result.sent += 1
            if kind is not None:
                result.malformed[kind] = result.malformed.get(kind, 0) + 1
            if progress is not None and time.monotonic() >= next_report:
                result.seconds = time.monotonic() - began
                progress(result)
                next_report += progress_every
    except BaseException:
        # Interrupted, or the progress callback gave up: what is queued is dropped now, so
        # that librdkafka does not keep retrying into a broker that is about to stop.
        producer.purge()
        producer.flush(2.0)  # serves the purged messages' reports; returns at once after
        # The traceback keeps this frame alive; without the reference the client closes now,
        # before the broker goes, instead of reconnecting to it in the background.
        del producer
        raise
    unsent = producer.flush(20.0)
    result.failed += unsent
    result.seconds = time.monotonic() - began
    return result


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"error: {name} must be a number, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo.traffic",
        description="Send wine-like scoring requests to the demo server's input topic at a fixed "
        "rate for a fixed time, then stop. Flags default to the DEMO_* variables named.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="Kafka brokers host:port (KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get("DEMO_INPUT_TOPIC", DEFAULT_TOPIC),
        help=f"input topic (DEMO_INPUT_TOPIC, default {DEFAULT_TOPIC})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=_env_float("DEMO_RATE", 20.0),
        help="requests per second (DEMO_RATE, default 20)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=_env_float("DEMO_DURATION", 30.0),
        help="seconds to send for (DEMO_DURATION, default 30)",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=_env_float("DEMO_ERROR_RATE", 0.02),
        help="share of malformed requests, 0..1 (DEMO_ERROR_RATE, default 0.02)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the rows (default 7)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.bootstrap:
        print(
            "error: no Kafka broker: pass --bootstrap host:port or set KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 2
    try:
        planned = planned_count(args.rate, args.duration)
        if not 0.0 <= args.error_rate <= 1.0:
            raise ValueError(f"--error-rate must be within [0, 1], got {args.error_rate}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"sending {planned} requests to {args.topic} at {args.rate:g}/s for {args.duration:g} s",
        file=sys.stderr,
    )
    result = send(
        args.bootstrap,
        args.topic,
        rate=args.rate,
        duration=args.duration,
        seed=args.seed,
        error_rate=args.error_rate,
        stop=stop,
        progress=lambda r: print(f"  ... {r.sent}/{planned} sent", file=sys.stderr),
    )
    print(result.describe())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
