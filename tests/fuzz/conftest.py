"""Hypothesis profiles for the fuzz suite.

`ci` (the default) is derandomized, so every run tries the same inputs and a failure
reproduces exactly; each test sets its own `max_examples` so the whole suite stays within a
few tens of seconds. `deep` (HYPOTHESIS_PROFILE=deep) is random and ten times longer, for a
developer's machine: `HYPOTHESIS_PROFILE=deep .venv/bin/python -m pytest tests/fuzz`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
