"""Live state: the active tasks and grants this sidecar serves, kept in memory.

Every change happens synchronously, before the journal commit that records it, so
concurrent calls see one consistent picture and the journal writes changes in the order
they happened. Ending a grant or task here is what makes it inactive (fail closed); the
events it adds to an `Ended` are what the caller then commits.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict

from ..clock import Clock, rfc3339
from ..events import GrantExpired, GrantRevoked, TaskCompleted
from ..model import AccessEnded, Grant, GrantState, RevocationReason, Task, TaskState
from ..store import Snapshot
from ..validation import preview
from .commits import Ended
from .delegation import TaskPrincipals
from .desk import ApprovalDesk
from .due import Due, DueQueue
from .listeners import GrantEndListeners
from .settings import EngineMetrics

log = logging.getLogger("jit_sidecar.engine")
#: Ended grants kept in memory for introspection until the store has caught up.
RECENTLY_ENDED = 4096


class LiveState:
    def __init__(
        self,
        *,
        due: DueQueue,
        approvals: ApprovalDesk,
        metrics: EngineMetrics,
        clock: Clock,
        heartbeat_misses: int,
        grant_end: GrantEndListeners | None = None,
        principals: TaskPrincipals | None = None,
    ) -> None:
        """`principals` learns the person of each task that has one, for the audit stamp."""
        self.due = due
        self.grant_end = grant_end if grant_end is not None else GrantEndListeners()
        self.approvals = approvals
        self.metrics = metrics
        self.clock = clock
        self.heartbeat_misses = heartbeat_misses
        self.tasks: dict[str, Task] = {}
        self.grants: dict[str, Grant] = {}
        self.recently_ended: OrderedDict[str, Grant] = OrderedDict()
        """Grants ended in memory, newest last: introspection states their end reason even
        before the journal's commit reaches the store (bounded by RECENTLY_ENDED)."""
        self.tasks_per_subject: dict[str, int] = {}
        self.last_exp_by_kid: dict[str, float] = {}
        """Latest `exp` of any token signed by each key id (when retired keys can leave)."""
        self.principals = principals if principals is not None else TaskPrincipals()

    def restore(self, snapshot: Snapshot) -> None:
        """Take over the live state a store loaded at start-up."""
        for task in snapshot.tasks:
            self.tasks[task.task_id] = task
            self._count_task(task, 1)
            self.schedule_task(task)
        for grant in snapshot.grants:
            if grant.task_id not in self.tasks:
                # Nothing should leave a grant active in an ended task; if a crash window did,
                # it stays active (its token may be in use) until its exp, and is reported.
                log.warning("active grant %s of ended task %s", grant.grant_id, grant.task_id)
            self.grants[grant.grant_id] = grant
            self.due.push(grant.expires_at, Due.GRANT_EXPIRY, grant.grant_id)
            self.metrics.grant_active(grant.tier, 1)
        self.last_exp_by_kid = dict(snapshot.last_exp_by_kid)
        for approval in snapshot.approvals:
            self.approvals.open(approval)
        self.metrics.active_tasks.set(len(self.tasks))

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: Task) -> None:
        self.tasks[task.task_id] = task
        self._count_task(task, 1)
        self.metrics.active_tasks.set(len(self.tasks))
        self.schedule_task(task)

    def schedule_task(self, task: Task) -> None:
        self.due.push(task.deadline, Due.TASK_DEADLINE, task.task_id)
        self.due.push(
            task.heartbeat_deadline(self.heartbeat_misses), Due.TASK_HEARTBEAT, task.task_id
        )

    def drop_task(self, task: Task) -> None:
        if self.tasks.pop(task.task_id, None) is not None:
            self._count_task(task, -1)
        self.metrics.active_tasks.set(len(self.tasks))

    def _count_task(self, task: Task, delta: int) -> None:
        if task.principal is not None:  # every task comes and goes through here
            if delta > 0:
                self.principals.add(task.task_id, task.principal)
            else:
                self.principals.end(task.task_id)
        left = self.tasks_per_subject.get(task.subject, 0) + delta
        if left > 0:
            self.tasks_per_subject[task.subject] = left
        else:
            self.tasks_per_subject.pop(task.subject, None)

    def end_task(
        self,
        task: Task,
        state: TaskState,
        reason: RevocationReason,
        triggered: float,
        ended: Ended,
        detail: str = "",
    ) -> int:
        """Mark a task ended and revoke its grants (in memory); returns how many."""
        grants = [self.grants[g] for g in list(task.grant_ids) if g in self.grants]
        for grant in grants:
            self.end_grant(grant, GrantState.REVOKED, reason, triggered, ended, alone=False)
        now = self.clock.now()
        task.state = state
        task.ended_at = now
        task.end_reason = reason.value
        self.drop_task(task)
        # An approval is only ever collected inside its task: it ends with the task.
        ended.events.extend(self.approvals.expire_task(task.task_id, now))
        ended.events.append(
            TaskCompleted(
                time=rfc3339(now),
                task_id=task.task_id,
                subject=task.subject,
                state=state.value,
                reason=reason.value,
                detail=preview(detail, 512) if detail else None,
                revoked_grants=len(grants),
            )
        )
        ended.access.append(
            AccessEnded(
                task_id=task.task_id,
                subject=task.subject,
                reason=reason.value,
                ended_at=now,
                expires_at=max((g.expires_at for g in grants), default=now),
                state=state.value,
            )
        )
        return len(grants)

    # ------------------------------------------------------------------ grants
    def add_grant(self, task: Task, grant: Grant) -> None:
        self.grants[grant.grant_id] = grant
        task.grant_ids.append(grant.grant_id)
        self.due.push(grant.expires_at, Due.GRANT_EXPIRY, grant.grant_id)
        self.metrics.grant_active(grant.tier, 1)
        if grant.expires_at > self.last_exp_by_kid.get(grant.kid, 0.0):
            self.last_exp_by_kid[grant.kid] = grant.expires_at

    def forget_grant(self, grant: Grant, task: Task | None) -> None:
        if self.grants.pop(grant.grant_id, None) is not None:
            self.metrics.grant_active(grant.tier, -1)
        if task is not None:
            # One scan of the task's list instead of two (`in`, then remove): this was the
            # largest per-grant cost of a sweep in tasks holding many grants.
            with contextlib.suppress(ValueError):
                task.grant_ids.remove(grant.grant_id)

    def end_grant(
        self,
        grant: Grant,
        state: GrantState,
        reason: RevocationReason,
        triggered: float,
        ended: Ended,
        detail: str = "",
        *,
        alone: bool = True,
    ) -> None:
        now = self.clock.now()
        grant.state = state
        grant.end_reason = reason.value
        grant.ended_at = now
        self.forget_grant(grant, self.tasks.get(grant.task_id))
        self.recently_ended[grant.grant_id] = grant
        if len(self.recently_ended) > RECENTLY_ENDED:
            self.recently_ended.popitem(last=False)
        self.metrics.revoked(reason)
        self.grant_end.notify(grant)
        kind = GrantExpired if state is GrantState.EXPIRED else GrantRevoked
        ended.events.append(
            kind(
                time=rfc3339(now),
                task_id=grant.task_id,
                grant_id=grant.grant_id,
                subject=grant.subject,
                tier=grant.tier.value,
                reason=reason.value,
                detail=preview(detail, 512) if detail else None,
            )
        )
        ended.lags.append((reason.value, triggered))
        if grant.lease is not None:
            ended.leases.append((grant.lease, reason.value, grant.task_id))
        if alone and state is GrantState.REVOKED:
            # An expired token needs no news: its `exp` already ends it everywhere. A grant
            # ended with its task is covered by the task's own end.
            ended.access.append(
                AccessEnded(
                    task_id=grant.task_id,
                    subject=grant.subject,
                    reason=reason.value,
                    ended_at=now,
                    expires_at=grant.expires_at,
                    grant_id=grant.grant_id,
                )
            )

    def reconcile(self, stored: list[Grant], now: float, include_inactive: bool) -> list[Grant]:
        """Grants read from the store, with memory's word on which are active: memory is
        authoritative for live grants, and one ended in memory may not be ended in the store
        yet (it catches up with the journal's next commit)."""
        out = []
        for grant in stored:
            ended = self.recently_ended.get(grant.grant_id)
            if grant.grant_id in self.grants:
                grant.state = GrantState.ACTIVE
            elif grant.state is GrantState.ACTIVE and ended is not None:
                # Ended in memory, the store not caught up yet: memory says how it ended.
                grant.state, grant.end_reason = ended.state, ended.end_reason
            elif grant.state is GrantState.ACTIVE:
                grant.state = GrantState.EXPIRED if grant.expires_at <= now else GrantState.REVOKED
            if include_inactive or grant.state is GrantState.ACTIVE:
                out.append(grant)
        return out

    def active_tasks(self, subject: str = "") -> list[Task]:
        """Active tasks (of `subject` when given), oldest first."""
        tasks = [t for t in self.tasks.values() if not subject or t.subject == subject]
        return sorted(tasks, key=lambda t: t.started_at)

    def grants_of(self, task: Task) -> list[Grant]:
        """`task`'s active grants, oldest first."""
        return [g for g in (self.grants.get(i) for i in task.grant_ids) if g is not None]

    def last_exp(self, kid: str) -> float:
        return self.last_exp_by_kid.get(kid, 0.0)
