"""`jit-sidecar policy explain`: ask the running OPA for the decision on an intent, and why."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from .exits import EXIT_DENIED, EXIT_FAIL, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from ..model import FlowReport


def run_explain(args: argparse.Namespace) -> int:
    """Ask OPA as the sidecar would (same input builder, same client and checks, so `unix://`
    OPA URLs work too); exit EXIT_DENIED on a deny, EXIT_FAIL when there is no usable
    decision."""
    import time

    from ..errors import InvalidArgument, PolicyError
    from ..identity import trust_domain_of
    from ..model import Grant, GrantState, Identity, Intent, Task, Tier
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
    ended = [
        Grant("", task.task_id, args.subject, a, r, Tier.JIT, "", (), now, now, "")
        for a, r in pairs(args.history)
    ]
    for grant in ended:
        grant.state, grant.end_reason = GrantState.EXPIRED, "expired"
    for _ in range(args.denials):
        task.flow.record_denial(now - 1)
    intent = Intent(args.action, args.resource, args.justification, context)
    try:
        # As the sidecar would: a non-canonical resource never reaches the policy.
        task.flow.plan = tuple(Intent(a, r) for a, r in pairs(args.plan))
        policy_input = build_input(identity, intent, task, held, args.ttl, now)
    except InvalidArgument as err:
        print(f"jit-sidecar: {err} (refused before the policy is asked)", file=sys.stderr)
        return EXIT_USAGE
    url = args.opa_url or os.environ.get("JIT_SIDECAR_OPA_URL") or "http://127.0.0.1:8181"

    async def ask() -> tuple[Any, dict[str, Any]]:
        client = OpaClient(url, args.decision_path, 10.0)
        try:
            # As the sidecar would have: each earlier grant carries the labels the policy
            # gave its intent, and the task holds them all.
            for grant in ended + held:
                alone = Task("t-explain", args.subject, "", {}, now, now + 60, 0)
                earlier = Intent(grant.action, grant.resource)
                given = await client.decide(build_input(identity, earlier, alone, [], 0, now))
                grant.flow_labels = given.flow.labels if given.flow else ()
                task.flow.record_grant(grant)
            policy_input["task"] |= task.flow.as_input()
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
    except InvalidArgument as err:  # a --grant or --history resource
        print(f"jit-sidecar: {err} (refused before the policy is asked)", file=sys.stderr)
        return EXIT_USAGE
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
    _print_flow(decision.flow)
    if decision.decision_id:
        print(f"  decision_id: {decision.decision_id}")
    eval_ns = body.get("metrics", {}).get("timer_rego_query_eval_ns")
    if eval_ns:
        print(f"  (evaluated in {eval_ns / 1000:.0f} µs)")
    for line in body.get("explanation", []) if args.trace else []:
        print(line)
    return verdict


def _print_flow(flow: FlowReport | None) -> None:
    """Which labels the task had, and which flow rule escalated it (docs/policy-authoring.md,
    "Flows")."""
    if flow is None:
        return
    print(f"  flow: class {flow.cls or '-'}, labels {', '.join(flow.labels) or '-'}")
    print(f"  flow: the task held {', '.join(flow.task_labels) or 'no labels'}")
    if flow.rules:
        print(f"  flow: rules fired: {', '.join(flow.rules)}")
    if flow.plan_deviation:
        print("  flow: outside the declared plan")
