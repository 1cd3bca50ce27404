# Egress routes: what a grant on an HTTP upstream lets the egress proxy forward (docs/brokers.md,
# "Secretless HTTP egress"). A resource https-api://<upstream>/<segment>... names the
# upstream (its authority) and a path (its segments); the action's verb names the HTTP
# methods and whether the grant covers only that path or also everything under it. The
# mapping is data (data.jit.egress), so the policy, not the proxy, decides it.
package jit

# METADATA
# title: egress_route
# description: |
#   For input {action, resource, resource_parts {scheme, authority, segments}}:
#   {upstream, methods, segments, subtree}. Undefined (the proxy refuses every request of
#   the grant) when the resource is not an https-api resource, its parts do not spell it, or
#   the verb has no entry in data.jit.egress.verbs.
# scope: document
# entrypoint: true
egress_route := {
	"upstream": parts.authority,
	"methods": spec.methods,
	"segments": parts.segments,
	"subtree": object.get(spec, "subtree", false) == true,
} if {
	parts := input.resource_parts
	parts.scheme == data.jit.egress.scheme
	_egress_parts_spell_resource(parts)
	spec := data.jit.egress.verbs[_egress_verb]
	count(spec.methods) > 0
	every method in spec.methods {
		regex.match(`^[A-Z]{1,16}$`, method)
	}
}

# The parts are the resource taken apart, not a second description of another resource.
_egress_parts_spell_resource(parts) if {
	is_string(parts.authority)
	parts.authority != ""
	is_array(parts.segments)
	every segment in parts.segments {
		is_string(segment)
		segment != ""
	}
	input.resource == concat("/", array.concat([concat("", [parts.scheme, "://", parts.authority])], parts.segments))
}

# https-api.tickets.read -> read: the last part of the action, as in the catalog.
_egress_verb := verb if {
	is_string(input.action)
	startswith(input.action, concat("", [data.jit.egress.scheme, "."]))
	parts := split(input.action, ".")
	verb := parts[count(parts) - 1]
}
