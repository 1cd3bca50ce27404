"""The engine's side of a fleet (docs/scale-out.md): which of this sidecar's tasks and
grants a revocation made elsewhere covers, ending them here with their origin, and the
orders an operator gives for grants and tasks another sidecar holds."""

from __future__ import annotations

import dataclasses
import logging

from ..clock import Clock, rfc3339
from ..events import ApprovalExpired, Event, GrantEnded, RevocationOrdered, TaskCompleted
from ..model import Grant, GrantState, RevocationReason, Task, TaskState, Tier
from ..revocations import Revocation
from ..validation import preview
from .commits import Ended, Recorder
from .live import LiveState

log = logging.getLogger("jit_sidecar.engine")


def fleet_targets(live: LiveState, rev: Revocation) -> tuple[list[Task], list[Grant]]:
    """This sidecar's active tasks and grants a fleet revocation covers."""
    if rev.scope == "grant":
        grant = live.grants.get(rev.target)
        return [], [grant] if grant is not None else []
    if rev.scope == "task":
        task = live.tasks.get(rev.target)
        return [task] if task is not None else [], []
    if rev.scope == "principal":  # the kill switch by person (docs/delegation.md)
        return _acting_for(live, rev)
    everyone = rev.scope == "all"
    tasks = [
        t
        for t in live.tasks.values()
        if (everyone or t.subject == rev.target) and t.started_at <= rev.cutoff
    ]
    ending = {t.task_id for t in tasks}
    grants = [
        g
        for g in live.grants.values()
        if (everyone or g.subject == rev.target)
        and int(g.issued_at) <= rev.cutoff  # the token's iat, as every view compares it
        and g.task_id not in ending
    ]
    return tasks, grants


def _acting_for(live: LiveState, rev: Revocation) -> tuple[list[Task], list[Grant]]:
    tasks = [
        t
        for t in live.tasks.values()
        if t.principal is not None
        and t.principal.subject == rev.target
        and t.started_at <= rev.cutoff
    ]
    return tasks, []


async def apply_fleet_revocation(
    live: LiveState, recorder: Recorder, clock: Clock, rev: Revocation
) -> int:
    """End what a revocation made elsewhere in the fleet covers here (kill switch, operator
    revoke on another sidecar), audited locally with its origin, so this sidecar's state
    and audit log agree with the fleet. Returns how many grants."""
    tasks, grants = fleet_targets(live, rev)
    if not tasks and not grants:
        return 0
    try:
        why = RevocationReason(rev.reason)
    except ValueError:
        why = RevocationReason.REVOKED_BY_OPERATOR
    now = clock.now()
    triggered = min(rev.cutoff, now) if rev.cutoff else now
    detail = f"from {rev.origin}" + (f": {rev.detail}" if rev.detail else "")
    ended = Ended()
    count = 0
    for task in tasks:
        if task.active:
            count += live.end_task(task, TaskState.FAILED, why, triggered, ended, detail)
    for grant in grants:
        if grant.state is GrantState.ACTIVE and grant.grant_id in live.grants:
            live.end_grant(grant, GrantState.REVOKED, why, triggered, ended, detail)
            count += 1
    ended.events = [_with_origin(e, rev.origin) for e in ended.events]
    log.warning(
        "ended %d grants on a %s revocation from %s",
        count,
        rev.scope,
        rev.origin,
        extra={"reason": why.value, "count": count},
    )
    await recorder.revocations(ended)
    return count


def _with_origin(event: Event, origin: str) -> Event:
    if isinstance(event, TaskCompleted | GrantEnded | ApprovalExpired):
        return dataclasses.replace(event, origin=origin)
    return event


def order(
    now: float,
    scope: str,
    target: str,
    cutoff: float,
    expires_at: float,
    reason: RevocationReason,
    detail: str,
) -> RevocationOrdered:
    """An operator's fleet-wide revocation, for the store to publish."""
    return RevocationOrdered(
        time=rfc3339(now),
        scope=scope,
        grant_id=target if scope == "grant" else None,
        task_id=target if scope == "task" else None,
        subject=target if scope == "subject" else None,
        person=target if scope == "principal" else None,
        cutoff=rfc3339(cutoff) if scope != "grant" else None,
        revocation_expires_at=rfc3339(expires_at),
        reason=reason.value,
        detail=preview(detail, 512) if detail else None,
    )


def ordered_grant(grant_id: str, now: float, expires: float) -> Grant:
    """What an operator's revoke of another sidecar's grant answers: the grant as far as
    this sidecar knows it (its id), revoked."""
    return Grant(
        grant_id=grant_id,
        task_id="",
        subject="",
        action="",
        resource="",
        tier=Tier.JIT,
        audience="",
        scope=(),
        issued_at=now,
        expires_at=expires,
        kid="",
        state=GrantState.REVOKED,
        end_reason=RevocationReason.REVOKED_BY_OPERATOR.value,
        ended_at=now,
    )
