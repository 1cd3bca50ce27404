# What the input says, looked up in data. Every fact here is undefined when the input
# lacks what it needs; checks.rego turns that into a denial, never an allow.
package jit

# The resource's domain is its URI scheme: payments://orders/42 -> payments.
_domain := input.intent.resource_parts.scheme if _resource_parts_valid

_domain_spec := data.jit.domains[_domain]

# Resource servers get a stable audience per domain (the domain's name unless data says);
# MCP servers each their own canonical URI (mcp.rego).
_audience := audience if {
	_domain != "mcp"
	not _domain_spec.audience_from
	audience := object.get(_domain_spec, "audience", _domain)
	is_string(audience)
	audience != ""
}

# A domain whose `audience_from` is "authority" (https-api, the egress proxy's upstreams)
# gets one audience per authority: https-api://ticket-api/... is for ticket-api only.
_audience := _authority if _domain_spec.audience_from == "authority"

# The authority as the sidecar parsed it (canonical: refused at the door otherwise, and
# checked against the string by _resource_parts_valid, which _domain requires).
_authority := input.intent.resource_parts.authority if _domain

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

# Resources are compared by their parts, never as strings (docs/api.md, "Resource names").
# The sidecar refuses every non-canonical spelling at the door and hands the policy the
# parsed form as input.intent.resource_parts {scheme, authority, segments}; prefixes in data
# and in a task's `resources` label are parsed here. A string prefix would let
# infra://production pass for infra://prod, or hide infra://prod/web behind another spelling.

# The one segment-aware prefix test. "infra://prod" and "infra://prod/" cover infra://prod
# and everything under it, never infra://production; "infra://" covers the whole domain.
# A prefix that is not canonical covers nothing.
_covers(prefix, parts) if prefix == concat("", [parts.scheme, "://"])

_covers(prefix, parts) if {
	p := _prefix_parts(prefix)
	p.scheme == parts.scheme
	p.authority == parts.authority
	array.slice(parts.segments, 0, count(p.segments)) == p.segments
}

# Does any prefix in the array cover the intent's resource?
_covered_by(prefixes) if {
	some prefix in prefixes
	_covers(prefix, input.intent.resource_parts)
}

# "scheme://authority[/segment]...", with at most one trailing "/". No check of the form is
# needed here: a non-canonical prefix (PROD, %70rod, a dot or empty segment) yields parts
# that no canonical resource has, so it covers nothing.
_prefix_parts(prefix) := {"scheme": scheme, "authority": authority, "segments": segments} if {
	i := indexof(prefix, "://")
	scheme := substring(prefix, 0, i)
	[authority, segments] := _split_path(trim_suffix(substring(prefix, i + 3, -1), "/"))
}

_split_path(path) := [pieces[0], array.slice(pieces, 1, count(pieces))] if pieces := split(path, "/")

_canonical_prefix(prefix) if {
	_matches(`^[a-z][a-z0-9+.-]*://([a-z0-9_-]+(\.[a-z0-9_-]+)*(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?)?$`, prefix)
	not regex.match(`/\.\.?(/|$)`, prefix)
}

# The sidecar's parse of intent.resource, checked against the string itself: the parts the
# rules compare and the string the token names are one resource (RFC 3986 §6.2.2 spellings
# were refused at the door; dot and empty segments are refused here too).
# Two regular expressions on the whole string, not one per segment (they are most of the cost
# of a decision); no piece holding a "/" makes the split of the string unique.
_resource_parts_valid if {
	parts := input.intent.resource_parts
	is_array(parts.segments)
	every piece in array.concat([parts.authority], parts.segments) {
		is_string(piece)
		not contains(piece, "/")
	}
	joined := concat("/", array.concat([concat("://", [parts.scheme, parts.authority])], parts.segments))
	joined == input.intent.resource
	_matches(`^[a-z][a-z0-9+.-]*://[a-z0-9_-]+(\.[a-z0-9_-]+)*(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$`, joined)
	not regex.match(`/\.\.?(/|$)`, joined)
	_escapes_canonical(joined)
}

# A percent-escape is one spelling only for a character that may not appear raw (docs/api.md,
# "Resource names"; RFC 3986 §6.2.2.2): %70 for "p", %2F or lower-case hex are other
# spellings. The sidecar refuses them at the door; a document that reaches the policy another
# way (AuthZEN passes a gateway's request verbatim) is held to the same rule here.
_escapes_canonical(resource) if not contains(resource, "%")

_escapes_canonical(resource) if {
	contains(resource, "%")
	every escape in regex.find_n(`%.?.?`, resource, -1) {
		escape in _needed_escapes
	}
}

_needed_escapes := {"%20", "%22", "%23", "%25", "%3C", "%3E", "%3F", "%5B", "%5D", "%5E", "%60", "%7B", "%7C", "%7D"}

# METADATA
# description: |
#   The parts of a resource name as the sidecar's parser gives them
#   ({scheme, authority, segments}), for documents built inside the policy (the AuthZEN
#   mapping); undefined without "://". Whether the name is canonical is the input check's.
resource_parts(resource) := {"scheme": scheme, "authority": authority, "segments": segments} if {
	i := indexof(resource, "://")
	i > 0
	scheme := substring(resource, 0, i)
	[authority, segments] := _split_path(substring(resource, i + 3, -1))
}
