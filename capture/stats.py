"""Per-request scoring statistics: a record() cheap enough for the serving hot path.

``record()`` appends the latency to a C ``array('d')`` (one atomic operation under the GIL:
no lock, no Python object kept) and returns. The emitter's background thread drains the
buffer every tick into exact count/sum/min/max and a mergeable log-bucketed sketch, and
closes the window into a ``ScoringStats`` payload. Draining uses slice copy then slice delete,
each atomic, and appends only ever add at the end, so nothing recorded between the two is
lost. This relies on the GIL; free-threaded builds would need a lock here.

Input features (``record_features``, off the hot path) are summarised per feature, each with a
signed sketch of its values: what the sink compares with the model's training profile
(``capture.profile``) by ``population_stability_index``.
"""

from __future__ import annotations

import math
import sys
import threading
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import SupportsFloat

from capture.events import FeatureSketch, FeatureSummary, LatencySummary, LogSketch, ScoringStats

DEFAULT_RELATIVE_ACCURACY = 0.01
# Features are coarser than latencies: at 5% a bucket spans a factor of 1.105, so every double
# from 1e-9 up to the largest takes at most 7,300 buckets, and no feature, however many decades
# it spans, can pass the 10,000 buckets per sketch that the sink accepts.
DEFAULT_FEATURE_RELATIVE_ACCURACY = 0.05
# Finer accuracies describe too narrow a range to be of use within 10,000 buckets (a factor of
# 1.02 at 1e-6), and far finer ones would make gamma round to 1 in a double.
MIN_RELATIVE_ACCURACY = 1e-6
# Error kinds per window, and characters per kind, beyond which kinds are folded or cut.
MAX_ERROR_KINDS = 100
MAX_ERROR_KIND_CHARS = 200
OTHER_ERROR_KIND = "other"
# Values at or below this many seconds count as zero: below clock resolution anyway. Feature
# values of magnitude at most this count as zero too (the contract's FeatureSketch says so).
ZERO_THRESHOLD = 1e-9
# An empty bin would make the population stability index infinite; each side's share of a bin
# is floored at one in ten thousand, which caps one bin's term at about 9.2 (a whole side in a
# bin the other never saw) and leaves bins that both sides fill untouched.
PSI_FLOOR = 1e-4
# Longer latencies are rejected as garbage (a timestamp passed for a duration, say): one such
# value would stretch the window's sketch past the 10,000 buckets the sink accepts, and the
# sink would refuse the whole window.
MAX_LATENCY_SECONDS = 1e6


def _check_accuracy(relative_accuracy: float) -> None:
    if not MIN_RELATIVE_ACCURACY <= relative_accuracy < 1.0:
        raise ValueError(
            f"relative_accuracy must be in [{MIN_RELATIVE_ACCURACY}, 1), got "
            f"{relative_accuracy}: pass e.g. {DEFAULT_RELATIVE_ACCURACY}"
        )


class Sketch:
    """Log-bucketed histogram with relative error bound ``alpha`` on quantiles (DDSketch).

    Bucket ``i`` holds values in (gamma^(i-1), gamma^i]; merging two sketches adds counts,
    so windows combine into any coarser window without losing the error bound.
    """

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        _check_accuracy(relative_accuracy)
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
            if value <= ZERO_THRESHOLD:
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
        return self.value_at_rank(int(q * (self.count - 1)))

    def value_at_rank(self, rank: int) -> float:
        """The ``rank``-th smallest value (0 the smallest), within the relative accuracy; the
        sketch must hold more than ``rank`` values."""
        seen = self.zero_count
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                return self.bucket_value(index)
        return self.bucket_value(max(self.buckets))

    def bucket_value(self, index: int) -> float:
        """What a value in bucket ``index`` is read as: the bucket's midpoint in relative
        terms, which keeps the error within the relative accuracy."""
        try:
            return 2.0 * self.gamma**index / (self.gamma + 1.0)
        except OverflowError:  # the top bucket of the doubles, whose midpoint is beyond them
            return math.inf

    def count_at_or_below(self, x: float) -> float:
        """How many values are at or below ``x``, those of the bucket holding ``x`` taken as
        spread evenly over the bucket's logarithmic width (so the count grows continuously
        with ``x``, and two sketches of any accuracies compare at any point)."""
        if x < 0.0:
            return 0.0
        seen = float(self.zero_count)
        if x == 0.0:
            return seen
        # Bucket i spans (gamma^(i-1), gamma^i]: x is position + 1 - i of the way through it.
        position = math.log(x) * self._inv_log_gamma + 1.0
        for index, count in self.buckets.items():
            seen += count * min(1.0, max(0.0, position - index))
        return seen

    def index_range(self) -> tuple[int, int]:
        """The lowest and highest bucket index a finite value above the zero threshold falls
        in, computed as ``add_many`` computes indexes (so its indexes never fall outside)."""
        inv = self._inv_log_gamma
        return math.ceil(math.log(ZERO_THRESHOLD) * inv), math.ceil(
            math.log(sys.float_info.max) * inv
        )

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
        return cls.from_counts(
            event.relative_accuracy, event.zero_count, event.first_index, event.counts
        )

    @classmethod
    def from_counts(
        cls, relative_accuracy: float, zero_count: int, first_index: int, counts: Sequence[int]
    ) -> Sketch:
        """The sketch of dense bucket counts, ``counts[k]`` for index ``first_index + k``."""
        sketch = cls(relative_accuracy)
        sketch.buckets = {first_index + k: count for k, count in enumerate(counts) if count}
        sketch.zero_count = zero_count
        sketch.count = zero_count + sum(counts)
        return sketch


class SignedSketch:
    """A numeric feature's mergeable distribution over the whole real line (the contract's
    ``FeatureSketch``): values above zero in one ``Sketch``, the magnitudes of values below
    zero in another, values of magnitude at most ``ZERO_THRESHOLD`` in the first's zero count.
    Quantiles keep the relative accuracy of the two sketches.
    """

    __slots__ = ("negative", "positive")

    def __init__(self, relative_accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY) -> None:
        self.positive = Sketch(relative_accuracy)
        self.negative = Sketch(relative_accuracy)

    @property
    def count(self) -> int:
        return self.positive.count + self.negative.count

    def add(self, value: float) -> None:
        """One finite value."""
        if value < -ZERO_THRESHOLD:
            self.negative.add_many((-value,))
        else:
            self.positive.add_many((value,))

    def merge(self, other: SignedSketch) -> None:
        self.positive.merge(other.positive)
        self.negative.merge(other.negative)

    def quantile(self, q: float) -> float:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return math.nan
        rank = int(q * (self.count - 1))
        below = self.negative.count
        if rank < below:
            # Negative values in increasing order are their magnitudes in decreasing order.
            return -self.negative.value_at_rank(below - 1 - rank)
        return self.positive.value_at_rank(rank - below)

    def fraction_at_or_below(self, x: float) -> float:
        """The share of the values at or below ``x`` (the distribution function at ``x``), as
        ``Sketch.count_at_or_below`` counts within a bucket; NaN when the sketch is empty."""
        total = self.count
        if total == 0:
            return math.nan
        if x >= 0.0:
            below = self.negative.count + self.positive.count_at_or_below(x)
        else:
            below = self.negative.count - self.negative.count_at_or_below(-x)
        return below / total

    def to_event(self) -> FeatureSketch:
        return FeatureSketch(positive=self.positive.to_event(), negative=self.negative.to_event())

    @classmethod
    def from_event(cls, event: FeatureSketch) -> SignedSketch:
        """The sketch an event carries; a producer's zeros in ``negative.zero_count`` count as
        zeros too."""
        sketch = cls(event.positive.relative_accuracy)
        sketch.positive = Sketch.from_event(event.positive)
        sketch.negative = Sketch.from_event(event.negative)
        return sketch


def population_stability_index(
    training: FeatureSketch, serving: FeatureSketch, bins: int = 10
) -> float | None:
    """How far the serving distribution has moved from the training one: the sum over bins of
    (s - t) * ln(s / t), t and s each side's share of the bin. None when either side is empty.

    Bins are cut at the training distribution's quantiles (deciles by default; cuts that fall
    together are one), so each holds about an equal share of the training values; each side's
    share of a bin comes from its own sketch, so the two may have different accuracies. A
    share is floored at ``PSI_FLOOR``. The usual reading: below 0.1 stable, from 0.25 drifted.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    expected = SignedSketch.from_event(training)
    actual = SignedSketch.from_event(serving)
    if expected.count == 0 or actual.count == 0:
        return None
    cuts = sorted({expected.quantile(k / bins) for k in range(1, bins)})

    def shares(sketch: SignedSketch) -> list[float]:
        cumulative = [0.0, *(sketch.fraction_at_or_below(cut) for cut in cuts), 1.0]
        return [max(high - low, PSI_FLOOR) for low, high in pairwise(cumulative)]

    return math.fsum(
        (s - t) * math.log(s / t) for t, s in zip(shares(expected), shares(actual), strict=True)
    )


@dataclass(slots=True)
class _FeatureAggregate:
    sketch: SignedSketch
    count: int = 0
    null_count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: SupportsFloat | None) -> None:
        self.count += 1
        # Once per feature of every scored request: floats, the usual case, skip the call (and
        # the builtins below, min and max, cost more than comparisons).
        number = value if type(value) is float else None if value is None else _as_float(value)
        if number is None or not -math.inf < number < math.inf:  # NaN compares false
            self.null_count += 1
            return
        self.total += number
        if number < self.low:
            self.low = number
        if number > self.high:
            self.high = number
        self.sketch.add(number)

    def summary(self, name: str) -> FeatureSummary:
        numeric = self.count - self.null_count
        return FeatureSummary(
            name=name,
            count=self.count,
            null_count=self.null_count,
            min=self.low if numeric else None,
            max=self.high if numeric else None,
            # A sum past the largest double (values near it) leaves the mean unknown rather
            # than failing the whole window.
            mean=self.total / numeric if numeric and math.isfinite(self.total) else None,
            distribution=self.sketch.to_event() if numeric else None,
        )


class FeatureAggregates:
    """Per-feature count, nulls, extremes, mean and signed sketch: what a scoring window's
    ``features`` and a training profile (``capture.profile``) are both made of.

    ``add`` takes a number or None; what else to refuse is the caller's choice. None, NaN,
    the infinities and an int beyond a double count as nulls.
    """

    __slots__ = ("_by_name", "relative_accuracy")

    def __init__(self, relative_accuracy: float = DEFAULT_FEATURE_RELATIVE_ACCURACY) -> None:
        _check_accuracy(relative_accuracy)
        self.relative_accuracy = relative_accuracy
        self._by_name: dict[str, _FeatureAggregate] = {}

    def add(self, name: str, value: SupportsFloat | None) -> None:
        aggregate = self._by_name.get(name)
        if aggregate is None:
            aggregate = self._by_name[name] = _FeatureAggregate(
                SignedSketch(self.relative_accuracy)
            )
        aggregate.add(value)

    def summaries(self) -> list[FeatureSummary]:
        """One summary per feature seen, by name."""
        return [agg.summary(name) for name, agg in sorted(self._by_name.items())]


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
        self._features = FeatureAggregates()

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
        """Per-feature summaries of the scored inputs, each finite value also in the feature's
        signed sketch (off the latency hot path: takes a lock).

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
                self._features.add(name, value)

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
            features=features.summaries(),
        )


def _error_key(kind: object) -> str:
    if isinstance(kind, str):
        return kind[:MAX_ERROR_KIND_CHARS] or "error"
    return type(kind).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: SupportsFloat) -> float | None:
    """The number as a float; None when it has none (an int beyond a double's range)."""
    try:
        return float(value)
    except Exception:  # OverflowError, or a subclass whose __float__ raises
        return None
