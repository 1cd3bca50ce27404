# data.json is policy too: these tests catch a typo in it before OPA serves it.
package jit_test

import data.jit

_verb_pattern := `^\*\.[a-z][a-z0-9_-]*$`

_action_pattern := `^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$`

# docs/api.md, "Resource names": scheme:// or a canonical name, at most one trailing slash.
_prefix_pattern := `^[a-z][a-z0-9+.-]*://([a-z0-9_-]+(\.[a-z0-9_-]+)*(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?)?$`

_canonical_prefix(prefix) if {
	regex.match(_prefix_pattern, prefix)
	not regex.match(`/\.\.?(/|$)`, prefix)
}

test_catalog_keys_are_actions_or_verb_patterns if {
	every key, _ in jit.catalog {
		regex.match(concat("|", [_verb_pattern, _action_pattern]), key)
	}
}

test_catalog_classes_exist if {
	every _, entry in jit.catalog {
		jit.classes[entry.class]
	}
}

test_class_tiers_are_valid if {
	every _, class in jit.classes {
		class.tier in {"standing", "jit", "approval"}
	}
}

test_approval_triggers_are_well_formed if {
	every _, class in jit.classes {
		is_number(object.get(class, ["approval", "amount_above"], 0))
		every prefix in object.get(class, ["approval", "resource_prefixes"], []) {
			_canonical_prefix(prefix)
		}
	}
}

test_only_read_is_standing if {
	{name | some name, class in jit.classes; class.tier == "standing"} == {"read"}
}

test_tiers_have_whole_positive_ttls if {
	every tier in ["standing", "jit", "approval"] {
		ttl := jit.tiers[tier].max_ttl_seconds
		is_number(ttl)
		ttl >= 1
		ttl == floor(ttl)
	}
}

test_stricter_tiers_are_shorter_and_better_justified if {
	jit.tiers.approval.max_ttl_seconds <= jit.tiers.jit.max_ttl_seconds
	jit.tiers.jit.max_ttl_seconds <= jit.tiers.standing.max_ttl_seconds
	jit.tiers.jit.justification_min_length >= 1
	jit.tiers.approval.justification_min_length >= jit.tiers.jit.justification_min_length
}

test_standing_cache_is_shorter_than_its_ttl if {
	jit.tiers.standing.cache_seconds < jit.tiers.standing.max_ttl_seconds
}

test_cross_domain_tiers_are_stricter_than_standing if {
	every _, domain in jit.domains {
		every class, tier in domain.cross_domain {
			jit.classes[class]
			tier in {"jit", "approval"}
		}
	}
}

test_agent_domains_are_known if {
	every _, agent in object.union(jit.agents, {"default": jit.default_agent}) {
		every domain in agent.domains {
			jit.domains[domain]
		}
	}
}

test_purposes_name_known_classes_and_domains if {
	every _, purpose in jit.purposes {
		every class in object.get(purpose, "classes", []) {
			jit.classes[class]
		}
		every prefix in object.get(purpose, "resource_prefixes", []) {
			_canonical_prefix(prefix)
			jit.domains[split(prefix, "://")[0]]
		}
	}
}

test_limits_are_well_typed if {
	is_number(jit.limits.max_grants_per_task)
	jit.limits.max_grants_per_task >= 1
	is_boolean(jit.limits.require_purpose)
}

# A domain names its audience, or takes it from each resource's authority (https-api).
test_audiences_are_non_empty_strings if {
	every _, domain in jit.domains {
		_audience_named_or_per_authority(domain)
	}
}

_audience_named_or_per_authority(domain) if {
	is_string(domain.audience)
	domain.audience != ""
}

_audience_named_or_per_authority(domain) if {
	not domain.audience
	domain.audience_from == "authority"
}
