# The catalog-driven credential of a brokered domain (credentials.rego): privileges by the
# action's class, exactly the named table, and no grant at all when either cannot be derived.
package jit_test

import data.jit

_pg(action, resource, justification) := _input(
	_dev,
	{"action": action, "resource": resource, "justification": justification},
	{},
)

test_postgres_read_gets_a_select_only_credential if {
	decision := jit.decision with input as _pg("postgres.read", "postgres://crm/public.tickets", "")
	decision == object.union(
		_standing("postgres", "postgres.read", [_standing_reason("postgres.read", "read", "postgres", 900)]),
		{"credential": {
			"broker": "postgres", "database": "crm",
			"privileges": ["SELECT"], "tables": ["public.tickets"],
		}},
	)
}

test_postgres_write_gets_select_insert_update if {
	decision := jit.decision with input as _pg("postgres.update", "postgres://crm/public.tickets", "fix the subject")
	decision == object.union(
		_jit("postgres", "postgres.update", [_jit_reason("postgres.update", "write")]),
		{"credential": {
			"broker": "postgres", "database": "crm",
			"privileges": ["SELECT", "INSERT", "UPDATE"], "tables": ["public.tickets"],
		}},
	)
}

test_class_without_privileges_is_denied if {
	decision := jit.decision with input as _pg("postgres.update", "postgres://crm/public.tickets", "fix the subject")
		with jit.brokers as {"postgres": {"broker": "postgres", "privileges": {"read": ["SELECT"]}}}
	decision == _denied(["default_deny: no rule allows this intent"])
}

test_resource_without_one_table_is_denied if {
	every resource in ["postgres://crm", "postgres://crm/public", "postgres://crm/public.tickets/x"] {
		decision := jit.decision with input as _pg("postgres.read", resource, "")
		decision.allow == false
	}
}

test_unbrokered_domain_has_no_credential if {
	decision := jit.decision with input as _input(_dev, {}, {"labels": {"purpose": "support"}})
	decision.allow
	not "credential" in object.keys(decision)
}
