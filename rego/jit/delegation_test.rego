# Delegation (delegation.rego): may_act, and the intersection of what the agent and the
# person may do. data.jit.delegation in data.json: support → tickets, docs; finance →
# payments, tickets, docs; customer_care → tickets, customers, email, docs; the dev agent
# acts for support and engineering, billing for finance and support, the support agent for
# customer_care (flows_test.rego: the trifecta of a delegated task).
package jit_test

import data.jit

_person(groups) := {"subject": "alice", "issuer": "https://idp.example", "claims": {"groups": groups}}

# Replaces (never merges into) the input's principal.
_for(inp, principal) := object.union(object.remove(inp, ["principal"]), {"principal": principal})

_refund_for(agent, groups) := _for(_agent_refund(agent), _person(groups))

_ticket_update := {"action": "tickets.update", "resource": "tickets://t-1", "justification": "ticket 991 asks for it"}

_update_for(agent, groups) := _for(_input(agent, _ticket_update, {}), _person(groups))

_may_input(agent, principal) := {"identity": {"subject": agent}, "principal": principal}

_agent_refund(agent) := _input(
	agent,
	{
		"action": "payments.refund", "resource": "payments://orders/42",
		"justification": "the customer was charged twice", "context": {"amount": 10},
	},
	{"labels": {"purpose": "refunds"}},
)

test_person_allowed_agent_not_is_denied_cross_domain if {
	# finance may refund; the dev agent's domains have no payments.
	d := jit.decision with input as _refund_for(_dev, ["support", "finance"])
	d.reasons == ["cross_domain: payments is not among this agent's domains"]
	not d.allow
}

test_agent_allowed_person_not_is_denied_principal_not_entitled if {
	# the billing agent may refund; a support person may not.
	d := jit.decision with input as _refund_for(_billing, ["support"])
	d == _denied(["principal_not_entitled: payments is not among the principal's domains"])
}

test_both_allowed_is_granted if {
	d := jit.decision with input as _update_for(_dev, ["support"])
	d.allow
	d.tier == "jit"
	d.scope == ["tickets.update"]
}

test_both_allowed_refund_is_granted if {
	d := jit.decision with input as _refund_for(_billing, ["finance"])
	d.allow
	d.scope == ["payments.refund"]
}

test_no_principal_is_the_agent_alone if {
	# null principal: nothing delegation-specific applies.
	d := jit.decision with input as _for(_agent_refund(_billing), null)
	d.allow
}

test_agent_that_may_not_act_for_the_person_is_denied_may_act if {
	# dev acts for support and engineering only; a finance-only person is not theirs.
	d := jit.decision with input as _update_for(_dev, ["finance"])
	d == _denied(["may_act: this agent may not act for the task's principal"])
}

test_may_act_allows_by_group if {
	answer := jit.may_act with input as _may_input(_dev, _person(["support"]))
	answer == {"allow": true, "reasons": []}
}

test_may_act_denies_other_groups_and_unknown_agents if {
	answer := jit.may_act with input as _may_input(_dev, _person(["finance"]))
	answer == {"allow": false, "reasons": ["may_act: this agent may not act for this person"]}
	not jit.may_act.allow with input as _may_input(_ops, _person(["support"]))
	not jit.may_act.allow with input as _may_input("spiffe://jit.local/agent/unknown", _person(["support"]))
}

test_may_act_by_subject_and_issuer if {
	rule := {"subjects": ["alice"], "issuers": ["https://idp.example"]}
	other := object.union(_person([]), {"issuer": "https://other.example"})
	bob := object.union(_person([]), {"subject": "bob"})
	jit.may_act.allow with input as _may_input(_ops, _person([])) with jit.delegation.may_act as {_ops: rule}
	not jit.may_act.allow with input as _may_input(_ops, other) with jit.delegation.may_act as {_ops: rule}
	not jit.may_act.allow with input as _may_input(_ops, bob) with jit.delegation.may_act as {_ops: rule}
}

test_may_act_denies_a_malformed_principal if {
	not jit.may_act.allow with input as _may_input(_dev, {"subject": "", "issuer": "x", "claims": {"groups": ["support"]}})
	not jit.may_act.allow with input as _may_input(_dev, {"subject": "alice", "claims": {"groups": ["support"]}})
	not jit.may_act.allow with input as _may_input(_dev, null)
}

test_entitlements_from_data_by_subject if {
	# no groups at all, but data entitles alice to tickets.
	inp := _update_for(_dev, [])
	not jit.decision.allow with input as inp
	jit.decision.allow with input as inp
		with jit.delegation.subject_domains as {"alice": ["tickets"]}
		with jit.delegation.may_act as {_dev: {"subjects": ["alice"]}}
}

test_group_claim_that_is_not_a_list_of_strings_entitles_nothing if {
	inp := _for(_update_for(_dev, ["support"]), object.union(_person([]), {"claims": {"groups": [1, {"a": "support"}]}}))
	not jit.decision.allow with input as inp
}

test_malformed_principal_is_input_invalid if {
	inp := _for(_update_for(_dev, ["support"]), {"subject": "alice"})
	d := jit.decision with input as inp
	d == _denied(["input_invalid: input.principal is malformed: want {subject, issuer, claims} or null"])
}
