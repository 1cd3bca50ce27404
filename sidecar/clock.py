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


_last_day: tuple[int, str] = (0, "1970-01-01T")


def rfc3339(ts: float) -> str:
    """`2026-11-29T10:00:00.123456Z` (UTC, microseconds).

    Same string as `datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`,
    rounded the same way (half-even microseconds), at a fraction of the cost: the date part
    is cached per day (a grant formats its issue time and its expiry, minutes apart: a cache
    of the last second missed on every other call), and the time of day is arithmetic, as
    POSIX time has 86 400 seconds a day (no leap seconds, as `datetime` has none).
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
    day, of_day = divmod(second, 86_400)
    cached = _last_day  # one tuple: a consistent pair even if another thread replaces it
    if cached[0] == day:
        prefix = cached[1]
    else:
        prefix = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%dT")
        _remember(day, prefix)
    hours, rest = divmod(of_day, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{prefix}{hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}Z"


def _remember(day: int, prefix: str) -> None:
    global _last_day
    _last_day = (day, prefix)
