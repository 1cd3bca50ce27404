"""Domain objects: identities, intents, decisions, tasks and grants, and their flows.

Value objects are frozen; `Task` and `Grant` are the engine's live entities and change state
only inside the engine.

Flows (docs/policy-authoring.md, "Flows"): a task keeps its history (every grant it was
issued, ended ones included, newest last, bounded by `HISTORY_CAP` with a count of the older
ones), the flow labels its grants carried (never bounded: a label outlives the history
window), the times of its recent denials and its declared plan. `TaskFlow.as_input` is that
state as `input.task.{history, history_dropped, flow_labels, denials, plan}`. The policy
answers with a flow report (`flow` in the decision, `FlowReport`): the intent's risk class and
labels, the labels the task held, the flow rules that fired and whether the intent left the
plan; `sidecar.policy` type-checks it as strictly as the rest of the decision. What the engine
does with them is `sidecar/engine/flows.py`; the store keeps them (`sidecar/store/flows.py`).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .clock import rfc3339
from .resources import parse_resource

if TYPE_CHECKING:
    from .brokers.base import Lease


class Tier(StrEnum):
    STANDING = "standing"
    JIT = "jit"


class TaskState(StrEnum):
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERRORED = "errored"
    CRASHED = "crashed"
    EXPIRED = "expired"


class GrantState(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERRORED = "errored"


class RevocationReason(StrEnum):
    """Why a grant stopped being active (label of `jit_revocations_total`)."""

    COMPLETED = "completed"
    FAILED = "failed"
    ERRORED = "errored"
    AGENT_LOST = "agent_lost"
    TASK_EXPIRED = "task_expired"
    EXPIRED = "expired"
    REVOKED_BY_AGENT = "revoked_by_agent"
    REVOKED_BY_OPERATOR = "revoked_by_operator"
    KILL_SWITCH = "kill_switch"
    ISSUE_ABORTED = "issue_aborted"


OUTCOME_REVOCATION = {
    Outcome.SUCCEEDED: RevocationReason.COMPLETED,
    Outcome.FAILED: RevocationReason.FAILED,
    Outcome.ERRORED: RevocationReason.ERRORED,
}
OUTCOME_TASK_STATE = {
    Outcome.SUCCEEDED: TaskState.SUCCEEDED,
    Outcome.FAILED: TaskState.FAILED,
    Outcome.ERRORED: TaskState.ERRORED,
}


@dataclass(frozen=True, slots=True)
class AccessEnded:
    """One end of access, as the engine tells its subscribers (the Shared Signals
    transmitter): a whole task (`grant_id` empty) or one grant revoked on its own."""

    task_id: str
    subject: str
    """The agent's workload identity (a SPIFFE ID in production)."""
    reason: str
    """A `RevocationReason` value."""
    ended_at: float
    expires_at: float
    """The latest `exp` of the tokens this end of access covers (`ended_at` when none)."""
    grant_id: str = ""
    """= the token's `jti`, for a single grant; empty when the whole task ended."""
    state: str = ""
    """The task's final `TaskState` value when the whole task ended."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller."""

    subject: str
    """Workload identity, e.g. `spiffe://example.org/agent/billing`."""
    trust_domain: str
    method: str
    """`dev`, `jwt-svid` or `oidc`."""
    issuer: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """The verified claims that policies may use (see docs/identity.md)."""

    def as_input(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "trust_domain": self.trust_domain,
            "method": self.method,
            "issuer": self.issuer,
            "claims": dict(self.claims),
        }


@dataclass(frozen=True, slots=True)
class Intent:
    """What the agent is about to do."""

    action: str
    resource: str
    justification: str = ""
    context: Mapping[str, Any] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "resource": self.resource,
            "justification": self.justification,
            "context": dict(self.context),
        }


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """A type-checked OPA decision (docs/policy-authoring.md, "The decision contract")."""

    allow: bool
    tier: Tier | None
    approval_required: bool
    ttl_seconds: int
    audience: str
    scope: tuple[str, ...]
    reasons: tuple[str, ...]
    cache_seconds: int
    decision_id: str = ""
    cached: bool = False
    """True when served from the standing-decision cache rather than OPA."""
    credential: Mapping[str, Any] | None = None
    """The decision's `credential` object, shape-checked (sidecar.policy); the named
    broker validates its contents (docs/brokers.md)."""
    four_eyes: bool = False
    """An approval needs an approver who is not one of `owners`."""
    owners: tuple[str, ...] = ()
    """Who answers for the agent (the policy's `owners`; the engine adds the identity's
    `owner` claim when it parks an approval)."""
    flow: FlowReport | None = None
    """The policy's flow report (`FlowReport`), when it gave one."""


# ====================================================================== flows
HISTORY_CAP = 100
"""Grants of a task sent as `input.task.history` (the newest); older ones are counted in
`history_dropped`. Their labels stay in `flow_labels`."""
DENIALS_CAP = 64
"""Most recent denials of a task sent as `input.task.denials` (enough for any window the
probing rule counts: it freezes a task long before)."""
MAX_PLAN_STEPS = 32
MAX_LABELS = 64
MAX_LABEL_LEN = 128


@dataclass(frozen=True, slots=True)
class FlowReport:
    """The policy's flow report on one intent (the decision's `flow`)."""

    cls: str
    """The intent's risk class (catalog), '' when the action is unknown."""
    labels: tuple[str, ...]
    """The intent's flow labels: the grant carries them, and the task accumulates them."""
    task_labels: tuple[str, ...]
    """The labels the task held before this intent."""
    rules: tuple[str, ...]
    """Reason codes of the flow rules that fired (flow_trifecta, plan_deviation, ...)."""
    plan_deviation: bool

    @property
    def flagged(self) -> bool:
        """A flow rule fired or the intent left the plan: worth its own audit record."""
        return bool(self.rules) or self.plan_deviation


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of an evaluated plan."""

    index: int
    intent: Intent
    decision: PolicyDecision
    approval_id: str = ""
    """The approval requested up front for this step (EvaluatePlan `request_approvals`)."""

    @property
    def needs_approval(self) -> bool:
        return self.decision.allow and self.decision.approval_required


@dataclass(frozen=True, slots=True)
class PlanEvaluation:
    """The policy's answer on a whole declared plan."""

    steps: tuple[PlanStep, ...]

    @property
    def allowed(self) -> bool:
        """Every step would be allowed (some perhaps after a human's approval)."""
        return all(step.decision.allow for step in self.steps)

    @property
    def approval_steps(self) -> list[int]:
        return [step.index for step in self.steps if step.needs_approval]


@dataclass(slots=True)
class TaskFlow:
    """The flow state of one task (kept with the task; restored from the store)."""

    plan: tuple[Intent, ...] = ()
    labels: set[str] = field(default_factory=set)
    history: deque[Grant] = field(default_factory=lambda: deque(maxlen=HISTORY_CAP))
    dropped: int = 0
    """Grants older than the history window."""
    denials: deque[float] = field(default_factory=lambda: deque(maxlen=DENIALS_CAP))
    denial_count: int = 0
    """Every denial of the task, not only the recent ones (part of the cache key)."""
    evaluation: PlanEvaluation | None = None
    """The policy's answer on the plan at BeginTask (not kept across a restart)."""
    issuing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The flow labels of the grants prepared and not yet committed, by grant id: a decision
    made meanwhile counts them as held (a concurrent request must not slip between a grant
    and its history); forgotten when the grant is recorded or undone."""

    def record_grant(self, grant: Grant) -> None:
        self.issuing.pop(grant.grant_id, None)
        if len(self.history) == self.history.maxlen:
            self.dropped += 1
        self.history.append(grant)
        self.labels.update(grant.flow_labels)

    def held_labels(self) -> set[str]:
        """The labels of the task's grants, those being committed included."""
        if not self.issuing:
            return self.labels
        return self.labels.union(*self.issuing.values())

    def record_denial(self, at: float) -> None:
        self.denials.append(at)
        self.denial_count += 1

    def as_input(self) -> dict[str, Any]:
        """`input.task.*` of the flow (docs/policy-authoring.md, "The input document")."""
        return {
            "history": [history_entry(g) for g in self.history],
            "history_dropped": self.dropped,
            "flow_labels": sorted(self.held_labels()),
            "denials": [rfc3339(t) for t in self.denials],
            "plan": [intent_input(i) for i in self.plan],
        }

    def cache_key(self) -> str:
        """What of the flow a cached standing decision may depend on: the labels the task
        holds, its plan, how many denials it had and when its recent ones were (the key is
        not the task's: another task of the agent with as many denials, long past the
        probing window, must not answer for one denied just now). The shipped flow rules read the
        history only through labels; a rule reading the history otherwise (order, times,
        how grants ended) must not answer with `cache_seconds` (docs/policy-authoring.md)."""
        labels = self.held_labels()
        if not (labels or self.plan or self.denial_count):
            return ""
        digest = hashlib.sha256()
        digest.update(json.dumps(sorted(labels)).encode())
        digest.update(json.dumps([intent_input(i) for i in self.plan], sort_keys=True).encode())
        digest.update(str(self.denial_count).encode())
        digest.update(json.dumps(list(self.denials)).encode())
        return digest.hexdigest()


def history_entry(grant: Grant) -> dict[str, Any]:
    """One entry of `input.task.history`."""
    return {
        "action": grant.action,
        "resource": grant.resource,
        "class": grant.flow_class,
        "tier": grant.tier.value,
        "labels": list(grant.flow_labels),
        "time": rfc3339(grant.issued_at),
        "state": grant.state.value,
        "end_reason": grant.end_reason,
    }


def intent_input(intent: Intent) -> dict[str, Any]:
    """An intent as the policy gets it (`input.intent`, each step of `input.task.plan`): with
    its parsed resource, so that policies compare segments, never string prefixes."""
    return intent.as_input() | {"resource_parts": parse_resource(intent.resource).as_input()}


_WHY_ENDED = {
    "completed": "completed by the agent",
    "failed": "the agent reported failure",
    "errored": "the agent reported an error",
    "revoked_by_operator": "ended by an operator",
    "kill_switch": "ended by the kill switch",
}


@dataclass(slots=True)
class Task:
    """A unit of agent work; grants never outlive it."""

    task_id: str
    subject: str
    goal: str
    labels: dict[str, str]
    started_at: float
    deadline: float
    heartbeat_interval: int
    state: TaskState = TaskState.ACTIVE
    last_heartbeat: float = 0.0
    pop_jkt: str = ""
    ended_at: float | None = None
    end_reason: str = ""
    grant_ids: list[str] = field(default_factory=list)
    """Active grants only, oldest first."""
    principal: Principal | None = None
    """The person the task acts for (docs/delegation.md); None when the agent acts alone."""
    flow: TaskFlow = field(default_factory=TaskFlow)
    """History, flow labels, recent denials and declared plan (`TaskFlow`)."""
    end_detail: str = ""
    """Why it ended, when the state alone does not say (a GrantStream closed before
    CompleteTask); kept in memory only."""

    @property
    def active(self) -> bool:
        return self.state is TaskState.ACTIVE

    def remaining(self, now: float) -> float:
        return self.deadline - now

    def heartbeat_deadline(self, misses: int) -> float:
        return max(self.last_heartbeat, self.started_at) + misses * self.heartbeat_interval

    def why_ended(self, misses: int) -> str:
        """Why an ended task ended, for the agent: `crashed: no heartbeat for 15 s`."""
        if self.state is TaskState.CRASHED and self.end_detail:
            return f"crashed: {self.end_detail}"
        if self.state is TaskState.CRASHED:
            return f"crashed: no heartbeat for {misses * self.heartbeat_interval} s"
        if self.state is TaskState.EXPIRED:
            lasted = round(self.deadline - self.started_at)
            return f"expired: reached its deadline ({lasted} s after it began)"
        why = _WHY_ENDED.get(self.end_reason, self.end_reason or "no reason recorded")
        return f"{self.state.value}: {why}"


@dataclass(slots=True)
class Grant:
    """One issued credential (the token itself is never kept)."""

    grant_id: str
    task_id: str
    subject: str
    action: str
    resource: str
    tier: Tier
    audience: str
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float
    kid: str
    decision_id: str = ""
    cnf_jkt: str = ""
    justification: str = ""
    state: GrantState = GrantState.ACTIVE
    end_reason: str = ""
    ended_at: float | None = None
    lease: Lease | None = None
    """The downstream credential issued with this grant (docs/brokers.md), if any."""
    principal: str = ""
    """The person's `sub` when the task has a principal: the token's `sub` (RFC 8693 §4.1)."""
    actor: Mapping[str, Any] | None = None
    """The token's RFC 8693 `act` claim (the agent, nested for chains); None without a
    principal or exchange."""
    flow_class: str = ""
    """The risk class the policy reported (its flow report), '' when it reported none."""
    flow_labels: tuple[str, ...] = ()
    """The flow labels the policy gave this grant's intent."""

    def is_active(self, now: float) -> bool:
        return self.state is GrantState.ACTIVE and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Principal:
    """The person a task acts for, from a verified subject token (docs/delegation.md)."""

    subject: str
    """The subject token's `sub`."""
    issuer: str
    """The subject token's `iss` (this sidecar's own issuer for a token exchanged earlier)."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """The claims `principal_claims` allows, as verified."""

    def as_input(self) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "claims": dict(self.claims)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Principal:
        """The principal an audit record or store row holds (`as_input`'s shape)."""
        claims = record.get("claims")
        return cls(
            subject=str(record.get("subject", "")),
            issuer=str(record.get("issuer", "")),
            claims=dict(claims) if isinstance(claims, Mapping) else {},
        )
