"""RFC 8693 token exchange: a narrower, shorter token from an active token of ours.

A resource server or gateway that must call further downstream hands over the token it
received (the subject token) and, when it calls as a workload, its own identity token (the
actor token, authenticated by the HTTP layer with the sidecar's authenticator). The result
is a new grant in the subject token's task, so it is revoked, audited and introspected like
any other, and ends with the task:
- scope: the requested scope, which must lie inside the subject token's (`invalid_target`
  otherwise; the same audience only, `invalid_target` for another);
- lifetime: never longer than what is left of the subject token (`invalid_request`);
- `act` (RFC 8693 §4.1): the actor becomes the current actor with the previous chain nested
  inside it; without an actor token the chain stays as it was.
RFC 8693 §2.2.2 names the error codes; each refusal also carries a bounded `cause`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, rfc3339
from ..errors import InvalidArgument, PolicyError, Reason, SidecarError
from ..events import GrantIssued
from ..journal import CommitError, Journal
from ..model import Grant, GrantState, Identity
from ..revocations import FleetGate
from ..tokens import KeyRing, access_token_claims, new_grant_id
from .delegation import Delegation, actor_claim, actor_subject
from .introspection import Introspection
from .live import LiveState
from .settings import EngineMetrics

log = logging.getLogger("jit_sidecar.engine")


class ExchangeRefused(InvalidArgument):
    """A token exchange refused with an RFC 8693 §2.2.2 error code."""

    def __init__(self, error: str, cause: str, message: str) -> None:
        super().__init__(message, Reason.INVALID_ARGUMENT, metadata={"cause": cause})
        self.error = error
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    subject_token: str
    actor: Identity | None = None
    """The calling workload, from its (verified) actor token; None without one."""
    scope: tuple[str, ...] | None = None
    """None: the subject token's whole scope."""
    audience: str = ""
    """'' or the subject token's audience (a token is never re-targeted)."""
    ttl_seconds: int = 0
    """0: as long as the subject token has left."""


@dataclass(frozen=True, slots=True)
class Exchanged:
    token: str
    grant: Grant
    expires_in: int


class TokenExchange:
    def __init__(
        self,
        live: LiveState,
        *,
        keys: KeyRing,
        journal: Journal,
        metrics: EngineMetrics,
        clock: Clock,
        issuer: str,
        fleet: FleetGate | None,
        max_grants_per_task: int,
        delegation: Delegation,
        introspect: Callable[[str], Awaitable[Introspection]],
        abort_issue: Callable[[Grant, CommitError], Awaitable[None]],
    ) -> None:
        self.live = live
        self.keys = keys
        self.journal = journal
        self.metrics = metrics
        self.clock = clock
        self.issuer = issuer
        self.fleet = fleet
        self.max_grants_per_task = max_grants_per_task
        self.delegation = delegation
        self._introspect = introspect
        self._abort_issue = abort_issue

    async def exchange(self, request: ExchangeRequest) -> Exchanged:
        result = await self._introspect(request.subject_token)
        parent = self.live.grants.get(result.grant.grant_id) if result.grant else None
        if not result.active or parent is None:
            raise ExchangeRefused(
                "invalid_request", "subject_token_inactive", "the subject token is not active here"
            )
        task = self.live.tasks.get(parent.task_id)
        if task is None or not task.active:
            raise ExchangeRefused(
                "invalid_request", "subject_token_inactive", "the subject token's task has ended"
            )
        scope = self._scope(parent, request.scope)
        if request.audience and request.audience != parent.audience:
            raise ExchangeRefused(
                "invalid_target", "audience_not_allowed", "the audience must be the subject's"
            )
        now = self.clock.now()
        ttl, limited_by = self._ttl(parent, request.ttl_seconds, now)
        actor = parent.actor
        if request.actor is not None:
            if task.principal is not None:
                try:
                    await self.delegation.admit(request.actor, task.principal)
                except PolicyError:
                    raise
                except SidecarError as err:
                    raise ExchangeRefused("invalid_request", "may_act", err.message) from err
            actor = actor_claim(request.actor.subject, parent.actor)
        if len(task.grant_ids) >= self.max_grants_per_task:
            raise ExchangeRefused(
                "invalid_request", "too_many_grants", "the task holds its maximum of grants"
            )
        if self.fleet is not None:
            self.fleet.check_issuable()
        return await self._issue(parent, scope, ttl, limited_by, actor, now)

    @staticmethod
    def _scope(parent: Grant, requested: tuple[str, ...] | None) -> tuple[str, ...]:
        if requested is None:
            return parent.scope
        # RFC 8693 §2.2.2: a scope the subject token does not hold is a target the server is
        # unwilling to issue for (brief: never wider than the subject token).
        if not requested or not set(requested) <= set(parent.scope):
            raise ExchangeRefused(
                "invalid_target", "scope_wider", "the scope must lie within the subject token's"
            )
        return tuple(dict.fromkeys(requested))

    @staticmethod
    def _ttl(parent: Grant, requested: int, now: float) -> tuple[int, str]:
        left = int(parent.expires_at - now)
        if requested > left:
            raise ExchangeRefused(
                "invalid_request",
                "ttl_longer",
                f"the lifetime must not exceed the subject token's ({left} s left)",
            )
        if left < 1:
            raise ExchangeRefused("invalid_request", "subject_token_inactive", "no time left")
        return (requested, "requested") if requested else (left, "subject_token")

    async def _issue(
        self,
        parent: Grant,
        scope: tuple[str, ...],
        ttl: int,
        limited_by: str,
        actor: Mapping[str, Any] | None,
        now: float,
    ) -> Exchanged:
        task = self.live.tasks[parent.task_id]
        key = self.keys.current
        # The parent's task, subject, intent, tier, audience, decision and key binding: only
        # the scope, the lifetime and the actor change (never wider, longer or dropped). A
        # downstream credential is not copied, and none is issued: it stays the parent's,
        # revoked with the parent (docs/delegation.md, "Token exchange").
        grant = dataclasses.replace(
            parent,
            grant_id=new_grant_id(),
            scope=scope,
            issued_at=now,
            expires_at=float(min(int(now) + ttl, int(parent.expires_at))),
            kid=key.kid,
            actor=dict(actor) if actor else None,
            justification="",
            lease=None,
        )
        self.live.add_grant(task, grant)
        token = key.sign(access_token_claims(grant, self.issuer))
        event = GrantIssued(
            time=rfc3339(now),
            task_id=grant.task_id,
            grant_id=grant.grant_id,
            subject=grant.subject,
            intent={"action": grant.action, "resource": grant.resource, "justification": ""},
            decision_id=grant.decision_id or None,
            tier=grant.tier.value,
            scope=list(scope),
            audience=grant.audience,
            ttl_seconds=int(grant.expires_at) - int(now),
            ttl_limited_by=limited_by,
            expires_at=rfc3339(grant.expires_at),
            reasons=["token_exchange: RFC 8693 exchange of grant " + parent.grant_id],
            kid=key.kid,
            cnf_jkt=grant.cnf_jkt or None,
            actor=dict(grant.actor) if grant.actor else None,
            exchanged_from=parent.grant_id,
            flow_class=grant.flow_class or None,
            flow_labels=list(grant.flow_labels) or None,
        )
        try:
            await self.journal.commit([event])
        except CommitError as err:
            await self._abort_issue(grant, err)
            raise
        task.flow.record_grant(grant)  # a grant of the task like any other (its history)
        if grant.state is not GrantState.ACTIVE:
            raise ExchangeRefused(
                "invalid_request", "subject_token_inactive", "the task ended meanwhile"
            )
        self.metrics.granted(grant.tier)
        self.metrics.grant_ttl.observe(grant.expires_at - now)
        log.info(
            "token exchanged",
            extra={
                "task_id": grant.task_id,
                "grant_id": grant.grant_id,
                "exchanged_from": parent.grant_id,
                "actor": actor_subject(grant.actor),
            },
        )
        return Exchanged(token, grant, int(grant.expires_at - now))
