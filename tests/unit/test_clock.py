"""rfc3339 formatting (unit)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sidecar.clock import rfc3339


def reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_rfc3339_matches_datetime_formatting() -> None:
    """The cached formatter gives exactly datetime's string, rounding included."""
    rng = random.Random(7)
    samples = [rng.uniform(0, 4_102_444_800) for _ in range(20_000)]
    base = 1_795_000_000
    samples += [base + k / 1e6 + d for k in range(0, 2_000_000, 997) for d in (0.0, 5e-7)]
    samples += [base + 0.9999995, base + 0.9999994, base - 0.0000005, 0.0, 59.9999999, 1e9]
    # Consecutive calls in and across seconds exercise the cached date part both ways.
    mismatches = [ts for ts in samples if rfc3339(ts) != reference(ts)]
    assert mismatches == []


def test_rfc3339_alternating_days_and_seconds() -> None:
    """Times alternating between seconds and across midnight (an issue time and its expiry)
    format as datetime does, whichever day the cache last held."""
    midnight = 1_795_046_400  # 2026-11-19T00:00:00Z
    samples = []
    for k in range(-3000, 3000, 7):
        issued = midnight + k + 0.25
        samples += [issued, issued + 300, issued + 86_399.999_999_6, issued - 1]
    mismatches = [ts for ts in samples if rfc3339(ts) != reference(ts)]
    assert mismatches == []
