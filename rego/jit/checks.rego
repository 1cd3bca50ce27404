# Every reason to deny. Each rule adds one denial to `_denials`; its annotation names the
# reason code and the stage. The decision reports the denials of the earliest stage only:
# fix those and ask again to see the next. Stages:
#   1 input     the input document is complete and well-formed
#   2 catalog   the action, its class and the resource's domain are known to data
#   3 domain    the resource is in the agent's home domains, or data allows the crossing
#   4 intent    the request fits the task's declared purpose and resources
#   5 limits    grant count, justification, payment amount
package jit

# METADATA
# title: malformed input
# description: Every input field the policy reads must be present and well-formed.
# scope: rule
# custom:
#   reason_code: input_invalid
#   stage: 1
_denials contains _denial(rego.metadata.rule(), msg) if {
	some field in _malformed
	msg := sprintf("input.%s is missing or malformed: want %s", [field, _fields[field]])
}

# METADATA
# title: unknown action
# description: Actions not in data.jit.catalog (exactly, or as "*.<verb>") are denied.
# scope: rule
# custom:
#   reason_code: unknown_action
#   stage: 2
_denials contains _denial(rego.metadata.rule(), sprintf("%s is not in the action catalog", [input.intent.action])) if {
	not _entry
}

# METADATA
# title: class without a tier
# description: The catalog names a class that data.jit.classes lacks, or whose tier is not valid.
# scope: rule
# custom:
#   reason_code: class_invalid
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	not _class_rank
	class := object.get(_entry, "class", "(none)")
	msg := sprintf("%s has class %v, which has no valid tier in data.jit.classes", [input.intent.action, class])
}

# METADATA
# title: malformed approval triggers
# description: |
#   A class's approval.amount_above must be a number, its resource_prefixes canonical
#   resource prefixes (a misspelt prefix would otherwise switch approval off).
# scope: rule
# custom:
#   reason_code: class_invalid
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	_class_spec
	not _approval_triggers_valid
	msg := sprintf("class %s has malformed approval triggers in data.jit.classes", [_class])
}

# METADATA
# title: unknown domain
# description: Resources whose domain (URI scheme) is not in data.jit.domains are denied.
# scope: rule
# custom:
#   reason_code: unknown_domain
#   stage: 2
_denials contains _denial(rego.metadata.rule(), sprintf("%s is not a known resource domain", [_short(_domain)])) if {
	not _domain_spec
}

# METADATA
# title: wildcard resource
# description: A grant names one resource; wildcards are never granted.
# scope: rule
# custom:
#   reason_code: wildcard_resource
#   stage: 2
_denials contains _denial(rego.metadata.rule(), sprintf("%s contains a wildcard", [_short(input.intent.resource)])) if {
	contains(input.intent.resource, "*")
}

# METADATA
# title: action and resource disagree
# description: An action <domain>.<verb> acts only on resources of that domain.
# scope: rule
# custom:
#   reason_code: action_resource_mismatch
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	_namespace != _domain
	msg := sprintf("%s does not act on %s resources", [input.intent.action, _short(_domain)])
}

# METADATA
# title: cross-domain
# description: |
#   A resource outside the agent's home domains is denied unless
#   data.jit.domains[<domain>].cross_domain[<class>] names a stricter tier (jit or approval).
# scope: rule
# custom:
#   reason_code: cross_domain
#   stage: 3
_denials contains _denial(rego.metadata.rule(), sprintf("%s is not among this agent's domains", [_short(_domain)])) if {
	not _home
	not _cross_domain_tier
}

# METADATA
# title: purpose required
# description: With data.jit.limits.require_purpose, a task must carry a `purpose` label.
# scope: rule
# custom:
#   reason_code: purpose_required
#   stage: 4
_denials contains _denial(rego.metadata.rule(), "the task has no purpose label") if {
	data.jit.limits.require_purpose == true
	not input.task.labels.purpose
}

# METADATA
# title: unknown purpose
# description: A task's `purpose` label must name an entry of data.jit.purposes.
# scope: rule
# custom:
#   reason_code: purpose_unknown
#   stage: 4
_denials contains _denial(rego.metadata.rule(), msg) if {
	purpose := input.task.labels.purpose
	not data.jit.purposes[purpose]
	msg := sprintf("the task's purpose %s is not defined", [_short(sprintf("%v", [purpose]))])
}

# METADATA
# title: action outside the purpose
# description: A purpose with `classes` allows only actions of those risk classes.
# scope: rule
# custom:
#   reason_code: intent_mismatch
#   stage: 4
_denials contains _denial(rego.metadata.rule(), msg) if {
	purpose := input.task.labels.purpose
	classes := data.jit.purposes[purpose].classes
	not _class in classes
	msg := sprintf("%s (class %s) is outside the task's purpose %s", [input.intent.action, _class, purpose])
}

# METADATA
# title: resource outside the purpose
# description: |
#   A purpose with `resource_prefixes` allows only resources under one of them, segment by
#   segment (`_covers`, facts.rego).
# scope: rule
# custom:
#   reason_code: intent_mismatch
#   stage: 4
_denials contains _denial(rego.metadata.rule(), msg) if {
	purpose := input.task.labels.purpose
	prefixes := data.jit.purposes[purpose].resource_prefixes
	not _covered_by(prefixes)
	msg := sprintf(
		"%s is outside the resources of the task's purpose %s",
		[_short(input.intent.resource), _short(purpose)],
	)
}

# METADATA
# title: resource outside the task
# description: |
#   A task's `resources` label (comma-separated prefixes) bounds the resources it may ask
#   for, segment by segment (`_covers`, facts.rego). An empty list matches nothing; a `*` in a
#   prefix is literal and matches nothing.
# scope: rule
# custom:
#   reason_code: intent_mismatch
#   stage: 4
_denials contains _denial(rego.metadata.rule(), msg) if {
	label := input.task.labels.resources
	not _covered_by(_label_prefixes(label))
	msg := sprintf("%s is outside the task's declared resources %s", [_short(input.intent.resource), _short(label)])
}

# METADATA
# title: too many grants
# description: A task holds at most data.jit.limits.max_grants_per_task active grants.
# scope: rule
# custom:
#   reason_code: too_many_grants
#   stage: 5
_denials contains _denial(rego.metadata.rule(), msg) if {
	held := count(input.task.grants)
	held >= _max_grants
	msg := sprintf("the task already holds %d grants; the limit is %d", [held, _max_grants])
}

# METADATA
# title: justification required
# description: |
#   JIT and approval grants need a justification of at least
#   data.jit.tiers[<tier>].justification_min_length characters (at least 1).
# scope: rule
# custom:
#   reason_code: justification_required
#   stage: 5
_denials contains _denial(rego.metadata.rule(), msg) if {
	_tier != "standing"
	not _justified
	msg := sprintf("%s grants need a justification of at least %d characters", [_tier_label, _min_justification])
}

# METADATA
# title: amount required
# description: Classes with an approval amount limit need a number >= 0 in intent.context.amount.
# scope: rule
# custom:
#   reason_code: amount_required
#   stage: 5
_denials contains _denial(rego.metadata.rule(), msg) if {
	_class_spec.approval.amount_above
	not _amount
	msg := sprintf("%s needs a number >= 0 in intent.context.amount", [input.intent.action])
}

# A denial from the annotation of the rule that adds it. Unannotated rules still deny, and
# at stage 0 so that the gap shows first.
_denial(meta, sentence) := {
	"stage": object.get(meta, ["custom", "stage"], 0),
	"reason": _reason(meta, sentence),
}

# The input fields the policy reads, each with what a well-formed value looks like. A field
# is malformed unless a rule below vouches for it: absence can never pass (`not f(x)` with x
# undefined is itself undefined in Rego, so these checks are written positively).
_fields := {
	"identity.subject": "a non-empty string",
	"intent.action": "<domain>.<verb>, lower case",
	"intent.resource": "<domain>://<path>, no spaces",
	"intent.resource_parts": "{scheme, authority, segments}: the parts of intent.resource",
	"intent.justification": "a string",
	"intent.context": "an object",
	"task.labels": "an object",
	"task.labels.resources": "a string of comma-separated prefixes, when present",
	"task.grants": "an array",
}

_malformed := object.keys(_fields) - _well_formed

_well_formed contains "identity.subject" if _non_empty_string(input.identity.subject)

_well_formed contains "intent.action" if _matches(`^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$`, input.intent.action)

_well_formed contains "intent.resource" if _resource_well_formed

_well_formed contains "intent.resource_parts" if _resource_parts_valid

# Reported once, as intent.resource, when the resource itself is malformed.
_well_formed contains "intent.resource_parts" if not _resource_well_formed

_well_formed contains "intent.justification" if is_string(input.intent.justification)

_well_formed contains "intent.context" if is_object(input.intent.context)

_well_formed contains "task.labels" if _labels_object

_well_formed contains "task.labels.resources" if is_string(object.get(input.task.labels, "resources", ""))

# Reported once, as task.labels, when the labels themselves are not an object.
_well_formed contains "task.labels.resources" if not _labels_object

_well_formed contains "task.grants" if is_array(input.task.grants)

_labels_object if is_object(input.task.labels)

_resource_well_formed if _matches(`^[a-z][a-z0-9-]*://\S+$`, input.intent.resource)

# A typo here (a quoted amount, a lone prefix) must not switch approval off.
_approval_triggers_valid if {
	approval := object.get(_class_spec, "approval", {})
	is_number(object.get(approval, "amount_above", 0))
	prefixes := object.get(approval, "resource_prefixes", [])
	is_array(prefixes)
	every prefix in prefixes {
		_canonical_prefix(prefix)
	}
}

_non_empty_string(value) if {
	is_string(value)
	value != ""
}

_matches(pattern, value) if {
	is_string(value)
	regex.match(pattern, value)
}

# Reasons quote what the agent sent, cut short: the sidecar rejects reasons over 512 bytes.
_short(text) := text if count(text) <= 96

_short(text) := concat("", [substring(text, 0, 96), "..."]) if count(text) > 96

_label_prefixes(label) := [p |
	some part in split(label, ",")
	p := trim_space(part)
	p != ""
]

# A missing or malformed limit denies every request (fail closed), never allows any number.
default _max_grants := 0

_max_grants := limit if {
	limit := data.jit.limits.max_grants_per_task
	is_number(limit)
}

_justified if count(trim_space(input.intent.justification)) >= _min_justification
