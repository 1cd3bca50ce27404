"""How long one policy decision takes: a real `opa run --server` on rego/, asked over one
keep-alive HTTP/1.1 connection the way the sidecar asks it.

    .venv/bin/python bench/policy_eval.py [--requests 2000] [--rego DIR] [--no-decision-logs]

Prints, per case, the p50/p99 of OPA's own evaluation time (`?metrics=true`,
timer_rego_query_eval_ns) and of the whole round trip seen by the client, in µs. OPA runs as
deployed, with console decision logs (to a temporary file); `--no-decision-logs` measures
without them. Figures, not assertions: run it on a quiet machine and compare runs, not
absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidecar.resources import parse_resource

ROOT = Path(__file__).resolve().parents[1]
DEV = "spiffe://jit.local/agent/dev"
BILLING = "spiffe://jit.local/agent/billing"
WARMUP = 200


def _input(subject: str, purpose: str, **intent: Any) -> dict[str, Any]:
    return {
        "identity": {"subject": subject, "trust_domain": "jit.local", "method": "dev"},
        "intent": {
            "justification": "",
            "context": {},
            **intent,
            "resource_parts": parse_resource(intent["resource"]).as_input(),
        },
        "task": {
            "id": "t-1",
            "goal": "bench",
            "labels": {"purpose": purpose},
            "age_seconds": 3,
            "remaining_seconds": 297,
            "grants": [{"action": "docs.read", "resource": "docs://a", "tier": "standing"}],
        },
        "request": {"ttl_seconds": 60, "time": "2026-11-29T10:00:00Z"},
    }


REFUND = {
    "action": "payments.refund",
    "resource": "payments://orders/42",
    "justification": "ticket 991: duplicate charge",
}
CASES = {
    "standing": _input(DEV, "support", action="docs.read", resource="docs://handbook/intro"),
    "jit": _input(
        DEV,
        "support",
        action="tickets.update",
        resource="tickets://t-1001",
        justification="customer asked to close it",
    ),
    "approval": _input(BILLING, "refunds", **REFUND, context={"amount": 250}),
    "deny": _input(DEV, "support", **REFUND),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _opa(opa: str, rego: Path, decision_logs: bool) -> Iterator[http.client.HTTPConnection]:
    port = _free_port()
    args = [opa, "run", "--server", "--skip-version-check", "--log-level", "error"]
    if decision_logs:
        args += ["--set", "decision_logs.console=true"]
    args += ["--addr", f"127.0.0.1:{port}", str(rego)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                time.sleep(0.1)
            yield http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        finally:
            proc.terminate()
            proc.wait(10)


def _measure(
    conn: http.client.HTTPConnection, case: dict[str, Any], n: int
) -> tuple[list[float], list[float], dict[str, Any]]:
    body = json.dumps({"input": case}).encode()
    headers = {"Content-Type": "application/json"}
    evals: list[float] = []
    rtts: list[float] = []
    result: dict[str, Any] = {}
    for i in range(n + WARMUP):
        started = time.perf_counter()
        conn.request("POST", "/v1/data/jit/decision?metrics=true", body, headers)
        answer = json.loads(conn.getresponse().read())
        elapsed = time.perf_counter() - started
        if i >= WARMUP:
            rtts.append(elapsed * 1e6)
            evals.append(answer["metrics"]["timer_rego_query_eval_ns"] / 1e3)
        result = answer["result"]
    return evals, rtts, result


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per case (2000)")
    parser.add_argument("--rego", type=Path, default=ROOT / "rego", help="policy dir (rego/)")
    parser.add_argument(
        "--no-decision-logs", action="store_true", help="run OPA without console decision logs"
    )
    args = parser.parse_args()
    opa = shutil.which("opa") or str(ROOT / ".tools/bin/opa")
    version = subprocess.run([opa, "version"], capture_output=True, text=True, check=True)
    logs = "off" if args.no_decision_logs else "on"
    print(
        f"opa {version.stdout.split()[1]}, decision logs {logs}, "
        f"{args.requests} requests per case, µs"
    )
    print("case      decision       eval p50  eval p99  rtt p50  rtt p99")
    with _opa(opa, args.rego, not args.no_decision_logs) as conn:
        for name, case in CASES.items():
            evals, rtts, result = _measure(conn, case, args.requests)
            decision = result.get("tier") or "denied"
            if result.get("approval_required"):
                decision += "+approval"
            print(
                f"{name:<9} {decision:<13} {_pct(evals, 50):9.0f} {_pct(evals, 99):9.0f} "
                f"{_pct(rtts, 50):8.0f} {_pct(rtts, 99):8.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
