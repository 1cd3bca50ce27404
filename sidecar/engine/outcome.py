"""What RequestGrant and AwaitApproval answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..approvals import Approval, ApprovalState
from ..brokers.base import IssuedCredential
from ..errors import FailedPrecondition, Reason
from ..events import Event, GrantIssued
from ..model import Grant, Intent, PolicyDecision, Task


@dataclass(frozen=True, slots=True)
class GrantOutcome:
    """The answer to one RequestGrant."""

    decision: str
    """granted, denied or pending_approval."""
    grant: Grant | None = None
    token: str = field(default="", repr=False)
    """The bearer token: never printed (repr) or logged."""
    reasons: tuple[str, ...] = ()
    decision_id: str = ""
    approval_id: str = ""
    justification: str = ""
    """The granted intent's: answers show it (a live Grant does not keep it, to stay small)."""
    credential: IssuedCredential | None = field(default=None, repr=False)
    """The downstream credential issued with the grant (its secret goes to the agent only)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """An issuance before its commit (issuance.py `Issuance.prepare`): the grant is live, its
    token signed but not returned, its events (`grant_issued`, and `credential_issued` when a
    broker made a credential) still to be committed."""

    grant: Grant
    token: str = field(repr=False)
    event: GrantIssued
    events: list[Event]
    intent: Intent
    decision: PolicyDecision
    task: Task
    credential: IssuedCredential | None = field(default=None, repr=False)


def pending(approval: Approval) -> GrantOutcome:
    return GrantOutcome(
        "pending_approval",
        reasons=approval.decision.reasons,
        decision_id=approval.decision.decision_id,
        approval_id=approval.approval_id,
    )


def settled(approval: Approval) -> GrantOutcome:
    if approval.state is ApprovalState.USED:
        raise FailedPrecondition(
            f"approval {approval.approval_id} was already used", Reason.APPROVAL_INACTIVE
        )
    if approval.state is ApprovalState.DENIED:
        why = approval.decision_reason or "no reason given"
        reasons: tuple[str, ...] = (f"approval_denied: {approval.decided_by}: {why}",)
    else:
        reasons = ("approval_expired: nobody approved the request in time",)
    return GrantOutcome("denied", reasons=reasons, approval_id=approval.approval_id)


def reason_code(reasons: Sequence[str]) -> str:
    """The machine-readable code of the first `"<code>: <sentence>"` reason."""
    if not reasons:
        return "no_reason"
    code = reasons[0].partition(":")[0].strip()
    return code if code.replace("_", "").isalnum() and len(code) <= 64 else "unstructured"
