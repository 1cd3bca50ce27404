# Downstream credentials (docs/brokers.md): which credential a granted intent gets, from
# data. A resource domain listed in data.jit.brokers is brokered: its grants carry a
# `credential` object naming the broker, and the privileges come from the action's risk class
# (data.jit.brokers[<domain>].privileges[<class>]). A class without privileges there, or a
# resource that does not name exactly one table, leaves the credential undefined, and then
# the whole grant is undefined: the default (deny) stands, never a grant without its
# credential or with a wider one.
package jit

# The broker serving the intent's domain, if any (object.get: a lookup, not an iteration).
_broker_spec := spec if {
	spec := object.get(data.jit.brokers, _domain, null)
	spec != null
}

# postgres://crm/public.tickets -> {"broker": "postgres", "database": "crm",
# "privileges": [...by class...], "tables": ["public.tickets"]}.
_credential := {
	"broker": _broker_spec.broker,
	"database": input.intent.resource_parts.authority,
	"privileges": privileges,
	"tables": [table],
} if {
	privileges := object.get(_broker_spec.privileges, _class, null)
	is_array(privileges)
	[table] := input.intent.resource_parts.segments
	count(split(table, ".")) == 2
}

# What the granted decision adds: nothing for a domain no broker serves.
_credential_member := {} if not _broker_spec

_credential_member := {"credential": _credential} if _broker_spec
