"""The demo's long-running processes stop on SIGTERM (what a deployment sends) and SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType


def stop_on_signals(log: logging.Logger, doing: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT, which ``log`` reports with ``doing``."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: %s", signal.Signals(signum).name, doing)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
