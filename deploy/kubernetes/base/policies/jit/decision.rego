# METADATA
# title: jit-sidecar starter policy
# description: |
#   Deny by default. Reads on the agent's own domain get a standing grant; writes, deletes,
#   admin actions and secret reads get a short JIT grant and need a justification.
package jit

default decision := {"allow": false, "reasons": ["default_deny: no rule allows this intent"]}

_read_verbs := {"read", "list", "get"}

_jit_verbs := {"write", "create", "update", "delete", "admin", "refund"}

_verb := v if {
	parts := split(input.intent.action, ".")
	count(parts) >= 2
	v := parts[count(parts) - 1]
}

_domain := d if {
	parts := split(input.intent.resource, "://")
	count(parts) == 2
	d := parts[0]
}

_agent_name := n if {
	path := trim_prefix(input.identity.subject, sprintf("spiffe://%s/", [input.identity.trust_domain]))
	parts := split(path, "/")
	n := parts[count(parts) - 1]
}

# The agent's own domains come from data (data.jit.agents), else from its SPIFFE name.
_home_domains := data.jit.agents[input.identity.subject].domains

_home_domains := {_agent_name} if not data.jit.agents[input.identity.subject]

_own_domain if _domain in _home_domains

_secret if startswith(input.intent.action, "secrets.")

_justified if count(trim_space(input.intent.justification)) >= 8

# METADATA
# title: decision
# description: The decision for one intent (DESIGN.md, "OPA contract").
# entrypoint: true
decision := {
	"allow": true,
	"tier": "standing",
	"approval_required": false,
	"ttl_seconds": input.task.remaining_seconds,
	"audience": _domain,
	"scope": [input.intent.action],
	"reasons": ["standing_read: read on the agent's own domain"],
	"cache_seconds": 30,
} if {
	_verb in _read_verbs
	not _secret
	_own_domain
	input.task.remaining_seconds > 0
}

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": false,
	"ttl_seconds": 120,
	"audience": _domain,
	"scope": [input.intent.action],
	"reasons": ["jit_write: write, admin or secret access on the agent's own domain"],
	"cache_seconds": 0,
} if {
	_jit_candidate
	_own_domain
	_justified
}

decision := {"allow": false, "reasons": ["justification_required: JIT access needs a justification of at least 8 characters"]} if {
	_jit_candidate
	_own_domain
	not _justified
}

decision := {"allow": false, "reasons": [sprintf("cross_domain: %s is not among this agent's domains", [_domain])]} if {
	_known_verb
	not _own_domain
}

_jit_candidate if _verb in _jit_verbs

_jit_candidate if {
	_secret
	_verb in _read_verbs
}

_known_verb if _verb in _read_verbs

_known_verb if _verb in _jit_verbs
