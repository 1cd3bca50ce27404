# Flows (flows.rego) and declared plans (plans.rego): the task's history decides what it may
# do next. The support agent of data.json reads tickets (untrusted_input), customer records
# (private_data) and sends email (external_egress).
package jit_test

import data.jit

_support := "spiffe://jit.local/agent/support"

_ticket_read := {"action": "tickets.read", "resource": "tickets://t-1001"}

_customer_read := {"action": "customers.read", "resource": "customers://c-42"}

_email := {"action": "email.send", "resource": "email://customer/c-42", "justification": "reply to the customer"}

_docs_read := {"action": "docs.read", "resource": "docs://handbook/intro"}

# A history entry as the sidecar sends it (sidecar/model.py, TaskFlow): with the labels the policy gave
# the intent when it was granted, i.e. its decision's flow.labels.
_entry(intent, state) := {
	"action": intent.action, "resource": intent.resource, "class": "read", "tier": "standing",
	"labels": _labels_given(intent), "time": "2026-11-29T09:58:00Z", "state": state,
	"end_reason": {"active": "", "expired": "expired", "revoked": "revoked_by_agent"}[state],
}

_labels_given(intent) := object.get(_given, intent.action, [])

# What data.json labels these intents; test_the_labels_given_are_those_of_the_policy checks it.
_given := {
	"tickets.read": ["untrusted_input"],
	"customers.read": ["private_data"],
	"email.send": ["external_egress"],
	"vault.read": ["private_data", "secret:infra"],
}

test_the_labels_given_are_those_of_the_policy if {
	every intent in [_ticket_read, _customer_read, _email, _secret_read, _docs_read] {
		decision := jit.decision with input as _flow_input(_ops, intent, [])
		decision.flow.labels == _labels_given(intent)
	}
}

_flow_task(history) := {"history": history, "history_dropped": 0, "flow_labels": [], "denials": [], "plan": []}

_flow_input(subject, intent, history) := _input(subject, intent, _flow_task(history))

_with_flow(decision, class, labels, task_labels, rules, deviation) := object.union(decision, {"flow": {
	"class": class, "labels": labels, "task_labels": task_labels, "rules": rules, "plan_deviation": deviation,
}})

_trifecta_reason := concat("", [
	"flow_trifecta: the task holds private_data and untrusted_input, ",
	"so email.send (external_egress) needs approval",
])

_email_jit(task_labels) := _with_flow(
	_jit("email", "email.send", [_jit_reason("email.send", "write")]),
	"write", ["external_egress"], task_labels, [], false,
)

_email_approval(task_labels) := _with_flow(
	_approval("email", "email.send", [_approval_reason("email.send", "write"), _trifecta_reason]),
	"write", ["external_egress"], task_labels, ["flow_trifecta"], false,
)

# ------------------------------------------------------------------ the trifecta

test_ticket_then_customer_then_email_needs_approval if {
	history := [_entry(_ticket_read, "active"), _entry(_customer_read, "active")]
	decision := jit.decision with input as _flow_input(_support, _email, history)
	decision == _email_approval(["private_data", "untrusted_input"])
}

# A task acting for a person (delegation.rego) meets the trifecta too: its history is the
# task's, whoever it acts for; a customer_care person is entitled to tickets, customers, email.
test_a_delegated_task_meets_the_trifecta if {
	history := [_entry(_ticket_read, "active"), _entry(_customer_read, "active")]
	decision := jit.decision with input as _for(_flow_input(_support, _email, history), _person(["customer_care"]))
	decision == _email_approval(["private_data", "untrusted_input"])
}

test_without_the_ticket_read_email_is_jit if {
	decision := jit.decision with input as _flow_input(_support, _email, [_entry(_customer_read, "active")])
	decision == _email_jit(["private_data"])
}

test_a_fresh_task_sends_email_with_jit if {
	decision := jit.decision with input as _flow_input(_support, _email, [])
	decision == _email_jit([])
}

# Each of the six orders of the three steps, each step decided with the ones before it as
# history: the email needs approval exactly when both reads came before it.
test_trifecta_in_every_order if {
	orders := [
		[_ticket_read, _customer_read, _email], [_customer_read, _ticket_read, _email],
		[_ticket_read, _email, _customer_read], [_customer_read, _email, _ticket_read],
		[_email, _ticket_read, _customer_read], [_email, _customer_read, _ticket_read],
	]
	approvals := [[decision.approval_required |
		some i, step in order
		history := [_entry(s, "active") | some s in array.slice(order, 0, i)]
		decision := jit.decision with input as _flow_input(_support, step, history)
	] |
		some order in orders
	]
	approvals == [
		[false, false, true], [false, false, true],
		[false, false, false], [false, false, false],
		[false, false, false], [false, false, false],
	]
}

test_expired_and_revoked_grants_in_between_still_count if {
	gap := [_entry({"action": "docs.read", "resource": sprintf("docs://handbook/p%d", [i])}, "expired") |
		some i in numbers.range(1, 5)
	]
	history := array.flatten([[_entry(_ticket_read, "expired")], gap, [_entry(_customer_read, "revoked")]])
	decision := jit.decision with input as _flow_input(_support, _email, history)
	decision == _email_approval(["private_data", "untrusted_input"])
}

# Older grants beyond the history cap are gone from the history, not from the labels.
test_labels_the_sidecar_kept_count_without_history if {
	decision := jit.decision with input as _flow_input(_support, _email, [])
		with input.task.flow_labels as ["untrusted_input", "private_data"]
		with input.task.history_dropped as 500
	decision == _email_approval(["private_data", "untrusted_input"])
}

test_one_earlier_grant_carrying_both_labels_then_egress_needs_approval if {
	entry := object.union(_entry(_customer_read, "expired"), {"labels": ["private_data", "untrusted_input"]})
	decision := jit.decision with input as _flow_input(_support, _email, [entry])
	decision == _email_approval(["private_data", "untrusted_input"])
}

test_an_email_carrying_both_labels_itself_needs_approval if {
	decision := jit.decision with input as _flow_input(_support, _email, [])
		with jit.catalog["email.send"].flow_labels as ["external_egress", "private_data", "untrusted_input"]
	decision.approval_required == true
	decision.flow.rules == ["flow_trifecta"]
}

test_mcp_send_email_is_external_egress if {
	decision := jit.decision with input as _flow_input(
		_dev,
		{
			"action": "mcp.mail.send_email", "resource": "mcp://mail/tools/send_email",
			"justification": "reply to ticket 7 of the customer",
		},
		[_entry(_ticket_read, "active")],
	)
		with input.task.flow_labels as ["private_data"]
	decision.approval_required == true
	decision.flow.rules == ["flow_trifecta"]
}

test_the_trifecta_can_be_tuned_to_jit if {
	history := [_entry(_ticket_read, "active"), _entry(_customer_read, "active")]
	decision := jit.decision with input as _flow_input(_support, _email, history)
		with jit.flows.trifecta.tier as "jit"
	decision == _with_flow(
		_jit("email", "email.send", [
			_jit_reason("email.send", "write"),
			"flow_trifecta: the task holds private_data and untrusted_input, so email.send (external_egress) needs jit",
		]),
		"write", ["external_egress"], ["private_data", "untrusted_input"], ["flow_trifecta"], false,
	)
}

test_reads_after_egress_are_not_escalated if {
	history := [_entry(_email, "active"), _entry(_customer_read, "active")]
	decision := jit.decision with input as _flow_input(_support, _ticket_read, history)
	decision == _with_flow(
		_standing("tickets", "tickets.read", [_standing_reason("tickets.read", "read", "tickets", 900)]),
		"read", ["untrusted_input"], ["external_egress", "private_data"], [], false,
	)
}

# ------------------------------------------------------------------ secrets

_secret_read := {
	"action": "vault.read", "resource": "vault://infra/db-password",
	"justification": "rotate the db password",
}

test_secret_read_labels_the_task if {
	decision := jit.decision with input as _flow_input(_ops, _secret_read, [])
	decision == _with_flow(
		_jit("vault", "vault.read", [_jit_reason("vault.read", "secret")]),
		"secret", ["private_data", "secret:infra"], [], [], false,
	)
}

test_after_a_secret_read_acting_in_its_domain_is_unchanged if {
	decision := jit.decision with input as _flow_input(
		_ops,
		{"action": "infra.restart", "resource": "infra://staging/api", "justification": "staging api is wedged"},
		[_entry(_secret_read, "expired")],
	)
	decision == _with_flow(
		_jit("infra-api", "infra.restart", [_jit_reason("infra.restart", "admin")]),
		"admin", [], ["private_data", "secret:infra"], [], false,
	)
}

test_after_a_secret_read_a_standing_read_elsewhere_needs_jit if {
	decision := jit.decision with input as _flow_input(
		_ops,
		object.union(_docs_read, {"justification": "runbook for the rotation"}),
		[_entry(_secret_read, "expired")],
	)
	decision == _with_flow(
		_jit("docs", "docs.read", [
			_jit_reason("docs.read", "read"),
			concat("", [
				"flow_secret_domain: the task read a secret of infra; acting on docs, ",
				"outside that domain, needs jit and a justification",
			]),
		]),
		"read", [], ["private_data", "secret:infra"], ["flow_secret_domain"], false,
	)
}

test_after_a_secret_read_acting_elsewhere_without_justification_is_denied if {
	decision := jit.decision with input as _flow_input(_ops, _docs_read, [_entry(_secret_read, "active")])
	decision == _with_flow(
		_denied(["justification_required: JIT grants need a justification of at least 10 characters"]),
		"read", [], ["private_data", "secret:infra"], ["flow_secret_domain"], false,
	)
}

test_another_secret_read_stays_in_the_secret_store if {
	decision := jit.decision with input as _flow_input(
		_ops,
		{"action": "vault.read", "resource": "vault://payments/key", "justification": "rotate the payments key"},
		[_entry(_secret_read, "active")],
	)
	decision.flow.rules == []
	decision.tier == "jit"
}

# ------------------------------------------------------------------ probing

_denied_at(times) := object.union(_flow_task([]), {"denials": times})

_probe(times, justification) := _input(
	_dev,
	object.union(_docs_read, {"justification": justification}),
	_denied_at(times),
)

# n denials, one a second, the last one second before request.time (10:00:00)
_recent(n) := [sprintf("2026-11-29T09:59:%02dZ", [59 - i]) | some i in numbers.range(0, n - 1)]

test_four_recent_denials_change_nothing if {
	decision := jit.decision with input as _probe(_recent(4), "")
	decision == _with_flow(
		_standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)]),
		"read", [], [], [], false,
	)
}

test_five_recent_denials_escalate_to_approval if {
	decision := jit.decision with input as _probe(_recent(5), "reading the handbook again")
	decision == _with_flow(
		_approval("docs", "docs.read", [
			_approval_reason("docs.read", "read"),
			"flow_probing: the task was denied 5 times in the last 600 s, so every request needs approval",
		]),
		"read", [], [], ["flow_probing"], false,
	)
}

test_ten_recent_denials_freeze_the_task if {
	decision := jit.decision with input as _probe(_recent(10), "")
	decision == _with_flow(
		_denied(["flow_frozen: the task was denied 10 times in the last 600 s and is frozen: end it and start another"]),
		"read", [], [], ["flow_frozen", "flow_probing"], false,
	)
}

test_old_denials_are_forgotten if {
	times := [sprintf("2026-11-29T09:0%d:00Z", [i]) | some i in numbers.range(0, 9)]
	decision := jit.decision with input as _probe(times, "")
	decision.allow == true
	decision.flow.rules == []
}

# ------------------------------------------------------------------ plans

_plan := [_ticket_read, _customer_read, object.remove(_email, ["justification"])]

_planned(intent) := object.union(_flow_input(_support, intent, []), {"task": {"plan": [
object.union(step, {"resource_parts": _parts(step.resource)}) |
	some step in _plan
]}})

test_a_step_of_the_plan_is_not_escalated if {
	decision := jit.decision with input as _planned(_ticket_read)
	decision == _with_flow(
		_standing("tickets", "tickets.read", [_standing_reason("tickets.read", "read", "tickets", 900)]),
		"read", ["untrusted_input"], [], [], false,
	)
}

test_a_read_outside_the_plan_is_raised_to_jit if {
	decision := jit.decision with input as _planned(object.union(_docs_read, {"justification": "need the refund policy"}))
	decision == _with_flow(
		_jit("docs", "docs.read", [
			_jit_reason("docs.read", "read"),
			"plan_deviation: docs.read on docs://handbook/intro is not in the task's declared plan, so it is raised to jit",
		]),
		"read", [], [], ["plan_deviation"], true,
	)
}

test_a_write_outside_the_plan_is_raised_to_approval if {
	decision := jit.decision with input as _planned({
		"action": "tickets.update", "resource": "tickets://t-1001",
		"justification": "closing the ticket for the customer",
	})
	decision == _with_flow(
		_approval("tickets", "tickets.update", [
			_approval_reason("tickets.update", "write"),
			"plan_deviation: tickets.update on tickets://t-1001 is not in the task's declared plan, so it is raised to approval",
		]),
		"write", [], [], ["plan_deviation"], true,
	)
}

test_another_resource_than_the_planned_one_is_a_deviation if {
	other := {"action": "customers.read", "resource": "customers://c-43", "justification": "another customer"}
	decision := jit.decision with input as _planned(other)
	decision.flow.plan_deviation == true
	decision.tier == "jit"
}

test_plan_deviation_can_be_switched_off if {
	decision := jit.decision with input as _planned(object.union(_docs_read, {"justification": "need the refund policy"}))
		with jit.flows.plan_deviation.enabled as false
	decision.tier == "standing"
	decision.flow.rules == []
	decision.flow.plan_deviation == true
}

_evaluate(plan) := _input(_support, _ticket_read, object.union(_flow_task([]), {"plan": [object.union_n([
	{"justification": "reply to the customer", "context": {}},
	step,
	{"resource_parts": _parts(step.resource)},
]) |
	some step in plan
]}))

test_plan_evaluation_lists_the_step_needing_approval if {
	evaluation := jit.plan_evaluation with input as _evaluate(_plan)
	evaluation == {"steps": [
		_with_flow(
			_standing("tickets", "tickets.read", [_standing_reason("tickets.read", "read", "tickets", 900)]),
			"read", ["untrusted_input"], [], [], false,
		),
		_with_flow(
			_standing("customers", "customers.read", [_standing_reason("customers.read", "read", "customers", 900)]),
			"read", ["private_data"], ["untrusted_input"], [], false,
		),
		_email_approval(["private_data", "untrusted_input"]),
	]}
}

test_plan_evaluation_without_the_ticket_read_needs_no_approval if {
	evaluation := jit.plan_evaluation with input as _evaluate([_customer_read, _email])
	[step.approval_required | some step in evaluation.steps] == [false, false]
	evaluation.steps[1] == _email_jit(["private_data"])
}

test_plan_evaluation_shows_a_denied_step if {
	refund := {"action": "payments.refund", "resource": "payments://orders/1"}
	evaluation := jit.plan_evaluation with input as _evaluate([_ticket_read, refund])
	evaluation.steps[1].allow == false
	evaluation.steps[1].reasons == ["cross_domain: payments is not among this agent's domains"]
}

test_without_a_plan_there_is_no_plan_evaluation if {
	not jit.plan_evaluation with input as json.remove(_input(_support, _ticket_read, {}), ["task/plan"])
}

# ------------------------------------------------------------------ malformed

test_malformed_flow_rules_deny if {
	decision := jit.decision with input as _flow_input(_support, _ticket_read, [])
		with jit.flows.probing.window_seconds as "600"
	decision == _with_flow(
		_denied(["flow_rules_invalid: data.jit.flows is malformed"]),
		"read", ["untrusted_input"], [], [], false,
	)
}

test_an_unknown_flow_rule_denies if {
	decision := jit.decision with input as _flow_input(_support, _ticket_read, [])
		with jit.flows.trifekta as {}
	decision.reasons == ["flow_rules_invalid: data.jit.flows is malformed"]
}

test_malformed_flow_input_is_invalid if {
	every field in ["flow_labels", "denials", "plan"] {
		decision := jit.decision with input as _input(_support, _ticket_read, {field: "x"})
		reason := sprintf("input_invalid: input.task.%s is missing or malformed: want an array, when present", [field])
		decision == _denied([reason])
	}
}

test_malformed_history_is_invalid if {
	decision := jit.decision with input as _input(_support, _ticket_read, {"history": {}})
	decision == _denied(["input_invalid: input.task.history is missing or malformed: want an array, when present"])
}

test_without_history_the_decision_has_no_flow_report if {
	decision := jit.decision with input as _input(_support, _ticket_read, {})
	not decision.flow
	decision.allow == true
}

# docs/policy-authoring.md, "Labelling a new tool".
test_a_new_tool_is_labelled_in_its_catalog_entry if {
	decision := jit.decision with input as _flow_input(
		_dev, {
			"action": "mcp.chat.post_message", "resource": "mcp://chat/tools/post_message",
			"justification": "post the release note",
		},
		[],
	)
		with jit.mcp_servers.chat as {"audience": "https://chat.example.com/mcp"}
		with jit.catalog["*.post_message"] as {"class": "write", "flow_labels": ["external_egress"]}
	decision.flow.labels == ["external_egress"]
	decision.allow == true
}

test_a_rule_left_out_of_flows_is_off if {
	history := [_entry(_ticket_read, "active"), _entry(_customer_read, "active")]
	decision := jit.decision with input as _flow_input(_support, _email, history)
		with jit.flows as {"plan_deviation": {"enabled": true}}
	decision == _email_jit(["private_data", "untrusted_input"])
}

test_a_planned_secret_read_escalates_the_steps_after_it if {
	steps := [
		object.union(_secret_read, {"context": {}, "resource_parts": _parts(_secret_read.resource)}),
		object.union(_docs_read, {
			"justification": "runbook for the rotation", "context": {},
			"resource_parts": _parts(_docs_read.resource),
		}),
	]
	evaluation := jit.plan_evaluation with input as _input(_ops, _docs_read, object.union(_flow_task([]), {"plan": steps}))
	[step.tier | some step in evaluation.steps] == ["jit", "jit"]
	evaluation.steps[1].flow.rules == ["flow_secret_domain"]
	evaluation.steps[1].flow.task_labels == ["private_data", "secret:infra"]
}

test_malformed_input_with_a_history_still_reports_a_flow if {
	decision := jit.decision with input as json.remove(_flow_input(_support, _ticket_read, []), ["intent/action"])
	decision.allow == false
	decision.flow == {"class": "", "labels": [], "task_labels": [], "rules": [], "plan_deviation": false}
}

# ------------------------------------------------------------------ GrantStream batches

# An earlier intent of the same GrantStream message comes as a `batched` entry without labels
# (sidecar/engine/batch.py): the policy gives its labels from data, so the message that reads
# a ticket and a customer record and then sends email meets the trifecta on its last intent.
_batched(intent) := {
	"action": intent.action, "resource": intent.resource, "class": "", "tier": "",
	"labels": [], "time": "2026-11-29T09:58:00Z", "state": "batched", "end_reason": "",
}

test_earlier_intents_of_a_batch_count_for_the_trifecta if {
	history := [_batched(_ticket_read), _batched(_customer_read)]
	decision := jit.decision with input as _flow_input(_support, _email, history)
	decision.approval_required
	decision.flow.rules == ["flow_trifecta"]
}

test_a_batched_entry_in_a_batch_evaluation_counts_too if {
	inputs := [_flow_input(_support, intent, [_batched(s) | some s in array.slice(order, 0, i)]) |
		order := [_ticket_read, _customer_read, _email]
		some i, intent in order
	]
	[d.approval_required | some d in jit.batch_decisions with input as {"batch": inputs}] == [false, false, true]
}

# Only a `batched` entry is labelled from data: a granted one carries the labels its decision
# gave (an empty list stays empty), so a relabelled catalog does not rewrite the past.
test_only_batched_entries_are_labelled_from_data if {
	granted_without_labels := object.union(_entry(_ticket_read, "active"), {"labels": []})
	history := [granted_without_labels, _batched(_customer_read)]
	decision := jit.decision with input as _flow_input(_support, _email, history)
	not decision.approval_required
	decision.flow.task_labels == ["private_data"]
}
