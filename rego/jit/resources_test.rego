# Resources compare by segments (`_covers` in facts.rego): a prefix covers itself and what is under
# it, never a longer name; the parsed parts must be those of the string the token names.
package jit_test

import data.jit

_restart(resource) := _input(
	_ops,
	{"action": "infra.restart", "resource": resource, "justification": "incident 77: the service is wedged"},
	{},
)

_approval_restart := _approval("infra-api", "infra.restart", [
	_approval_reason("infra.restart", "admin"),
	"approval_resource: admin actions on resources under infra://prod/ need human approval",
])

_jit_restart := _jit("infra-api", "infra.restart", [_jit_reason("infra.restart", "admin")])

test_approval_prefix_covers_the_bare_authority_and_what_is_under_it if {
	every resource in ["infra://prod", "infra://prod/web", "infra://prod/web/pod-1"] {
		decision := jit.decision with input as _restart(resource)
		decision == _approval_restart
	}
}

test_approval_prefix_never_covers_a_longer_name if {
	every resource in ["infra://production/web", "infra://prod-eu/web", "infra://staging/prod/web"] {
		decision := jit.decision with input as _restart(resource)
		decision == _jit_restart
	}
}

test_approval_prefix_without_trailing_slash_covers_the_same if {
	every resource in ["infra://prod", "infra://prod/web"] {
		decision := jit.decision with input as _restart(resource)
			with jit.classes.admin.approval.resource_prefixes as ["infra://prod"]
		decision == _approval("infra-api", "infra.restart", [
			_approval_reason("infra.restart", "admin"),
			"approval_resource: admin actions on resources under infra://prod need human approval",
		])
	}
}

test_misspelt_approval_prefix_denies_instead_of_switching_approval_off if {
	every prefix in ["infra://PROD/", "infra://prod//", "infra://./prod/", "infra://prod/../x", "infra:prod"] {
		decision := jit.decision with input as _restart("infra://prod/web")
			with jit.classes.admin.approval.resource_prefixes as [prefix]
		decision == _denied(["class_invalid: class admin has malformed approval triggers in data.jit.classes"])
	}
}

test_task_resources_label_is_segment_aware if {
	decision := jit.decision with input as _restart("infra://staging-eu/web")
		with input.task.labels.resources as "infra://staging/"
	decision == _denied([
		"intent_mismatch: infra://staging-eu/web is outside the task's declared resources infra://staging/",
	])
}

test_task_resources_label_covers_its_authority if {
	every label in ["infra://staging/", "infra://staging", "infra://", "docs://, infra://staging/web"] {
		decision := jit.decision with input as _restart("infra://staging/web")
			with input.task.labels.resources as label
		decision == _jit_restart
	}
}

test_non_canonical_label_prefix_covers_nothing if {
	every label in ["infra://STAGING/", "infra://staging/./web", "infra://staging//web", "infra:"] {
		decision := jit.decision with input as _restart("infra://staging/web")
			with input.task.labels.resources as label
		decision == _denied([sprintf(
			"intent_mismatch: infra://staging/web is outside the task's declared resources %s",
			[label],
		)])
	}
}

test_purpose_prefix_is_segment_aware if {
	decision := jit.decision with input as _refund(10, "ticket 12: double charge")
		with input.intent.resource as "payments://orders-archive/42"
		with input.intent.resource_parts as _parts("payments://orders-archive/42")
	decision == _denied([
		"intent_mismatch: payments://orders-archive/42 is outside the resources of the task's purpose refunds",
	])
}

test_resource_parts_must_be_those_of_the_resource if {
	cases := [
		{"scheme": "infra", "authority": "staging", "segments": ["web"]},
		{"scheme": "infra", "authority": "prod", "segments": ["web", "x"]},
		{"scheme": "infra", "authority": "PROD", "segments": ["web"]},
		{"scheme": "infra", "authority": "prod", "segments": "web"},
		{"scheme": "infra", "authority": "prod", "segments": [7]},
		{"scheme": "infra", "authority": "prod"},
		"infra://prod/web",
	]
	every parts in cases {
		decision := jit.decision with input as _restart("infra://prod/web")
			with input.intent.resource_parts as parts
		decision == _denied([_malformed("intent.resource_parts")])
	}
}

test_dot_and_empty_segments_are_malformed_even_if_consistent if {
	every resource in ["infra://prod/../web", "infra://prod/./web", "infra://prod//web", "infra://prod/web/"] {
		decision := jit.decision with input as _restart(resource)
		decision == _denied([_malformed("intent.resource_parts")])
	}
}

test_missing_resource_parts_denies if {
	decision := jit.decision with input as json.remove(_restart("infra://prod/web"), ["intent/resource_parts"])
	decision == _denied([_malformed("intent.resource_parts")])
}

test_parts_that_split_the_string_elsewhere_are_malformed if {
	cases := [
		{"scheme": "infra", "authority": "prod/web", "segments": []},
		{"scheme": "infra", "authority": "prod", "segments": ["web/x"]},
		{"scheme": "infra:/", "authority": "prod", "segments": ["web"]},
	]
	every parts in cases {
		decision := jit.decision with input as _restart("infra://prod/web")
			with input.intent.resource_parts as parts
		decision == _denied([_malformed("intent.resource_parts")])
	}
}

test_malformed_whole_domain_prefix_covers_nothing if {
	decision := jit.decision with input as _restart("infra://staging/web")
		with input.task.labels.resources as "infra:///"
	decision == _denied(["intent_mismatch: infra://staging/web is outside the task's declared resources infra:///"])
}

# An escape is allowed only for a character that may not appear raw: a document reaching the
# policy without the sidecar's door (AuthZEN) is held to the door's rule.
test_needless_or_lower_case_escapes_are_malformed if {
	bad := ["infra://prod/%77eb", "infra://prod/a%2fb", "infra://prod/a%2Fb", "infra://prod/%", "infra://prod/a%2"]
	every resource in bad {
		decision := jit.decision with input as _restart(resource)
		not decision.allow
	}
}

test_needed_escapes_are_accepted if {
	decision := jit.decision with input as _restart("infra://staging/a%20b%3F")
	decision == _jit_restart
}

test_resource_parts_of_a_string if {
	jit.resource_parts("infra://prod/web/pod-1") == {"scheme": "infra", "authority": "prod", "segments": ["web", "pod-1"]}
	jit.resource_parts("infra://prod") == {"scheme": "infra", "authority": "prod", "segments": []}
	not jit.resource_parts("infra:prod")
}
