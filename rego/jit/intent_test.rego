# Intent checks: a task's `purpose` and `resources` labels bound what it may ask for.
package jit_test

import data.jit

test_purpose_allows_its_classes_and_prefixes if {
	decision := jit.decision with input as _refund(10, "ticket 12: double charge")
	decision == _jit("payments-api", "payments.refund", [_jit_reason("payments.refund", "payment")])
}

test_action_outside_purpose_is_denied if {
	decision := jit.decision with input as _refund(10, "ticket 12: double charge")
		with input.task.labels.purpose as "support"
	decision == _denied([
		"intent_mismatch: payments.refund (class payment) is outside the task's purpose support",
		"intent_mismatch: payments://orders/42 is outside the resources of the task's purpose support",
	])
}

test_resource_outside_purpose_is_denied if {
	decision := jit.decision with input as _refund(10, "ticket 12: double charge")
		with input.intent.resource as "payments://payouts/7"
		with input.intent.resource_parts as _parts("payments://payouts/7")
	decision == _denied(["intent_mismatch: payments://payouts/7 is outside the resources of the task's purpose refunds"])
}

test_class_outside_purpose_is_denied if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "infra.restart", "resource": "infra://staging/api", "justification": "staging api is wedged"},
		{"labels": {"purpose": "research"}},
	)
	decision == _denied(["intent_mismatch: infra.restart (class admin) is outside the task's purpose research"])
}

test_read_only_purpose_allows_reads if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "research"}})
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_unknown_purpose_is_denied if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "sightseeing"}})
	decision == _denied(["purpose_unknown: the task's purpose sightseeing is not defined"])
}

test_purpose_can_be_required if {
	decision := jit.decision with input as _input(_dev, {}, {}) with jit.limits.require_purpose as true
	decision == _denied(["purpose_required: the task has no purpose label"])
}

test_required_purpose_present_is_allowed if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "support"}})
		with jit.limits.require_purpose as true
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_task_resources_label_bounds_resources if {
	decision := jit.decision with input as _update("customer asked to close it")
		with input.task.labels.resources as "tickets://t-10, docs://"
	decision == _denied([
		"intent_mismatch: tickets://t-1 is outside the task's declared resources tickets://t-10, docs://",
	])
}

test_task_resources_label_admits_its_prefixes if {
	decision := jit.decision with input as _update("customer asked to close it")
		with input.task.labels.resources as "docs://,tickets://t-1"
	decision == _jit("tickets", "tickets.update", [_jit_reason("tickets.update", "write")])
}

test_empty_task_resources_label_admits_nothing if {
	every label in ["", " , "] {
		decision := jit.decision with input as _input(_dev, {}, {"labels": {"resources": label}})
		decision == _denied([sprintf(
			"intent_mismatch: docs://handbook/intro is outside the task's declared resources %s",
			[label],
		)])
	}
}

test_wildcard_in_task_resources_label_is_literal if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"resources": "docs://*"}})
	decision == _denied(["intent_mismatch: docs://handbook/intro is outside the task's declared resources docs://*"])
}

test_long_values_are_cut_short_in_reasons if {
	long := concat("", ["docs://", concat("", ["a" | some _ in numbers.range(1, 300)])])
	decision := jit.decision with input as _input(_dev, {"resource": long}, {"labels": {"resources": "tickets://"}})
	decision == _denied([sprintf(
		"intent_mismatch: %s... is outside the task's declared resources tickets://",
		[substring(long, 0, 96)],
	)])
}
