"""`make demo` end to end: examples/demo.py starts the real OPA, a real sidecar process, the
example resource server and the example agent, on free ports, and stops them all."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.harness import ROOT

JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")


def test_demo_runs_end_to_end() -> None:
    """Every step behaves (standing read, JIT write via a tool, out-of-scope denial,
    revocation, reuse refused as revoked), the audit chain verifies, no token is printed."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--free-ports"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "decision  GRANTED  tier=standing  audience=docs" in out
    assert "decision  GRANTED  tier=jit  audience=tickets" in out
    assert "POST /tickets/T-1001/close -> 200" in out
    assert '-> 401 {"error": "invalid_token", "reason": "wrong_audience"}' in out
    assert "DENIED: cross_domain: payments is not among this agent's domains" in out
    assert "completed SUCCEEDED, 2 grant(s) revoked" in out
    assert '-> 401 {"error": "invalid_token", "reason": "revoked"}' in out
    assert "hash chain: OK: 8 records" in out
    assert "demo OK" in out
    assert JWT.search(out + run.stderr) is None
