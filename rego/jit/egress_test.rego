# The egress route mapping (egress.rego): which methods and paths a grant on an HTTP
# upstream lets the proxy forward.
package jit_test

import data.jit

_route_input(action, resource, scheme, authority, segments) := {
	"action": action,
	"resource": resource,
	"resource_parts": {"scheme": scheme, "authority": authority, "segments": segments},
}

test_read_covers_get_and_head_on_the_path_and_below if {
	route := jit.egress_route with input as _route_input(
		"https-api.read", "https-api://ticket-api/tickets/42",
		"https-api", "ticket-api", ["tickets", "42"],
	)
	route == {"upstream": "ticket-api", "methods": ["GET", "HEAD"], "segments": ["tickets", "42"], "subtree": true}
}

test_create_is_post_on_exactly_the_path if {
	route := jit.egress_route with input as _route_input(
		"https-api.create", "https-api://ticket-api/tickets",
		"https-api", "ticket-api", ["tickets"],
	)
	route == {"upstream": "ticket-api", "methods": ["POST"], "segments": ["tickets"], "subtree": false}
}

test_a_longer_action_maps_by_its_verb if {
	route := jit.egress_route with input as _route_input(
		"https-api.tickets.delete", "https-api://ticket-api/tickets/42",
		"https-api", "ticket-api", ["tickets", "42"],
	)
	route.methods == ["DELETE"]
	route.subtree == false
}

test_no_route_for_another_scheme if {
	route_input := _route_input("tickets.read", "tickets://ticket-api/t-1", "tickets", "ticket-api", ["t-1"])
	not jit.egress_route with input as route_input
}

test_no_route_for_an_unmapped_verb if {
	resource := "https-api://ticket-api/tickets"
	not jit.egress_route with input as _route_input("https-api.admin", resource, "https-api", "ticket-api", ["tickets"])
}

test_no_route_when_parts_do_not_spell_the_resource if {
	not jit.egress_route with input as _route_input(
		"https-api.read", "https-api://ticket-api/tickets/42",
		"https-api", "ticket-api", ["admin"],
	)
}

test_no_route_with_an_empty_segment if {
	not jit.egress_route with input as _route_input(
		"https-api.read", "https-api://ticket-api/tickets//42",
		"https-api", "ticket-api", ["tickets", "", "42"],
	)
}

test_no_route_for_an_action_of_another_domain if {
	resource := "https-api://ticket-api/tickets"
	not jit.egress_route with input as _route_input("docs.read", resource, "https-api", "ticket-api", ["tickets"])
}

test_every_mapped_verb_has_methods if {
	every _, spec in jit.egress.verbs {
		count(spec.methods) > 0
		every method in spec.methods {
			regex.match(`^[A-Z]{1,16}$`, method)
		}
	}
}

test_an_https_api_grant_has_the_upstream_as_audience if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "https-api.read", "resource": "https-api://ticket-api/tickets/42"},
		{},
	)
	decision.allow == true
	decision.audience == "ticket-api"
	decision.tier == "standing"
}

test_an_https_api_write_is_jit_with_the_upstream_as_audience if {
	decision := jit.decision with input as _input(
		_dev,
		{
			"action": "https-api.create", "resource": "https-api://ticket-api/tickets",
			"justification": "file the outage ticket",
		},
		{},
	)
	decision.allow == true
	decision.audience == "ticket-api"
	decision.tier == "jit"
}

test_an_https_api_resource_without_authority_is_denied if {
	decision := jit.decision with input as _input(
		_dev,
		{"action": "https-api.read", "resource": "https-api:///tickets"},
		{},
	)
	decision.allow == false
}
