"""What the task's history costs a decision: a real `opa run --server` on rego/, asked over
one keep-alive connection as the sidecar asks it, with today's input (no flow fields) and
with `input.task.history` of 0, 50 and 500 entries (issue 22).

    .venv/bin/python bench/flow_history.py [--requests 1500] [--rounds 3]

Prints the p50/p99 of OPA's own evaluation time (timer_rego_query_eval_ns) and of the round
trip, in µs, per case. The cases are interleaved over `--rounds` so that a change in the
machine's load hits all of them alike. The sidecar sends at most 100 entries
(sidecar.model.HISTORY_CAP); 500 shows what a larger cap would cost. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.policy_eval import DEV, ROOT, _input, _measure, _opa, _pct

SUPPORT = "spiffe://jit.local/agent/support"
_STEPS = [
    ("tickets.read", "tickets://t-{n}"),
    ("docs.read", "docs://handbook/p{n}"),
    ("customers.read", "customers://c-{n}"),
    ("tickets.update", "tickets://t-{n}"),
]

_LABELS = {"tickets.read": ["untrusted_input"], "customers.read": ["private_data"]}


def _history(n: int) -> list[dict[str, Any]]:
    entries = []
    for i in range(n):
        action, resource = _STEPS[i % len(_STEPS)]
        entries.append(
            {
                "action": action,
                "resource": resource.format(n=i),
                "class": "write" if action.endswith("update") else "read",
                "tier": "jit" if action.endswith("update") else "standing",
                "labels": _LABELS.get(action, []),
                "time": "2026-11-29T09:30:00Z",
                "state": "expired",
                "end_reason": "expired",
            }
        )
    return entries


def _case(history: int | None, subject: str = SUPPORT, **intent: Any) -> dict[str, Any]:
    case = _input(subject, "", **intent)
    case["task"]["labels"] = {}
    if history is not None:
        case["task"] |= {
            "history": _history(history),
            "history_dropped": 0,
            "flow_labels": [],
            "denials": [],
            "plan": [],
        }
    return case


EMAIL = {
    "action": "email.send",
    "resource": "email://customer/c-42",
    "justification": "reply to the customer about the ticket",
}
READ = {"action": "docs.read", "resource": "docs://handbook/intro"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--baseline-rego",
        type=Path,
        help="also ask the policy before flows (e.g. `git archive main rego | tar -x -C DIR`) "
        "with today's input, on an OPA of its own, in the same rounds",
    )
    args = parser.parse_args()
    cases = {
        f"{name} {label}": _case(history, **intent)
        for name, intent in (("email.send", EMAIL), ("docs.read", READ))
        for label, history in (("today", None), ("h=0", 0), ("h=50", 50), ("h=500", 500))
    }
    # The policy before flows knows neither the support agent nor email: compare the
    # standing read of the dev agent, which both policies grant.
    cases["docs.read dev today"] = _case(None, DEV, **READ)
    opa = shutil.which("opa") or str(ROOT / ".tools/bin/opa")
    version = subprocess.run([opa, "version"], capture_output=True, text=True, check=True)
    print(f"opa {version.stdout.split()[1]}, {args.rounds} x {args.requests} requests per case, µs")
    evals: dict[str, list[float]] = {name: [] for name in cases}
    rtts: dict[str, list[float]] = {name: [] for name in cases}
    outcome: dict[str, str] = {}
    before = {"docs.read dev before": _case(None, DEV, **READ)}
    if args.baseline_rego:
        for name in before:
            evals[name], rtts[name] = [], []
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(_opa(opa, ROOT / "rego", True))
        old = (
            stack.enter_context(_opa(opa, args.baseline_rego, True)) if args.baseline_rego else None
        )
        asked = [(name, case, conn) for name, case in cases.items()]
        if old is not None:
            asked += [(name, case, old) for name, case in before.items()]
        for _ in range(args.rounds):
            for name, case, target in asked:
                e, r, result = _measure(target, case, args.requests)
                evals[name] += e
                rtts[name] += r
                outcome[name] = (result.get("tier") or "denied") + (
                    "+approval" if result.get("approval_required") else ""
                )
    print("case                  decision       eval p50  eval p99  rtt p50  rtt p99")
    for name in evals:
        print(
            f"{name:<21} {outcome[name]:<13} {_pct(evals[name], 50):9.0f} "
            f"{_pct(evals[name], 99):9.0f} {_pct(rtts[name], 50):8.0f} {_pct(rtts[name], 99):8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
