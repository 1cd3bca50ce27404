# Flows: what the task already did decides what it may do next (docs/policy-authoring.md,
# "Flows"). Actions and domains carry flow labels in data.json (catalog[<action>].flow_labels,
# domains[<domain>].flow_labels[<class>]); a task accumulates the labels of every grant it
# was ever issued (input.task.flow_labels, kept by the sidecar, and input.task.history, its
# recent grants, ended ones included). The rules, tuned in data.jit.flows:
#   trifecta        a task holding private_data and untrusted_input needs approval for any
#                   external_egress (the "lethal trifecta" of agent exfiltration);
#   secret_domain   after vault.read of vault://<d>/..., acting outside <d> needs JIT plus a
#                   justification;
#   probing         N denials within a window escalate every request, more freeze the task;
#   plan_deviation  an intent outside the task's declared plan is raised one tier.
# The flow report (`flow` in the decision) is given whenever the input carries a history, as
# the sidecar's always does.
package jit

default _flows := {}

_flows := data.jit.flows

# ------------------------------------------------------------------ labels

_catalog_entry(action) := data.jit.catalog[action]

_catalog_entry(action) := data.jit.catalog[concat("", ["*.", _last_segment(action)])] if {
	not data.jit.catalog[action]
}

_last_segment(action) := parts[count(parts) - 1] if parts := split(action, ".")

_scheme_of(resource) := substring(resource, 0, indexof(resource, "://")) if indexof(resource, "://") > 0

_authority_of(resource) := split(substring(resource, indexof(resource, "://") + 3, -1), "/")[0]

# The labels of one action on one resource: the catalog entry's, the domain's for the entry's
# class, and "secret:<authority>" for a secret read (flows.secret_domain.actions).
_labels_of(action, resource) := _action_labels(action) | _resource_labels(action, resource)

_resource_labels(action, resource) := _domain_labels(action, resource) | _secret_labels(action, resource)

_action_labels(action) := {label |
	entry := _catalog_entry(action)
	some label in object.get(entry, "flow_labels", [])
	is_string(label)
}

_domain_labels(action, resource) := {label |
	class := _catalog_entry(action).class
	some label in object.get(data.jit.domains, [_scheme_of(resource), "flow_labels", class], [])
	is_string(label)
}

_secret_labels(action, resource) := {sprintf("secret:%s", [_authority_of(resource)]) |
	action in object.get(_flows, ["secret_domain", "actions"], [])
}

default _intent_flow_labels := set()

# The same as _labels_of for the intent, from the facts already derived (a function call per
# label source cost a noticeable share of every decision).
_intent_flow_labels := (_intent_action_labels | _intent_domain_labels) | _intent_secret_labels

_intent_action_labels contains label if {
	some label in object.get(_entry, "flow_labels", [])
	is_string(label)
}

_intent_domain_labels contains label if {
	some label in object.get(_domain_spec, ["flow_labels", _class], [])
	is_string(label)
}

_intent_secret_labels contains sprintf("secret:%s", [input.intent.resource_parts.authority]) if {
	input.intent.action in object.get(_flows, ["secret_domain", "actions"], [])
}

# Labels accumulate: every label the sidecar recorded for the task (it never drops one, even
# when the grant that brought it left the history window), and the labels of each history
# entry (ended grants included). The labels an entry carries are those the policy gave its
# intent when it was granted; they are not looked up in data again: that lookup per entry was
# most of the cost of a long history (docs/performance.md).
_task_flow_labels := ({label |
	some label in object.get(input, ["task", "flow_labels"], [])
	is_string(label)
} | {label |
	some entry in object.get(input, ["task", "history"], [])
	some label in entry.labels
	is_string(label)
}) | _batched_flow_labels

# An earlier intent of the same GrantStream message (sidecar/engine/batch.py) is in the history
# as a `batched` entry without labels: it is decided in the same evaluation, so its labels
# are the policy's to give, from data, as for a declared plan's earlier steps (plans.rego).
_batched_flow_labels contains label if {
	some entry in object.get(input, ["task", "history"], [])
	entry.state == "batched"
	some label in _labels_of(entry.action, entry.resource)
}

_all_flow_labels := _task_flow_labels | _intent_flow_labels

# ------------------------------------------------------------------ rules

# METADATA
# title: lethal trifecta
# description: |
#   A task holding every label of flows.trifecta.requires (private_data, untrusted_input)
#   asks for an intent labelled flows.trifecta.on (external_egress): raised to
#   flows.trifecta.tier (approval).
# scope: rule
# custom:
#   reason_code: flow_trifecta
_escalations contains _escalation(rego.metadata.rule(), tier, msg) if {
	rule := _flows.trifecta
	rule.on in _intent_flow_labels
	count(rule.requires) > 0
	every label in rule.requires {
		label in _all_flow_labels
	}
	tier := _flow_tier(rule)
	msg := sprintf(
		"the task holds %s, so %s (%s) needs %s",
		[concat(" and ", sort(rule.requires)), input.intent.action, rule.on, tier],
	)
}

# METADATA
# title: outside a secret's domain
# description: |
#   After a secret read (flows.secret_domain.actions) of <scheme>://<d>/..., an intent on a
#   domain other than <d> (or the secret store's own) is raised to flows.secret_domain.tier.
# scope: rule
# custom:
#   reason_code: flow_secret_domain
_escalations contains _escalation(rego.metadata.rule(), tier, msg) if {
	count(_secrets_read) > 0
	not _domain in _secret_store_domains
	rule := _flows.secret_domain
	tier := _flow_tier(rule)
	some secret_domain in _secrets_read
	_domain != secret_domain
	msg := sprintf(
		"the task read a secret of %s; acting on %s, outside that domain, needs %s and a justification",
		[_short(secret_domain), _short(_domain), tier],
	)
}

# METADATA
# title: probing agent
# description: |
#   flows.probing.escalate_after denials within flows.probing.window_seconds raise every
#   request to flows.probing.escalate_to.
# scope: rule
# custom:
#   reason_code: flow_probing
_escalations contains _escalation(rego.metadata.rule(), tier, msg) if {
	rule := _flows.probing
	count(_denial_times) >= rule.escalate_after
	_recent_denials >= rule.escalate_after
	tier := object.get(rule, "escalate_to", "approval")
	tier in {"jit", "approval"}
	msg := sprintf(
		"the task was denied %d times in the last %v s, so every request needs %s",
		[_recent_denials, rule.window_seconds, tier],
	)
}

# METADATA
# title: outside the declared plan
# description: |
#   A task that declared a plan (input.task.plan) asks for an intent no step covers (same
#   action, resource under the step's): raised one tier above the action's class tier.
# scope: rule
# custom:
#   reason_code: plan_deviation
_escalations contains _escalation(rego.metadata.rule(), tier, msg) if {
	object.get(_flows, ["plan_deviation", "enabled"], true) != false
	_plan_deviation
	tier := _tier_by_rank[min([2, _class_rank + 1])]
	msg := sprintf(
		"%s on %s is not in the task's declared plan, so it is raised to %s",
		[input.intent.action, _short(input.intent.resource), tier],
	)
}

# METADATA
# title: frozen task
# description: flows.probing.freeze_after denials within the window deny every request.
# scope: rule
# custom:
#   reason_code: flow_frozen
#   stage: 2
_denials contains _denial(rego.metadata.rule(), msg) if {
	rule := _flows.probing
	count(_denial_times) >= rule.freeze_after
	_recent_denials >= rule.freeze_after
	msg := sprintf(
		"the task was denied %d times in the last %v s and is frozen: end it and start another",
		[_recent_denials, rule.window_seconds],
	)
}

# METADATA
# title: malformed flow rules
# description: |
#   data.jit.flows must be well-formed: a typo (a quoted number, a lone label) must not
#   switch a flow rule off.
# scope: rule
# custom:
#   reason_code: flow_rules_invalid
#   stage: 2
_denials contains _denial(rego.metadata.rule(), "data.jit.flows is malformed") if {
	not _flows_valid
}

# METADATA
# title: malformed flow input
# description: The task's history, flow labels, denials and plan, when present, are arrays.
# scope: rule
# custom:
#   reason_code: input_invalid
#   stage: 1
_denials contains _denial(rego.metadata.rule(), msg) if {
	not _flow_input_well_formed
	some field in {"history", "flow_labels", "denials", "plan"}
	not is_array(object.get(input, ["task", field], []))
	msg := sprintf("input.task.%s is missing or malformed: want an array, when present", [field])
}

_flow_input_well_formed if {
	is_array(object.get(input, ["task", "history"], []))
	is_array(object.get(input, ["task", "flow_labels"], []))
	is_array(object.get(input, ["task", "denials"], []))
	is_array(object.get(input, ["task", "plan"], []))
}

_denial_times := object.get(input, ["task", "denials"], [])

# Denials since request.time - window. The sidecar sends the task's most recent denials.
_recent_denials := count([t |
	some t in _denial_times
	time.parse_rfc3339_ns(t) > time.parse_rfc3339_ns(input.request.time) - (_flows.probing.window_seconds * 1000000000)
])

# The domains of the secret-reading actions themselves (vault): reading another secret stays
# inside the secret store.
_secrets_read contains substring(label, count("secret:"), -1) if {
	some label in _all_flow_labels
	startswith(label, "secret:")
}

_secret_store_domains contains split(action, ".")[0] if some action in _flows.secret_domain.actions

_flow_tier(rule) := tier if {
	tier := object.get(rule, "tier", "approval")
	tier in {"jit", "approval"}
}

_in_plan if {
	some step in input.task.plan
	step.action == input.intent.action
	_covers(step.resource, input.intent.resource_parts)
}

_plan_deviation if {
	count(object.get(input, ["task", "plan"], [])) > 0
	not _in_plan
}

# Rules, not a function per rule: this runs for every decision.
_flows_valid if {
	object.keys(_flows) - {"trifecta", "secret_domain", "probing", "plan_deviation"} == set()
	_trifecta_valid
	_secret_domain_valid
	_probing_valid
	is_boolean(object.get(_flows, ["plan_deviation", "enabled"], true))
}

_trifecta_valid if not _flows.trifecta

_trifecta_valid if {
	rule := _flows.trifecta
	is_string(rule.on)
	is_array(rule.requires)
	every label in rule.requires {
		is_string(label)
	}
	_flow_tier(rule)
}

_secret_domain_valid if not _flows.secret_domain

_secret_domain_valid if {
	is_array(_flows.secret_domain.actions)
	_flow_tier(_flows.secret_domain)
}

_probing_valid if not _flows.probing

_probing_valid if {
	rule := _flows.probing
	every key in ["window_seconds", "escalate_after", "freeze_after"] {
		is_number(rule[key])
		rule[key] > 0
	}
	object.get(rule, "escalate_to", "approval") in {"jit", "approval"}
}

# ------------------------------------------------------------------ the flow report

_flow_codes := {"flow_trifecta", "flow_secret_domain", "flow_probing", "flow_frozen", "plan_deviation"}

_flow_rules_fired contains code if {
	some entry in (_escalations | _denials)
	code := split(entry.reason, ":")[0]
	code in _flow_codes
}

default _flow_class := ""

_flow_class := _class if is_string(_class)

# What the sidecar records and explain shows: the intent's class and labels, the labels the
# task held before it, the flow rules that fired and whether it left the plan.
_flow := {
	"class": _flow_class,
	"labels": sort(_intent_flow_labels),
	"task_labels": sort(_task_flow_labels),
	"rules": sort(_flow_rules_fired),
	"plan_deviation": _plan_deviation_reported,
}

default _plan_deviation_reported := false

_plan_deviation_reported if _plan_deviation

_reports_flow if is_array(input.task.history)

_with_flow(d) := object.union(d, {"flow": _flow}) if _reports_flow

_with_flow(d) := d if not _reports_flow
