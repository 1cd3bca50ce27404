"""A short soak (bench/soak.py, ~20 s of load) in the regular suite: simulated agents
against a real sidecar and real OPA; `make soak` runs the same for 10 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


def test_short_soak_holds_every_invariant(tmp_path: Path) -> None:
    """20 s, 4 agents, TTLs of 1-5 s: the audit chain verifies, every grant received is
    audited, stored and ended exactly once, metrics equal the audit counts, no token is
    active after its exp, and RSS stays bounded."""
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/soak.py"),
            "--seconds",
            "20",
            "--agents",
            "4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    report = json.loads(out.read_text())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert report["ok"] and report["failures"] == []
    assert report["grants_issued"] >= 200
    assert report["introspected_after_exp"] >= 50
    assert report["active_after_exp"] == 0
    assert report["audit_chain_ok"]
    assert report["grants_by_tier_audit"] == report["grants_by_tier_metric"]
    assert report["endings_by_reason_audit"] == report["endings_by_reason_metric"]
    assert {"completed", "agent_lost", "revoked_by_operator"} <= set(
        report["endings_by_reason_audit"]
    )
