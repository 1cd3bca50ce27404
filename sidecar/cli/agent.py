"""Agent commands for people: `task begin|complete|heartbeat|hold`, `grant`, `grants` and
`introspect`, over the agent socket (the SDK, sidecar.client)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .exits import EXIT_DENIED, EXIT_FAIL, EXIT_OK, usage_error
from .hold import hold, spawn_holder, stop_holders
from .output import message_dict, show


def _access_client(args: argparse.Namespace) -> Any:
    """An AccessClient on `--socket`, calling as the identity in `--identity-token-file`."""
    from ..client import AccessClient

    token = args.identity_token_file.read_text().strip() if args.identity_token_file else None
    return AccessClient(args.socket, identity_token=token)


def run_agent(args: argparse.Namespace) -> int:
    """Run `task …`, `grant`, `grants` or `introspect` against the agent socket."""
    from ..client import AccessDenied, ApprovalPending

    if args.command == "task":
        with _access_client(args) as client:
            if args.task_command == "begin":
                labels = dict(item.split("=", 1) for item in args.label if "=" in item)
                task = client.begin_task(
                    args.goal,
                    task_id=args.task_id,
                    labels=labels,
                    max_duration=args.max_duration,
                    subject_token=args.subject_token_file or "",
                )
                holder = spawn_holder(args, task.task_id) if args.hold else None
                if args.quiet:
                    print(task.task_id)
                    return EXIT_OK
                show(
                    args,
                    message_dict(task) | ({"holder_pid": holder} if holder else {}),
                    f"task {task.task_id} active until {task.deadline.ToJsonString()} "
                    + (
                        f"(held by process {holder} until it ends)"
                        if holder
                        else f"(heartbeat every {task.heartbeat_interval_seconds} s)"
                    ),
                )
            elif args.task_command == "complete":
                stop_holders(args.task_id)
                done = client.complete_task(args.task_id, args.outcome, args.detail)
                show(
                    args,
                    message_dict(done),
                    f"task {args.task_id} completed ({args.outcome}); "
                    f"{done.revoked_grants} grant(s) revoked",
                )
            elif args.task_command == "hold":
                return hold(client, args.task_id)
            else:
                beat = client.heartbeat(args.task_id)
                show(
                    args,
                    message_dict(beat),
                    f"task {args.task_id} alive until {beat.next_heartbeat_before.ToJsonString()}",
                )
        return EXIT_OK
    if args.command == "grant":
        context = _json_object(args.context, "--context") if args.context else None
        with _access_client(args) as client:
            try:
                grant = client.request_grant(
                    args.task_id,
                    args.action,
                    args.resource,
                    justification=args.justification,
                    ttl_seconds=args.ttl,
                    context=context,
                )
            except AccessDenied as denied:
                if args.quiet:
                    print("DENIED: " + "; ".join(denied.reasons), file=sys.stderr)
                    return EXIT_DENIED
                show(
                    args,
                    {"decision": "DENIED", "reasons": denied.reasons},
                    "DENIED\n" + "\n".join(f"  - {r}" for r in denied.reasons),
                )
                return EXIT_DENIED
            except ApprovalPending as pending:
                show(
                    args,
                    {
                        "decision": "PENDING_APPROVAL",
                        "approval_id": pending.approval_id,
                        "reasons": pending.reasons,
                    },
                    f"PENDING_APPROVAL {pending.approval_id}",
                )
                return EXIT_DENIED
        if args.quiet:
            print(grant.token)
            return EXIT_OK
        tier = "standing" if grant.tier == 1 else "jit"
        show(
            args,
            message_dict(grant),
            f"GRANTED {tier} grant {grant.grant_id}, scope {' '.join(grant.scope)}, "
            f"audience {grant.audience}, expires {grant.expires_at.ToJsonString()}\n"
            + (_lease_line(grant.lease) + "\n" if grant.HasField("lease") else "")
            + f"token: {grant.token}",
        )
        return EXIT_OK
    if args.command == "grants":
        with _access_client(args) as client:
            items = client.list_grants(args.task_id, include_inactive=args.all)
        lines = [
            f"{g.grant_id}  {_state(g.state):8s} {g.intent.action} {g.intent.resource}  "
            f"expires {g.expires_at.ToJsonString()}"
            + (f"  ({g.revocation_reason})" if g.revocation_reason else "")
            + ("\n    " + _lease_line(g.lease) if g.HasField("lease") else "")
            for g in items
        ]
        show(args, [message_dict(g) for g in items], "\n".join(lines) or "(no grants)")
        return EXIT_OK
    if args.command == "introspect":
        from_stdin = args.token == "-"  # noqa: S105
        token = sys.stdin.read().strip() if from_stdin else args.token
        if not token:
            raise usage_error("introspect needs a token (it was empty)")
        with _access_client(args) as client:
            result = client.introspect(token)
        show(
            args,
            message_dict(result) | {"active": result.active},
            "active"
            if result.active
            else "inactive"
            + (f" ({result.revocation_reason})" if result.revocation_reason else ""),
        )
        return EXIT_OK if result.active else EXIT_FAIL
    raise AssertionError(args.command)


def _lease_line(lease: Any) -> str:
    """A grant's broker lease, never its secret (docs/brokers.md)."""
    details = " ".join(f"{k}={v}" for k, v in sorted(lease.details.items()))
    return f"lease: {lease.broker} {lease.handle} {lease.state or 'active'}  {details}".rstrip()


def _state(value: int) -> str:
    return {1: "active", 2: "revoked", 3: "expired"}.get(value, "unknown")


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise usage_error(f"{flag} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise usage_error(f"{flag} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value
