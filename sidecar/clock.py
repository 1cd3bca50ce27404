"""Time, injectable so tests can jump the clock forwards and backwards."""

from __future__ import annotations

import math
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


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(ts: float) -> str:
    """`2026-11-29T10:00:00.123456Z` (UTC, microseconds).

    Same string as `datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`,
    rounded the same way (half-even microseconds), at a fifth of the cost: a grant formats
    three or four times and they fall in the same second, so the date part is cached.
    """
    frac, whole = math.modf(ts)
    micros = round(frac * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        micros -= 1_000_000
        second += 1
    elif micros < 0:
        micros += 1_000_000
        second -= 1
    cached = _last_second  # one tuple: a consistent pair even if another thread replaces it
    if cached[0] == second:
        prefix = cached[1]
    else:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _remember(second, prefix)
    return f"{prefix}.{micros:06d}Z"


def _remember(second: int, prefix: str) -> None:
    global _last_second
    _last_second = (second, prefix)
