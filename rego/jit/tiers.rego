# Which tier an intent gets, and why. The action's risk class gives the base tier
# (data.jit.classes[<class>].tier); escalations can only make it stricter:
# standing < jit < approval. The decision's reasons are the final tier's reason followed by
# every escalation's reason.
package jit

_tier_rank := {"standing": 0, "jit": 1, "approval": 2}

_tier_by_rank := ["standing", "jit", "approval"]

_tier_word := {"standing": "standing", "jit": "JIT", "approval": "approval"}

_class_rank := _tier_rank[_class_spec.tier]

_tier := _tier_by_rank[max({_class_rank} | {_tier_rank[e.tier] | some e in _escalations})]

_tier_spec := data.jit.tiers[_tier]

# Approval is not a token tier of its own: an approved grant is a JIT grant.
_token_tier := {"standing": "standing", "jit": "jit", "approval": "jit"}[_tier]

_tier_label := _tier_word[_tier]

# The tier's TTL, not the requested one: a cached standing decision is reused for other
# requests, so it must not depend on anything outside the cache key. The sidecar takes the
# minimum of this, the request, the task's remaining time and its own limits.
_max_ttl := ttl if {
	ttl := _tier_spec.max_ttl_seconds
	is_number(ttl)
	ttl >= 1
	ttl == floor(ttl)
}

# Only standing decisions may be cached (docs/policy-authoring.md); JIT and approval decisions never are.
default _cache_seconds := 0

_cache_seconds := seconds if {
	_tier == "standing"
	seconds := _tier_spec.cache_seconds
	is_number(seconds)
	seconds >= 0
	seconds == floor(seconds)
}

# JIT and approval grants need a justification of at least this many characters (>= 1).
_min_justification := max([1, object.get(_tier_spec, "justification_min_length", 1)])

# METADATA
# title: cross-domain escalation
# description: |
#   Outside the agent's home domains, data.jit.domains[<domain>].cross_domain[<class>]
#   names the tier (jit or approval); anything else is denied in checks.rego.
# scope: rule
# custom:
#   reason_code: cross_domain_escalated
_escalations contains _escalation(rego.metadata.rule(), _cross_domain_tier, msg) if {
	not _home
	msg := sprintf(
		"%s is not among this agent's domains, so %s access there is raised to %s",
		[_domain, _class, _cross_domain_tier],
	)
}

# METADATA
# title: approval above an amount
# description: data.jit.classes[<class>].approval.amount_above; the amount is intent.context.amount.
# scope: rule
# custom:
#   reason_code: approval_amount
_escalations contains _escalation(rego.metadata.rule(), "approval", msg) if {
	limit := _class_spec.approval.amount_above
	_amount > limit
	msg := sprintf("%s of %v is above the approval limit of %v", [input.intent.action, _amount, limit])
}

# METADATA
# title: approval under resource prefixes
# description: |
#   data.jit.classes[<class>].approval.resource_prefixes, e.g. production infrastructure;
#   segment by segment (`_covers`, facts.rego): infra://prod/ covers infra://prod itself.
# scope: rule
# custom:
#   reason_code: approval_resource
_escalations contains _escalation(rego.metadata.rule(), "approval", msg) if {
	some prefix in _class_spec.approval.resource_prefixes
	_covers(prefix, input.intent.resource_parts)
	msg := sprintf("%s actions on resources under %s need human approval", [_class, prefix])
}

# METADATA
# title: standing tier
# description: A standing-class action on one of the agent's home domains.
# scope: rule
# custom:
#   reason_code: tier_standing
_tier_reason := _reason(rego.metadata.rule(), msg) if {
	_tier == "standing"
	msg := sprintf(
		"%s (class %s) on %s, one of this agent's domains: standing grant of at most %d s",
		[input.intent.action, _class, _domain, _max_ttl],
	)
}

# METADATA
# title: JIT tier
# description: A JIT-class action, or a standing-class one escalated (see the other reasons).
# scope: rule
# custom:
#   reason_code: tier_jit
_tier_reason := _reason(rego.metadata.rule(), msg) if {
	_tier == "jit"
	msg := sprintf("%s (class %s): JIT grant of at most %d s", [input.intent.action, _class, _max_ttl])
}

# METADATA
# title: approval tier
# description: A human must approve first; the grant is then a JIT grant.
# scope: rule
# custom:
#   reason_code: tier_approval
_tier_reason := _reason(rego.metadata.rule(), msg) if {
	_tier == "approval"
	msg := sprintf(
		"%s (class %s) needs human approval: JIT grant of at most %d s once approved",
		[input.intent.action, _class, _max_ttl],
	)
}

_escalation(meta, tier, sentence) := {"tier": tier, "reason": _reason(meta, sentence)}
