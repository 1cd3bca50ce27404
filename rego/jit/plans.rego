# Declared plans (docs/policy-authoring.md, "Flows"). A task may declare at BeginTask the
# intents it expects to need (input.task.plan). `plan_evaluation` answers in one query whether
# the whole plan would be allowed and which steps need approval, so that approvals can be
# asked for before work starts. Each step is decided as if the steps before it had been
# granted: their flow labels (from data, as the policy would give them) are in the step's
# history, so a plan that reads a ticket, then a
# customer record, then sends email shows the trifecta on its last step.
package jit

# METADATA
# title: plan evaluation
# description: |
#   {"steps": [<decision of each step of input.task.plan, in order>]}; the steps are the
#   intents of the plan (with resource_parts), the rest of the input is the task's.
# scope: document
# entrypoint: true
plan_evaluation := {"steps": [step_decision |
	some i, step in input.task.plan
	step_input := _plan_step_input(i, step)
	# Each step is the decision itself, asked about the step's input: `with` is the point.
	# regal ignore:with-outside-test-context,comprehension-term-assignment
	step_decision := decision with input as step_input
]} if {
	is_array(input.task.plan)
}

_plan_step_input(i, step) := object.union(input, {
	"intent": step,
	"task": {"history": array.concat(
		object.get(input, ["task", "history"], []),
		[_planned_entry(earlier) | some earlier in array.slice(input.task.plan, 0, i)],
	)},
})

_planned_entry(step) := {
	"action": step.action,
	"resource": step.resource,
	"class": "",
	"tier": "",
	"labels": _labels_of(step.action, step.resource),
	"time": input.request.time,
	"state": "planned",
	"end_reason": "",
}
