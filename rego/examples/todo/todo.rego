# METADATA
# title: AuthZEN interop "Todo" scenario
# description: |
#   The Todo application of the AuthZEN interop (authzen-interop.net, "Todo" scenario,
#   payload spec 1.1), written from its published description: users with the roles
#   viewer, editor, admin and evil_genius; everyone reads users and todos; admins and
#   editors create; the owner (an editor) or an evil_genius updates; the owner (an
#   editor) or an admin deletes. Users and roles are data (data.examples.todo.users,
#   keyed by the PID the PEP sends as subject.id). Run it with
#   --authzen-decision-path examples/todo/decision.
package examples.todo

# METADATA
# title: decision
# description: The AuthZEN decision for one Todo request; unknown users and actions deny.
# scope: document
# entrypoint: true
default decision := {"decision": false}

decision := {"decision": true} if _allowed

# regal ignore:unresolved-reference
_user := data.examples.todo.users[input.subject.id]

_roles := {r | some r in _user.roles}

_owner if input.resource.properties.ownerID == _user.id

_allowed if {
	input.action.name in {"can_read_user", "can_read_todos"}
	_user
}

_allowed if {
	input.action.name == "can_create_todo"
	_roles & {"admin", "editor"} != set()
}

_allowed if {
	input.action.name == "can_update_todo"
	"evil_genius" in _roles
}

_allowed if {
	input.action.name == "can_update_todo"
	"editor" in _roles
	_owner
}

_allowed if {
	input.action.name == "can_delete_todo"
	"admin" in _roles
}

_allowed if {
	input.action.name == "can_delete_todo"
	"editor" in _roles
	_owner
}
