"""The engine: the only place that knows the order of a grant.

RequestGrant: authenticate (done by the caller) → validate input → load the task (active,
owned by the caller) → ask the policy → validate the decision → TTL = min(requested, policy,
tier maximum, task remaining, global maximum) → persist and audit (one journal commit) → sign
→ return. A token leaves only after its grant is durable; any failure on the way means no
token.

The engine keeps live state (`live.py`) and changes it synchronously before each journal
commit. It does no I/O of its own: the policy, journal, store and key ring are adapters
handed to it. Finding the caller's task (`tasks.py`), issuing an allowed grant (`issuance.py`),
several intents decided together (`batch.py`, GrantStream), approvals (`desk.py`), the sweeper
(`sweeper.py`), revocation on request (`revoking.py`), key rotation (`keys.py`), introspection
(`introspection.py`) and the fleet (`fleet.py`) each have a module (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from ..approvals import Approval, ApprovalState, WebhookNotifier, intent_hash
from ..cache import CacheKey, DecisionCache
from ..clock import Clock, rfc3339
from ..dpop import KeyBinding
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PolicyError,
    Reason,
    ResourceExhausted,
    SidecarError,
)
from ..events import TaskBegun
from ..journal import CommitError, Journal
from ..model import (
    OUTCOME_REVOCATION,
    OUTCOME_TASK_STATE,
    AccessEnded,
    Grant,
    Identity,
    Intent,
    Outcome,
    PlanEvaluation,
    PolicyDecision,
    Principal,
    Task,
)
from ..policy import PolicyEngine, build_input
from ..principals import PrincipalVerifier
from ..revocations import FleetGate, Revocation
from ..store import Snapshot, Store
from ..tokens import KeyRing, SigningKey, new_grant_id
from ..validation import (
    check_intent,
    check_task_fields,
    check_task_id,
    check_ttl,
)
from . import batch, flows
from . import fleet as fleet_orders
from .commits import Ended, Recorder, commit_or_undo
from .credentials import Credentials
from .delegation import Delegation, TaskPrincipals
from .desk import ApprovalDesk
from .due import DueQueue
from .exchange import Exchanged, ExchangeRequest, TokenExchange
from .introspection import Introspection, introspect
from .issuance import FlowMoved, Issuance, flow_moved
from .keys import KeyRotation
from .limits import check_grant_room
from .listeners import GrantEndListeners
from .live import LiveState
from .outcome import GrantOutcome, pending, settled
from .revoking import Revoking
from .settings import EngineMetrics, EngineSettings
from .streams import StreamWatch
from .sweeper import Sweeper
from .tasks import TaskLookup, check_task_ref, owned_task_id

log = logging.getLogger("jit_sidecar.engine")


_FLOW_ATTEMPTS = 3
"""Decisions asked for one RequestGrant while concurrent grants of its task keep adding flow
labels (Issuance.flow_moved); then the request is UNAVAILABLE, to be retried."""


class Engine:
    def __init__(
        self,
        settings: EngineSettings,
        *,
        policy: PolicyEngine,
        keys: KeyRing,
        store: Store,
        journal: Journal,
        metrics: EngineMetrics,
        clock: Clock,
        cache: DecisionCache | None = None,
        notifier: WebhookNotifier | None = None,
        fleet: FleetGate | None = None,
        on_policy_unavailable: Callable[[PolicyError], None] | None = None,
        grant_end: GrantEndListeners | None = None,
        credentials: Credentials | None = None,
        on_access_ended: Callable[[Sequence[AccessEnded]], None] | None = None,
        principals: PrincipalVerifier | None = None,
        task_principals: TaskPrincipals | None = None,
    ) -> None:
        """`fleet` is given when state is shared with a fleet (docs/scale-out.md): consulted
        to issue, to introspect other sidecars' tokens, and told of revocations made
        elsewhere. `on_policy_unavailable` is called when OPA could not be reached, so
        health flips to NOT_SERVING at once. `grant_end` is told, synchronously and in
        memory, of each grant that stops being active, before the end is committed (the
        egress proxy cuts the grant's streams). `credentials` holds the configured brokers
        (docs/brokers.md); without it a decision asking for a credential is invalid.
        `on_access_ended` is told of every end of access (a task, or a grant revoked on its
        own) before it is committed: the Shared Signals transmitter (docs/shared-signals.md);
        it must not block and must not raise. `principals` verifies people's subject tokens
        (docs/delegation.md); `task_principals` is the journal's audit stamp."""
        self.settings = settings
        self.policy = policy
        self.keys = keys
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.clock = clock
        self.cache = cache if cache is not None else DecisionCache()
        self.notifier = notifier
        self.fleet = fleet
        self.on_policy_unavailable = on_policy_unavailable
        self.principals = principals
        due = DueQueue()
        self.approvals = ApprovalDesk(
            due=due,
            journal=journal,
            store=store,
            clock=clock,
            metrics=metrics,
            approval_ttl=settings.approval_ttl,
            max_open_per_task=settings.max_open_approvals_per_task,
            notifier=notifier,
        )
        self.live = LiveState(
            due=due,
            approvals=self.approvals,
            metrics=metrics,
            clock=clock,
            heartbeat_misses=settings.heartbeat_misses,
            grant_end=grant_end,
            principals=task_principals,
        )
        self.credentials = credentials
        self.record = Recorder(
            journal,
            metrics,
            clock,
            on_access_ended,
            leases_ended=credentials.revoke_soon if credentials is not None else None,
            denied=lambda task_id, at: flows.denied(self.live, task_id, at),
        )
        self.sweeper = Sweeper(
            self.live,
            keys=keys,
            recorder=self.record,
            clock=clock,
            interval=settings.sweep_interval,
        )
        self._keys = KeyRotation(keys, self.live, journal, clock)
        self._revoking = Revoking(
            self.live,
            store=store,
            journal=journal,
            recorder=self.record,
            clock=clock,
            fleet=fleet,
            max_ttl=settings.max_ttl,
        )
        self.streams = StreamWatch(self.live, self.record, journal, clock)
        self._tasks = TaskLookup(self.live, store, self.streams.lost)
        self.issuance = Issuance(
            settings,
            live=self.live,
            keys=keys,
            journal=journal,
            metrics=metrics,
            clock=clock,
            recorder=self.record,
            tasks=self._tasks,
            fleet=fleet,
            credentials=credentials,
        )
        self.plans = flows.Plans(
            policy=policy,
            tasks=self._tasks,
            approvals=self.approvals,
            recorder=self.record,
            clock=clock,
            on_policy_unavailable=on_policy_unavailable,
        )
        self.delegation = Delegation(
            verifier=principals,
            may_act=policy,
            own_issuer=settings.issuer,
            introspect=lambda token: self.introspect(token, with_reason=False),
            task_principal=self.live.principals.get,
        )
        self._exchange = TokenExchange(
            self.live,
            keys=keys,
            journal=journal,
            metrics=metrics,
            clock=clock,
            issuer=settings.issuer,
            fleet=fleet,
            max_grants_per_task=settings.max_grants_per_task,
            delegation=self.delegation,
            introspect=lambda token: self.introspect(token, with_reason=False),
            abort_issue=self.issuance.abort,
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Take over the live state a store loaded at start-up, and the broker revocations
        that were due (docs/brokers.md)."""
        self.live.restore(snapshot)
        if self.credentials is not None:
            self.credentials.restore(snapshot.due_leases)
        elif snapshot.due_leases:
            log.error(
                "%d broker revocations are due but no broker is configured: configure it so "
                "they complete",
                len(snapshot.due_leases),
            )

    # ================================================================== tasks
    async def begin_task(
        self,
        identity: Identity,
        *,
        task_id: str,
        goal: str,
        max_duration: int,
        labels: Mapping[str, str],
        pop: KeyBinding | None = None,
        subject_token: str = "",
        subject_token_type: str = "",
        plan: Sequence[Intent] = (),
    ) -> Task:
        """Open a task. A caller-chosen `task_id` lives in the caller's own namespace (the
        task's id is `<task_id>@<owner tag>`), so it never collides with, nor reveals,
        another identity's task (docs/security.md). A `subject_token` names the person the
        task acts for (docs/delegation.md). A declared `plan` is evaluated first (one OPA
        query; the answer is `task.flow.evaluation`): without an answer, no task."""
        try:
            principal = None
            if subject_token or subject_token_type:
                principal = await self.delegation.principal(subject_token, subject_token_type)
                await self.delegation.admit(identity, principal)
            return await self._begin_task(
                identity, task_id, goal, max_duration, labels, pop, principal, plan
            )
        except SidecarError as err:
            await self.record.rejection("BeginTask", identity, err, task_id=task_id)
            raise

    async def _begin_task(
        self,
        identity: Identity,
        chosen: str,
        goal: str,
        max_duration: int,
        labels: Mapping[str, str],
        pop: KeyBinding | None,
        principal: Principal | None = None,
        plan: Sequence[Intent] = (),
    ) -> Task:
        cfg = self.settings
        check_task_fields(goal, labels)
        declared = flows.check_plan(plan)
        pop_jkt = pop.jkt(self.clock.now()) if pop is not None else ""
        if max_duration > cfg.max_task_duration:
            raise InvalidArgument(
                f"max_duration_seconds {max_duration} exceeds the limit of {cfg.max_task_duration}",
                Reason.INVALID_TASK,
            )
        if chosen:
            check_task_id(chosen)
            task_id = owned_task_id(identity.subject, chosen)
            if task_id in self.live.tasks or await self.store.get_task(task_id) is not None:
                raise AlreadyExists(f"task {chosen} already exists", Reason.TASK_EXISTS)
        else:
            task_id = "t-" + new_grant_id()
        now = self.clock.now()
        task = Task(
            task_id=task_id,
            subject=identity.subject,
            goal=goal,
            labels=dict(labels),
            started_at=now,
            deadline=now + (max_duration or cfg.default_task_duration),
            heartbeat_interval=cfg.heartbeat_interval,
            last_heartbeat=now,
            pop_jkt=pop_jkt,
            principal=principal,
        )
        task.flow.plan = declared
        await self.plans.declare(identity, task, now)
        if task_id in self.live.tasks:  # a concurrent BeginTask with the same id won the race
            raise AlreadyExists(f"task {chosen} already exists", Reason.TASK_EXISTS)
        if self.live.tasks_per_subject.get(identity.subject, 0) >= cfg.max_tasks_per_identity:
            raise ResourceExhausted(
                f"this identity already has {cfg.max_tasks_per_identity} active tasks",
                Reason.TOO_MANY_TASKS,
            )
        self.live.add_task(task)
        event = TaskBegun(
            time=rfc3339(now),
            task_id=task_id,
            subject=identity.subject,
            goal=goal,
            labels=dict(labels),
            expires_at=rfc3339(task.deadline),
            heartbeat_interval_seconds=task.heartbeat_interval,
            pop_jkt=pop_jkt or None,
            identity_method=identity.method,
            plan=[i.as_input() for i in declared] or None,
        )
        # nothing recorded: the task must not exist
        await commit_or_undo(self.journal, event, lambda: self.live.drop_task(task))
        log.info("task begun", extra={"task_id": task_id})
        return task

    async def heartbeat(self, identity: Identity, task_id: str) -> Task:
        try:
            task = await self._tasks.active(identity, task_id)
        except SidecarError as err:
            await self.record.rejection("Heartbeat", identity, err, task_id=task_id)
            raise
        now = self.clock.now()
        if now >= task.deadline:
            await self._end_overdue(task)
        task.last_heartbeat = now
        self.journal.touch(task.task_id, now)
        return task

    async def complete_task(
        self, identity: Identity, task_id: str, outcome: Outcome, detail: str = ""
    ) -> tuple[Task, int]:
        triggered = self.clock.now()
        try:
            task = await self._tasks.active(identity, task_id)
        except SidecarError as err:
            await self.record.rejection("CompleteTask", identity, err, task_id=task_id)
            raise
        ended = Ended()
        count = self.live.end_task(
            task,
            OUTCOME_TASK_STATE[outcome],
            OUTCOME_REVOCATION[outcome],
            triggered,
            ended,
            detail=detail,
        )
        await self.record.revocations(ended)
        return task, count

    async def _end_overdue(self, task: Task) -> None:
        """A request found its task past its deadline: end it now (the deadline is the
        clock's, not the sweeper's timing) and say so."""
        await self.sweep()
        if task.active:  # not ended by the sweep (e.g. its commit failed)
            raise FailedPrecondition(
                f"task {task.task_id} passed its deadline", Reason.TASK_INACTIVE
            )
        raise self._tasks.ended(task)

    # ================================================================== grants
    async def request_grant(
        self, identity: Identity, task_id: str, intent: Intent, ttl_seconds: int
    ) -> GrantOutcome:
        """`ttl_seconds` 0 asks for the longest lifetime the bounds allow."""
        try:
            return await self._request_grant(identity, task_id, intent, ttl_seconds)
        except PolicyError:
            self.metrics.errored()
            raise
        except SidecarError as err:
            self.metrics.errored()
            await self.record.rejection(
                "RequestGrant", identity, err, task_id=task_id, intent=intent
            )
            raise

    async def _request_grant(
        self, identity: Identity, task_id: str, intent: Intent, ttl_seconds: int
    ) -> GrantOutcome:
        check_intent(intent.action, intent.resource, intent.justification, intent.context)
        check_ttl(ttl_seconds, self.settings.max_requested_ttl)
        task = await self._tasks.active(identity, task_id)
        now = self.clock.now()
        if now >= task.deadline:
            await self._end_overdue(task)
        check_grant_room(task, self.settings.max_grants_per_task)

        if self.approvals:  # an open approval may already cover (or contradict) this intent
            settled = await self._approval_shortcut(identity, task.task_id, intent, now)
            if settled is not None:
                return settled

        for attempt in range(_FLOW_ATTEMPTS):
            known = set(task.flow.held_labels())  # what the input below holds
            decision = await self._decide(identity, intent, task, ttl_seconds, now)
            await flows.audit_flagged(self.journal, identity, task, intent, decision, now)

            if not decision.allow:
                return await self.record.denial(
                    identity, task.task_id, intent, now, decision.reasons, decision.decision_id
                )
            # Before parking an approval too: a malformed credential object is refused now.
            await self.issuance.credential_spec(identity, intent, task.task_id, decision, now)
            if flow_moved(task, known):  # a concurrent grant gave the task a label
                if attempt + 1 == _FLOW_ATTEMPTS:
                    raise FlowMoved.of(task)
                now = self.clock.now()
                continue  # decide on it
            if decision.approval_required:
                approval = await self.approvals.park(identity, task, intent, ttl_seconds, decision)
                return pending(approval)
            try:
                return await self.issuance.issue(
                    identity, task, intent, ttl_seconds, decision, known=known
                )
            except FlowMoved:
                if attempt + 1 == _FLOW_ATTEMPTS:
                    raise
            now = self.clock.now()
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _decide(
        self, identity: Identity, intent: Intent, task: Task, ttl: int, now: float
    ) -> PolicyDecision:
        key = self.cache.key(identity, intent, task.labels, task.flow.cache_key())
        # A delegated decision depends on the person too: never cached (docs/delegation.md).
        cached = self.cache.get(key) if task.principal is None else None
        if cached is not None:
            self.metrics.cache_hit.inc()
            return cached
        policy_input = build_input(identity, intent, task, self.live.grants_of(task), ttl, now)
        started = time.perf_counter()
        try:
            decision = await self.policy.decide(policy_input)
        except PolicyError as err:
            await self._policy_failed(err, identity, [intent], task.task_id, now)
            raise
        finally:
            self.metrics.policy_eval.observe(time.perf_counter() - started)
        self._remember(key, decision, task)
        return decision

    def _remember(self, key: CacheKey, decision: PolicyDecision, task: Task) -> None:
        if decision.cache_seconds and task.principal is None:
            self.metrics.cache_miss.inc()
            self.cache.put(key, decision)

    async def _policy_failed(
        self,
        err: PolicyError,
        identity: Identity,
        intents: Sequence[Intent],
        task_id: str,
        now: float,
    ) -> None:
        if err.reason is Reason.POLICY_UNAVAILABLE and self.on_policy_unavailable:
            self.on_policy_unavailable(err)
        for intent in intents:
            await self.record.policy_failure(err, identity, intent, task_id, now)

    # ================================================================== GrantStream
    async def open_stream(self, identity: Identity, task_id: str) -> Task:
        """A GrantStream opens for one of the caller's active tasks: from now on the open
        stream keeps it alive, and its close without CompleteTask crashes it (streams.py)."""
        try:
            task = await self._tasks.active(identity, task_id)
        except SidecarError as err:
            await self.record.rejection("GrantStream", identity, err, task_id=task_id)
            raise
        self.streams.opened(task)
        return task

    async def request_grants(
        self, identity: Identity, task_id: str, items: Sequence[batch.BatchItem]
    ) -> list[batch.Result]:
        """Several intents at once, each answered as RequestGrant would (batch.py)."""
        return await batch.request_grants(self, identity, task_id, items)

    # ================================================================== approvals
    async def _approval_shortcut(
        self, identity: Identity, task_id: str, intent: Intent, now: float
    ) -> GrantOutcome | None:
        """The answer an open approval gives this exact intent (collect the approved grant,
        or still pending), a denial when it contradicts an approval given for the same
        action and resource, or None to ask the policy."""
        digest = intent_hash(identity.subject, task_id, intent)
        parked = self.approvals.by_hash.get(digest)
        if parked is not None and parked.expires_at > now:
            if parked.state is ApprovalState.APPROVED:
                return await self._use_approval(identity, parked)
            return pending(parked)
        mismatch = self.approvals.approved_for_other_intent(task_id, intent, digest)
        if mismatch is None:
            return None
        reasons = (
            f"approval_intent_mismatch: approval {mismatch.approval_id} covers a different "
            "intent (justification or context changed after approval)",
        )
        return await self.record.denial(
            identity, task_id, intent, now, reasons, approval_id=mismatch.approval_id
        )

    async def evaluate_plan(
        self, identity: Identity, task_id: str, *, request_approvals: bool = False
    ) -> PlanEvaluation:
        """See Plans.evaluate (sidecar/engine/flows.py)."""
        return await self.plans.evaluate(identity, task_id, request_approvals=request_approvals)

    def open_approvals(self) -> list[Approval]:
        return self.approvals.listed()

    async def open_approval(
        self,
        subject: str,
        task_id: str,
        intent: Intent,
        digest: str,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> Approval:
        """An approval outside RequestGrant (an AuthZEN access request, sidecar/authzen/):
        see ApprovalDesk.open_approval."""
        return await self.approvals.open_approval(
            subject, task_id, intent, digest, requested_ttl, decision
        )

    async def decide_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str
    ) -> Approval:
        """An approver's verdict. Unknown → NOT_FOUND; decided, used or expired →
        FAILED_PRECONDITION approval_inactive (an approval is decided once)."""
        now = self.clock.now()
        approval = await self.approvals.decidable(approval_id)
        if approval.expires_at <= now:
            await self.sweep()
            raise FailedPrecondition(
                f"approval {approval_id} has expired", Reason.APPROVAL_INACTIVE
            )
        await self.approvals.decide(
            approval, now, approve=approve, approver=approver, reason=reason
        )
        return approval

    async def await_approval(
        self, identity: Identity, approval_id: str, wait: float
    ) -> GrantOutcome:
        """Wait up to `wait` seconds for a verdict; an approval yields one JIT grant. Another
        identity's approval is NOT_FOUND, as an unknown one is."""
        approval = self.approvals.get(approval_id)
        if approval is None or approval.subject != identity.subject:
            stored = await self.store.get_approval(approval_id)
            if stored is None or stored.subject != identity.subject:
                raise NotFound(f"no approval {approval_id}", Reason.APPROVAL_NOT_FOUND)
            return settled(stored)
        if approval.state is ApprovalState.PENDING and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(approval.settled.wait(), wait)
        if approval.expires_at <= self.clock.now() and approval.open:
            await self.sweep()  # expiry is the clock's, not the sweeper's timing
            return settled(approval)
        if approval.state is ApprovalState.APPROVED:
            return await self._use_approval(identity, approval)
        if approval.state is ApprovalState.PENDING:
            return pending(approval)
        return settled(approval)

    async def _use_approval(self, identity: Identity, approval: Approval) -> GrantOutcome:
        task = self.live.tasks.get(approval.task_id)
        if task is None:
            stored = await self.store.get_task(approval.task_id)
            if stored is not None and not stored.active:
                raise self._tasks.ended(stored)
            raise FailedPrecondition(f"task {approval.task_id} has ended", Reason.TASK_INACTIVE)
        check_grant_room(task, self.settings.max_grants_per_task)  # before the approval is used up
        if self.fleet is not None:
            self.fleet.check_issuable()  # before the approval is used up
        self.approvals.close(approval, ApprovalState.USED)
        # The task may have gone on since the person approved (the flow rules: a task frozen
        # for probing meanwhile): a policy that now denies the intent outright has the last
        # word, and the approval is used up. Asked after it is closed: collected once.
        now = self.clock.now()
        try:
            current = await self._decide(
                identity, approval.intent, task, approval.requested_ttl, now
            )
        except PolicyError:
            self.approvals.reopen_approved(approval)  # no answer: it can still be collected
            raise
        if not current.allow:
            await flows.audit_flagged(self.journal, identity, task, approval.intent, current, now)
            return await self.record.denial(
                identity,
                task.task_id,
                approval.intent,
                now,
                current.reasons,
                current.decision_id,
                approval_id=approval.approval_id,
            )
        try:
            return await self.issuance.issue(
                identity,
                task,
                approval.intent,
                approval.requested_ttl,
                approval.decision,
                approval_id=approval.approval_id,
            )
        except CommitError as err:
            if not err.durable:  # nothing recorded: the approval can still be collected
                self.approvals.reopen_approved(approval)
            raise

    # ================================================================== ending access
    async def revoke_grant(
        self, identity: Identity | None, grant_id: str, reason: str = ""
    ) -> tuple[bool, Grant]:
        """Revoke one grant. `identity` None means an operator (no ownership check)."""
        return await self._revoking.grant(identity, grant_id, reason)

    async def revoke_task(self, task_id: str, reason: str = "") -> int:
        """Operator: end a task (as failed) and revoke its grants."""
        check_task_ref(task_id)
        return await self._revoking.task(task_id, reason)

    async def revoke_subject(self, subject: str | None, reason: str = "") -> int:
        """Kill switch: end every task of `subject` (every task when None)."""
        return await self._revoking.subject(subject, reason)

    async def revoke_principal(self, principal: str, reason: str = "") -> int:
        """Kill switch by person: end every task acting for `principal` (its `sub`), by any
        agent, and revoke their grants."""
        return await self._revoking.principal(principal, reason)

    async def exchange_token(self, request: ExchangeRequest) -> Exchanged:
        """RFC 8693 token exchange: a narrower token from an active token of ours
        (sidecar.engine.exchange)."""
        return await self._exchange.exchange(request)

    async def sweep(self) -> int:
        """End whatever is due (grants, task deadlines, missed heartbeats, approvals)."""
        return await self.sweeper.sweep()

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        await self.sweeper.run(stop)

    def next_due(self) -> float | None:
        return self.live.due.next_due()

    # ================================================================== reading
    async def list_grants(
        self, identity: Identity, task_id: str, include_inactive: bool
    ) -> list[Grant]:
        task = await self._tasks.own(identity, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
        return await self.task_grants(task.task_id, include_inactive)

    async def task_grants(self, task_id: str, include_inactive: bool) -> list[Grant]:
        """A task's grants as the store has them, with memory's word on which are active
        (no ownership check: callers check it, or are operators)."""
        stored = await self.store.list_grants(task_id, include_inactive)
        return self.live.reconcile(stored, self.clock.now(), include_inactive)

    async def introspect(self, token: str, *, with_reason: bool = True) -> Introspection:
        """RFC 7662: active only for a token we signed whose grant is active right now."""
        return await introspect(
            token,
            issuer=self.settings.issuer,
            keys=self.keys,
            live=self.live,
            store=self.store,
            fleet=self.fleet,
            clock=self.clock,
            with_reason=with_reason,
        )

    def task(self, task_id: str) -> Task | None:
        return self.live.tasks.get(task_id)

    def grant(self, grant_id: str) -> Grant | None:
        return self.live.grants.get(grant_id)

    @property
    def active_grant_count(self) -> int:
        return len(self.live.grants)

    def active_grants(self) -> Sequence[Grant]:
        return list(self.live.grants.values())

    def active_tasks(self, subject: str = "") -> list[Task]:
        """Active tasks (of `subject` when given), oldest first: the admin live view."""
        return self.live.active_tasks(subject)

    def grants_of(self, task: Task) -> list[Grant]:
        """`task`'s active grants, oldest first."""
        return self.live.grants_of(task)

    def last_exp(self, kid: str) -> float:
        return self.live.last_exp(kid)

    # ================================================================== fleet
    def fleet_targets(self, rev: Revocation) -> tuple[list[Task], list[Grant]]:
        """This sidecar's active tasks and grants a fleet revocation covers."""
        return fleet_orders.fleet_targets(self.live, rev)

    async def apply_fleet_revocation(self, rev: Revocation) -> int:
        """End here what a revocation made elsewhere in the fleet covers; returns how many
        grants (sidecar.engine.fleet)."""
        return await fleet_orders.apply_fleet_revocation(self.live, self.record, self.clock, rev)

    # ================================================================== signing keys
    async def rotate_key(self, new: SigningKey) -> tuple[str, float]:
        """Sign with `new` from now on; returns (previous kid, when it leaves the JWKS)."""
        return await self._keys.rotate(new)

    async def record_key_in_use(self, stored: Mapping[str, str] | None) -> None:
        """At start-up: record the signing key, and a rotation made while it was down."""
        await self._keys.record_in_use(stored)
