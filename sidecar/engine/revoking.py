"""Ending access on request: an agent revoking its grant, an operator revoking a grant or
task, and the kill switch. Each ends state in memory first (fail closed), then commits."""

from __future__ import annotations

from collections.abc import Callable

from ..clock import Clock
from ..errors import NotFound, Reason
from ..journal import Journal
from ..model import Grant, GrantState, Identity, RevocationReason, Task, TaskState
from ..revocations import FleetGate
from ..store import Store
from ..validation import check_grant_id
from . import fleet as fleet_orders
from .commits import Ended, Recorder
from .live import LiveState


class Revoking:
    def __init__(
        self,
        live: LiveState,
        *,
        store: Store,
        journal: Journal,
        recorder: Recorder,
        clock: Clock,
        fleet: FleetGate | None,
        max_ttl: int,
    ) -> None:
        self.live = live
        self.store = store
        self.journal = journal
        self.recorder = recorder
        self.clock = clock
        self.fleet = fleet
        self.max_ttl = max_ttl

    async def grant(
        self, identity: Identity | None, grant_id: str, reason: str = ""
    ) -> tuple[bool, Grant]:
        """Revoke one grant. `identity` None means an operator (no ownership check); to an
        agent, another identity's grant is NOT_FOUND, as an unknown one is."""
        triggered = self.clock.now()
        check_grant_id(grant_id)
        grant = self.live.grants.get(grant_id)
        if grant is None:
            stored = await self.store.get_grant(grant_id)
            if stored is None and identity is None and self.fleet is not None:
                return True, await self._order_grant(grant_id, reason)
            if stored is None or (identity is not None and stored.subject != identity.subject):
                raise NotFound(f"no grant {grant_id}", Reason.GRANT_NOT_FOUND)
            return False, stored
        if identity is not None and grant.subject != identity.subject:
            raise NotFound(f"no grant {grant_id}", Reason.GRANT_NOT_FOUND)
        why = (
            RevocationReason.REVOKED_BY_AGENT
            if identity is not None
            else RevocationReason.REVOKED_BY_OPERATOR
        )
        ended = Ended()
        self.live.end_grant(grant, GrantState.REVOKED, why, triggered, ended, detail=reason)
        await self.recorder.revocations(ended)
        return True, grant

    async def task(self, task_id: str, reason: str = "") -> int:
        """Operator: end a task (as failed) and revoke its grants."""
        triggered = self.clock.now()
        task = self.live.tasks.get(task_id)
        if task is None:
            stored = await self.store.get_task(task_id)
            if stored is None:
                raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
            if self.fleet is not None and stored.active:
                return await self._order_task(stored, reason)
            return 0
        ended = Ended()
        count = self.live.end_task(
            task,
            TaskState.FAILED,
            RevocationReason.REVOKED_BY_OPERATOR,
            triggered,
            ended,
            detail=reason,
        )
        await self.recorder.revocations(ended)
        return count

    async def subject(self, subject: str | None, reason: str = "") -> int:
        """Kill switch: end every task of `subject` (every task when None)."""
        return await self._kill(
            "all" if subject is None else "subject",
            subject or "",
            lambda task: subject is None or task.subject == subject,
            reason,
        )

    async def principal(self, principal: str, reason: str = "") -> int:
        """Kill switch by person: end every task acting for `principal` (its `sub`, from any
        issuer), whichever agent runs it; in a fleet, every sidecar does the same."""
        return await self._kill(
            "principal",
            principal,
            lambda task: task.principal is not None and task.principal.subject == principal,
            reason,
        )

    async def _kill(
        self, scope: str, target: str, covers: Callable[[Task], bool], reason: str
    ) -> int:
        """End every live task `covers`; in a fleet, every token of the scope's target
        issued until now is inactive on every sidecar too."""
        triggered = self.clock.now()
        ended = Ended()
        count = 0
        if self.fleet is not None:
            ended.events.append(
                fleet_orders.order(
                    self.clock.now(),
                    scope,
                    target,
                    triggered,
                    triggered + self.max_ttl,
                    RevocationReason.KILL_SWITCH,
                    reason,
                )
            )
        for task in list(self.live.tasks.values()):
            if covers(task):
                count += self.live.end_task(
                    task,
                    TaskState.FAILED,
                    RevocationReason.KILL_SWITCH,
                    triggered,
                    ended,
                    detail=reason,
                )
        await self.recorder.revocations(ended)
        return count

    async def _order_grant(self, grant_id: str, detail: str) -> Grant:
        """Operator: revoke a grant this sidecar never issued; its issuer, wherever it is,
        ends and audits it, and every sidecar refuses the token meanwhile."""
        now = self.clock.now()
        expires = now + self.max_ttl  # the grant's own expiry is its issuer's to know
        why = RevocationReason.REVOKED_BY_OPERATOR
        order = fleet_orders.order(now, "grant", grant_id, now, expires, why, detail)
        await self.journal.commit([order])
        return fleet_orders.ordered_grant(grant_id, now, expires)

    async def _order_task(self, task: Task, detail: str) -> int:
        """Operator: end another sidecar's task fleet-wide; returns its active grants."""
        now = self.clock.now()
        why = RevocationReason.REVOKED_BY_OPERATOR
        expires = max(task.deadline, now + 1.0)  # no token of the task outlives its deadline
        order = fleet_orders.order(now, "task", task.task_id, now, expires, why, detail)
        await self.journal.commit([order])
        return len(task.grant_ids)
