package jit_test

import data.jit

_input(action, resource, justification) := {
	"identity": {"subject": "spiffe://jit.local/agent/dev", "trust_domain": "jit.local", "method": "dev"},
	"intent": {"action": action, "resource": resource, "justification": justification, "context": {}},
	"task": {"id": "t-1", "goal": "g", "labels": {}, "age_seconds": 1, "remaining_seconds": 300, "grants": []},
	"request": {"ttl_seconds": 60, "time": "2026-11-29T10:00:00Z"},
}

test_standing_read_on_own_domain if {
	jit.decision == {
		"allow": true,
		"tier": "standing",
		"approval_required": false,
		"ttl_seconds": 300,
		"audience": "docs",
		"scope": ["docs.read"],
		"reasons": ["standing_read: read on the agent's own domain"],
		"cache_seconds": 30,
	} with input as _input("docs.read", "docs://handbook/intro", "")
}

test_jit_write_with_justification if {
	jit.decision == {
		"allow": true,
		"tier": "jit",
		"approval_required": false,
		"ttl_seconds": 120,
		"audience": "tickets",
		"scope": ["tickets.update"],
		"reasons": ["jit_write: write, admin or secret access on the agent's own domain"],
		"cache_seconds": 0,
	} with input as _input("tickets.update", "tickets://T-1001", "customer asked for a refund")
}

test_jit_write_without_justification_denied if {
	jit.decision == {
		"allow": false,
		"reasons": ["justification_required: JIT access needs a justification of at least 8 characters"],
	} with input as _input("tickets.update", "tickets://T-1001", "")
}

test_secret_read_is_jit if {
	d := jit.decision with input as _input("secrets.read", "docs://vault/api-key", "rotate the API key")
	d.tier == "jit"
}

test_cross_domain_denied if {
	jit.decision == {
		"allow": false,
		"reasons": ["cross_domain: payments is not among this agent's domains"],
	} with input as _input("payments.refund", "payments://orders/42", "ticket 991 duplicate charge")
}

test_unknown_verb_denied if {
	jit.decision == {
		"allow": false,
		"reasons": ["default_deny: no rule allows this intent"],
	} with input as _input("docs.frobnicate", "docs://x", "because reasons")
}

test_missing_input_denies if {
	not jit.decision.allow with input as {}
}

test_unknown_agent_home_domain_is_its_name if {
	d := jit.decision with input as object.union(
		_input("billing.read", "billing://invoices/1", ""),
		{"identity": {"subject": "spiffe://jit.local/agent/billing", "trust_domain": "jit.local"}},
	)
	d.tier == "standing"
}
