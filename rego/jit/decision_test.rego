# The decision contract and the behaviours the README walkthrough and the integration tests
# rely on, for the dev identity of `make run`. Shared helpers for the other *_test.rego files
# live here too.
package jit_test

import data.jit

_dev := "spiffe://jit.local/agent/dev"

_billing := "spiffe://jit.local/agent/billing"

_ops := "spiffe://jit.local/agent/ops"

# A complete, well-formed input (docs/policy-authoring.md, "The input document"); `intent` and `task` override
# the defaults field by field.
_input(subject, intent, task) := {
	"identity": {"subject": subject, "trust_domain": "jit.local", "method": "dev", "issuer": "", "claims": {}},
	"intent": _with_parts(object.union(
		{"action": "docs.read", "resource": "docs://handbook/intro", "justification": "", "context": {}},
		intent,
	)),
	"task": object.union(
		{"id": "t-1", "goal": "g", "labels": {}, "age_seconds": 1, "remaining_seconds": 300, "grants": []},
		task,
	),
	"request": {"ttl_seconds": 60, "time": "2026-11-29T10:00:00Z"},
}

# The sidecar adds the parsed resource (sidecar/resources.py); this mirrors it for the tests.
_parts(resource) := {"scheme": scheme, "authority": pieces[0], "segments": array.slice(pieces, 1, count(pieces))} if {
	i := indexof(resource, "://")
	i > 0
	scheme := substring(resource, 0, i)
	pieces := split(substring(resource, i + 3, -1), "/")
}

_with_parts(intent) := object.union(intent, {"resource_parts": _parts(intent.resource)}) if {
	_parts(intent.resource)
} else := intent

_update(justification) := _input(
	_dev,
	{"action": "tickets.update", "resource": "tickets://t-1", "justification": justification},
	{},
)

_refund(amount, justification) := _input(
	_billing,
	{
		"action": "payments.refund", "resource": "payments://orders/42",
		"justification": justification, "context": {"amount": amount},
	},
	{"labels": {"purpose": "refunds"}},
)

_granted(tier, approval, ttl, audience, action, cache, reasons) := {
	"allow": true,
	"tier": tier,
	"approval_required": approval,
	"ttl_seconds": ttl,
	"audience": audience,
	"scope": [action],
	"reasons": reasons,
	"cache_seconds": cache,
}

_standing(audience, action, reasons) := _granted("standing", false, 900, audience, action, 30, reasons)

_jit(audience, action, reasons) := _granted("jit", false, 120, audience, action, 0, reasons)

_approval(audience, action, reasons) := _granted("jit", true, 60, audience, action, 0, reasons)

# The reasons the tier rules give (tiers.rego), spelled out once for the tests.
_standing_reason(action, class, domain, ttl) := sprintf(
	"tier_standing: %s (class %s) on %s, one of this agent's domains: standing grant of at most %d s",
	[action, class, domain, ttl],
)

_jit_reason(action, class) := sprintf("tier_jit: %s (class %s): JIT grant of at most 120 s", [action, class])

_approval_reason(action, class) := sprintf(
	"tier_approval: %s (class %s) needs human approval: JIT grant of at most 60 s once approved",
	[action, class],
)

_denied(reasons) := {
	"allow": false,
	"tier": "",
	"approval_required": false,
	"ttl_seconds": 0,
	"audience": "",
	"scope": [],
	"reasons": reasons,
	"cache_seconds": 0,
}

test_walkthrough_docs_read_is_standing if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "support"}})
	decision == _standing("docs", "docs.read", [
		"tier_standing: docs.read (class read) on docs, one of this agent's domains: standing grant of at most 900 s",
	])
}

test_walkthrough_ticket_update_with_justification_is_jit if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "tickets.update", "resource": "tickets://t-1001", "justification": "customer asked to close it"},
		{"labels": {"purpose": "support"}},
	)
	decision == _jit("tickets", "tickets.update", ["tier_jit: tickets.update (class write): JIT grant of at most 120 s"])
}

test_walkthrough_ticket_update_without_justification_is_denied if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "tickets.update", "resource": "tickets://t-1001"},
		{"labels": {"purpose": "support"}},
	)
	decision == _denied(["justification_required: JIT grants need a justification of at least 10 characters"])
}

test_walkthrough_refund_is_cross_domain_for_dev if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "payments.refund", "resource": "payments://orders/42", "justification": "ticket 991 duplicate"},
		{"labels": {"purpose": "support"}},
	)
	decision == _denied(["cross_domain: payments is not among this agent's domains"])
}

test_every_decision_has_the_contract_fields if {
	inputs := [
		_input(_dev, {}, {}),
		_input(_dev, {"action": "tickets.update", "resource": "tickets://t-1", "justification": "closing it now"}, {}),
		_input(_dev, {"action": "payments.refund", "resource": "payments://orders/1"}, {}),
		{},
	]
	every i in inputs {
		decision := jit.decision with input as i
		object.keys(decision) == {
			"allow", "tier", "approval_required", "ttl_seconds",
			"audience", "scope", "reasons", "cache_seconds",
		}
		every reason in decision.reasons {
			regex.match(`^[a-z][a-z0-9_]*: \S`, reason)
		}
	}
}

test_standing_is_cached_jit_never if {
	standing := jit.decision with input as _input(_dev, {}, {})
	write := jit.decision with input as _input(
		_dev,
		{"action": "tickets.update", "resource": "tickets://t-1", "justification": "closing it now"},
		{},
	)
	[standing.cache_seconds, write.cache_seconds] == [30, 0]
}
