# Missing, malformed and unknown input never allows; the earliest failing stage is reported.
package jit_test

import data.jit

_want := {
	"identity.subject": "a non-empty string",
	"intent.action": "<domain>.<verb>, lower case",
	"intent.resource": "<domain>://<path>, no spaces",
	"intent.resource_parts": "{scheme, authority, segments}: the parts of intent.resource",
	"intent.justification": "a string",
	"intent.context": "an object",
	"task.labels": "an object",
	"task.labels.resources": "a string of comma-separated prefixes, when present",
	"task.grants": "an array",
}

_malformed(field) := sprintf("input_invalid: input.%s is missing or malformed: want %s", [field, _want[field]])

_all_malformed := [_malformed(field) |
	some field in [
		"identity.subject", "intent.action", "intent.context", "intent.justification",
		"intent.resource", "task.grants", "task.labels",
	]
]

test_empty_input_is_denied if {
	decision := jit.decision with input as {}
	decision == _denied(_all_malformed)
}

test_garbage_input_is_denied if {
	every garbage in ["garbage", 42, [1, 2], null, true, {"identity": "x", "intent": [], "task": 7}] {
		decision := jit.decision with input as garbage
		decision == _denied(_all_malformed)
	}
}

test_each_missing_field_is_named if {
	every field in object.keys(_want) - {"task.labels.resources"} {
		decision := jit.decision with input as json.remove(_input(_dev, {}, {}), [split(field, ".")])
		decision == _denied([_malformed(field)])
	}
}

test_wrongly_typed_fields_are_denied if {
	cases := [
		["identity.subject", {"identity": {"subject": ""}}],
		["identity.subject", {"identity": {"subject": 7}}],
		["intent.action", {"intent": {"action": "Docs.Read"}}],
		["intent.action", {"intent": {"action": "read"}}],
		["intent.resource", {"intent": {"resource": "urn:docs:1"}}],
		["intent.resource", {"intent": {"resource": "docs://a b"}}],
		["intent.justification", {"intent": {"justification": 7}}],
		["intent.context", {"intent": {"context": "{}"}}],
		["task.labels", {"task": {"labels": ["purpose"]}}],
		["task.labels.resources", {"task": {"labels": {"resources": ["docs://"]}}}],
		["task.grants", {"task": {"grants": {}}}],
	]
	every case in cases {
		decision := jit.decision with input as object.union(_input(_dev, {}, {}), case[1])
		decision == _denied([_malformed(case[0])])
	}
}

test_unknown_action_is_denied if {
	decision := jit.decision with input as _input(_dev, {"action": "docs.frobnicate"}, {})
	decision == _denied(["unknown_action: docs.frobnicate is not in the action catalog"])
}

test_unknown_domain_is_denied if {
	decision := jit.decision with input as _input(_dev, {"action": "wiki.read", "resource": "wiki://page"}, {})
	decision == _denied(["unknown_domain: wiki is not a known resource domain"])
}

test_action_must_match_the_resource_domain if {
	decision := jit.decision with input as _input(_dev, {"resource": "tickets://t-1"}, {})
	decision == _denied(["action_resource_mismatch: docs.read does not act on tickets resources"])
}

test_catalog_entry_without_class_is_denied if {
	decision := jit.decision with input as _input(_dev, {}, {}) with jit.catalog["*.read"] as {}
	decision == _denied(["class_invalid: docs.read has class (none), which has no valid tier in data.jit.classes"])
}

test_catalog_class_must_exist if {
	decision := jit.decision with input as _input(_dev, {}, {}) with jit.catalog["*.read"] as {"class": "nonsense"}
	decision == _denied(["class_invalid: docs.read has class nonsense, which has no valid tier in data.jit.classes"])
}

test_class_with_invalid_tier_is_denied if {
	decision := jit.decision with input as _input(_dev, {}, {}) with jit.classes.read as {"tier": "forever"}
	decision == _denied(["class_invalid: docs.read has class read, which has no valid tier in data.jit.classes"])
}

test_malformed_approval_triggers_deny if {
	every approval in [{"amount_above": "100"}, {"resource_prefixes": "payments://"}, {"resource_prefixes": [1]}, "yes"] {
		decision := jit.decision with input as _refund(500, "ticket 991: duplicate charge")
			with jit.classes.payment.approval as approval
		decision == _denied(["class_invalid: class payment has malformed approval triggers in data.jit.classes"])
	}
}

test_only_the_earliest_stage_is_reported if {
	# Malformed context (stage 1) hides the cross-domain denial (stage 3).
	decision := jit.decision with input as _input(
		_dev,
		{"action": "payments.refund", "resource": "payments://orders/42", "context": "nope"},
		{},
	)
	decision == _denied([_malformed("intent.context")])
}

test_missing_default_agent_means_no_home_domain if {
	decision := jit.decision with input as _update("closing stale ticket")
		with input.identity.subject as "spiffe://jit.local/agent/ghost"
		with jit.default_agent as null
	decision == _denied(["cross_domain: tickets is not among this agent's domains"])
}

# Missing or misshapen restrictions in data deny; they never lift the restriction.
test_malformed_purpose_restrictions_deny if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "support"}})
		with jit.purposes.support as {"classes": "read", "resource_prefixes": "docs://"}
	decision == _denied([
		"intent_mismatch: docs.read (class read) is outside the task's purpose support",
		"intent_mismatch: docs://handbook/intro is outside the resources of the task's purpose support",
	])
}

# A task without labels: every label rule either does not apply or denies.
test_task_without_labels_under_required_purpose_is_denied if {
	decision := jit.decision with input as json.remove(_input(_dev, {}, {}), ["task/labels"])
		with jit.limits.require_purpose as true
	decision == _denied([_malformed("task.labels")])
}
