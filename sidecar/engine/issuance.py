"""Issuing a grant once its decision allows it: steps 5 to 8 of the order in core.py.

TTL = min(requested, policy, tier maximum, task remaining, global maximum) → the live grant
and its signed token (`prepare`; step 6 asks the broker a decision's `credential` names for
the downstream credential, docs/brokers.md) → one journal commit of its records → the answer
(`issued`), unless the grant ended meanwhile. A commit that fails undoes the grant and
revokes its credential (`abort`). RequestGrant, an approval collected and each item of a
GrantStream batch (batch.py, which commits several prepared grants at once) share it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Set

from ..brokers.base import CredentialSpec, CredentialSpecInvalid, IssuedCredential
from ..clock import Clock, rfc3339
from ..errors import FailedPrecondition, PolicyError, Reason, SidecarError, Unavailable
from ..events import Event, GrantIssued, GrantRevoked
from ..journal import CommitError, Journal
from ..model import (
    Grant,
    GrantState,
    Identity,
    Intent,
    PolicyDecision,
    RevocationReason,
    Task,
)
from ..revocations import FleetGate
from ..tokens import KeyRing, access_token_claims, new_grant_id
from ..validation import preview
from .commits import Recorder
from .credentials import Credentials
from .delegation import actor_claim
from .limits import check_grant_room, grant_ttl
from .live import LiveState
from .outcome import GrantOutcome, Prepared
from .settings import EngineMetrics, EngineSettings
from .tasks import TaskLookup

log = logging.getLogger("jit_sidecar.engine")


class FlowMoved(Unavailable):
    """The task gained a flow label after the policy's input was built (a concurrent grant
    of the same task): the decision is not issued on; ask the policy again."""

    default_reason = Reason.POLICY_UNAVAILABLE

    @classmethod
    def of(cls, task: Task) -> FlowMoved:
        return cls(f"task {task.task_id} gained a flow label while the policy decided; ask again")


def flow_moved(task: Task, known: Set[str] | None) -> bool:
    """Does the task hold a flow label the decision's input did not (`known`: the labels
    held when it was built; None for an approval, which a person decided)? Checked with no
    await before the grant is added."""
    return known is not None and not task.flow.held_labels() <= known


class Issuance:
    def __init__(
        self,
        settings: EngineSettings,
        *,
        live: LiveState,
        keys: KeyRing,
        journal: Journal,
        metrics: EngineMetrics,
        clock: Clock,
        recorder: Recorder,
        tasks: TaskLookup,
        fleet: FleetGate | None,
        credentials: Credentials | None,
    ) -> None:
        self._settings = settings
        self._live = live
        self._keys = keys
        self._journal = journal
        self._metrics = metrics
        self._clock = clock
        self._record = recorder
        self._tasks = tasks
        self._fleet = fleet
        self.credentials = credentials

    async def credential_spec(
        self, identity: Identity, intent: Intent, task_id: str, decision: PolicyDecision, now: float
    ) -> CredentialSpec | None:
        """The decision's `credential` object as its broker validated it (None when there is
        none); a malformed one, or one naming no configured broker, is a policy error."""
        if decision.credential is None:
            return None
        try:
            if self.credentials is None:
                raise CredentialSpecInvalid("no broker is configured on this sidecar")
            return self.credentials.spec(decision, intent)
        except PolicyError as err:
            await self._record.policy_failure(err, identity, intent, task_id, now)
            raise

    async def issue(
        self,
        identity: Identity,
        task: Task,
        intent: Intent,
        requested_ttl: int,
        decision: PolicyDecision,
        approval_id: str = "",
        known: Set[str] | None = None,
    ) -> GrantOutcome:
        prepared = await self.prepare(
            identity, task, intent, requested_ttl, decision, approval_id, known
        )
        try:
            await self._journal.commit(prepared.events)
        except CommitError as err:
            await self.abort(prepared.grant, err)
            raise
        return self.issued(prepared)

    async def prepare(
        self,
        identity: Identity,
        task: Task,
        intent: Intent,
        requested_ttl: int,
        decision: PolicyDecision,
        approval_id: str = "",
        known: Set[str] | None = None,
    ) -> Prepared:
        """Everything of an issuance before its commit (steps 5-6): the live grant, its
        token (not returned until the commit), the downstream credential and the audit
        events. Only the broker is awaited; the checks are made again after it. `known`:
        the flow labels the decision's input held (FlowMoved when the task holds more)."""
        assert decision.tier is not None
        if not task.active:  # the task ended while the policy was deciding
            raise self._tasks.ended(task)
        check_grant_room(task, self._settings.max_grants_per_task)
        if self._fleet is not None:
            self._fleet.check_issuable()  # the fleet could not see this grant: none is issued
        now = self._clock.now()
        ttl, limited_by = grant_ttl(requested_ttl, decision, task, now, self._settings)
        if ttl < 1:
            raise FailedPrecondition(
                f"task {task.task_id} has less than a second left", Reason.TASK_INACTIVE
            )
        exp = int(now) + ttl
        key = self._keys.current
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
            # RFC 8693 §4.1: for a task with a principal, sub = the person, act = the agent.
            principal=task.principal.subject if task.principal is not None else "",
            actor=actor_claim(identity.subject) if task.principal is not None else None,
            flow_class=decision.flow.cls if decision.flow else "",
            flow_labels=decision.flow.labels if decision.flow else (),
        )
        # Step 6: the downstream credential, before the grant is persisted (docs/brokers.md).
        spec = await self.credential_spec(identity, intent, task.task_id, decision, now)
        issued = None
        if spec is not None:
            issued = await self._issue_credential(task, grant, spec)
            # A rotation while the broker worked: sign with the key current now, whose
            # retirement accounts for this grant (add_grant records its exp per kid).
            key = self._keys.current
            grant.kid = key.kid
        if flow_moved(task, known):
            if issued is not None and self.credentials is not None:
                self.credentials.revoke_soon([(issued.lease, "issue_aborted", task.task_id)])
            raise FlowMoved.of(task)
        self._live.add_grant(task, grant)
        if grant.flow_labels:
            task.flow.issuing[grant.grant_id] = grant.flow_labels
        token = key.sign(access_token_claims(grant, self._settings.issuer))
        event = GrantIssued(
            time=rfc3339(now),
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
            actor=dict(grant.actor) if grant.actor else None,
            flow_class=grant.flow_class or None,
            flow_labels=list(grant.flow_labels) or None,
        )
        events: list[Event] = [event]
        if issued is not None:
            assert self.credentials is not None
            events.append(self.credentials.issued_event(grant, issued.lease))
        return Prepared(grant, token, event, events, intent, decision, task, issued)

    def issued(self, prepared: Prepared) -> GrantOutcome:
        """After the commit: the grant enters its task's history (flows, engine/flows.py; an
        ended grant stays there), then the answer, unless the grant ended meanwhile."""
        grant, decision, intent = prepared.grant, prepared.decision, prepared.intent
        assert decision.tier is not None
        ttl = prepared.event.ttl_seconds or 0
        prepared.task.flow.record_grant(grant)
        if grant.state is not GrantState.ACTIVE:
            # Revoked (task completed or operator) while the commit was in flight.
            raise FailedPrecondition(
                f"grant {grant.grant_id} was revoked before it could be returned",
                Reason.TASK_INACTIVE,
            )
        self._metrics.granted(decision.tier)
        self._metrics.grant_ttl.observe(ttl)
        log.info(
            "grant issued: %s %s for %d s",
            intent.action,
            preview(intent.resource, 128),
            ttl,
            extra={
                "task_id": grant.task_id,
                "grant_id": grant.grant_id,
                "decision_id": decision.decision_id or None,
                "tier": decision.tier.value,
                "kid": grant.kid,
            },
        )
        return GrantOutcome(
            "granted",
            grant=grant,
            token=prepared.token,
            reasons=decision.reasons,
            decision_id=decision.decision_id,
            justification=intent.justification,
            credential=prepared.credential,
        )

    async def _issue_credential(
        self, task: Task, grant: Grant, spec: CredentialSpec
    ) -> IssuedCredential:
        """Have the broker make the credential; `grant.lease` holds it afterwards. The
        checks made before the broker was awaited are made again: the task may have ended,
        or concurrent requests filled it, meanwhile (and then the credential goes at once)."""
        assert self.credentials is not None
        issued = await self.credentials.issue(grant, spec)
        grant.lease = issued.lease
        try:
            if not task.active:
                raise self._tasks.ended(task)
            check_grant_room(task, self._settings.max_grants_per_task)
        except SidecarError:
            self.credentials.revoke_soon([(issued.lease, "issue_aborted", task.task_id)])
            raise
        return issued

    def undo(self, grant: Grant) -> None:
        """Forget a prepared grant that was not committed; a broker credential made for it is
        revoked at once (no orphan)."""
        if grant.lease is not None and self.credentials is not None:
            self.credentials.revoke_soon([(grant.lease, "issue_aborted", grant.task_id)])
        task = self._live.tasks.get(grant.task_id)
        if task is not None:
            task.flow.issuing.pop(grant.grant_id, None)
        if grant.state is GrantState.ACTIVE:
            self._live.forget_grant(grant, task)

    async def abort(self, grant: Grant, err: CommitError) -> None:
        """Undo an issuance whose commit failed; the token is never returned, and a broker
        credential made for it is revoked at once (no orphan)."""
        self.undo(grant)
        if err.durable:
            # The audit log says "issued" but the store failed: record that it never left.
            event = GrantRevoked(
                time=rfc3339(self._clock.now()),
                task_id=grant.task_id,
                grant_id=grant.grant_id,
                subject=grant.subject,
                tier=grant.tier.value,
                reason=RevocationReason.ISSUE_ABORTED.value,
            )
            try:
                await self._journal.commit([event])
            except CommitError:
                log.error("could not record the aborted issue of %s", grant.grant_id)
