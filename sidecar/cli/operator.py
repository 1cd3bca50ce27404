"""Operator commands over the admin socket: `revoke`, `keys rotate`, `approvals`."""

from __future__ import annotations

import argparse
import getpass

from .exits import EXIT_OK
from .output import message_dict, show

_APPROVAL_STATES = {1: "pending", 2: "approved", 3: "denied", 4: "expired", 5: "used"}


def run_operator(args: argparse.Namespace) -> int:
    """Run `revoke`, `approvals …` or `keys rotate` against the admin socket."""
    from ..client import AdminClient

    if args.command == "revoke":
        with AdminClient(args.admin_socket) as admin:
            count = admin.revoke(
                grant_id=args.grant_id or "",
                task_id=args.task_id or "",
                subject=args.subject or "",
                everything=args.all,
                reason=args.reason,
                principal=args.principal or "",
            )
        show(args, {"revoked_grants": count}, f"{count} grant(s) revoked")
        return EXIT_OK
    if args.command == "approvals":
        with AdminClient(args.admin_socket) as admin:
            if args.approvals_command == "list":
                items = admin.list_approvals(include_decided=args.all)
                lines = [
                    f"{a.approval_id}  {_APPROVAL_STATES.get(a.state, '?'):8s} "
                    f"{a.subject}  {a.intent.action} {a.intent.resource}  "
                    f"task {a.task_id}  expires {a.expires_at.ToJsonString()}\n"
                    f"    justification: {a.intent.justification!r}\n"
                    + "".join(f"    - {r}\n" for r in a.reasons)
                    for a in items
                ]
                show(
                    args,
                    [message_dict(a) for a in items],
                    "".join(lines).rstrip() or "(no approvals)",
                )
                return EXIT_OK
            approver = args.approver or getpass.getuser()
            decided = admin.decide_approval(
                args.approval_id,
                approve=args.approvals_command == "approve",
                reason=args.reason,
                approver=approver,
            )
        show(
            args,
            message_dict(decided),
            f"approval {decided.approval_id} {_APPROVAL_STATES.get(decided.state, '?')} "
            f"by {approver}",
        )
        return EXIT_OK
    if args.command == "keys":
        with AdminClient(args.admin_socket) as admin:
            rotated = admin.rotate_signing_key(reload_from_file=args.reload)
        text = f"signing key {rotated.kid} is current"
        if rotated.previous_kid:
            text += (
                f"; {rotated.previous_kid} stays in the JWKS until "
                f"{rotated.previous_retires_at.ToJsonString()}"
            )
        show(args, message_dict(rotated), text)
        return EXIT_OK
    raise AssertionError(args.command)
