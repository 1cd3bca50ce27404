"""The approval desk: intents parked for a human, and their verdicts.

An approval is opened when the policy asks for one (`park`), decided once by an approver
(`decide`), and closed when its grant is collected, it is denied, it expires, or its task
ends. Nothing is issued here: collecting an approved grant goes through the engine's
grant path like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace

from ..approvals import (
    Approval,
    ApprovalState,
    WebhookNotifier,
    check_four_eyes,
    flow_fields,
    intent_hash,
    owners_of,
)
from ..clock import Clock, rfc3339
from ..errors import FailedPrecondition, NotFound, Reason, ResourceExhausted
from ..events import ApprovalDecided, ApprovalExpired, GrantPending
from ..journal import CommitError, Journal
from ..model import Identity, Intent, PolicyDecision, Task
from ..store import Store
from ..tokens import new_grant_id
from .commits import commit_or_undo
from .due import Due, DueQueue
from .settings import EngineMetrics

log = logging.getLogger("jit_sidecar.engine")


class ApprovalDesk:
    def __init__(
        self,
        *,
        due: DueQueue,
        journal: Journal,
        store: Store,
        clock: Clock,
        metrics: EngineMetrics,
        approval_ttl: int,
        max_open_per_task: int,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        self.due = due
        self.journal = journal
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.approval_ttl = approval_ttl
        self.max_open_per_task = max_open_per_task
        self.notifier = notifier
        self.open_approvals: dict[str, Approval] = {}
        """Open approvals (pending or approved, not yet used or expired)."""
        self.by_hash: dict[str, Approval] = {}
        self._open_per_task: dict[str, int] = {}
        """Open approvals by task id (bounded by max_open_per_task)."""
        self._deciding: set[str] = set()
        """Approvals whose decision is being written to the audit log."""

    def __bool__(self) -> bool:
        return bool(self.open_approvals)

    def get(self, approval_id: str) -> Approval | None:
        return self.open_approvals.get(approval_id)

    def listed(self) -> list[Approval]:
        return sorted(self.open_approvals.values(), key=lambda a: a.created_at)

    # ------------------------------------------------------------------ open and close
    def open(self, approval: Approval) -> None:
        if approval.approval_id not in self.open_approvals:
            task_id = approval.task_id
            self._open_per_task[task_id] = self._open_per_task.get(task_id, 0) + 1
        self.open_approvals[approval.approval_id] = approval
        self.by_hash[approval.intent_hash] = approval
        self.due.push(approval.expires_at, Due.APPROVAL_EXPIRY, approval.approval_id)

    def close(self, approval: Approval, state: ApprovalState) -> None:
        approval.state = state
        if self.open_approvals.pop(approval.approval_id, None) is not None:
            left = self._open_per_task.get(approval.task_id, 1) - 1
            if left > 0:
                self._open_per_task[approval.task_id] = left
            else:
                self._open_per_task.pop(approval.task_id, None)
        if self.by_hash.get(approval.intent_hash) is approval:
            del self.by_hash[approval.intent_hash]
        approval.settled.set()

    def reopen_approved(self, approval: Approval) -> None:
        """Undo collecting an approval whose grant was never recorded."""
        approval.state = ApprovalState.APPROVED
        approval.settled = asyncio.Event()
        approval.settled.set()
        self.open(approval)

    def expire(self, approval: Approval, now: float, reason: str | None = None) -> ApprovalExpired:
        self.close(approval, ApprovalState.EXPIRED)
        return ApprovalExpired(
            time=rfc3339(now),
            approval_id=approval.approval_id,
            task_id=approval.task_id,
            subject=approval.subject,
            reason=reason,
        )

    def expire_task(self, task_id: str, now: float) -> Iterator[ApprovalExpired]:
        """Expire the open approvals of a task that ended."""
        for approval in [a for a in self.open_approvals.values() if a.task_id == task_id]:
            yield self.expire(approval, now, reason="task_ended")

    def approved_for_other_intent(
        self, task_id: str, intent: Intent, digest: str
    ) -> Approval | None:
        for approval in self.open_approvals.values():
            if (
                approval.task_id == task_id
                and approval.state is ApprovalState.APPROVED
                and approval.intent.action == intent.action
                and approval.intent.resource == intent.resource
                and approval.intent_hash != digest
            ):
                return approval
        return None

    # ------------------------------------------------------------------ park
    async def park(
        self,
        identity: Identity,
        task: Task,
        intent: Intent,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> Approval:
        """Hold an intent that needs a human: nothing is issued until someone approves."""
        decision = replace(decision, owners=owners_of(identity, decision))
        assert decision.tier is not None
        limit = self.max_open_per_task
        if self._open_per_task.get(task.task_id, 0) >= limit:
            raise ResourceExhausted(
                f"task {task.task_id} already has {limit} open approval requests",
                Reason.TOO_MANY_APPROVALS,
            )
        digest = intent_hash(identity.subject, task.task_id, intent)
        approval = await self.open_approval(
            identity.subject, task.task_id, intent, digest, requested_ttl, decision
        )
        self.metrics.pending(decision.tier)
        return approval

    async def open_approval(
        self,
        subject: str,
        task_id: str,
        intent: Intent,
        digest: str,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> Approval:
        """Open a pending approval bound to `digest`, audited (`grant_pending`), listed by
        `approvals list` and announced to the webhook. RequestGrant parks intents through
        it; the AuthZEN access request endpoint (sidecar/authzen/) opens its own with a
        digest no agent intent can have, so they are decided here but never collected as
        tokens. Per-task limits are the caller's."""
        assert decision.tier is not None
        now = self.clock.now()
        approval = Approval(
            approval_id="a-" + new_grant_id(),
            task_id=task_id,
            subject=subject,
            intent=intent,
            intent_hash=digest,
            requested_ttl=requested_ttl,
            decision=decision,
            created_at=now,
            expires_at=now + self.approval_ttl,
        )
        self.open(approval)
        event = GrantPending(
            time=rfc3339(now),
            approval_id=approval.approval_id,
            task_id=task_id,
            subject=subject,
            intent=intent.as_input(),
            intent_hash=digest,
            decision_id=decision.decision_id or None,
            reasons=list(decision.reasons),
            decision={
                "tier": decision.tier.value,
                "ttl_seconds": decision.ttl_seconds,
                "audience": decision.audience,
                "scope": list(decision.scope),
                # Only when set, so records of policies without four-eyes keep their shape.
                **({"four_eyes": True} if decision.four_eyes else {}),
                **({"owners": list(decision.owners)} if decision.owners else {}),
                # the labels the grant will carry once approved, across a restart too
                **flow_fields(decision.flow),
            }
            # The broker credential the approval yields (a non-secret request: broker,
            # database, privileges), so an approval collected after a restart still gets it.
            | ({"credential": dict(decision.credential)} if decision.credential else {}),
            ttl_seconds=requested_ttl,
            expires_at=rfc3339(approval.expires_at),
        )
        # never recorded: the approval must not stay open
        await commit_or_undo(
            self.journal, event, lambda: self.close(approval, ApprovalState.EXPIRED)
        )
        log.info(
            "approval requested", extra={"approval_id": approval.approval_id, "task_id": task_id}
        )
        if self.notifier is not None:
            self.notifier.notify(approval)
        return approval

    # ------------------------------------------------------------------ decide
    async def decidable(self, approval_id: str) -> Approval:
        """The open approval an approver may decide, or NOT_FOUND / approval_inactive.
        (An expired one is the caller's to sweep: its expiry is the clock's.)"""
        approval = self.open_approvals.get(approval_id)
        if approval is None:
            stored = await self.store.get_approval(approval_id)
            if stored is None:
                raise NotFound(f"no approval {approval_id}", Reason.APPROVAL_NOT_FOUND)
            raise FailedPrecondition(
                f"approval {approval_id} is already {stored.state.value}",
                Reason.APPROVAL_INACTIVE,
            )
        return approval

    async def decide(
        self, approval: Approval, now: float, *, approve: bool, approver: str, reason: str
    ) -> None:
        """Record an approver's verdict on a pending, unexpired approval."""
        approval_id = approval.approval_id
        if approval.state is not ApprovalState.PENDING:
            raise FailedPrecondition(
                f"approval {approval_id} is already {approval.state.value}",
                Reason.APPROVAL_INACTIVE,
            )
        if approval_id in self._deciding:
            raise FailedPrecondition(
                f"approval {approval_id} is being decided", Reason.APPROVAL_INACTIVE
            )
        if approve and approval.decision.four_eyes:
            check_four_eyes(approval, approver)  # before anything is written
        # The approval stays pending (not collectable) until its decision is in the audit
        # log: the decision takes effect when the commit is durable, even if this caller is
        # cancelled meanwhile, and not at all when the log refused it.
        self._deciding.add(approval_id)
        event = ApprovalDecided(
            time=rfc3339(now),
            approval_id=approval_id,
            task_id=approval.task_id,
            subject=approval.subject,
            approved=approve,
            approver=approver,
            reason=reason or None,
        )
        commit = asyncio.ensure_future(self.journal.commit([event]))
        commit.add_done_callback(
            lambda done: self._apply_decision(done, approval, approve, approver, reason)
        )
        await asyncio.shield(commit)
        log.info(
            "approval %s",
            "granted" if approve else "denied",
            extra={"approval_id": approval_id, "task_id": approval.task_id},
        )

    def _apply_decision(
        self,
        commit: asyncio.Future[None],
        approval: Approval,
        approve: bool,
        approver: str,
        reason: str,
    ) -> None:
        """Make a decision effective once its record is durable (see decide)."""
        self._deciding.discard(approval.approval_id)
        err = None if commit.cancelled() else commit.exception()
        durable = err is None or (isinstance(err, CommitError) and err.durable)
        if commit.cancelled() or not durable:
            return  # nothing recorded: the approval is still pending
        if approval.state is not ApprovalState.PENDING:
            return  # expired while its decision was being written
        approval.decided_by = approver
        approval.decision_reason = reason
        if approve:
            approval.state = ApprovalState.APPROVED
            approval.settled.set()
        else:
            self.close(approval, ApprovalState.DENIED)
