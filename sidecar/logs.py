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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
        return json.dumps(out, ensure_ascii=False, default=str)


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
