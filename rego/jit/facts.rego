# What the input says, looked up in data. Every fact here is undefined when the input
# lacks what it needs; checks.rego turns that into a denial, never an allow.
package jit

# The resource's domain is its URI scheme: payments://orders/42 -> payments.
_domain := substring(input.intent.resource, 0, i) if {
	i := indexof(input.intent.resource, "://")
	i > 0
}

_domain_spec := data.jit.domains[_domain]

# Resource servers get a stable audience per domain (the domain's name unless data says).
_audience := audience if {
	not _domain_spec.audience_from
	audience := object.get(_domain_spec, "audience", _domain)
	is_string(audience)
	audience != ""
}

# A domain whose `audience_from` is "authority" (https-api, the egress proxy's upstreams)
# gets one audience per authority: https-api://ticket-api/... is for ticket-api only.
_audience := _authority if _domain_spec.audience_from == "authority"

_authority := authority if {
	authority := split(substring(input.intent.resource, count(_domain) + 3, -1), "/")[0]
	regex.match(`^[a-z0-9_-]+(\.[a-z0-9_-]+)*$`, authority)
}

_action_parts := split(input.intent.action, ".")

# tickets.comments.create -> namespace tickets, verb create.
_namespace := _action_parts[0]

_verb := _action_parts[count(_action_parts) - 1]

# The catalog entry: the exact action first, else the pattern "*.<verb>".
_entry := data.jit.catalog[input.intent.action]

_entry := data.jit.catalog[concat("", ["*.", _verb])] if not data.jit.catalog[input.intent.action]

_class := _entry.class

_class_spec := data.jit.classes[_class]

# Agents are keyed by their SPIFFE ID (identity.subject); an identity not listed gets
# data.jit.default_agent, which has no home domains unless the data says otherwise.
_agent := data.jit.agents[input.identity.subject]

_agent := data.jit.default_agent if not data.jit.agents[input.identity.subject]

_home if _domain in _agent.domains

_amount := amount if {
	amount := input.intent.context.amount
	is_number(amount)
	amount >= 0
}

# Crossing into another domain may only make the tier stricter, never standing.
_cross_domain_tier := tier if {
	tier := _domain_spec.cross_domain[_class]
	tier in {"jit", "approval"}
}
