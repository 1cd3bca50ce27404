"""ARAP tasks: an access request as the PEP sees it, its status mapped from the approval
desk's states ("Mapping Backend States"), and the Task Handle that reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..approvals import Approval, ApprovalState
from ..clock import rfc3339
from .documents import clip


@dataclass(slots=True)
class AccessRequest:
    """An ARAP task: one approval in the engine's desk, bound to the denied request."""

    approval: Approval
    digest: str
    context_names: list[str]
    evaluation_id: str
    body_digest: str
    cancelled: bool = False


def task_status(record: AccessRequest, now: float) -> str:
    """The ARAP task status ("Task Status Values") of an approval, mapped from the desk's
    states as "Mapping Backend States" asks."""
    approval = record.approval
    if record.cancelled:
        return "cancelled"
    state = approval.state
    if state is ApprovalState.PENDING:
        return "expired" if approval.expires_at <= now else "pending"
    if state in (ApprovalState.APPROVED, ApprovalState.USED):
        return "approved"
    if state is ApprovalState.DENIED:
        return "denied"
    # EXPIRED: an approval decided `approved` stays approved (approved_until has passed);
    # one that lapsed before its expiry time was cancelled by the system (its task ended).
    if approval.decided_by:
        return "approved"
    return "cancelled" if approval.expires_at > now + 1 else "expired"


def task_response(
    record: AccessRequest, base: str, now: float, status: int
) -> tuple[int, Any, str]:
    """The Task Handle (ARAP "Access Request Response"), with its result once approved
    ("Completed Task Response"): (HTTP status, body, Location or '')."""
    approval = record.approval
    endpoint = f"{base}/access/v1/requests/{approval.approval_id}"
    state = task_status(record, now)
    task: dict[str, Any] = {
        "id": approval.approval_id,
        "status": state,
        "status_endpoint": endpoint,
        "expires_at": rfc3339(approval.expires_at),
    }
    if state == "pending":
        task["links"] = {"cancel": endpoint + "/cancel"}
    body: dict[str, Any] = {"task": task}
    if state == "approved":
        body["result"] = {
            "mode": "reevaluate",
            "approval": {
                "id": approval.approval_id,
                "approved_until": rfc3339(approval.expires_at),
            },
        }
    elif state == "denied" and approval.decision_reason:
        body["result"] = {"reason": clip(approval.decision_reason)}
    return status, body, endpoint if status in (201, 202) else ""
