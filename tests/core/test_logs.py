"""Logging: JSON lines off a terminal, text on one, and rate limiting on hot paths."""

from __future__ import annotations

import io
import json
import logging

from bigbertha.core import logs


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal():
    stream = io.StringIO()
    logs.configure("INFO", "auto", stream)
    logging.getLogger("bigbertha.test").info("ingested %d chunks", 3, extra={"source": "s3://b/k"})
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["message"] == "ingested 3 chunks"
    assert entry["level"] == "info" and entry["source"] == "s3://b/k"
    assert entry["time"].endswith("Z")


def test_text_on_a_terminal():
    stream = FakeTty()
    logs.configure("INFO", "auto", stream)
    logging.getLogger("bigbertha.test").warning("careful")
    line = stream.getvalue().splitlines()[-1]
    assert "WARNING" in line and "careful" in line and not line.startswith("{")


def test_rate_limited_logger_suppresses_and_counts(caplog):
    limited = logs.RateLimitedLogger(logging.getLogger("bigbertha.rl"), interval=3600)
    with caplog.at_level(logging.WARNING, logger="bigbertha.rl"):
        for _ in range(5):
            limited.warning("redis down")
    assert [r.getMessage() for r in caplog.records] == ["redis down"]
    limited._last -= 7200  # the interval has passed
    with caplog.at_level(logging.WARNING, logger="bigbertha.rl"):
        limited.warning("redis down")
    assert caplog.records[-1].getMessage() == "redis down (4 similar messages suppressed)"
