# The AuthZEN mapping gives a gateway the answer an agent would get (docs/authzen.md).
package jit.authzen_test

import data.jit.authzen

_request(subject, action, resource, context) := {
	"subject": {"type": "agent", "id": subject},
	"action": {"name": action},
	"resource": {"type": "uri", "id": resource},
	"context": context,
}

test_standing_read_is_permitted if {
	d := authzen.decision with input as _request("spiffe://jit.local/agent/dev", "docs.read", "docs://handbook/intro", {})
	d.decision == true
	d.context.tier == "standing"
	d.context.ttl_seconds == 900
}

test_jit_write_is_permitted_with_its_ttl if {
	d := authzen.decision with input as _request(
		"spiffe://jit.local/agent/dev", "tickets.update", "tickets://t-1",
		{"justification": "fix the customer ticket T-1 as asked"},
	)
	d.decision == true
	d.context.tier == "jit"
	d.context.ttl_seconds == 120
}

test_approval_is_a_requestable_denial if {
	d := authzen.decision with input as _request(
		"spiffe://jit.local/agent/billing", "payments.refund", "payments://orders/42",
		{"justification": "refund the double charge on order 42", "intent": {"amount": 500}},
	)
	d.decision == false
	d.context.reason == "approval_required"
	d.context.access_request == {"template": "jit_approval"}
	d.context.tier == "jit"
}

test_small_refund_needs_no_approval if {
	d := authzen.decision with input as _request(
		"spiffe://jit.local/agent/billing", "payments.refund", "payments://orders/42",
		{"justification": "refund the double charge on order 42", "intent": {"amount": 50}},
	)
	d.decision == true
}

test_denial_carries_the_first_reason_code if {
	d := authzen.decision with input as _request("spiffe://jit.local/agent/dev", "zz", "q", {})
	d.decision == false
	d.context.reason == "input_invalid"
	not d.context.access_request
}

test_missing_members_deny if {
	d := authzen.decision with input as {}
	d.decision == false
	d.context.reason == "input_invalid"
}

test_non_spiffe_subject_has_no_trust_domain if {
	alice := _request("alice@example.com", "docs.read", "docs://x", {})
	authzen._trust_domain == "" with input as alice
	dev := _request("spiffe://jit.local/agent/dev", "docs.read", "docs://x", {})
	authzen._trust_domain == "jit.local" with input as dev
}

test_code_of_no_reasons_is_default_deny if {
	authzen._code([]) == "default_deny"
}

# A gateway's request reaches OPA verbatim, with no sidecar door in front: a resource id
# that is not the one canonical spelling is denied by the jit policy itself.
test_non_canonical_resources_are_denied if {
	every resource in ["tickets://T-1", "tickets://t-1/%61", "tickets://t-1/a%2fb", "tickets://t-1/./a", "tickets:t-1"] {
		d := authzen.decision with input as _request(
			"spiffe://jit.local/agent/dev", "tickets.update", resource,
			{"justification": "fix the customer ticket T-1 as asked"},
		)
		d.decision == false
	}
}

# Flows (flows.rego) need the task's history, which only the sidecar keeps for its own tasks:
# an AuthZEN request maps none (no history, flow labels, denials or plan), so it is decided as
# a task with no past, and a history the gateway sends in context.task is not read.
test_flows_see_no_history_through_authzen if {
	d := authzen.decision with input as _request(
		"spiffe://jit.local/agent/support", "email.send", "email://customer/c-42",
		{"justification": "reply to the customer about ticket t-1001", "task": {"history": [
			{"action": "tickets.read", "resource": "tickets://t-1001", "labels": ["untrusted_input"]},
			{"action": "customers.read", "resource": "customers://c-42", "labels": ["private_data"]},
		]}},
	)
	d.decision == true
	d.context.tier == "jit"
	not _mentions_flow(d.context.reasons)
}

_mentions_flow(reasons) if {
	some reason in reasons
	startswith(reason, "flow_")
}
