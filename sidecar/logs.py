"""Structured logging: one JSON object per line on stderr (or text for people).

Log calls pass request facts through `extra=` (`decision_id`, `task_id`, `grant_id`, `reason`,
`rpc`, ...); only those whitelisted keys are emitted, so a token or key can never slip into a
line by accident through an unexpected attribute.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FIELDS = (
    "reason",
    "rpc",
    "code",
    "task_id",
    "grant_id",
    "decision_id",
    "approval_id",
    "kid",
    "cause",
    "tier",
    "count",
    "seq",
    "path",
)


_JSON = json.JSONEncoder(ensure_ascii=False, default=str)
"""Built once: `json.dumps` with arguments builds an encoder per call (a line per grant)."""


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")
    """The last second formatted, and its text: most lines fall in the same second as the
    one before (one tuple, so threads logging at once read a consistent pair)."""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        out: dict[str, Any] = {
            "time": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _JSON.encode(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        facts = " ".join(
            f"{k}={record.__dict__[k]}" for k in FIELDS if record.__dict__.get(k) is not None
        )
        line = f"{record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        if facts:
            line += f"  [{facts}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("jit_sidecar")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
