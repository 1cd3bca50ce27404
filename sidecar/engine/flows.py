"""Flows and declared plans in the grant path (docs/policy-authoring.md, "Flows").

The engine keeps each task's flow state (`sidecar.model.TaskFlow`) and sends it with every
decision; this module holds what the engine does with it: checking a declared plan,
evaluating it up front (one OPA query for the whole plan, approvals optionally requested
before work starts), and auditing every intent a flow rule flagged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..clock import Clock, rfc3339
from ..errors import InvalidArgument, PolicyError, Reason, SidecarError
from ..events import FlowFlagged
from ..journal import Journal
from ..model import MAX_PLAN_STEPS, Identity, Intent, PlanEvaluation, PlanStep, PolicyDecision, Task
from ..policy import PolicyEngine, build_input
from ..validation import check_intent
from .commits import Recorder
from .desk import ApprovalDesk
from .live import LiveState
from .tasks import TaskLookup


def check_plan(plan: Sequence[Intent]) -> tuple[Intent, ...]:
    """A plan is at most MAX_PLAN_STEPS intents, each valid as a RequestGrant's would be."""
    if len(plan) > MAX_PLAN_STEPS:
        raise InvalidArgument(
            f"the plan has {len(plan)} steps; the limit is {MAX_PLAN_STEPS}", Reason.INVALID_TASK
        )
    for intent in plan:
        check_intent(intent.action, intent.resource, intent.justification, intent.context)
    return tuple(plan)


class Plans:
    """Declared plans: evaluated at BeginTask and on request (EvaluatePlan)."""

    def __init__(
        self,
        *,
        policy: PolicyEngine,
        tasks: TaskLookup,
        approvals: ApprovalDesk,
        recorder: Recorder,
        clock: Clock,
        on_policy_unavailable: Callable[[PolicyError], None] | None = None,
    ) -> None:
        self.policy = policy
        self.tasks = tasks
        self.approvals = approvals
        self.record = recorder
        self.clock = clock
        self.on_policy_unavailable = on_policy_unavailable

    async def declare(self, identity: Identity, task: Task, now: float) -> None:
        """Evaluate a new task's declared plan up front (one OPA query; the answer is
        `task.flow.evaluation`). Without an answer, no task: the error is raised."""
        if task.flow.plan:
            task.flow.evaluation = await self._evaluate(identity, task, now)

    async def evaluate(
        self, identity: Identity, task_id: str, *, request_approvals: bool = False
    ) -> PlanEvaluation:
        """The policy's answer on the task's declared plan, given what the task did so far;
        with `request_approvals`, an approval request is parked for every step needing one."""
        try:
            task = await self.tasks.active(identity, task_id)
            if not task.flow.plan:
                raise InvalidArgument(
                    f"task {task.task_id} declared no plan", Reason.INVALID_ARGUMENT
                )
        except SidecarError as err:
            await self.record.rejection("EvaluatePlan", identity, err, task_id=task_id)
            raise
        evaluation = await self._evaluate(identity, task, self.clock.now())
        if request_approvals:
            evaluation = await request_approvals_for(self.approvals, identity, task, evaluation)
        return evaluation

    async def _evaluate(self, identity: Identity, task: Task, now: float) -> PlanEvaluation:
        try:
            return await evaluate_plan(self.policy, identity, task, now)
        except PolicyError as err:
            if err.reason is Reason.POLICY_UNAVAILABLE and self.on_policy_unavailable:
                self.on_policy_unavailable(err)
            await self.record.policy_failure(err, identity, task.flow.plan[0], task.task_id, now)
            raise


def denied(live: LiveState, task_id: str, at: float) -> None:
    """Count a denial of the task: the probing rule reads them (`input.task.denials`)."""
    task = live.tasks.get(task_id)
    if task is not None:
        task.flow.record_denial(at)


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


async def request_approvals_for(
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
    event = flagged(identity, task, intent, decision, now)
    if event is not None:
        await journal.commit([event])


def flagged(
    identity: Identity, task: Task, intent: Intent, decision: PolicyDecision, now: float
) -> FlowFlagged | None:
    """The `flow_flagged` record of a decision a flow rule (or a plan deviation) changed;
    None when none did, or the decision came from the cache (recorded when it was made)."""
    flow = decision.flow
    if flow is None or not flow.flagged or decision.cached:
        return None
    return FlowFlagged(
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
