# Tier choice: standing, jit, approval, and the escalations that raise a tier.
package jit_test

import data.jit

test_read_variants_on_home_domain_are_standing if {
	every action in ["tickets.read", "tickets.get", "tickets.list", "tickets.search"] {
		decision := jit.decision with input as _input(_dev, {"action": action, "resource": "tickets://t-7"}, {})
		decision == _standing("tickets", action, [_standing_reason(action, "read", "tickets", 900)])
	}
}

test_multi_part_action_uses_its_last_segment_as_verb if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "tickets.comments.create", "resource": "tickets://t-7/comments", "justification": "reply to customer"},
		{},
	)
	decision == _jit("tickets", "tickets.comments.create", [_jit_reason("tickets.comments.create", "write")])
}

test_secret_read_is_jit_not_standing if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "vault.read", "resource": "vault://db/password", "justification": "rotate the db password"},
		{},
	)
	decision == _jit("vault", "vault.read", [_jit_reason("vault.read", "secret")])
}

test_admin_outside_production_is_jit if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "infra.restart", "resource": "infra://staging/api", "justification": "staging api is wedged"},
		{},
	)
	decision == _jit("infra-api", "infra.restart", [_jit_reason("infra.restart", "admin")])
}

test_admin_on_production_needs_approval if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "infra.restart", "resource": "infra://prod/api", "justification": "incident 77: prod api is wedged"},
		{},
	)
	decision == _approval("infra-api", "infra.restart", [
		_approval_reason("infra.restart", "admin"),
		"approval_resource: admin actions on resources under infra://prod/ need human approval",
	])
}

test_refund_up_to_the_limit_is_jit if {
	every amount in [0, 42.5, 100] {
		decision := jit.decision with input as _refund(amount, "ticket 991: duplicate charge")
		decision == _jit("payments-api", "payments.refund", [_jit_reason("payments.refund", "payment")])
	}
}

test_refund_above_the_limit_needs_approval if {
	decision := jit.decision with input as _refund(100.01, "ticket 991: duplicate charge")
	decision == _approval("payments-api", "payments.refund", [
		_approval_reason("payments.refund", "payment"),
		"approval_amount: payments.refund of 100.01 is above the approval limit of 100",
	])
}

test_cross_domain_read_is_raised_to_jit if {
	decision := jit.decision with input as _input(
		_billing,
		{"resource": "docs://x", "justification": "need the runbook"},
		{},
	)
		with jit.agents["spiffe://jit.local/agent/billing"].domains as ["payments"]
	decision == _jit("docs", "docs.read", [
		_jit_reason("docs.read", "read"),
		"cross_domain_escalated: docs is not among this agent's domains, so read access there is raised to jit",
	])
}

test_cross_domain_write_is_denied if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "tickets.update", "resource": "tickets://t-1", "justification": "closing stale ticket"},
		{},
	)
	decision == _denied(["cross_domain: tickets is not among this agent's domains"])
}

test_cross_domain_can_require_approval_per_data if {
	decision := jit.decision with input as _input(
		_ops,
		{"action": "tickets.update", "resource": "tickets://t-1", "justification": "closing stale ticket for ops"},
		{},
	)
		with jit.domains.tickets.cross_domain as {"write": "approval"}
	decision == _approval("tickets", "tickets.update", [
		_approval_reason("tickets.update", "write"),
		"cross_domain_escalated: tickets is not among this agent's domains, so write access there is raised to approval",
	])
}

test_cross_domain_can_never_be_standing if {
	decision := jit.decision with input as _input(_ops, {}, {})
		with jit.agents["spiffe://jit.local/agent/ops"].domains as ["infra"]
		with jit.domains.docs.cross_domain as {"read": "standing"}
	decision == _denied(["cross_domain: docs is not among this agent's domains"])
}

test_class_can_always_need_approval if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "tickets.delete", "resource": "tickets://t-1", "justification": "GDPR erasure request 12"},
		{},
	)
		with jit.catalog["*.delete"] as {"class": "destroy"}
		with jit.classes.destroy as {"tier": "approval"}
	decision == _approval("tickets", "tickets.delete", [_approval_reason("tickets.delete", "destroy")])
}

test_exact_catalog_entry_beats_verb_pattern if {
	decision := jit.decision with input as _input(_dev, {"justification": "reading the secret doc"}, {})
		with jit.catalog["docs.read"] as {"class": "secret"}
	decision == _jit("docs", "docs.read", [_jit_reason("docs.read", "secret")])
}

test_audience_defaults_to_the_domain_name if {
	decision := jit.decision with input as _input(_dev, {}, {})
		with jit.domains.docs as {"cross_domain": {}}
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_audience_comes_from_the_domain if {
	decision := jit.decision with input as _input(_dev, {}, {})
		with jit.domains.docs.audience as "https://docs.example.com"
	decision == _standing("https://docs.example.com", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_malformed_audience_fails_closed if {
	every audience in ["", 7, null] {
		decision := jit.decision with input as _input(_dev, {}, {}) with jit.domains.docs.audience as audience
		decision == _denied(["default_deny: no rule allows this intent"])
	}
}

test_unknown_agent_has_no_home_domain if {
	decision := jit.decision with input as _input(
		"spiffe://jit.local/agent/docs",
		{"justification": "reading the handbook"},
		{},
	)
	decision == _jit("docs", "docs.read", [
		_jit_reason("docs.read", "read"),
		"cross_domain_escalated: docs is not among this agent's domains, so read access there is raised to jit",
	])
}

test_default_agent_domains_come_from_data if {
	decision := jit.decision with input as _input("spiffe://other.example/agent/x", {}, {})
		with jit.default_agent.domains as ["docs"]
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}
