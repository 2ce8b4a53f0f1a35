"""Structured logs: one JSON object per line (ts, level, logger, msg, then the record's extras).

Log collectors parse these without grok patterns, and fields such as ``topic`` or ``reason``
stay queryable. Known secrets are scrubbed from every line, wherever they would appear (an
exception text quoting a URL with a password, say): the formatter is the last point where a
leak can still be stopped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import SecretStr

MASK = "********"
HANDLER_NAME = "servemeta-json"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
# Extra fields with these words in their name are masked whatever their value.
_SECRET_WORDS = ("password", "secret", "token", "credential", "authorization")


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            lowered = key.lower()
            if isinstance(value, SecretStr) or any(w in lowered for w in _SECRET_WORDS):
                entry[key] = MASK
            else:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        line = json.dumps(entry, default=str, ensure_ascii=False)
        for secret in self._secrets:
            line = line.replace(json.dumps(secret)[1:-1], MASK)
        return line


class Throttle(logging.Filter):
    """At most one record per kind every ``interval`` seconds; the next one that passes
    carries ``suppressed``, the count of those dropped meanwhile.

    A broker that is down makes librdkafka report every reconnect attempt; the first line
    says all there is to say, the count says it is still going on. Records differing only
    in numbers (ports, milliseconds) are of one kind.
    """

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _DIGITS.sub("#", f"{record.name}|{record.getMessage()}")[:300]
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._dropped[kind] = self._dropped.get(kind, 0) + 1
                return False
            self._last[kind] = now
            dropped = self._dropped.pop(kind, 0)
            if len(self._last) > 1000:  # bounded, whatever the variety of messages
                self._last = {kind: now}
        if dropped:
            record.suppressed = dropped
        return True


_DIGITS = re.compile(r"\d+")


def throttled(name: str, interval: float = 30.0) -> logging.Logger:
    """The logger ``name`` with a ``Throttle`` installed (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, Throttle) for f in logger.filters):
        logger.addFilter(Throttle(interval))
    return logger


def configure(
    level: str = "INFO", secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> None:
    """Route all logging (the sink's, librdkafka's, urllib3's) to JSON lines on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    # Replaces an earlier call's handler (and any plain-text one), so each line is written once.
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Request-by-request lines of HTTP clients are noise at INFO.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))


def unconfigure() -> None:
    """Remove the handler ``configure`` installed (tests call the CLI in-process)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
