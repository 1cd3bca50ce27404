# Delegation: an agent acting for a person (docs/delegation.md). A task may carry
# input.principal, the person its verified subject token names; without one it is null and
# nothing here applies. Two rules, both driven by data.jit.delegation:
# - may_act: which agents may act for which people (by subject, by group, by issuer);
# - the intersection: for a person, an intent is allowed only in a domain both the agent
#   (data.jit.agents, checks.rego) and the person (their entitlements) may use.
# A person's entitlements come from their token's claims (the groups claim named by
# data.jit.delegation.groups_claim, mapped to domains by group_domains) or from data
# (subject_domains). A principal that is present but malformed denies (input_invalid).
package jit

# METADATA
# title: may_act
# description: |
#   May this agent act for this person? The sidecar asks at BeginTask (POST
#   /v1/data/jit/may_act with input {identity, principal}) and refuses the task with
#   PERMISSION_DENIED may_act unless `allow` is true. Deny by default.
# scope: document
# entrypoint: true
# custom:
#   reason_code: may_act
default may_act := {"allow": false, "reasons": ["may_act: this agent may not act for this person"]}

may_act := {"allow": true, "reasons": []} if _may_act

# The rule for the calling agent (or the default one) lists the people it may act for.
_act_rule := data.jit.delegation.may_act[input.identity.subject]

_act_rule := data.jit.delegation.default_may_act if not data.jit.delegation.may_act[input.identity.subject]

_may_act if {
	_principal_well_formed
	_issuer_allowed
	_person_matches
}

# No `issuers` list: any verified issuer; otherwise the principal's must be listed.
_issuer_allowed if not _act_rule.issuers

_issuer_allowed if input.principal.issuer in _act_rule.issuers

_person_matches if input.principal.subject in object.get(_act_rule, "subjects", [])

_person_matches if {
	some group in _principal_groups
	group in object.get(_act_rule, "groups", [])
}

# The person's groups: the configured claim, when it is a list of strings.
_principal_groups contains group if {
	some group in input.principal.claims[data.jit.delegation.groups_claim]
	is_string(group)
}

# The domains the person is entitled to: from their groups, and from data by subject.
_principal_domains contains domain if {
	some group in _principal_groups
	some domain in data.jit.delegation.group_domains[group]
}

_principal_domains contains domain if {
	some domain in data.jit.delegation.subject_domains[input.principal.subject]
}

_has_principal if input.principal != null

_principal_well_formed if {
	is_string(input.principal.subject)
	input.principal.subject != ""
	is_string(input.principal.issuer)
	is_object(input.principal.claims)
}

# METADATA
# title: malformed principal
# description: A principal that is present must be {subject, issuer, claims}.
# scope: rule
# custom:
#   reason_code: input_invalid
#   stage: 1
_denials contains _denial(rego.metadata.rule(), msg) if {
	_has_principal
	not _principal_well_formed
	msg := "input.principal is malformed: want {subject, issuer, claims} or null"
}

# METADATA
# title: not acting for this person
# description: |
#   The agent may not act for the task's principal (data.jit.delegation.may_act). Checked
#   at BeginTask too; repeated here so that no grant is ever decided without it.
# scope: rule
# custom:
#   reason_code: may_act
#   stage: 3
_denials contains _denial(rego.metadata.rule(), "this agent may not act for the task's principal") if {
	_has_principal
	_principal_well_formed
	not _may_act
}

# METADATA
# title: principal not entitled
# description: |
#   The intersection rule: for a task with a principal, the resource's domain must also be
#   among the person's entitlements (their groups' domains, or subject_domains).
# scope: rule
# custom:
#   reason_code: principal_not_entitled
#   stage: 3
_denials contains _denial(rego.metadata.rule(), msg) if {
	_has_principal
	_principal_well_formed
	not _domain in _principal_domains
	msg := sprintf("%s is not among the principal's domains", [_short(_domain)])
}
