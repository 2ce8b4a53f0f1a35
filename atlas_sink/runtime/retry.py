"""Waiting out an unavailable target: one backoff, used by the consumer loop, replay, start-up
and the Atlas client alike."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from atlas_sink.core.target import TargetUnavailable
from atlas_sink.runtime.metrics import Health

log = logging.getLogger("servemeta.sink.retry")

FIRST_BACKOFF_SECONDS = 0.5

T = TypeVar("T")


def backoff_seconds(
    attempt: int,
    cap: float,
    first: float = FIRST_BACKOFF_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Exponential with equal jitter: half of each step fixed, half random, so that sinks
    recovering together do not retry together, yet none retries at once."""
    step = min(cap, first * 2.0 ** min(attempt, 30))
    jitter = rng.uniform(0, step / 2) if rng is not None else random.uniform(0, step / 2)
    return step / 2 + jitter


def retry_unavailable(
    action: Callable[[], T],
    what: str,
    stop: threading.Event,
    cap: float,
    health: Health | None = None,
) -> T | None:
    """Run ``action`` until the target takes it; None when stopped first."""
    attempt = 0
    while not stop.is_set():
        if health is not None:
            health.beat()  # waiting for the target is not being stuck
        try:
            result = action()
        except TargetUnavailable as exc:
            wait = backoff_seconds(attempt, cap)
            attempt += 1
            if health is not None:
                health.set_backoff(str(exc))
            log.warning(
                "%s: target unavailable, retrying",
                what,
                extra={"error": str(exc), "retry_in": wait},
            )
            stop.wait(wait)
            continue
        if health is not None:
            health.set_backoff(None)
        return result
    return None
