"""Flows: what a task already did, as the policy sees it, and what the policy says of it.

A task keeps its history (every grant it was issued, ended ones included, newest last,
bounded by `HISTORY_CAP` with a count of the older ones), the flow labels its grants carried
(never bounded: a label outlives the history window), the times of its recent denials and
its declared plan. `TaskFlow.as_input` is that state as `input.task.{history,
history_dropped, flow_labels, denials, plan}` (docs/policy-authoring.md, "Flows").

The policy answers with a flow report (`flow` in the decision, `FlowReport`): the intent's
risk class and labels, the labels the task held, the flow rules that fired and whether the
intent left the plan; `sidecar.policy` type-checks it as strictly as the rest of the
decision.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import rfc3339
from .resources import parse_resource

if TYPE_CHECKING:  # model.py holds a TaskFlow in each Task
    from .model import Grant, Intent, PolicyDecision

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

    def record_grant(self, grant: Grant) -> None:
        if len(self.history) == self.history.maxlen:
            self.dropped += 1
        self.history.append(grant)
        self.labels.update(grant.flow_labels)

    def record_denial(self, at: float) -> None:
        self.denials.append(at)
        self.denial_count += 1

    def as_input(self) -> dict[str, Any]:
        """`input.task.*` of the flow (docs/policy-authoring.md, "The input document")."""
        return {
            "history": [history_entry(g) for g in self.history],
            "history_dropped": self.dropped,
            "flow_labels": sorted(self.labels),
            "denials": [rfc3339(t) for t in self.denials],
            "plan": [intent_input(i) for i in self.plan],
        }

    def cache_key(self) -> str:
        """What of the flow a cached standing decision may depend on: the labels the task
        holds, its plan and how many denials it had. The shipped flow rules read the
        history only through labels; a rule reading the history otherwise (order, times,
        how grants ended) must not answer with `cache_seconds` (docs/policy-authoring.md)."""
        if not (self.labels or self.plan or self.denial_count):
            return ""
        digest = hashlib.sha256()
        digest.update(json.dumps(sorted(self.labels)).encode())
        digest.update(json.dumps([intent_input(i) for i in self.plan], sort_keys=True).encode())
        digest.update(str(self.denial_count).encode())
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
