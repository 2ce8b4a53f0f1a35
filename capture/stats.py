"""Per-request scoring statistics: a record() cheap enough for the serving hot path.

``record()`` appends the latency to a C ``array('d')`` (one atomic operation under the GIL:
no lock, no Python object kept) and returns. The emitter's background thread drains the
buffer every tick into exact count/sum/min/max and a mergeable log-bucketed sketch, and
closes the window into a ``ScoringStats`` payload. Draining uses slice copy then slice delete,
each atomic, and appends only ever add at the end, so nothing recorded between the two is
lost. This relies on the GIL; free-threaded builds would need a lock here.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from capture.events import FeatureSummary, LatencySummary, LogSketch, ScoringStats

DEFAULT_RELATIVE_ACCURACY = 0.01
# Error kinds per window, and characters per kind, beyond which kinds are folded or cut.
MAX_ERROR_KINDS = 100
MAX_ERROR_KIND_CHARS = 200
OTHER_ERROR_KIND = "other"
# Values at or below this many seconds count as zero: below clock resolution anyway.
_ZERO_THRESHOLD = 1e-9
# Longer latencies are rejected as garbage (a timestamp passed for a duration, say): one such
# value would stretch the window's sketch past the 10,000 buckets the sink accepts, and the
# sink would refuse the whole window.
MAX_LATENCY_SECONDS = 1e6


class Sketch:
    """Log-bucketed histogram with relative error bound ``alpha`` on quantiles (DDSketch).

    Bucket ``i`` holds values in (gamma^(i-1), gamma^i]; merging two sketches adds counts,
    so windows combine into any coarser window without losing the error bound.
    """

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self.gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.buckets: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0

    def add_many(self, values: Iterable[float]) -> None:
        buckets = self.buckets
        inv = self._inv_log_gamma
        log = math.log
        ceil = math.ceil
        for value in values:
            if value <= _ZERO_THRESHOLD:
                self.zero_count += 1
            else:
                index = ceil(log(value) * inv)
                buckets[index] = buckets.get(index, 0) + 1
            self.count += 1

    def merge(self, other: Sketch) -> None:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                "cannot merge sketches of different accuracy: "
                f"{self.relative_accuracy} and {other.relative_accuracy}"
            )
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.zero_count += other.zero_count
        self.count += other.count

    def quantile(self, q: float) -> float:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return math.nan
        rank = q * (self.count - 1)
        seen = self.zero_count
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                # The bucket's midpoint in relative terms keeps the error within alpha.
                return 2.0 * self.gamma**index / (self.gamma + 1.0)
        return 2.0 * self.gamma ** max(self.buckets) / (self.gamma + 1.0)

    def to_event(self) -> LogSketch:
        if not self.buckets:
            return LogSketch(
                relative_accuracy=self.relative_accuracy, counts=[], zero_count=self.zero_count
            )
        first, last = min(self.buckets), max(self.buckets)
        get = self.buckets.get
        return LogSketch(
            relative_accuracy=self.relative_accuracy,
            first_index=first,
            counts=[get(i, 0) for i in range(first, last + 1)],
            zero_count=self.zero_count,
        )

    @classmethod
    def from_event(cls, event: LogSketch) -> Sketch:
        sketch = cls(event.relative_accuracy)
        sketch.buckets = {
            event.first_index + k: count for k, count in enumerate(event.counts) if count
        }
        sketch.zero_count = event.zero_count
        sketch.count = event.zero_count + sum(event.counts)
        return sketch


@dataclass(slots=True)
class _FeatureAggregate:
    count: int = 0
    null_count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def summary(self, name: str) -> FeatureSummary:
        numeric = self.count - self.null_count
        return FeatureSummary(
            name=name,
            count=self.count,
            null_count=self.null_count,
            min=self.low if numeric else None,
            max=self.high if numeric else None,
            mean=self.total / numeric if numeric else None,
        )


class ScoringRecorder:
    """Collects one model's per-request outcomes; the emitter closes its windows."""

    def __init__(
        self,
        window_seconds: float,
        *,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        max_pending: int = 1_000_000,
        now: datetime | None = None,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.window_seconds = window_seconds
        self._relative_accuracy = relative_accuracy
        self._max_pending = max_pending
        self._pending = array("d")
        self._pending_errors: list[tuple[float, object]] = []
        self._lock = threading.Lock()  # guards the aggregates below, never taken by record()
        self.rejected = 0
        self.overflowed = 0
        self._reset(now or datetime.now(UTC))

    def _reset(self, start: datetime) -> None:
        self._window_start = start
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._errors: dict[str, int] = {}
        self._sketch = Sketch(self._relative_accuracy)
        self._features: dict[str, _FeatureAggregate] = {}

    def record(self, latency_seconds: float, error: str | BaseException | None = None) -> None:
        """One scored request. Never raises, never blocks, no I/O."""
        if error is None:
            pending = self._pending
            if len(pending) < self._max_pending:
                if latency_seconds is True or latency_seconds is False:
                    self.rejected += 1  # array('d') would take a bool for 1.0 or 0.0 seconds
                    return
                try:
                    pending.append(latency_seconds)
                except Exception:  # not a number, an int beyond a double, a raising __float__
                    self.rejected += 1
            else:
                self.overflowed += 1
        elif len(self._pending_errors) < self._max_pending:
            self._pending_errors.append((latency_seconds, error))
        else:
            self.overflowed += 1

    def record_features(self, values: Mapping[str, float | None]) -> None:
        """Per-feature summaries of the scored inputs (off the latency hot path: takes a lock).

        None and non-finite values count as missing; anything that is not a number is
        rejected rather than raised, like a bad latency.
        """
        try:
            items = list(values.items())
        except AttributeError:
            self.rejected += 1
            return
        with self._lock:
            for name, value in items:
                # A name that is not a string would fail the whole window when it is sent.
                if not isinstance(name, str) or (value is not None and not _is_number(value)):
                    self.rejected += 1
                    continue
                agg = self._features.get(name)
                if agg is None:
                    agg = self._features[name] = _FeatureAggregate()
                agg.count += 1
                if value is not None:
                    value = _as_float(value)  # None for an int beyond a double
                if value is None or not math.isfinite(value):
                    agg.null_count += 1
                    continue
                agg.total += value
                agg.low = min(agg.low, value)
                agg.high = max(agg.high, value)

    def drain(self) -> None:
        """Fold pending samples into the window's aggregates (background thread)."""
        pending = self._pending
        n = len(pending)
        latencies = pending[:n]
        del pending[:n]
        errors_pending = self._pending_errors
        m = len(errors_pending)
        errors = errors_pending[:m]
        del errors_pending[:m]
        if not n and not m:
            return
        # Chained comparisons are false for NaN too.
        timed = [v for v in latencies if 0.0 <= v <= MAX_LATENCY_SECONDS]
        rejected = n - len(timed)
        by_kind: dict[str, int] = {}
        for latency, kind in errors:
            key = _error_key(kind)
            by_kind[key] = by_kind.get(key, 0) + 1
            seconds = _as_float(latency) if _is_number(latency) else None
            if seconds is not None and 0.0 <= seconds <= MAX_LATENCY_SECONDS:
                timed.append(seconds)
        with self._lock:
            self.rejected += rejected
            # A request whose latency was unusable still failed: it counts, untimed.
            self._count += n - rejected + m
            errors_by_kind = self._errors
            for key, count in by_kind.items():
                # The sink refuses a window with more than a thousand kinds: past a bound,
                # new kinds (say, every exception's own text) are counted as one.
                if key not in errors_by_kind and len(errors_by_kind) >= MAX_ERROR_KINDS:
                    key = OTHER_ERROR_KIND
                errors_by_kind[key] = errors_by_kind.get(key, 0) + count
            if timed:
                self._min = min(self._min, min(timed))
                self._max = max(self._max, max(timed))
                self._sum += math.fsum(timed)
                self._sketch.add_many(timed)

    def due(self, now: datetime) -> bool:
        return (now - self._window_start).total_seconds() >= self.window_seconds

    def close_window(self, now: datetime) -> ScoringStats | None:
        """The finished window as a payload, or None when it saw no request."""
        self.drain()
        with self._lock:
            start = self._window_start
            count, errors, sketch = self._count, self._errors, self._sketch
            low, high, total, features = self._min, self._max, self._sum, self._features
            self._reset(now)
        if count == 0:
            return None
        timed = sketch.count
        return ScoringStats(
            window_start=start,
            window_end=now,
            request_count=count,
            error_count=sum(errors.values()),
            errors_by_kind=errors,
            latency=LatencySummary(
                min=low if timed else 0.0,
                max=high if timed else 0.0,
                mean=total / timed if timed else 0.0,
                p50=sketch.quantile(0.5) if timed else 0.0,
                p95=sketch.quantile(0.95) if timed else 0.0,
                p99=sketch.quantile(0.99) if timed else 0.0,
                sketch=sketch.to_event(),
            ),
            features=[agg.summary(name) for name, agg in sorted(features.items())],
        )


def _error_key(kind: object) -> str:
    if isinstance(kind, str):
        return kind[:MAX_ERROR_KIND_CHARS] or "error"
    return type(kind).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: float) -> float | None:
    """The number as a float; None when it has none (an int beyond a double's range)."""
    try:
        return float(value)
    except Exception:  # OverflowError, or a subclass whose __float__ raises
        return None
