# METADATA
# title: jit-sidecar grant policy
# description: |
#   Decides one agent intent (docs/policy-authoring.md). The rules are generic; what they
#   allow is data (data.jit, from data.json next to this file): the action catalog, risk
#   classes, tiers, domains, agents, task purposes and limits. See docs/policy-authoring.md.
#
#   Files: decision.rego (this entrypoint), checks.rego (every reason to deny, in stages),
#   tiers.rego (which tier an allowed intent gets, and why), facts.rego (what the input says),
#   flows.rego (what the task already did), plans.rego (a declared plan, evaluated up front).
package jit

# METADATA
# title: decision
# description: |
#   The decision for one intent: allow, tier, approval_required, ttl_seconds, audience,
#   scope, reasons, cache_seconds. It allows only when no check denies and every field of
#   the grant can be derived from data; a deny carries the reasons of the earliest failing
#   stage (see checks.rego). Each reason is "<reason_code>: <sentence>", the code coming
#   from the `custom.reason_code` annotation of the rule that produced it.
# scope: document
# entrypoint: true
# custom:
#   reason_code: default_deny
default decision := {
	"allow": false,
	"tier": "",
	"approval_required": false,
	"ttl_seconds": 0,
	"audience": "",
	"scope": [],
	"reasons": ["default_deny: no rule allows this intent"],
	"cache_seconds": 0,
}

# With a flow report (`flow`, flows.rego) when the input carries the task's history.
decision := _with_flow(_denied) if _denials != set()

decision := _with_flow(_granted) if _denials == set()

_denied := {
	"allow": false,
	"tier": "",
	"approval_required": false,
	"ttl_seconds": 0,
	"audience": "",
	"scope": [],
	"reasons": sort([d.reason | some d in _denials; d.stage == _first_stage]),
	"cache_seconds": 0,
}

_first_stage := min({d.stage | some d in _denials})

# Every field is derived; if any cannot be (a gap in data), this is undefined and the
# default (deny) stands. A brokered domain adds its `credential` (credentials.rego).
_granted := object.union(_granted_fields, _credential_member)

_granted_fields := {
	"allow": true,
	"tier": _token_tier,
	"approval_required": _tier == "approval",
	"ttl_seconds": _max_ttl,
	"audience": _audience,
	"scope": [input.intent.action],
	"reasons": array.concat([_tier_reason], sort([e.reason | some e in _escalations])),
	"cache_seconds": _cache_seconds,
}

# A reason string from the annotation of the rule that produced it. A rule without a
# `reason_code` annotation still yields a reason (never a silent gap), flagged as such.
_reason(meta, sentence) := concat(": ", [object.get(meta, ["custom", "reason_code"], "unannotated_rule"), sentence])
