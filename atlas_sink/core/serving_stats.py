"""Live quality per deployment and model version: every window of every replica merged once. Pure.

A deployment's scoring windows, whichever replica sent them and in whatever order, merge into
one ``ServingStats`` per (deployment, model version): lifetime counts and latencies from the
merge of the windows' sketches, hourly rollups over a bounded recent period, the replicas
heard from, per-feature summaries of the inputs served and, once the version's training
profile is known, a drift figure per feature against it. Merging is exact for counts and
sketch buckets, so the figures depend on the set of windows alone; the coalescer applies
each window once per entity (its producer sequence), which makes them exactly-once.

Everything here is bounded: rollups by their period, replicas and features by count, merged
sketches by their width (the lowest buckets fold together past ``MAX_BUCKETS``, as DDSketch
collapses them), so no entity grows without bound. Two of the bounds are the exceptions to
"the set of windows alone": past ``max_replicas`` instances the longest silent is dropped,
and if it is heard again its replica figures start over (the lifetime figures keep all of
it); past ``max_features`` names, the features first heard of later are counted, not kept.
"""

from __future__ import annotations

import base64
import math
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from functools import lru_cache
from itertools import accumulate
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from capture.encoding import micros
from capture.events import FeatureSketch, FeatureSummary, LogSketch, ScoringStats
from capture.stats import (
    DEFAULT_FEATURE_RELATIVE_ACCURACY,
    DEFAULT_RELATIVE_ACCURACY,
    MAX_ERROR_KINDS,
    OTHER_ERROR_KIND,
    Sketch,
    population_stability_index,
)

# The accuracies merged figures are kept at, the emitter's defaults: a window or profile
# of another is re-bucketed to them, so no arrival order decides which accuracy wins.
LATENCY_ACCURACY = DEFAULT_RELATIVE_ACCURACY
FEATURE_ACCURACY = DEFAULT_FEATURE_RELATIVE_ACCURACY
# Merged sketches keep at most this many buckets; past it the lowest fold into one, which
# keeps the error bound on every quantile above the folded range (the ones that matter for
# latency: p50 and up).
MAX_BUCKETS = 4000
# Verdicts per feature, and per version (the worst of its features').
STABLE = "stable"
SHIFTING = "shifting"
DRIFTED = "drifted"
UNKNOWN = "unknown"
NO_TRAINING_PROFILE = "no training profile"
_SEVERITY = {UNKNOWN: 0, STABLE: 1, SHIFTING: 2, DRIFTED: 3}


@dataclass(frozen=True, slots=True)
class StatsPolicy:
    """How live figures are kept and judged (SinkConfig: SINK_ROLLUP_*, SINK_DRIFT_*)."""

    rollup_seconds: int = 3600
    rollup_period_seconds: int = 48 * 3600
    # Population stability index: below ``drift_warn`` a feature is stable, from it shifting,
    # from ``drift_alert`` drifted (the usual reading of PSI: 0.1 and 0.25).
    drift_warn: float = 0.1
    drift_alert: float = 0.25
    max_replicas: int = 64
    max_features: int = 200

    def verdict(self, psi: float | None) -> str:
        if psi is None:
            return UNKNOWN
        if psi >= self.drift_alert:
            return DRIFTED
        return SHIFTING if psi >= self.drift_warn else STABLE


class StatsContribution(NamedTuple):
    """One event's contribution to a (deployment, version)'s live figures: a window from a
    replica, or the version's training profile from a ModelLoaded."""

    policy: StatsPolicy
    instance: str = ""
    host: str = ""
    window: ScoringStats | None = None
    training: tuple[FeatureSummary, ...] | None = None


class Packed(NamedTuple):
    """A sketch's bucket counts as one integer, 64 bits a bucket, lowest index lowest: adding
    two sketches is one addition of integers, done in C whatever their width. Counts never
    reach 2**64, so no bucket carries into the next. Made once per window, added to several
    merges (the lifetime, its rollup)."""

    accuracy: float
    zero: int
    first: int
    width: int
    value: int
    total: int  # zero + every bucket

    @classmethod
    def of(cls, sketch: LogSketch, accuracy: float) -> Packed:
        """The sketch's buckets at ``accuracy``: as they are when the sketch has it (the usual
        case), else each bucket's value put in the bucket that holds it at ``accuracy``. Every
        window then merges the same way whatever came before it."""
        counts = sketch.counts
        first = sketch.first_index
        if sketch.relative_accuracy != accuracy and counts:
            first, counts = _rebucket(sketch, accuracy)
        zero = sketch.zero_count
        return cls(accuracy, zero, first, len(counts), _pack(counts), zero + sum(counts))


@lru_cache(maxsize=64)
def _sketch(accuracy: float) -> Sketch:
    return Sketch(accuracy)


def _rebucket(sketch: LogSketch, accuracy: float) -> tuple[int, list[int]]:
    source, target = _sketch(sketch.relative_accuracy), _sketch(accuracy)
    inverse = 1.0 / math.log(target.gamma)
    moved: dict[int, int] = {}
    for k, count in enumerate(sketch.counts):
        if count:
            value = source.bucket_value(sketch.first_index + k)
            # The top bucket of the doubles reads as infinity: it stays the top one.
            index = math.ceil(math.log(min(value, sys.float_info.max)) * inverse)
            moved[index] = moved.get(index, 0) + count
    first = min(moved)
    dense = [0] * (max(moved) - first + 1)
    for index, count in moved.items():
        dense[index - first] = count
    return first, dense


def _pack(counts: Sequence[int]) -> int:
    return int.from_bytes(array("Q", counts).tobytes(), "little") if counts else 0


def _unpack(value: int, width: int) -> list[int]:
    return array("Q", value.to_bytes(width * 8, "little")).tolist()


class Counts:
    """The merged buckets of many log sketches of one accuracy (``first``: the lowest index)."""

    __slots__ = ("accuracy", "first", "packed", "total", "width", "zero")

    def __init__(
        self, accuracy: float, zero: int = 0, first: int = 0, counts: Sequence[int] = ()
    ) -> None:
        self.accuracy = accuracy
        self.zero = zero
        self.first = first
        self.width = len(counts)
        self.packed = _pack(counts)
        self.total = zero + sum(counts)

    @property
    def counts(self) -> list[int]:
        return _unpack(self.packed, self.width)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return (self.accuracy, self.zero, self.first, self.width, self.packed) == (
            other.accuracy,
            other.zero,
            other.first,
            other.width,
            other.packed,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def add(self, sketch: LogSketch) -> bool:
        return self.add_packed(Packed.of(sketch, self.accuracy))

    def add_packed(self, incoming: Packed) -> bool:
        """False, and nothing added, when the buckets cannot be added: packed at another
        accuracy (state kept by a sink with other defaults), or a total that could carry a
        bucket past its 64 bits (a total below 2**63 guarantees none does)."""
        if incoming.accuracy != self.accuracy or self.total + incoming.total >> 63:
            return False
        self.zero += incoming.zero
        self.total += incoming.total
        if not incoming.width:
            return True
        if not self.width:
            low, high = incoming.first, incoming.first + incoming.width
        else:
            first, last = self.first, self.first + self.width
            low = incoming.first if incoming.first < first else first
            end = incoming.first + incoming.width
            high = end if end > last else last
        if high - low > MAX_BUCKETS:
            self._fold_together(incoming, high - MAX_BUCKETS)
        elif not self.width:
            self.first, self.width, self.packed = incoming.first, incoming.width, incoming.value
        else:
            if self.first > low:
                self.packed <<= 64 * (self.first - low)
            self.packed += incoming.value << 64 * (incoming.first - low)
            self.first, self.width = low, high - low
        return True

    def _fold_together(self, incoming: Packed, first: int) -> None:
        """Both into ``MAX_BUCKETS`` from ``first``, those below it into the lowest (the error
        bound holds for every quantile above them): never an integer as wide as the gap
        between two far-apart sketches."""
        merged = [0] * MAX_BUCKETS
        for base, values in (
            (self.first, self.counts),
            (incoming.first, _unpack(incoming.value, incoming.width)),
        ):
            for k, count in enumerate(values):
                merged[max(base + k - first, 0)] += count
        self.first, self.width, self.packed = first, MAX_BUCKETS, _pack(merged)

    def to_event(self) -> LogSketch:
        return LogSketch(
            relative_accuracy=self.accuracy,
            zero_count=self.zero,
            first_index=self.first,
            counts=self.counts,
        )

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """As ``capture.stats.Sketch.quantile`` reads them, from the dense counts in one
        cumulative pass (a merged sketch is read on every write of its entity)."""
        if not self.total:
            return None
        sketch = Sketch(self.accuracy)
        cumulative = list(accumulate(self.counts, initial=self.zero))
        out = []
        for q in qs:
            rank = int(q * (self.total - 1))
            if rank < self.zero:
                out.append(0.0)
                continue
            # cumulative[k + 1] counts the values up to bucket first + k.
            k = bisect_right(cumulative, rank) - 1
            out.append(sketch.bucket_value(self.first + min(k, self.width - 1)))
        return out

    def copy(self) -> Counts:
        copied = Counts(self.accuracy, self.zero, self.first)
        copied.width, copied.packed, copied.total = self.width, self.packed, self.total
        return copied

    def to_state(self) -> list[Any]:
        """The buckets as their packed bytes, deflated, in base64: a few hundred characters
        where a JSON list of counts takes thousands (Atlas pays for every byte it stores)."""
        raw = self.packed.to_bytes(self.width * 8, "little")
        text = base64.b64encode(zlib.compress(raw, 1)).decode("ascii")
        return [self.accuracy, self.zero, self.first, self.width, text]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> Counts:
        accuracy, zero, first, width, text = state
        counts = cls(float(accuracy), int(zero), int(first))
        raw = zlib.decompress(base64.b64decode(text))
        counts.width = int(width)
        counts.packed = int.from_bytes(raw, "little")
        counts.total = counts.zero + sum(counts.counts)
        return counts


class Distribution(NamedTuple):
    """A numeric feature's signed distribution (the contract's FeatureSketch), merged."""

    positive: Counts
    negative: Counts

    def add(self, sketch: FeatureSketch) -> bool:
        return self.positive.add(sketch.positive) and self.negative.add(sketch.negative)

    def to_event(self) -> FeatureSketch:
        return FeatureSketch(positive=self.positive.to_event(), negative=self.negative.to_event())

    def copy(self) -> Distribution:
        return Distribution(self.positive.copy(), self.negative.copy())

    @classmethod
    def of(cls, sketch: FeatureSketch) -> Distribution:
        merged = cls(Counts(FEATURE_ACCURACY), Counts(FEATURE_ACCURACY))
        merged.add(sketch)
        return merged


@dataclass(slots=True)
class FeatureStats:
    """One feature's values over many windows (or over the training data)."""

    count: int = 0
    nulls: int = 0
    low: float | None = None
    high: float | None = None
    # The sum of the non-null numbers, exact: the same in any order, never past a double.
    total: Fraction = field(default_factory=Fraction)
    numeric: int = 0  # how many numbers ``total`` sums
    distribution: Distribution | None = None
    # Windows whose distribution could not be added (``Counts.add_packed``): counted.
    unmerged: int = 0

    def add(self, summary: FeatureSummary) -> None:
        self.count += summary.count
        self.nulls += summary.null_count
        if summary.min is not None:
            self.low = summary.min if self.low is None else min(self.low, summary.min)
        if summary.max is not None:
            self.high = summary.max if self.high is None else max(self.high, summary.max)
        if summary.mean is not None:
            numbers = summary.count - summary.null_count
            self.total += Fraction(summary.mean) * numbers
            self.numeric += numbers
        sketch = summary.distribution
        if sketch is None:
            return
        if self.distribution is None:
            self.distribution = Distribution.of(sketch)
        elif not self.distribution.add(sketch):
            self.unmerged += 1

    @property
    def mean(self) -> float | None:
        return float(self.total / self.numeric) if self.numeric else None

    def figures(self, prefix: str) -> dict[str, float]:
        known = {
            "Count": float(self.count),
            "Nulls": float(self.nulls),
            "Min": self.low,
            "Max": self.high,
            "Mean": self.mean,
        }
        return {f"{prefix}{k}": v for k, v in known.items() if v is not None}

    def copy(self) -> FeatureStats:
        return FeatureStats(
            self.count,
            self.nulls,
            self.low,
            self.high,
            self.total,
            self.numeric,
            self.distribution.copy() if self.distribution else None,
            self.unmerged,
        )

    def to_state(self) -> list[Any]:
        dist = self.distribution
        return [
            self.count,
            self.nulls,
            self.low,
            self.high,
            [self.total.numerator, self.total.denominator],
            self.numeric,
            [dist.positive.to_state(), dist.negative.to_state()] if dist else None,
            self.unmerged,
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> FeatureStats:
        count, nulls, low, high, total, numeric, dist, unmerged = state
        return cls(
            int(count),
            int(nulls),
            low,
            high,
            Fraction(int(total[0]), int(total[1])),
            int(numeric),
            Distribution(Counts.from_state(dist[0]), Counts.from_state(dist[1])) if dist else None,
            int(unmerged),
        )

    @classmethod
    def of(cls, summary: FeatureSummary) -> FeatureStats:
        stats = cls()
        stats.add(summary)
        return stats


@dataclass(slots=True)
class Window:
    """Counts and latency of many windows: a lifetime, or one rollup period."""

    requests: int = 0
    errors: int = 0
    latency: Counts | None = None
    low: float | None = None
    high: float | None = None
    # Picoseconds over the timed requests the sketch holds: an integer, so the sum (and the
    # mean) is the same whatever order windows are added in.
    latency_picos: int = 0
    unmerged: int = 0
    # latency_figures() until the next add: a rollup's figures are drawn on every write of
    # its entity, but change only when a window of its period comes.
    figures: dict[str, float] | None = field(default=None, compare=False)
    # to_state() until the next add, likewise: the state is written with every write too.
    state: list[Any] | None = field(default=None, compare=False)
    # A sealed rollup (``seal``) keeps its latency buckets only deflated, and its entry of
    # the rollups map, until a late window opens it again. Nothing changes it in place then,
    # so a copy of its figures shares it (ServingStats.copy).
    sealed: bool = field(default=False, compare=False)
    deflated: list[Any] | None = field(default=None, compare=False)
    words: str | None = field(default=None, compare=False)

    def add(self, stats: ScoringStats, packed: Packed) -> None:
        """``packed``: the window's latency buckets."""
        if self.deflated is not None:
            self.latency = Counts.from_state(self.deflated)
            self.deflated = None
        self.sealed = False
        self.figures = None
        self.state = None
        self.words = None
        self.requests += stats.request_count
        self.errors += stats.error_count
        timed = packed.total
        if not timed:
            return
        if self.latency is None:
            self.latency = Counts(LATENCY_ACCURACY)
        if not self.latency.add_packed(packed):
            self.unmerged += 1
            return
        latency = stats.latency
        low, high = self.low, self.high
        if low is None or latency.min < low:
            self.low = latency.min
        if high is None or latency.max > high:
            self.high = latency.max
        self.latency_picos += round(latency.mean * timed * 1e12)

    def latency_figures(self) -> dict[str, float]:
        """``latencyMinSeconds`` ... ``latencyMaxSeconds``, the names every catalog reads.
        Known latencies only: a period whose requests were all untimed has none."""
        if self.figures is None:
            self.figures = self._latency_figures()
        return dict(self.figures)

    def _latency_figures(self) -> dict[str, float]:
        latency = Counts.from_state(self.deflated) if self.deflated is not None else self.latency
        quantiles = latency.quantiles((0.5, 0.95, 0.99)) if latency else None
        if quantiles is None or self.low is None or self.high is None or latency is None:
            return {}
        p50, p95, p99 = quantiles
        return {
            "latencyMinSeconds": self.low,
            "latencyMeanSeconds": self.latency_picos / 1e12 / latency.total,
            "latencyP50Seconds": p50,
            "latencyP95Seconds": p95,
            "latencyP99Seconds": p99,
            "latencyMaxSeconds": self.high,
        }

    def copy(self) -> Window:
        return Window(
            self.requests,
            self.errors,
            self.latency.copy() if self.latency else None,
            self.low,
            self.high,
            self.latency_picos,
            self.unmerged,
            self.figures,
            self.state,
            self.sealed,
            self.deflated,
            self.words,
        )

    def seal(self, words: str) -> None:
        """Keep the latency buckets only as their deflated state (a few hundred bytes where
        the live ones take kilobytes), with ``words``, the rollup's entry as written: a rollup
        no window has come to lately is read on every write and changed by none, and 48 of
        them per version would otherwise hold most of the sink's memory."""
        if self.latency is not None:
            self.deflated = self.to_state()[2]
            self.latency = None
        self.figures = None
        self.words = words
        self.sealed = True

    def __eq__(self, other: object) -> bool:
        # Sealed or not, the same merged windows are the same figures.
        if not isinstance(other, Window):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_state(self) -> list[Any]:
        if self.state is None:
            self.state = [
                self.requests,
                self.errors,
                self.latency.to_state() if self.latency else self.deflated,
                self.low,
                self.high,
                self.latency_picos,
                self.unmerged,
            ]
        return self.state

    @classmethod
    def from_state(cls, state: Sequence[Any], *, sealed: bool = False) -> Window:
        """``sealed``: the latency buckets stay deflated (``seal``) until a window comes."""
        requests, errors, latency, low, high, picos, unmerged = state
        window = cls(int(requests), int(errors), None, low, high, int(picos), int(unmerged))
        if latency and sealed:
            accuracy, zero, first, width, text = latency
            window.deflated = [float(accuracy), int(zero), int(first), int(width), str(text)]
        elif latency:
            window.latency = Counts.from_state(latency)
        window.sealed = sealed
        return window


class Replica(NamedTuple):
    """One emitter instance serving the version: who, and when it was heard from."""

    host: str
    first_heard: int  # microseconds: start of its first window
    last_heard: int  # end of its newest window
    requests: int
    window_micros: int  # length of its newest window


@dataclass(slots=True)
class ServingStats:
    """The live figures of one model version on one deployment (see the module's doc)."""

    lifetime: Window = field(default_factory=Window)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    first_start: int = 0  # microseconds; 0 until a window is merged
    last_end: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    rollup_micros: int = 0  # the span the rollups were kept with
    rollups: dict[int, Window] = field(default_factory=dict)  # by period start, microseconds
    oldest_period: int = 0  # min(rollups), kept so that a window need not scan them
    features: dict[str, FeatureStats] = field(default_factory=dict)
    features_dropped: int = 0
    training: dict[str, FeatureStats] | None = None
    training_at: int = 0  # event time of the ModelLoaded the profile came from
    # The policy of the newest contribution: what the figures are judged and kept by.
    policy: StatsPolicy = field(default_factory=StatsPolicy)
    # The one rollup whose latency buckets are live; every other is sealed (Window.seal).
    open_period: int = field(default=-1, compare=False)

    def apply(self, contribution: StatsContribution, event_micros: int) -> None:
        self.policy = contribution.policy
        if contribution.window is not None:
            self._merge(contribution)
        if contribution.training is not None and event_micros >= self.training_at:
            # The newest load's profile: a version reloaded from a retrained artifact says so.
            self.training = {f.name: FeatureStats.of(f) for f in contribution.training}
            self.training_at = event_micros

    def _merge(self, contribution: StatsContribution) -> None:
        window = contribution.window
        assert window is not None
        policy = contribution.policy
        start = micros(window.window_start)
        end = micros(window.window_end)
        packed = Packed.of(window.latency.sketch, LATENCY_ACCURACY)
        self.lifetime.add(window, packed)
        if window.errors_by_kind:
            self._count_errors(window.errors_by_kind)
        self.windows += 1
        if not self.first_start or start < self.first_start:
            self.first_start = start
        if end > self.last_end:
            self.last_end = end
        self._heard(contribution, start, end, window.request_count)
        self._roll_up(policy, start, window, packed)
        for summary in window.features:
            feature = self.features.get(summary.name)
            if feature is None:
                if len(self.features) >= policy.max_features:
                    self.features_dropped += 1
                    continue
                feature = self.features[summary.name] = FeatureStats()
            feature.add(summary)

    def _count_errors(self, by_kind: Mapping[str, int]) -> None:
        kinds = self.errors_by_kind
        for kind, count in by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + count
        if len(kinds) > MAX_ERROR_KINDS:
            # The kinds whose names sort first are kept, the rest counted as ``other``: a
            # kind kept at the end was kept all along, so the counts are the same in any order.
            named = sorted(k for k in kinds if k != OTHER_ERROR_KIND)
            folded = sum(kinds.pop(k) for k in named[MAX_ERROR_KINDS - 1 :])
            kinds[OTHER_ERROR_KIND] = kinds.get(OTHER_ERROR_KIND, 0) + folded

    def _heard(self, contribution: StatsContribution, start: int, end: int, requests: int) -> None:
        instance = contribution.instance
        known = self.replicas.get(instance)
        if known is None:
            self.replicas[instance] = Replica(contribution.host, start, end, requests, end - start)
        elif end >= known.last_heard:
            self.replicas[instance] = Replica(
                contribution.host,
                start if start < known.first_heard else known.first_heard,
                end,
                known.requests + requests,
                end - start,
            )
        else:
            self.replicas[instance] = known._replace(
                first_heard=start if start < known.first_heard else known.first_heard,
                requests=known.requests + requests,
            )
        limit = contribution.policy.max_replicas
        if len(self.replicas) > limit:
            # The longest silent go first; their requests stay in the lifetime figures.
            kept = sorted(self.replicas, key=lambda i: (self.replicas[i].last_heard, i))[-limit:]
            self.replicas = {i: self.replicas[i] for i in kept}

    def _roll_up(
        self, policy: StatsPolicy, start: int, window: ScoringStats, packed: Packed
    ) -> None:
        span = policy.rollup_seconds * 1_000_000
        if span != self.rollup_micros:
            # Kept with another span: those periods cannot be cut into this one's.
            self.rollups = {}
            self.rollup_micros = span
        # Periods older than the bounded recent period are not kept, judged from the newest
        # window merged: whatever order windows come in, the same periods remain.
        cutoff = self.last_end - policy.rollup_period_seconds * 1_000_000
        period = start - start % span
        if period + span > cutoff:
            rollup = self.rollups.get(period)
            if rollup is None:
                rollup = self.rollups[period] = Window()
                if len(self.rollups) == 1 or period < self.oldest_period:
                    self.oldest_period = period
            elif rollup.sealed:
                # Shared with the figures this copy was made from (``copy``): opened in a
                # copy of its own, so that a batch the target refuses leaves them as they were.
                rollup = self.rollups[period] = rollup.copy()
            rollup.add(window, packed)
            if period != self.open_period:
                # Windows come to one period at a time, mostly the newest: the one left is
                # sealed until a late window opens it again.
                left = self.rollups.get(self.open_period)
                if left is not None:
                    left.seal(self._rollup_words(self.open_period, left))
                self.open_period = period
        if self.rollups and self.oldest_period + span <= cutoff:
            for old in [p for p in self.rollups if p + span <= cutoff]:
                del self.rollups[old]
            self.oldest_period = min(self.rollups, default=0)

    def _rollup_words(self, period: int, rollup: Window) -> str:
        if rollup.words is None:
            rollup.words = as_words(
                {
                    "end": iso_seconds(period + self.rollup_micros),
                    "requests": rollup.requests,
                    "errors": rollup.errors,
                    **rollup.latency_figures(),
                }
            )
        return rollup.words

    # -- what it says --------------------------------------------------------------------------

    def drift(self) -> list[dict[str, Any]]:
        """Per feature served: its serving and training figures, PSI and verdict."""
        policy = self.policy
        out = []
        training = self.training or {}
        for name in sorted(set(self.features) | set(training)):
            serving = self.features.get(name)
            trained = training.get(name)
            figures: dict[str, float] = {}
            if serving is not None:
                figures.update(serving.figures("serving"))
            if trained is not None:
                figures.update(trained.figures("training"))
            psi = None
            if self.training is None:
                verdict = NO_TRAINING_PROFILE
            else:
                psi = _psi(trained, serving)
                verdict = policy.verdict(psi)
            if psi is not None:
                figures["psi"] = psi
            out.append({"name": name, "verdict": verdict, "figures": figures})
        return out

    def to_attributes(self) -> dict[str, Any]:
        """For reviewers, bounded: only what is known (Atlas reads an unwritten number as 0)."""
        attributes: dict[str, Any] = {}
        if self.windows:
            life = self.lifetime
            lifetime: dict[str, float] = {
                "requests": float(life.requests),
                "errors": float(life.errors),
                "windows": float(self.windows),
            }
            if life.requests:
                lifetime["errorRate"] = life.errors / life.requests
            lifetime.update(life.latency_figures())
            attributes["lifetime"] = lifetime
            attributes["errorsByKind"] = dict(sorted(self.errors_by_kind.items()))
            attributes["firstWindowStart"] = self.first_start // 1000
            attributes["lastWindowEnd"] = self.last_end // 1000
            # Maps of JSON text, not arrays of structs: Atlas keeps each struct as a vertex of
            # its own and rewrites them all with every write (about 5x slower per entity with
            # 48 rollups, measured), where a map of strings is properties of the entity's.
            attributes["replicas"] = {
                instance: as_words(
                    {
                        "host": r.host,
                        "firstHeard": iso_seconds(r.first_heard),
                        "lastHeard": iso_seconds(r.last_heard),
                        "requests": r.requests,
                        "windowSeconds": r.window_micros / 1_000_000,
                    }
                )
                for instance, r in sorted(self.replicas.items())
            }
            attributes["rollups"] = {
                iso_seconds(period): self._rollup_words(period, w)
                for period, w in sorted(self.rollups.items())
            }
        features = self.drift()
        if features:
            attributes["features"] = {
                f["name"]: as_words({"verdict": f["verdict"], **f["figures"]}) for f in features
            }
            verdicts = [f["verdict"] for f in features]
            attributes["driftVerdict"] = (
                NO_TRAINING_PROFILE
                if self.training is None
                else max(verdicts, key=lambda v: _SEVERITY.get(v, 0))
            )
            attributes["driftedFeatures"] = sorted(
                f["name"] for f in features if f["verdict"] == DRIFTED
            )
        return attributes

    def copy(self) -> ServingStats:
        return ServingStats(
            self.lifetime.copy(),
            dict(self.errors_by_kind),
            self.windows,
            self.first_start,
            self.last_end,
            dict(self.replicas),
            self.rollup_micros,
            # Sealed rollups are shared: only a late window opens one, in a copy (``_roll_up``).
            {p: w if w.sealed else w.copy() for p, w in self.rollups.items()},
            self.oldest_period,
            {n: f.copy() for n, f in self.features.items()},
            self.features_dropped,
            {n: f.copy() for n, f in self.training.items()} if self.training is not None else None,
            self.training_at,
            self.policy,
            self.open_period,
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "lifetime": self.lifetime.to_state(),
            "errorsByKind": self.errors_by_kind,
            "windows": self.windows,
            "firstStart": self.first_start,
            "lastEnd": self.last_end,
            "replicas": {i: list(r) for i, r in self.replicas.items()},
            "rollupMicros": self.rollup_micros,
            "rollups": {str(p): w.to_state() for p, w in self.rollups.items()},
            "features": {n: f.to_state() for n, f in self.features.items()},
            "featuresDropped": self.features_dropped,
            "training": (
                {n: f.to_state() for n, f in self.training.items()}
                if self.training is not None
                else None
            ),
            "trainingAt": self.training_at,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ServingStats:
        training = state.get("training")
        # Loaded as windows left them: only the newest rollup's buckets live.
        newest = max(state["rollups"], key=int, default=None)
        stats = cls(
            Window.from_state(state["lifetime"]),
            {k: int(v) for k, v in state["errorsByKind"].items()},
            int(state["windows"]),
            int(state["firstStart"]),
            int(state["lastEnd"]),
            {i: Replica(str(r[0]), *map(int, r[1:])) for i, r in state["replicas"].items()},
            int(state["rollupMicros"]),
            {int(p): Window.from_state(w, sealed=p != newest) for p, w in state["rollups"].items()},
            min((int(p) for p in state["rollups"]), default=0),
            {n: FeatureStats.from_state(f) for n, f in state["features"].items()},
            int(state["featuresDropped"]),
            (
                {n: FeatureStats.from_state(f) for n, f in training.items()}
                if training is not None
                else None
            ),
            int(state["trainingAt"]),
        )
        if stats.rollups:
            stats.open_period = max(stats.rollups)
        return stats


def iso_seconds(micros: int) -> str:
    """``2026-12-06T02:00:00+00:00``: a moment as people read it, to the second."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat(timespec="seconds")


# Entries of replicas, rollups and features that are text; every other entry is a number.
TEXT_ENTRIES = frozenset({"host", "firstHeard", "lastHeard", "end", "verdict"})


def as_words(value: Mapping[str, Any]) -> str:
    """``requests=402; errors=2; latencyP99Seconds=0.0142``: one entry of a map for people
    (Atlas's UI shows a JSON value's quotes as ``&quot;``) that ``from_words`` reads back.
    Numbers keep every digit (``repr``); text is percent-encoded where it holds ``;``, ``=``
    or ``%``, so any host name reads back as it was."""
    return "; ".join(
        f"{key}={value!r}" if isinstance(value, float) else f"{key}={quote(str(value), safe=' :+')}"
        for key, value in value.items()
    )


def from_words(text: str) -> dict[str, Any]:
    """What ``as_words`` wrote: the entries named in ``TEXT_ENTRIES`` as text, the others as
    numbers (an entry that is not one is left out rather than misread)."""
    out: dict[str, Any] = {}
    for part in str(text).split("; "):
        key, sep, raw = part.partition("=")
        if not sep:
            continue
        if key in TEXT_ENTRIES:
            out[key] = unquote(raw)
            continue
        try:
            out[key] = int(raw)
        except ValueError:
            try:
                out[key] = float(raw)
            except ValueError:
                continue
    return out


def _psi(training: FeatureStats | None, serving: FeatureStats | None) -> float | None:
    if training is None or serving is None:
        return None
    if training.distribution is None or serving.distribution is None:
        return None
    psi = population_stability_index(
        training.distribution.to_event(), serving.distribution.to_event()
    )
    return None if psi is None or not math.isfinite(psi) else psi
