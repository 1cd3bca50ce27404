# METADATA
# title: the jit policy through AuthZEN
# description: |
#   Decides an AuthZEN 1.0 Access Evaluation request (docs/authzen.md) with the jit policy
#   (data.jit.decision), so a gateway gets the standing / JIT / approval answer an agent
#   would. The request is mapped onto the jit input document:
#     subject.id            -> identity.subject   (the agent's SPIFFE ID)
#     action.name           -> intent.action
#     resource.id           -> intent.resource
#     context.justification -> intent.justification
#     context.intent        -> intent.context     (e.g. {"amount": 50})
#     context.task          -> task               (id, labels, grants)
#     context.ttl_seconds   -> request.ttl_seconds
#   Anything missing maps to an empty value, which the jit input checks deny.
package jit.authzen

# METADATA
# title: decision
# description: |
#   {"decision": bool, "context": {...}}. Allowed without approval: true, with the tier,
#   TTL and reasons. Allowed with approval: false, requestable (context.access_request;
#   the sidecar adds the ARAP binding). Denied: false with the jit reasons and, as
#   `reason`, the code of the first.
# scope: document
# entrypoint: true
default decision := {"decision": false, "context": {"reason": "default_deny"}}

decision := _answer(_jit_decision)

# The one place `with` is the point: the jit policy decides the mapped document.
_jit_decision := d if {
	# regal ignore:with-outside-test-context
	d := data.jit.decision with input as _jit_input
}

_jit_input := {
	"identity": {
		"subject": object.get(input, ["subject", "id"], ""),
		"trust_domain": _trust_domain,
		"method": "authzen",
		"issuer": "",
		"claims": {},
	},
	"intent": {
		"action": object.get(input, ["action", "name"], ""),
		"resource": _resource,
		"resource_parts": _resource_parts,
		"justification": object.get(input, ["context", "justification"], ""),
		"context": object.get(input, ["context", "intent"], {}),
	},
	"task": {
		"id": object.get(input, ["context", "task", "id"], ""),
		"goal": object.get(input, ["context", "task", "goal"], ""),
		"labels": object.get(input, ["context", "task", "labels"], {}),
		"grants": object.get(input, ["context", "task", "grants"], []),
	},
	"request": {"ttl_seconds": object.get(input, ["context", "ttl_seconds"], 300)},
}

_resource := object.get(input, ["resource", "id"], "")

# The jit policy compares parsed parts and checks them against the string (a gateway's
# resource id that is not canonical is denied there, input_invalid).
default _resource_parts := {}

_resource_parts := data.jit.resource_parts(_resource)

default _trust_domain := ""

_trust_domain := split(trim_prefix(input.subject.id, "spiffe://"), "/")[0] if {
	startswith(input.subject.id, "spiffe://")
}

_answer(d) := {
	"decision": true,
	"context": {"tier": d.tier, "ttl_seconds": d.ttl_seconds, "reasons": d.reasons},
} if {
	d.allow == true
	d.approval_required == false
}

_answer(d) := {
	"decision": false,
	"context": {
		"reason": "approval_required",
		"tier": d.tier,
		"ttl_seconds": d.ttl_seconds,
		"reasons": d.reasons,
		"access_request": {"template": "jit_approval"},
	},
} if {
	d.allow == true
	d.approval_required == true
}

_answer(d) := {
	"decision": false,
	"context": {"reason": _code(d.reasons), "reasons": d.reasons},
} if {
	d.allow == false
}

_code(reasons) := trim_space(split(reasons[0], ":")[0]) if count(reasons) > 0

else := "default_deny"
