"""On behalf of whom? The person a task acts for (docs/delegation.md).

A task may carry a principal, proved by BeginTask's subject token: a person's token from a
configured principal issuer (`sidecar.principals`), or an active access token this sidecar
issued to a task that has a principal (a token exchanged earlier: its task's principal is
taken over). The policy then says whether this agent may act for this person (`may_act`,
asked of OPA before the task exists) and, for each intent, allows only what both the
agent's domains and the person's entitlements allow (rego/jit/delegation.rego).

Tokens of such a task carry RFC 8693 delegation (§4.1): `sub` is the person, `act.sub` the
agent, nested `act` for chains made by token exchange (`sidecar.engine.exchange`).
`TaskPrincipals` stamps every audit record of the task with the person.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import PermissionDenied, Reason
from ..events import Event, TaskBegun
from ..model import Identity, Principal
from ..principals import PrincipalVerifier, check_token_type, principal_invalid, unverified_issuer

if TYPE_CHECKING:
    from .introspection import Introspection

#: Ended tasks whose principal is still known, for the records that follow their end.
RECENTLY_ENDED = 4096
MAX_SUBJECT_TOKEN = 16384


class MayAct(Protocol):
    """The policy's answer to "may this agent act for this person?" (OPA: jit/may_act)."""

    async def may_act(self, policy_input: dict[str, Any]) -> tuple[bool, tuple[str, ...]]: ...


class TaskPrincipals:
    """Task id → principal, for the audit stamp. Active tasks stay; ended ones are kept for
    the records that follow their end (bounded)."""

    def __init__(self, recently_ended: int = RECENTLY_ENDED) -> None:
        self._active: dict[str, Principal] = {}
        self._ended: OrderedDict[str, Principal] = OrderedDict()
        self._max_ended = recently_ended

    def add(self, task_id: str, principal: Principal) -> None:
        self._active[task_id] = principal

    def end(self, task_id: str) -> None:
        principal = self._active.pop(task_id, None)
        if principal is None:
            return
        self._ended[task_id] = principal
        while len(self._ended) > self._max_ended:
            self._ended.popitem(last=False)

    def get(self, task_id: str) -> Principal | None:
        return self._active.get(task_id) or self._ended.get(task_id)

    def stamp(self, event: Event) -> Event:
        """`event` naming the person its task acts for (docs/api.md, "Audit log")."""
        if event.principal is not None:
            return event
        task_id = getattr(event, "task_id", None)
        principal = self.get(task_id) if isinstance(task_id, str) else None
        if principal is None:
            return event
        if isinstance(event, TaskBegun):
            return dataclasses.replace(event, principal=principal.as_input())
        return dataclasses.replace(
            event, principal={"subject": principal.subject, "issuer": principal.issuer}
        )


def may_act_input(identity: Identity, principal: Principal) -> dict[str, Any]:
    """The input of the `may_act` query (docs/delegation.md, "Policy input")."""
    return {"identity": identity.as_input(), "principal": principal.as_input()}


def actor_claim(agent: str, prior: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """RFC 8693 §4.1 `act`: the current actor, with the prior chain nested inside it."""
    return {"sub": agent, "act": dict(prior)} if prior else {"sub": agent}


def actor_subject(act: Mapping[str, Any] | None) -> str:
    """The current actor's `sub` (the outermost `act`), or ''."""
    sub = act.get("sub") if act else None
    return sub if isinstance(sub, str) else ""


class Delegation:
    """Finds and admits the principal of a new task."""

    def __init__(
        self,
        *,
        verifier: PrincipalVerifier | None,
        may_act: MayAct,
        own_issuer: str,
        introspect: Callable[[str], Awaitable[Introspection]],
        task_principal: Callable[[str], Principal | None],
    ) -> None:
        """`introspect` checks a token of ours (active, its grant live); `task_principal`
        gives the principal of the task a grant belongs to."""
        self._verifier = verifier
        self._may_act = may_act
        self._own_issuer = own_issuer
        self._introspect = introspect
        self._task_principal = task_principal

    async def principal(self, token: str, token_type: str) -> Principal:
        """The person a subject token proves; raises Unauthenticated principal_invalid."""
        check_token_type(token_type)
        if len(token) > MAX_SUBJECT_TOKEN:
            raise principal_invalid("malformed", "the subject token is too long")
        issuer = unverified_issuer(token)
        if issuer == self._own_issuer:
            return await self._exchanged_earlier(token)
        if self._verifier is None:
            raise principal_invalid(
                "issuer_not_allowed", "no principal_issuer is configured for people's tokens"
            )
        return await self._verifier.verify(token)

    async def _exchanged_earlier(self, token: str) -> Principal:
        result = await self._introspect(token)
        if not result.active or result.grant is None:
            raise principal_invalid("inactive", "the access token is not active")
        principal = self._task_principal(result.grant.task_id)
        if principal is None:
            raise principal_invalid(
                "no_principal", "the access token does not act for a person (no `act`)"
            )
        return principal

    async def admit(self, identity: Identity, principal: Principal) -> None:
        """PERMISSION_DENIED may_act unless the policy lets `identity` act for `principal`
        (OPA unreachable or answering garbage: PolicyError, fail closed)."""
        allowed, reasons = await self._may_act.may_act(may_act_input(identity, principal))
        if not allowed:
            why = reasons[0] if reasons else "may_act: the policy does not allow it"
            raise PermissionDenied(
                f"{identity.subject} may not act for this principal ({why})", Reason.MAY_ACT
            )
