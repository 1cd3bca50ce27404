"""`jit-sidecar policy explain`: ask the running OPA for the decision on an intent, and why."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from .exits import EXIT_DENIED, EXIT_FAIL, EXIT_OK, EXIT_USAGE


def run_explain(args: argparse.Namespace) -> int:
    """Ask OPA as the sidecar would (same input builder, same client and checks, so `unix://`
    OPA URLs work too); exit EXIT_DENIED on a deny, EXIT_FAIL when there is no usable
    decision."""
    import time

    from ..errors import InvalidArgument, PolicyError
    from ..identity import trust_domain_of
    from ..model import Grant, Identity, Intent, Task, Tier
    from ..policy import OpaClient, build_input

    def pairs(items: list[str]) -> list[tuple[str, str]]:
        return [(k, v) for k, _, v in (item.partition("=") for item in items if "=" in item)]

    now = time.time()
    try:
        identity = Identity(
            args.subject, trust_domain_of(args.subject), "explain", "", dict(pairs(args.claim))
        )
        context = json.loads(args.context) if args.context else {}
    except ValueError as err:
        print(f"jit-sidecar: {err}", file=sys.stderr)
        return EXIT_USAGE
    task = Task(
        "t-explain", args.subject, args.goal, dict(pairs(args.label)), now, now + args.remaining, 0
    )
    held = [
        Grant("", task.task_id, args.subject, a, r, Tier.JIT, "", (), now, now, "")
        for a, r in pairs(args.grant)
    ]
    intent = Intent(args.action, args.resource, args.justification, context)
    try:
        # As the sidecar would: a non-canonical resource never reaches the policy.
        policy_input = build_input(identity, intent, task, held, args.ttl, now)
    except InvalidArgument as err:
        print(f"jit-sidecar: {err} (refused before the policy is asked)", file=sys.stderr)
        return EXIT_USAGE
    url = args.opa_url or os.environ.get("JIT_SIDECAR_OPA_URL") or "http://127.0.0.1:8181"

    async def ask() -> tuple[Any, dict[str, Any]]:
        client = OpaClient(url, args.decision_path, 10.0)
        try:
            return await client.explain(policy_input, trace=args.trace)
        finally:
            await client.aclose()

    try:
        decision, body = asyncio.run(ask())
    except ValueError as err:  # an OPA URL the client cannot use
        print(f"jit-sidecar: --opa-url: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyError as err:
        print(f"jit-sidecar: no usable decision from OPA at {url}: {err}", file=sys.stderr)
        return EXIT_FAIL
    verdict = EXIT_OK if decision.allow else EXIT_DENIED
    raw = body["result"]
    if args.json:
        print(
            json.dumps(
                {
                    "input": policy_input,
                    "decision": raw,
                    "decision_id": decision.decision_id,
                    "metrics": body.get("metrics", {}),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return verdict
    word = "ALLOW" if decision.allow else "DENY"
    if decision.allow and decision.approval_required:
        word = "ALLOW after human approval"
    print(f"{word}  {args.subject} → {args.action} {args.resource}")
    for key in ("tier", "ttl_seconds", "audience", "scope", "cache_seconds"):
        if key in raw:
            print(f"  {key}: {raw[key]}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    if decision.decision_id:
        print(f"  decision_id: {decision.decision_id}")
    eval_ns = body.get("metrics", {}).get("timer_rego_query_eval_ns")
    if eval_ns:
        print(f"  (evaluated in {eval_ns / 1000:.0f} µs)")
    for line in body.get("explanation", []) if args.trace else []:
        print(line)
    return verdict
