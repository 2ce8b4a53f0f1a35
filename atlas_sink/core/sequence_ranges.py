"""Which sequences of one producer an entity has applied: sorted, disjoint, inclusive ranges.
Pure.

Exact, not a high watermark: an event that arrives after one with a higher sequence (a
producer that reorders, a retried batch, a second emitter implementation) is still applied
once. Bounded: in-order delivery keeps one range per producer, and gaps close as late events
arrive; a producer whose gaps stay open (events lost before Kafka) could grow the list, so past
``MAX_RANGES`` the oldest gaps are given up: everything up to the end of the merged range
counts as applied, and that range starts at 0 (sequences start at 1) so that a late event
falling there is told apart from a plain duplicate (``beyond_window``) and its drop counted
under a reason of its own.
"""

from __future__ import annotations

from bisect import bisect_right

Ranges = tuple[tuple[int, int], ...]

# Open gaps kept per producer and entity before the oldest are given up.
MAX_RANGES = 64


def contains(ranges: Ranges, sequence: int) -> bool:
    at = bisect_right(ranges, (sequence, float("inf"))) - 1
    return at >= 0 and ranges[at][0] <= sequence <= ranges[at][1]


def beyond_window(ranges: Ranges, sequence: int) -> bool:
    """``sequence`` falls in the range of given-up gaps: it may never have been applied."""
    return bool(ranges) and ranges[0][0] == 0 and sequence <= ranges[0][1]


def add(ranges: Ranges, sequence: int, max_ranges: int = MAX_RANGES) -> Ranges:
    """``ranges`` with ``sequence`` in it, neighbours merged, at most ``max_ranges`` long."""
    if contains(ranges, sequence):
        return ranges
    items = list(ranges)
    at = bisect_right(items, (sequence, float("inf")))
    joins_left = at > 0 and items[at - 1][1] == sequence - 1
    joins_right = at < len(items) and items[at][0] == sequence + 1
    if joins_left and joins_right:
        items[at - 1 : at + 1] = [(items[at - 1][0], items[at][1])]
    elif joins_left:
        items[at - 1] = (items[at - 1][0], sequence)
    elif joins_right:
        items[at] = (sequence, items[at][1])
    else:
        items.insert(at, (sequence, sequence))
    if len(items) > max_ranges:
        # Give up the oldest gaps: one range from 0 to the end of the oldest kept ones.
        cut = len(items) - max_ranges + 1
        items[:cut] = [(0, items[cut - 1][1])]
    return tuple(items)


def to_text(ranges: Ranges) -> str:
    """``1-5,7-7,9-12``: what Atlas keeps in a map of strings. Every range has its dash, so
    that a plain number stays the mark of an older sink's high watermark."""
    return ",".join(f"{lo}-{hi}" for lo, hi in ranges)


def from_text(text: str) -> Ranges:
    """Inverse of ``to_text``; a plain number (a stored high watermark of an older sink) means
    every sequence up to it, as that sink applied them."""
    text = text.strip()
    if not text:
        return ()
    if text.isdigit():
        return ((0, int(text)),) if int(text) > 0 else ()
    items = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        items.append((int(lo), int(hi) if sep else int(lo)))
    return tuple(sorted(items))
