"""Flows and declared plans in the grant path (docs/policy-authoring.md, "Flows").

The engine keeps each task's flow state (`sidecar.flows.TaskFlow`) and sends it with every
decision; this module holds what the engine does with it: checking a declared plan,
evaluating it up front (one OPA query for the whole plan, approvals optionally requested
before work starts), and auditing every intent a flow rule flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..clock import rfc3339
from ..errors import InvalidArgument, Reason
from ..events import FlowFlagged
from ..flows import MAX_PLAN_STEPS, PlanEvaluation, PlanStep
from ..journal import Journal
from ..model import Identity, Intent, PolicyDecision, Task
from ..policy import PolicyEngine, build_input
from ..validation import check_intent
from .desk import ApprovalDesk


def check_plan(plan: Sequence[Intent]) -> tuple[Intent, ...]:
    """A plan is at most MAX_PLAN_STEPS intents, each valid as a RequestGrant's would be."""
    if len(plan) > MAX_PLAN_STEPS:
        raise InvalidArgument(
            f"the plan has {len(plan)} steps; the limit is {MAX_PLAN_STEPS}", Reason.INVALID_TASK
        )
    for intent in plan:
        check_intent(intent.action, intent.resource, intent.justification, intent.context)
    return tuple(plan)


async def evaluate_plan(
    policy: PolicyEngine, identity: Identity, task: Task, now: float
) -> PlanEvaluation:
    """Ask the policy about every step of the task's plan at once; each step is decided as
    if the steps before it had been granted (plans.rego)."""
    first = task.flow.plan[0]
    policy_input = build_input(identity, first, task, [], 0, now)
    decisions = await policy.evaluate_plan(policy_input)
    return PlanEvaluation(
        tuple(
            PlanStep(i, intent, decision)
            for i, (intent, decision) in enumerate(zip(task.flow.plan, decisions, strict=True))
        )
    )


async def request_approvals(
    desk: ApprovalDesk, identity: Identity, task: Task, evaluation: PlanEvaluation
) -> PlanEvaluation:
    """Park an approval request for every step that needs one, before work starts. A later
    RequestGrant of exactly that intent (same justification and context) collects it."""
    steps = []
    for step in evaluation.steps:
        if step.needs_approval:
            approval = await desk.park(identity, task, step.intent, 0, step.decision)
            step = PlanStep(step.index, step.intent, step.decision, approval.approval_id)
        steps.append(step)
    return PlanEvaluation(tuple(steps))


async def audit_flagged(
    journal: Journal,
    identity: Identity,
    task: Task,
    intent: Intent,
    decision: PolicyDecision,
    now: float,
) -> None:
    """Record which flow labels the task held and which flow rules fired (or that the
    intent left the plan), before the outcome's own record. A failed commit means no token."""
    flow = decision.flow
    if flow is None or not flow.flagged or decision.cached:
        return
    await journal.commit(
        [
            FlowFlagged(
                time=rfc3339(now),
                task_id=task.task_id,
                subject=identity.subject,
                intent=intent.as_input(),
                task_flow_labels=sorted(set(flow.task_labels) | task.flow.labels),
                intent_flow_labels=list(flow.labels),
                rules=list(flow.rules),
                plan_deviation=flow.plan_deviation,
                decision_id=decision.decision_id or None,
            )
        ]
    )
