"""Process logging: readable text on a terminal, JSON lines otherwise (what clusters collect)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from bigbertha.core.masking import mask_credentials

# Attributes every LogRecord has; anything else was passed with `extra=` and is kept as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Masked last, so a URI's password in the message, an extra or a traceback is caught.
        return mask_credentials(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Time, level, logger and message on one line (a terminal), credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


def use_json(fmt: str, stream: TextIO) -> bool:
    """`auto` means JSON unless the stream is a terminal."""
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Install one handler on the root logger (idempotent: replaces the previous one)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if use_json(fmt, stream):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bigbertha", False):
            root.removeHandler(old)
    handler._bigbertha = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


class RateLimitedLogger:
    """Logs a message at most once per `interval` seconds, counting what it suppressed.

    Used on hot paths (a Redis outage must not flood the log with one line per chat).
    """

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = 0.0
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval and self._last:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar messages suppressed)"
        self._last, self._suppressed = now, 0
        self._logger.warning(msg, *args)
