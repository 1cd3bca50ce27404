# Limits: wildcards, grants per task, justification, payment amounts, TTL and cache per tier.
package jit_test

import data.jit

_held(n) := [{"action": "docs.read", "resource": sprintf("docs://%d", [i]), "tier": "standing"} |
	some i in numbers.range(1, n)
]

test_wildcard_resource_is_denied if {
	decision := jit.decision with input as _input(_dev, {"resource": "docs://handbook/*"}, {})
	decision == _denied(["wildcard_resource: docs://handbook/* contains a wildcard"])
}

test_grants_below_the_limit_are_allowed if {
	decision := jit.decision with input as _input(_dev, {}, {"grants": _held(49)})
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_grants_at_the_limit_are_denied if {
	decision := jit.decision with input as _input(_dev, {}, {"grants": _held(50)})
	decision == _denied(["too_many_grants: the task already holds 50 grants; the limit is 50"])
}

test_missing_grant_limit_fails_closed if {
	every limits in [{}, {"max_grants_per_task": "20"}] {
		decision := jit.decision with input as _input(_dev, {}, {}) with jit.limits as limits
		decision == _denied(["too_many_grants: the task already holds 0 grants; the limit is 0"])
	}
}

test_justification_at_the_minimum_length_is_enough if {
	decision := jit.decision with input as _update("0123456789")
	decision == _jit("tickets", "tickets.update", [_jit_reason("tickets.update", "write")])
}

test_justification_below_the_minimum_length_is_denied if {
	every justification in ["012345678", "", "   \t  ", "  short   "] {
		decision := jit.decision with input as _update(justification)
		decision == _denied(["justification_required: JIT grants need a justification of at least 10 characters"])
	}
}

test_approval_needs_a_longer_justification if {
	decision := jit.decision with input as _refund(500, "refund it please")
	decision == _denied(["justification_required: approval grants need a justification of at least 20 characters"])
}

test_standing_needs_no_justification if {
	decision := jit.decision with input as _input(_dev, {"justification": ""}, {})
	decision == _standing("docs", "docs.read", [_standing_reason("docs.read", "read", "docs", 900)])
}

test_justification_minimum_is_at_least_one if {
	decision := jit.decision with input as _update("")
		with jit.tiers.jit as {"max_ttl_seconds": 120, "justification_min_length": 0}
	decision == _denied(["justification_required: JIT grants need a justification of at least 1 characters"])
}

test_refund_amount_is_required if {
	every amount in [null, "50", -1, {}] {
		decision := jit.decision with input as _refund(amount, "ticket 991: duplicate charge")
		decision == _denied(["amount_required: payments.refund needs a number >= 0 in intent.context.amount"])
	}
}

test_refund_without_context_amount_is_denied if {
	decision := jit.decision with input as _refund(0, "ticket 991: duplicate charge")
		with input.intent.context as {}
	decision == _denied(["amount_required: payments.refund needs a number >= 0 in intent.context.amount"])
}

test_ttl_and_cache_come_from_the_tier if {
	decision := jit.decision with input as _input(_dev, {}, {})
		with jit.tiers.standing as {"max_ttl_seconds": 45, "cache_seconds": 5}
	decision == _granted("standing", false, 45, "docs", "docs.read", 5, [
		_standing_reason("docs.read", "read", "docs", 45),
	])
}

test_invalid_tier_ttl_fails_closed if {
	every spec in [{}, {"max_ttl_seconds": 0}, {"max_ttl_seconds": 1.5}, {"max_ttl_seconds": "60"}] {
		decision := jit.decision with input as _input(_dev, {}, {}) with jit.tiers.standing as spec
		decision == _denied(["default_deny: no rule allows this intent"])
	}
}

test_invalid_cache_seconds_mean_no_caching if {
	every seconds in [-1, 2.5, "30"] {
		decision := jit.decision with input as _input(_dev, {}, {})
			with jit.tiers.standing as {"max_ttl_seconds": 900, "cache_seconds": seconds}
		decision == _standing_uncached
	}
}

_standing_uncached := _granted("standing", false, 900, "docs", "docs.read", 0, [
	_standing_reason("docs.read", "read", "docs", 900),
])
