"""`make demo-mcp` end to end: examples/demo_mcp.py starts the real OPA, a real sidecar
process and the example MCP server, runs the example MCP agent and checks the audit chain."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


def test_demo_mcp_runs_end_to_end() -> None:
    """The demo prints the whole trace, the denied call is never sent, and it ends OK."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_mcp.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("intent", "decision", "token", "output", "revocation", "approver"):
        assert f"   {stage}" in out
    assert "moved 420.0 to ACME-7" in out
    assert "not sent: the policy denied it" in out
    assert "hash chain: OK" in out
    assert "demo-mcp OK" in out
    assert "eyJ" not in out  # no token (a JWS starts with base64url '{"') in the trace
