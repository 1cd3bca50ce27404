"""Time, injectable so tests can jump the clock forwards and backwards."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what tokens and deadlines use)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


def rfc3339(ts: float) -> str:
    """`2026-11-29T10:00:00.123456Z` (UTC, microseconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
