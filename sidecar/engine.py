"""The engine: the only place that knows the order of a grant.

RequestGrant: authenticate (done by the caller) → validate input → load the task (active,
owned by the caller) → ask the policy → validate the decision → TTL = min(requested, policy,
tier maximum, task remaining, global maximum) → persist and audit (one journal commit) → sign
→ return. A token leaves only after its grant is durable; any failure on the way means no
token.

The engine keeps live state — active tasks and grants — in memory and changes it
synchronously before each journal commit, so concurrent calls see a consistent picture and
the journal writes changes in the order they happened. It does no I/O of its own: the
policy, journal, store and key ring are adapters handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from .approvals import (
    Approval,
    ApprovalState,
    WebhookNotifier,
    check_four_eyes,
    intent_hash,
    owners_of,
)
from .cache import DecisionCache
from .clock import Clock, rfc3339
from .config import Config
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyError,
    Reason,
    ResourceExhausted,
    SidecarError,
)
from .journal import CommitError, Journal
from .metrics import Metrics
from .model import (
    OUTCOME_REVOCATION,
    OUTCOME_TASK_STATE,
    Grant,
    GrantState,
    Identity,
    Intent,
    Outcome,
    PolicyDecision,
    RevocationReason,
    Task,
    TaskState,
    Tier,
)
from .policy import PolicyEngine, build_input
from .revocations import FleetGate, Revocation, grant_from_claims
from .store import Snapshot, Store
from .tokens import KeyRing, SigningKey, new_grant_id
from .validation import (
    check_grant_id,
    check_intent,
    check_task_fields,
    check_task_id,
    check_ttl,
    preview,
)

log = logging.getLogger("jit_sidecar.engine")
#: Ended grants kept in memory for introspection until the store has caught up.
RECENTLY_ENDED = 4096


class _Due(IntEnum):
    GRANT_EXPIRY = 1
    TASK_DEADLINE = 2
    TASK_HEARTBEAT = 3
    APPROVAL_EXPIRY = 4


_DUE = {int(d): d for d in _Due}


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


@dataclass(frozen=True, slots=True)
class Introspection:
    active: bool
    claims: Mapping[str, Any] = field(default_factory=dict)
    grant: Grant | None = None
    revocation_reason: str = ""


@dataclass(slots=True)
class _Ended:
    """Bookkeeping for revocations made durable by one commit."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lags: list[tuple[str, float]] = field(default_factory=list)
    """(reason, trigger time) per revoked grant, for jit_revocation_lag_seconds."""


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        policy: PolicyEngine,
        keys: KeyRing,
        store: Store,
        journal: Journal,
        metrics: Metrics,
        clock: Clock,
        cache: DecisionCache | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.keys = keys
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.clock = clock
        self.cache = cache if cache is not None else DecisionCache()
        self._tasks: dict[str, Task] = {}
        self._grants: dict[str, Grant] = {}
        self._recently_ended: OrderedDict[str, Grant] = OrderedDict()
        """Grants ended in memory, newest last: introspection states their end reason even
        before the journal's commit reaches the store (bounded; see _end_grant)."""
        self._tasks_per_subject: dict[str, int] = {}
        self._due: list[tuple[float, int, int, str]] = []
        """Heap of (when, seq, kind, id). `kind` is stored as a plain int: a tuple of
        floats, ints and strs is untracked by the cyclic GC, one holding an enum member is
        not, and full collections with 100k grants took 3-4 times as long (docs/performance.md)."""
        self._due_seq = 0
        self._wakeup = asyncio.Event()
        self._last_exp_by_kid: dict[str, float] = {}
        self._tier_max = {Tier.STANDING: config.max_ttl, Tier.JIT: config.max_ttl_jit}
        self._retries: set[asyncio.Task[None]] = set()
        self._approvals: dict[str, Approval] = {}
        """Open approvals (pending or approved, not yet used or expired)."""
        self._approval_by_hash: dict[str, Approval] = {}
        self._open_per_task: dict[str, int] = {}
        """Open approvals by task id (bounded by max_open_approvals_per_task)."""
        self._deciding: set[str] = set()
        """Approvals whose decision is being written to the audit log."""
        self.notifier: WebhookNotifier | None = None
        self.on_policy_unavailable: Callable[[PolicyError], None] | None = None
        """Called when OPA could not be reached, so health flips to NOT_SERVING at once."""
        self.fleet: FleetGate | None = None
        """Set when state is shared with a fleet (docs/scale-out.md): consulted to issue,
        to introspect other sidecars' tokens, and told of revocations made elsewhere."""
        # Metric children bound once: `.labels()` validates and locks on every call, which
        # is measurable on the grant path and in sweeps of thousands of grants.
        self._granted = {
            t: metrics.grant_requests.labels(decision="granted", tier=t.value) for t in Tier
        }
        self._active = {t: metrics.active_grants.labels(tier=t.value) for t in Tier}
        self._revoked = {r: metrics.revocations.labels(reason=r.value) for r in RevocationReason}
        self._cache_hit = metrics.policy_cache.labels(result="hit")
        self._cache_miss = metrics.policy_cache.labels(result="miss")

    # ================================================================== start-up
    def restore(self, snapshot: Snapshot) -> None:
        """Take over the live state a store loaded at start-up."""
        for task in snapshot.tasks:
            self._tasks[task.task_id] = task
            self._tasks_per_subject[task.subject] = self._tasks_per_subject.get(task.subject, 0) + 1
            self._schedule_task(task)
        for grant in snapshot.grants:
            if grant.task_id not in self._tasks:
                # Nothing should leave a grant active in an ended task; if a crash window did,
                # it stays active (its token may be in use) until its exp, and is reported.
                log.warning("active grant %s of ended task %s", grant.grant_id, grant.task_id)
            self._grants[grant.grant_id] = grant
            self._push(grant.expires_at, _Due.GRANT_EXPIRY, grant.grant_id)
            self._active[grant.tier].inc()
        self._last_exp_by_kid = dict(snapshot.last_exp_by_kid)
        for approval in snapshot.approvals:
            self._open_approval(approval)
        self.metrics.active_tasks.set(len(self._tasks))

    # ================================================================== tasks
    async def begin_task(
        self,
        identity: Identity,
        *,
        task_id: str,
        goal: str,
        max_duration: int,
        labels: Mapping[str, str],
        pop_jkt: str = "",
    ) -> Task:
        try:
            return await self._begin_task(identity, task_id, goal, max_duration, labels, pop_jkt)
        except SidecarError as err:
            await self._record_rejection("BeginTask", identity, err, task_id=task_id)
            raise

    async def _begin_task(
        self,
        identity: Identity,
        task_id: str,
        goal: str,
        max_duration: int,
        labels: Mapping[str, str],
        pop_jkt: str,
    ) -> Task:
        cfg = self.config
        check_task_fields(goal, labels)
        if max_duration > cfg.max_task_duration:
            raise InvalidArgument(
                f"max_duration_seconds {max_duration} exceeds the limit of {cfg.max_task_duration}",
                Reason.INVALID_TASK,
            )
        if task_id:
            check_task_id(task_id)
            if task_id in self._tasks or await self.store.get_task(task_id) is not None:
                raise AlreadyExists(f"task {task_id} already exists", Reason.TASK_EXISTS)
        else:
            task_id = "t-" + new_grant_id()
        if task_id in self._tasks:  # a concurrent BeginTask with the same id won the race
            raise AlreadyExists(f"task {task_id} already exists", Reason.TASK_EXISTS)
        if self._tasks_per_subject.get(identity.subject, 0) >= cfg.max_tasks_per_identity:
            raise ResourceExhausted(
                f"this identity already has {cfg.max_tasks_per_identity} active tasks",
                Reason.TOO_MANY_TASKS,
            )
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
        )
        self._add_task(task)
        event = _event(
            "task_begun",
            now,
            task_id=task_id,
            subject=identity.subject,
            goal=goal,
            labels=dict(labels),
            expires_at=rfc3339(task.deadline),
            heartbeat_interval_seconds=task.heartbeat_interval,
            pop_jkt=pop_jkt or None,
            identity_method=identity.method,
        )
        await _to_completion(self._commit_task_begun(task, event))
        log.info("task begun", extra={"task_id": task_id})
        return task

    async def _commit_task_begun(self, task: Task, event: dict[str, Any]) -> None:
        try:
            await self.journal.commit([event])
        except CommitError as err:
            if not err.durable:
                self._drop_task(task)  # nothing recorded: the task must not exist
            raise

    async def heartbeat(self, identity: Identity, task_id: str) -> Task:
        try:
            task = await self._active_task(identity, task_id)
        except SidecarError as err:
            await self._record_rejection("Heartbeat", identity, err, task_id=task_id)
            raise
        now = self.clock.now()
        if now >= task.deadline:
            await self.sweep()
            raise FailedPrecondition(f"task {task_id} passed its deadline", Reason.TASK_INACTIVE)
        task.last_heartbeat = now
        self.journal.touch(task_id, now)
        return task

    async def complete_task(
        self, identity: Identity, task_id: str, outcome: Outcome, detail: str = ""
    ) -> tuple[Task, int]:
        triggered = self.clock.now()
        try:
            task = await self._active_task(identity, task_id)
        except SidecarError as err:
            await self._record_rejection("CompleteTask", identity, err, task_id=task_id)
            raise
        ended = _Ended()
        count = self._end_task(
            task,
            OUTCOME_TASK_STATE[outcome],
            OUTCOME_REVOCATION[outcome],
            triggered,
            ended,
            detail=detail,
        )
        await self._commit_revocations(ended)
        return task, count

    async def _active_task(self, identity: Identity, task_id: str) -> Task:
        """The caller's active task, or the precise error saying why not."""
        check_task_id(task_id)
        task = self._tasks.get(task_id)
        if task is None:
            stored = await self.store.get_task(task_id)
            if stored is None:
                raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
            if stored.subject != identity.subject:
                raise PermissionDenied(f"task {task_id} belongs to another identity")
            if stored.state is TaskState.ACTIVE:
                # Live state holds every active task this sidecar serves: an active task in
                # the store is another sidecar's (fleet) or is ending right now.
                raise FailedPrecondition(
                    f"task {task_id} is not served by this sidecar", Reason.TASK_INACTIVE
                )
            raise FailedPrecondition(
                f"task {task_id} has ended ({stored.state.value})", Reason.TASK_INACTIVE
            )
        if task.subject != identity.subject:
            raise PermissionDenied(f"task {task_id} belongs to another identity")
        return task

    # ================================================================== grants
    async def request_grant(
        self, identity: Identity, task_id: str, intent: Intent, ttl_seconds: int
    ) -> GrantOutcome:
        try:
            return await self._request_grant(identity, task_id, intent, ttl_seconds)
        except PolicyError:
            self.metrics.grant_requests.labels(decision="error", tier="").inc()
            raise
        except SidecarError as err:
            self.metrics.grant_requests.labels(decision="error", tier="").inc()
            await self._record_rejection(
                "RequestGrant", identity, err, task_id=task_id, intent=intent
            )
            raise

    async def _request_grant(
        self, identity: Identity, task_id: str, intent: Intent, ttl_seconds: int
    ) -> GrantOutcome:
        cfg = self.config
        check_intent(intent.action, intent.resource, intent.justification, intent.context)
        check_ttl(ttl_seconds, cfg.max_requested_ttl)
        task = await self._active_task(identity, task_id)
        now = self.clock.now()
        if now >= task.deadline:
            await self.sweep()
            raise FailedPrecondition(f"task {task_id} passed its deadline", Reason.TASK_INACTIVE)
        self._check_grant_room(task)

        if self._approvals:  # an open approval may already cover (or contradict) this intent
            settled = await self._approval_shortcut(identity, task_id, intent, now)
            if settled is not None:
                return settled

        decision = await self._decide(identity, intent, task, ttl_seconds, now)

        if not decision.allow:
            return await self._deny(
                identity, task_id, intent, now, decision.reasons, decision_id=decision.decision_id
            )
        if decision.approval_required:
            return await self._park(identity, task, intent, ttl_seconds, decision)
        return await self._issue(identity, task, intent, ttl_seconds, decision)

    async def _decide(
        self, identity: Identity, intent: Intent, task: Task, ttl: int, now: float
    ) -> PolicyDecision:
        key = self.cache.key(identity, intent, task.labels)
        cached = self.cache.get(key)
        if cached is not None:
            self._cache_hit.inc()
            return cached
        grants = [self._grants[g] for g in task.grant_ids if g in self._grants]
        policy_input = build_input(identity, intent, task, grants, ttl, now)
        started = time.perf_counter()
        try:
            decision = await self.policy.decide(policy_input)
        except PolicyError as err:
            self.metrics.policy_errors.labels(reason=err.reason.value, cause=err.cause).inc()
            if err.reason is Reason.POLICY_UNAVAILABLE and self.on_policy_unavailable:
                self.on_policy_unavailable(err)
            log.error(
                "policy error: %s",
                err.message,
                extra={"reason": err.reason.value, "task_id": task.task_id, "cause": err.cause},
            )
            try:
                await self.journal.commit(
                    [
                        _event(
                            "policy_error",
                            now,
                            task_id=task.task_id,
                            subject=identity.subject,
                            intent=intent.as_input(),
                            reason=err.reason.value,
                            cause=err.cause,
                        )
                    ]
                )
            except CommitError:
                log.error("policy_error record could not be written")
            raise
        finally:
            self.metrics.policy_eval.observe(time.perf_counter() - started)
        if decision.cache_seconds:
            self._cache_miss.inc()
            self.cache.put(key, decision)
        return decision

    def _check_grant_room(self, task: Task) -> None:
        """Refuse another grant in a task already holding `max_grants_per_task`. Checked on
        arrival and again, with no await in between, right before a grant is added: requests
        decided concurrently would otherwise all pass the first check."""
        limit = self.config.max_grants_per_task
        if len(task.grant_ids) >= limit:
            raise ResourceExhausted(
                f"task {task.task_id} already holds {limit} active grants",
                Reason.TOO_MANY_GRANTS,
            )

    def _ttl(
        self, requested: int, decision: PolicyDecision, task: Task, now: float
    ) -> tuple[int, str]:
        """The lifetime and what limited it: never wider than any of the bounds."""
        assert decision.tier is not None
        bounds = (
            (requested, "requested"),
            (decision.ttl_seconds, "policy"),
            (self._tier_max[decision.tier], "tier_max"),
            (int(task.deadline - now), "task_remaining"),
            (self.config.max_ttl, "global_max"),
        )
        return min(bounds)

    async def _issue(
        self,
        identity: Identity,
        task: Task,
        intent: Intent,
        requested_ttl: int,
        decision: PolicyDecision,
        approval_id: str = "",
    ) -> GrantOutcome:
        assert decision.tier is not None
        if not task.active:  # the task ended while the policy was deciding
            raise FailedPrecondition(f"task {task.task_id} has ended", Reason.TASK_INACTIVE)
        self._check_grant_room(task)
        if self.fleet is not None:
            self.fleet.check_issuable()  # the fleet could not see this grant: none is issued
        now = self.clock.now()
        ttl, limited_by = self._ttl(requested_ttl, decision, task, now)
        if ttl < 1:
            raise FailedPrecondition(
                f"task {task.task_id} has less than a second left", Reason.TASK_INACTIVE
            )
        iat = int(now)
        exp = iat + ttl
        key = self.keys.current
        grant = Grant(
            grant_id=new_grant_id(),
            task_id=task.task_id,
            subject=identity.subject,
            # Agents repeat intents: interning shares one string between the live grants
            # of the same action/resource/audience (~180 bytes a grant). Interned strings
            # are freed with their last grant.
            action=sys.intern(intent.action),
            resource=sys.intern(intent.resource),
            tier=decision.tier,
            audience=sys.intern(decision.audience),
            scope=decision.scope,
            issued_at=now,
            expires_at=float(exp),
            kid=key.kid,
            decision_id=decision.decision_id,
            cnf_jkt=task.pop_jkt,
        )
        self._add_grant(task, grant)
        token = self._sign(key, grant, iat)
        event = _event(
            "grant_issued",
            now,
            task_id=task.task_id,
            grant_id=grant.grant_id,
            subject=identity.subject,
            intent=intent.as_input(),
            decision_id=decision.decision_id or None,
            tier=decision.tier.value,
            scope=list(decision.scope),
            audience=decision.audience,
            ttl_seconds=ttl,
            ttl_limited_by=limited_by,
            expires_at=rfc3339(exp),
            reasons=list(decision.reasons),
            kid=key.kid,
            cnf_jkt=task.pop_jkt or None,
            cached=decision.cached or None,
            approval_id=approval_id or None,
        )
        try:
            await self.journal.commit([event])
        except CommitError as err:
            await self._abort_issue(grant, err)
            raise
        if grant.state is not GrantState.ACTIVE:
            # Revoked (task completed or operator) while the commit was in flight.
            raise FailedPrecondition(
                f"grant {grant.grant_id} was revoked before it could be returned",
                Reason.TASK_INACTIVE,
            )
        self._granted[decision.tier].inc()
        self.metrics.grant_ttl.observe(ttl)
        log.info(
            "grant issued: %s %s for %d s",
            intent.action,
            preview(intent.resource, 128),
            ttl,
            extra={
                "task_id": task.task_id,
                "grant_id": grant.grant_id,
                "decision_id": decision.decision_id or None,
                "tier": decision.tier.value,
                "kid": key.kid,
            },
        )
        return GrantOutcome(
            "granted",
            grant=grant,
            token=token,
            reasons=decision.reasons,
            decision_id=decision.decision_id,
        )

    def _sign(self, key: SigningKey, grant: Grant, iat: int) -> str:
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "sub": grant.subject,
            "client_id": grant.subject,
            "aud": grant.audience,
            "iat": iat,
            "nbf": iat,
            "exp": int(grant.expires_at),
            "jti": grant.grant_id,
            "scope": " ".join(grant.scope),
            "authorization_details": [
                {"type": "jit_intent", "actions": [grant.action], "locations": [grant.resource]}
            ],
            "txn": grant.task_id,
            "tier": grant.tier.value,
        }
        if grant.cnf_jkt:
            claims["cnf"] = {"jkt": grant.cnf_jkt}
        if grant.expires_at > self._last_exp_by_kid.get(key.kid, 0.0):
            self._last_exp_by_kid[key.kid] = grant.expires_at
        return key.sign(claims)

    async def _abort_issue(self, grant: Grant, err: CommitError) -> None:
        """Undo an issuance whose commit failed; the token is never returned."""
        task = self._tasks.get(grant.task_id)
        if grant.state is GrantState.ACTIVE:
            self._forget_grant(grant, task)
        if err.durable:
            # The audit log says "issued" but the store failed: record that it never left.
            try:
                await self.journal.commit(
                    [
                        _event(
                            "grant_revoked",
                            self.clock.now(),
                            task_id=grant.task_id,
                            grant_id=grant.grant_id,
                            subject=grant.subject,
                            tier=grant.tier.value,
                            reason=RevocationReason.ISSUE_ABORTED.value,
                        )
                    ]
                )
            except CommitError:
                log.error("could not record the aborted issue of %s", grant.grant_id)

    async def revoke_grant(
        self, identity: Identity | None, grant_id: str, reason: str = ""
    ) -> tuple[bool, Grant]:
        """Revoke one grant. `identity` None means an operator (no ownership check)."""
        triggered = self.clock.now()
        check_grant_id(grant_id)
        grant = self._grants.get(grant_id)
        if grant is None:
            stored = await self.store.get_grant(grant_id)
            if stored is None and identity is None and self.fleet is not None:
                return True, await self._order_grant_revocation(grant_id, reason)
            if stored is None:
                raise NotFound(f"no grant {grant_id}", Reason.GRANT_NOT_FOUND)
            if identity is not None and stored.subject != identity.subject:
                raise PermissionDenied(f"grant {grant_id} belongs to another identity")
            return False, stored
        if identity is not None and grant.subject != identity.subject:
            raise PermissionDenied(f"grant {grant_id} belongs to another identity")
        why = (
            RevocationReason.REVOKED_BY_AGENT
            if identity is not None
            else RevocationReason.REVOKED_BY_OPERATOR
        )
        ended = _Ended()
        self._end_grant(grant, GrantState.REVOKED, why, triggered, ended, detail=reason)
        await self._commit_revocations(ended)
        return True, grant

    async def revoke_task(self, task_id: str, reason: str = "") -> int:
        """Operator: end a task (as failed) and revoke its grants."""
        triggered = self.clock.now()
        check_task_id(task_id)
        task = self._tasks.get(task_id)
        if task is None:
            stored = await self.store.get_task(task_id)
            if stored is None:
                raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
            if self.fleet is not None and stored.active:
                return await self._order_task_revocation(stored, reason)
            return 0
        ended = _Ended()
        count = self._end_task(
            task,
            TaskState.FAILED,
            RevocationReason.REVOKED_BY_OPERATOR,
            triggered,
            ended,
            detail=reason,
        )
        await self._commit_revocations(ended)
        return count

    async def revoke_subject(self, subject: str | None, reason: str = "") -> int:
        """Kill switch: end every task of `subject` (every task when None)."""
        triggered = self.clock.now()
        ended = _Ended()
        count = 0
        if self.fleet is not None:
            # Every token of `subject` issued until now is inactive on every sidecar.
            ended.events.append(
                self._order_event(
                    "all" if subject is None else "subject",
                    subject or "",
                    triggered,
                    triggered + self.config.max_ttl,
                    RevocationReason.KILL_SWITCH,
                    reason,
                )
            )
        for task in list(self._tasks.values()):
            if subject is None or task.subject == subject:
                count += self._end_task(
                    task,
                    TaskState.FAILED,
                    RevocationReason.KILL_SWITCH,
                    triggered,
                    ended,
                    detail=reason,
                )
        await self._commit_revocations(ended)
        return count

    async def list_grants(
        self, identity: Identity, task_id: str, include_inactive: bool
    ) -> list[Grant]:
        check_task_id(task_id)
        task = self._tasks.get(task_id) or await self.store.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}", Reason.TASK_NOT_FOUND)
        if task.subject != identity.subject:
            raise PermissionDenied(f"task {task_id} belongs to another identity")
        return await self.task_grants(task_id, include_inactive)

    async def task_grants(self, task_id: str, include_inactive: bool) -> list[Grant]:
        """A task's grants as the store has them, with memory's word on which are active
        (no ownership check: callers check it, or are operators)."""
        now = self.clock.now()
        out = []
        for grant in await self.store.list_grants(task_id, include_inactive):
            if grant.grant_id in self._grants:
                grant.state = GrantState.ACTIVE  # memory is authoritative for live grants
            elif grant.state is GrantState.ACTIVE:
                # Ended in memory; the store catches up with the journal's next commit.
                grant.state = GrantState.EXPIRED if grant.expires_at <= now else GrantState.REVOKED
            if include_inactive or grant.state is GrantState.ACTIVE:
                out.append(grant)
        return out

    # ================================================================== introspection
    async def introspect(self, token: str, *, with_reason: bool = True) -> Introspection:
        """RFC 7662: active only for a token we signed whose grant is active right now."""
        if not token or len(token) > 16384:
            return Introspection(False)
        now = self.clock.now()
        claims = self.keys.verify(token, issuer=self.config.issuer, now=now)
        foreign = False
        if claims is None and self.fleet is not None:
            claims = await self.fleet.verify(token, issuer=self.config.issuer, now=now)
            foreign = claims is not None
        if claims is None:
            return Introspection(False)
        jti = claims.get("jti")
        if not isinstance(jti, str):
            return Introspection(False)
        if self.fleet is not None:
            barred = self.fleet.barred(claims, now)
            if barred:
                return Introspection(False, revocation_reason=barred if with_reason else "")
            if foreign:
                return self._introspect_foreign(claims, now, with_reason)
        grant = self._grants.get(jti)
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if (
            grant is not None
            and grant.is_active(now)
            and isinstance(exp, int)
            and isinstance(nbf, int)
            and nbf <= now < exp
            and claims.get("sub") == grant.subject
            and claims.get("txn") == grant.task_id
        ):
            return Introspection(True, claims, grant)
        reason = ""
        if with_reason:
            stored = grant or self._recently_ended.get(jti) or await self.store.get_grant(jti)
            if stored is not None:
                reason = stored.end_reason or (
                    "expired" if stored.expires_at <= now else stored.state.value
                )
        return Introspection(False, revocation_reason=reason)

    # ================================================================== fleet
    @staticmethod
    def _introspect_foreign(
        claims: Mapping[str, Any], now: float, with_reason: bool
    ) -> Introspection:
        """A token another sidecar of the fleet signed and nobody revoked: active while
        its time claims say so."""
        grant = grant_from_claims(claims)
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if grant is None or not isinstance(exp, int) or not isinstance(nbf, int):
            return Introspection(False)
        if nbf <= now < exp:
            return Introspection(True, claims, grant)
        return Introspection(False, revocation_reason="expired" if with_reason else "")

    def fleet_targets(self, rev: Revocation) -> tuple[list[Task], list[Grant]]:
        """This sidecar's active tasks and grants a fleet revocation covers."""
        if rev.scope == "grant":
            grant = self._grants.get(rev.target)
            return [], [grant] if grant is not None else []
        if rev.scope == "task":
            task = self._tasks.get(rev.target)
            return [task] if task is not None else [], []
        everyone = rev.scope == "all"
        tasks = [
            t
            for t in self._tasks.values()
            if (everyone or t.subject == rev.target) and t.started_at <= rev.cutoff
        ]
        ending = {t.task_id for t in tasks}
        grants = [
            g
            for g in self._grants.values()
            if (everyone or g.subject == rev.target)
            and int(g.issued_at) <= rev.cutoff  # the token's iat, as every view compares it
            and g.task_id not in ending
        ]
        return tasks, grants

    async def apply_fleet_revocation(self, rev: Revocation) -> int:
        """End what a revocation made elsewhere in the fleet covers here (kill switch,
        operator revoke on another sidecar), audited locally with its origin, so this
        sidecar's state and audit log agree with the fleet. Returns how many grants."""
        tasks, grants = self.fleet_targets(rev)
        if not tasks and not grants:
            return 0
        try:
            why = RevocationReason(rev.reason)
        except ValueError:
            why = RevocationReason.REVOKED_BY_OPERATOR
        now = self.clock.now()
        triggered = min(rev.cutoff, now) if rev.cutoff else now
        detail = f"from {rev.origin}" + (f": {rev.detail}" if rev.detail else "")
        ended = _Ended()
        count = 0
        for task in tasks:
            if task.active:
                count += self._end_task(task, TaskState.FAILED, why, triggered, ended, detail)
        for grant in grants:
            if grant.state is GrantState.ACTIVE and grant.grant_id in self._grants:
                self._end_grant(grant, GrantState.REVOKED, why, triggered, ended, detail)
                count += 1
        for event in ended.events:
            event["origin"] = rev.origin
        log.warning(
            "ended %d grants on a %s revocation from %s",
            count,
            rev.scope,
            rev.origin,
            extra={"reason": why.value, "count": count},
        )
        await self._commit_revocations(ended)
        return count

    def _order_event(
        self,
        scope: str,
        target: str,
        cutoff: float,
        expires_at: float,
        reason: RevocationReason,
        detail: str,
    ) -> dict[str, Any]:
        """An operator's fleet-wide revocation, for the store to publish."""
        return _event(
            "revocation_ordered",
            self.clock.now(),
            scope=scope,
            grant_id=target if scope == "grant" else None,
            task_id=target if scope == "task" else None,
            subject=target if scope == "subject" else None,
            cutoff=rfc3339(cutoff) if scope != "grant" else None,
            revocation_expires_at=rfc3339(expires_at),
            reason=reason.value,
            detail=preview(detail, 512) if detail else None,
        )

    async def _order_grant_revocation(self, grant_id: str, detail: str) -> Grant:
        """Operator: revoke a grant this sidecar never issued; its issuer, wherever it is,
        ends and audits it, and every sidecar refuses the token meanwhile."""
        now = self.clock.now()
        expires = now + self.config.max_ttl  # the grant's own expiry is its issuer's to know
        why = RevocationReason.REVOKED_BY_OPERATOR
        await self.journal.commit([self._order_event("grant", grant_id, now, expires, why, detail)])
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
            end_reason=why.value,
            ended_at=now,
        )

    async def _order_task_revocation(self, task: Task, detail: str) -> int:
        """Operator: end another sidecar's task fleet-wide; returns its active grants."""
        now = self.clock.now()
        why = RevocationReason.REVOKED_BY_OPERATOR
        expires = max(task.deadline, now + 1.0)  # no token of the task outlives its deadline
        await self.journal.commit(
            [self._order_event("task", task.task_id, now, expires, why, detail)]
        )
        return len(task.grant_ids)

    # ================================================================== expiry sweeper
    def _push(self, when: float, kind: _Due, ident: str) -> None:
        self._due_seq += 1
        heapq.heappush(self._due, (when, self._due_seq, int(kind), ident))
        if self._due[0][1] == self._due_seq:
            self._wakeup.set()

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    async def sweep(self) -> int:
        """End whatever is due: expired grants, tasks past their deadline, tasks whose
        heartbeats stopped. One pass over the due heap; O(k log n) for k due items."""
        now = self.clock.now()
        ended = _Ended()
        count = 0
        misses = self.config.heartbeat_misses
        while self._due and self._due[0][0] <= now:
            _, _, due, ident = heapq.heappop(self._due)
            kind = _DUE[due]
            if kind is _Due.GRANT_EXPIRY:
                grant = self._grants.get(ident)
                if grant is not None and grant.state is GrantState.ACTIVE:
                    if grant.expires_at <= now:
                        self._end_grant(
                            grant,
                            GrantState.EXPIRED,
                            RevocationReason.EXPIRED,
                            grant.expires_at,
                            ended,
                        )
                        count += 1
                    else:  # clock went backwards since it was scheduled
                        self._push(grant.expires_at, kind, ident)
                continue
            if kind is _Due.APPROVAL_EXPIRY:
                approval = self._approvals.get(ident)
                if approval is not None and approval.expires_at <= now:
                    self._expire_approval(approval, now, ended)
                continue
            task = self._tasks.get(ident)
            if task is None or not task.active:
                continue
            if kind is _Due.TASK_DEADLINE:
                if task.deadline <= now:
                    count += self._end_task(
                        task, TaskState.EXPIRED, RevocationReason.TASK_EXPIRED, task.deadline, ended
                    )
                else:
                    self._push(task.deadline, kind, ident)
            else:
                deadline = task.heartbeat_deadline(misses)
                if deadline <= now:
                    count += self._end_task(
                        task, TaskState.CRASHED, RevocationReason.AGENT_LOST, deadline, ended
                    )
                else:
                    self._push(deadline, kind, ident)
        # Retired signing keys leave the JWKS once their last token has expired.
        self.keys.drop_expired(now)
        if ended.events:
            await self._commit_revocations(ended)
        return count

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = self.next_due()
            delay = self.config.sweep_interval
            if due is not None:
                delay = min(delay, max(0.0, due - self.clock.now()))
            self._wakeup.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())]
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if stop.is_set():
                return
            try:
                await self.sweep()
            except CommitError as err:
                log.error("sweep could not commit: %s (retrying)", err.message)
            except Exception:
                log.exception("sweep failed")

    # ================================================================== live state
    def _add_task(self, task: Task) -> None:
        self._tasks[task.task_id] = task
        self._tasks_per_subject[task.subject] = self._tasks_per_subject.get(task.subject, 0) + 1
        self.metrics.active_tasks.set(len(self._tasks))
        self._schedule_task(task)

    def _schedule_task(self, task: Task) -> None:
        self._push(task.deadline, _Due.TASK_DEADLINE, task.task_id)
        self._push(
            task.heartbeat_deadline(self.config.heartbeat_misses), _Due.TASK_HEARTBEAT, task.task_id
        )

    def _drop_task(self, task: Task) -> None:
        if self._tasks.pop(task.task_id, None) is not None:
            left = self._tasks_per_subject.get(task.subject, 1) - 1
            if left:
                self._tasks_per_subject[task.subject] = left
            else:
                self._tasks_per_subject.pop(task.subject, None)
        self.metrics.active_tasks.set(len(self._tasks))

    def _add_grant(self, task: Task, grant: Grant) -> None:
        self._grants[grant.grant_id] = grant
        task.grant_ids.append(grant.grant_id)
        self._push(grant.expires_at, _Due.GRANT_EXPIRY, grant.grant_id)
        self._active[grant.tier].inc()

    def _forget_grant(self, grant: Grant, task: Task | None) -> None:
        if self._grants.pop(grant.grant_id, None) is not None:
            self._active[grant.tier].dec()
        if task is not None:
            # One scan of the task's list instead of two (`in`, then remove): this was the
            # largest per-grant cost of a sweep in tasks holding many grants.
            with contextlib.suppress(ValueError):
                task.grant_ids.remove(grant.grant_id)

    def _end_grant(
        self,
        grant: Grant,
        state: GrantState,
        reason: RevocationReason,
        triggered: float,
        ended: _Ended,
        detail: str = "",
    ) -> None:
        now = self.clock.now()
        grant.state = state
        grant.end_reason = reason.value
        grant.ended_at = now
        self._forget_grant(grant, self._tasks.get(grant.task_id))
        self._recently_ended[grant.grant_id] = grant
        if len(self._recently_ended) > RECENTLY_ENDED:
            self._recently_ended.popitem(last=False)
        self._revoked[reason].inc()
        ended.events.append(
            _event(
                "grant_expired" if state is GrantState.EXPIRED else "grant_revoked",
                now,
                task_id=grant.task_id,
                grant_id=grant.grant_id,
                subject=grant.subject,
                tier=grant.tier.value,
                reason=reason.value,
                detail=preview(detail, 512) if detail else None,
            )
        )
        ended.lags.append((reason.value, triggered))

    def _end_task(
        self,
        task: Task,
        state: TaskState,
        reason: RevocationReason,
        triggered: float,
        ended: _Ended,
        detail: str = "",
    ) -> int:
        """Mark a task ended and revoke its grants (in memory); returns how many."""
        grants = [self._grants[g] for g in list(task.grant_ids) if g in self._grants]
        for grant in grants:
            self._end_grant(grant, GrantState.REVOKED, reason, triggered, ended)
        now = self.clock.now()
        task.state = state
        task.ended_at = now
        task.end_reason = reason.value
        self._drop_task(task)
        for approval in [a for a in self._approvals.values() if a.task_id == task.task_id]:
            # An approval is only ever collected inside its task: it ends with the task.
            self._expire_approval(approval, now, ended, reason="task_ended")
        ended.events.append(
            _event(
                "task_completed",
                now,
                task_id=task.task_id,
                subject=task.subject,
                state=state.value,
                reason=reason.value,
                detail=preview(detail, 512) if detail else None,
                revoked_grants=len(grants),
            )
        )
        return len(grants)

    async def _commit_revocations(self, ended: _Ended) -> None:
        """Make revocations durable. They already hold in memory (fail closed) whatever
        happens; when the audit log is down they are retried until it is back."""
        if not ended.events:
            return
        # The commit runs on its own: a caller cancelled meanwhile (deadline, client gone)
        # must not take the retry with it, or a revocation that holds in memory would
        # never reach the audit log and would be undone by the next restart.
        commit = asyncio.ensure_future(self.journal.commit(ended.events))
        commit.add_done_callback(lambda done: self._retry_if_lost(done, ended.events))
        try:
            await asyncio.shield(commit)
        except CommitError as err:
            if err.durable:
                return  # in the audit log; the store catches up on its next write or replay
            raise
        done = self.clock.now()
        for event in ended.events:
            name = event["event"]
            if name == "task_completed":
                log.info(
                    "task ended (%s)",
                    event["state"],
                    extra={"task_id": event["task_id"], "reason": event["reason"]},
                )
            elif name in ("grant_revoked", "grant_expired"):
                log.log(
                    logging.DEBUG if name == "grant_expired" else logging.INFO,
                    "%s",
                    name.replace("_", " "),
                    extra={
                        "task_id": event["task_id"],
                        "grant_id": event["grant_id"],
                        "reason": event["reason"],
                    },
                )
        for reason, triggered in ended.lags:
            self.metrics.revocation_lag.labels(reason=reason).observe(max(0.0, done - triggered))

    def _retry_if_lost(self, commit: asyncio.Future[None], events: list[dict[str, Any]]) -> None:
        if commit.cancelled():
            return
        err = commit.exception()
        if isinstance(err, CommitError) and not err.durable:
            self._retry_later(events)

    def _retry_later(self, events: list[dict[str, Any]]) -> None:
        async def retry() -> None:
            delay = 0.5
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.journal.commit(events)
                    log.info("%d revocation records written after retry", len(events))
                    return
                except CommitError as err:
                    if err.durable:
                        return
                    delay = min(delay * 2, 10.0)

        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _record_rejection(
        self,
        rpc: str,
        identity: Identity,
        err: SidecarError,
        *,
        task_id: str = "",
        intent: Intent | None = None,
    ) -> None:
        """Audit a refused request (bad input, wrong owner, limits). Never raises."""
        if isinstance(err, CommitError | PolicyError):
            return
        self.metrics.rejected.labels(reason=err.reason.value).inc()
        event = _event(
            "request_rejected",
            self.clock.now(),
            rpc=rpc,
            task_id=preview(task_id, 128) if task_id else None,
            subject=identity.subject,
            reason=err.reason.value,
            detail=err.message,
            intent=(
                {
                    "action": preview(intent.action),
                    "resource": preview(intent.resource),
                    "justification": preview(intent.justification, 512),
                }
                if intent is not None
                else None
            ),
        )
        try:
            await self.journal.commit([event])
        except CommitError:
            log.error("could not audit a rejected %s", rpc, extra={"reason": err.reason.value})

    # ================================================================== approvals
    async def _park(
        self,
        identity: Identity,
        task: Task,
        intent: Intent,
        requested_ttl: int,
        decision: PolicyDecision,
    ) -> GrantOutcome:
        """Hold an intent that needs a human: nothing is issued until someone approves."""
        decision = replace(decision, owners=owners_of(identity, decision))
        assert decision.tier is not None
        limit = self.config.max_open_approvals_per_task
        if self._open_per_task.get(task.task_id, 0) >= limit:
            raise ResourceExhausted(
                f"task {task.task_id} already has {limit} open approval requests",
                Reason.TOO_MANY_APPROVALS,
            )
        now = self.clock.now()
        digest = intent_hash(identity.subject, task.task_id, intent)
        approval = Approval(
            approval_id="a-" + new_grant_id(),
            task_id=task.task_id,
            subject=identity.subject,
            intent=intent,
            intent_hash=digest,
            requested_ttl=requested_ttl,
            decision=decision,
            created_at=now,
            expires_at=now + self.config.approval_ttl,
        )
        self._open_approval(approval)
        event = _event(
            "grant_pending",
            now,
            approval_id=approval.approval_id,
            task_id=task.task_id,
            subject=identity.subject,
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
            },
            ttl_seconds=requested_ttl,
            expires_at=rfc3339(approval.expires_at),
        )
        await _to_completion(self._commit_parked(approval, event))
        self.metrics.grant_requests.labels(
            decision="pending_approval", tier=decision.tier.value
        ).inc()
        log.info(
            "approval requested",
            extra={"approval_id": approval.approval_id, "task_id": task.task_id},
        )
        if self.notifier is not None:
            self.notifier.notify(approval)
        return self._pending_outcome(approval)

    async def _commit_parked(self, approval: Approval, event: dict[str, Any]) -> None:
        try:
            await self.journal.commit([event])
        except CommitError as err:
            if not err.durable:
                self._close_approval(approval, ApprovalState.EXPIRED)  # never recorded
            raise

    async def _approval_shortcut(
        self, identity: Identity, task_id: str, intent: Intent, now: float
    ) -> GrantOutcome | None:
        """The answer an open approval gives this exact intent (collect the approved grant,
        or still pending), a denial when it contradicts an approval given for the same
        action and resource, or None to ask the policy."""
        digest = intent_hash(identity.subject, task_id, intent)
        parked = self._approval_by_hash.get(digest)
        if parked is not None and parked.expires_at > now:
            if parked.state is ApprovalState.APPROVED:
                return await self._use_approval(identity, parked)
            return self._pending_outcome(parked)
        mismatch = self._approved_for_other_intent(task_id, intent, digest)
        if mismatch is None:
            return None
        reasons = (
            f"approval_intent_mismatch: approval {mismatch.approval_id} covers a different "
            "intent (justification or context changed after approval)",
        )
        return await self._deny(
            identity, task_id, intent, now, reasons, approval_id=mismatch.approval_id
        )

    async def _deny(
        self,
        identity: Identity,
        task_id: str,
        intent: Intent,
        now: float,
        reasons: tuple[str, ...],
        *,
        decision_id: str = "",
        approval_id: str = "",
    ) -> GrantOutcome:
        """A denial is an answer, not an error: counted, logged and audited."""
        self.metrics.grant_requests.labels(decision="denied", tier="").inc()
        log.info(
            "grant denied: %s %s",
            intent.action,
            preview(intent.resource, 128),
            extra={
                "task_id": task_id,
                "decision_id": decision_id or None,
                "reason": reason_code(reasons),
            },
        )
        await self.journal.commit(
            [
                _event(
                    "grant_denied",
                    now,
                    task_id=task_id,
                    subject=identity.subject,
                    intent=intent.as_input(),
                    decision_id=decision_id or None,
                    approval_id=approval_id or None,
                    reasons=list(reasons),
                )
            ]
        )
        return GrantOutcome("denied", reasons=reasons, decision_id=decision_id)

    @staticmethod
    def _pending_outcome(approval: Approval) -> GrantOutcome:
        return GrantOutcome(
            "pending_approval",
            reasons=approval.decision.reasons,
            decision_id=approval.decision.decision_id,
            approval_id=approval.approval_id,
        )

    def _open_approval(self, approval: Approval) -> None:
        if approval.approval_id not in self._approvals:
            task_id = approval.task_id
            self._open_per_task[task_id] = self._open_per_task.get(task_id, 0) + 1
        self._approvals[approval.approval_id] = approval
        self._approval_by_hash[approval.intent_hash] = approval
        self._push(approval.expires_at, _Due.APPROVAL_EXPIRY, approval.approval_id)

    def _close_approval(self, approval: Approval, state: ApprovalState) -> None:
        approval.state = state
        if self._approvals.pop(approval.approval_id, None) is not None:
            left = self._open_per_task.get(approval.task_id, 1) - 1
            if left > 0:
                self._open_per_task[approval.task_id] = left
            else:
                self._open_per_task.pop(approval.task_id, None)
        if self._approval_by_hash.get(approval.intent_hash) is approval:
            del self._approval_by_hash[approval.intent_hash]
        approval.settled.set()

    def _expire_approval(
        self, approval: Approval, now: float, ended: _Ended, reason: str | None = None
    ) -> None:
        self._close_approval(approval, ApprovalState.EXPIRED)
        ended.events.append(
            _event(
                "approval_expired",
                now,
                approval_id=approval.approval_id,
                task_id=approval.task_id,
                subject=approval.subject,
                reason=reason,
            )
        )

    def _approved_for_other_intent(
        self, task_id: str, intent: Intent, digest: str
    ) -> Approval | None:
        for approval in self._approvals.values():
            if (
                approval.task_id == task_id
                and approval.state is ApprovalState.APPROVED
                and approval.intent.action == intent.action
                and approval.intent.resource == intent.resource
                and approval.intent_hash != digest
            ):
                return approval
        return None

    def open_approvals(self) -> list[Approval]:
        return sorted(self._approvals.values(), key=lambda a: a.created_at)

    async def decide_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str
    ) -> Approval:
        """An approver's verdict. Unknown → NOT_FOUND; decided, used or expired →
        FAILED_PRECONDITION approval_inactive (an approval is decided once)."""
        now = self.clock.now()
        approval = self._approvals.get(approval_id)
        if approval is None:
            stored = await self.store.get_approval(approval_id)
            if stored is None:
                raise NotFound(f"no approval {approval_id}", Reason.APPROVAL_NOT_FOUND)
            raise FailedPrecondition(
                f"approval {approval_id} is already {stored.state.value}",
                Reason.APPROVAL_INACTIVE,
            )
        if approval.expires_at <= now:
            await self.sweep()
            raise FailedPrecondition(
                f"approval {approval_id} has expired", Reason.APPROVAL_INACTIVE
            )
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
            check_four_eyes(approval, approver)
        # The approval stays pending (not collectable) until its decision is in the audit
        # log: the decision takes effect when the commit is durable, even if this caller is
        # cancelled meanwhile, and not at all when the log refused it.
        self._deciding.add(approval_id)
        commit = asyncio.ensure_future(
            self.journal.commit(
                [
                    _event(
                        "approval_decided",
                        now,
                        approval_id=approval_id,
                        task_id=approval.task_id,
                        subject=approval.subject,
                        approved=approve,
                        approver=approver,
                        reason=reason or None,
                    )
                ]
            )
        )
        commit.add_done_callback(
            lambda done: self._apply_decision(done, approval, approve, approver, reason)
        )
        await asyncio.shield(commit)
        log.info(
            "approval %s",
            "granted" if approve else "denied",
            extra={"approval_id": approval_id, "task_id": approval.task_id},
        )
        return approval

    def _apply_decision(
        self,
        commit: asyncio.Future[None],
        approval: Approval,
        approve: bool,
        approver: str,
        reason: str,
    ) -> None:
        """Make a decision effective once its record is durable (see decide_approval)."""
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
            self._close_approval(approval, ApprovalState.DENIED)

    async def await_approval(
        self, identity: Identity, approval_id: str, wait: float
    ) -> GrantOutcome:
        """Wait up to `wait` seconds for a verdict; an approval yields one JIT grant."""
        approval = self._approvals.get(approval_id)
        if approval is None:
            stored = await self.store.get_approval(approval_id)
            if stored is None or stored.subject != identity.subject:
                raise NotFound(f"no approval {approval_id}", Reason.APPROVAL_NOT_FOUND)
            return self._settled_outcome(stored)
        if approval.subject != identity.subject:
            raise PermissionDenied(f"approval {approval_id} belongs to another identity")
        if approval.state is ApprovalState.PENDING and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(approval.settled.wait(), wait)
        if approval.expires_at <= self.clock.now() and approval.open:
            await self.sweep()  # expiry is the clock's, not the sweeper's timing
            return self._settled_outcome(approval)
        if approval.state is ApprovalState.APPROVED:
            return await self._use_approval(identity, approval)
        if approval.state is ApprovalState.PENDING:
            return self._pending_outcome(approval)
        return self._settled_outcome(approval)

    @staticmethod
    def _settled_outcome(approval: Approval) -> GrantOutcome:
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

    async def _use_approval(self, identity: Identity, approval: Approval) -> GrantOutcome:
        task = self._tasks.get(approval.task_id)
        if task is None:
            raise FailedPrecondition(f"task {approval.task_id} has ended", Reason.TASK_INACTIVE)
        self._check_grant_room(task)  # before the approval is used up
        if self.fleet is not None:
            self.fleet.check_issuable()  # before the approval is used up
        self._close_approval(approval, ApprovalState.USED)
        try:
            return await self._issue(
                identity,
                task,
                approval.intent,
                approval.requested_ttl,
                approval.decision,
                approval_id=approval.approval_id,
            )
        except CommitError as err:
            if not err.durable:  # nothing recorded: the approval can still be collected
                approval.state = ApprovalState.APPROVED
                approval.settled = asyncio.Event()
                approval.settled.set()
                self._open_approval(approval)
            raise

    # ================================================================== signing keys
    async def rotate_key(self, new: SigningKey) -> tuple[str, float]:
        """Sign with `new` from now on; the previous public key stays in the JWKS until the
        last token it signed expires. Returns (previous kid, when it leaves the JWKS)."""
        old = self.keys.current
        if new.kid == old.kid:
            return old.kid, 0.0
        now = self.clock.now()
        # No await between reading the last expiry and swapping keys: no token can be
        # signed with the old key after its retirement time is fixed.
        retire_at = max(self.last_exp(old.kid), now)
        self.keys.rotate(new, retire_at)
        log.warning(
            "signing key rotated; previous key %s stays published until %s",
            old.kid,
            rfc3339(retire_at),
            extra={"kid": new.kid},
        )
        await self.journal.commit([self._key_event(now, new, old.jwk, retire_at)])
        return old.kid, retire_at

    async def record_key_in_use(self, stored: Mapping[str, str] | None) -> None:
        """At start-up: if the key file changed while the sidecar was down, keep the previous
        public key published for its outstanding tokens and record the rotation."""
        current = self.keys.current
        if stored is not None and stored.get("kid") == current.kid:
            return
        now = self.clock.now()
        retire_at = None
        if stored is not None:
            retire_at = max(self.last_exp(stored["kid"]), now)
            self.keys.publish_retired(stored, retire_at)
            log.warning(
                "the signing key changed while the sidecar was down", extra={"kid": current.kid}
            )
        await self.journal.commit([self._key_event(now, current, stored, retire_at)])

    @staticmethod
    def _key_event(
        now: float, new: SigningKey, previous: Mapping[str, str] | None, retire_at: float | None
    ) -> dict[str, Any]:
        return _event(
            "key_rotated",
            now,
            kid=new.kid,
            jwk=dict(new.jwk),
            previous_kid=previous["kid"] if previous else None,
            previous_jwk=dict(previous) if previous else None,
            retire_at=rfc3339(retire_at) if retire_at is not None else None,
        )

    # ================================================================== views
    def task(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def grant(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    @property
    def active_grant_count(self) -> int:
        return len(self._grants)

    def active_grants(self) -> Sequence[Grant]:
        return list(self._grants.values())

    def active_tasks(self, subject: str = "") -> list[Task]:
        """Active tasks (of `subject` when given), oldest first: the admin live view."""
        tasks = [t for t in self._tasks.values() if not subject or t.subject == subject]
        return sorted(tasks, key=lambda t: t.started_at)

    def grants_of(self, task: Task) -> list[Grant]:
        """`task`'s active grants, oldest first."""
        return [g for g in (self._grants.get(i) for i in task.grant_ids) if g is not None]

    def last_exp(self, kid: str) -> float:
        return self._last_exp_by_kid.get(kid, 0.0)


def reason_code(reasons: Sequence[str]) -> str:
    """The machine-readable code of the first `"<code>: <sentence>"` reason."""
    if not reasons:
        return "no_reason"
    code = reasons[0].partition(":")[0].strip()
    return code if code.replace("_", "").isalnum() and len(code) <= 64 else "unstructured"


async def _to_completion(work: Coroutine[Any, Any, None]) -> None:
    """Await `work` in its own task, shielded: a caller cancelled meanwhile (deadline,
    client gone) does not stop it, so the undo that follows a commit the audit log refused
    still happens, and memory never keeps what the log does not."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_consume_outcome)
    await asyncio.shield(task)


def _consume_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here when the caller was cancelled


def _event(name: str, now: float, **fields: Any) -> dict[str, Any]:
    """An audit record without its chain fields; None values are left out."""
    record: dict[str, Any] = {"event": name, "time": rfc3339(now)}
    for key, value in fields.items():
        if value is not None:
            record[key] = value
    return record
