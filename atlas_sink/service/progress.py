"""A terminal progress bar for long one-shot commands (replay)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#####.....]  42%  4200/10000 messages  1234/s`` redrawn with a carriage return."""

    WIDTH = 30

    def __init__(self, stream: TextIO = sys.stderr, min_interval: float = 0.2) -> None:
        self.stream = stream
        self.min_interval = min_interval
        self._started = time.monotonic()
        self._last = 0.0
        self._line = ""

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval and done < total:
            return
        self._last = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self.WIDTH)
        rate = done / max(now - self._started, 1e-9)
        self._line = (
            f"\rreplay [{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}  "
            f"{done}/{total} messages  {rate:.0f}/s"
        )
        self.stream.write(self._line)
        self.stream.flush()

    def close(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
