# The Todo interop decisions, one role at a time.
package examples.todo_test

import data.examples.todo

_rick := "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

_morty := "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

_beth := "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"

_ask(subject, action, owner) := d if {
	# regal ignore:with-outside-test-context
	d := todo.decision with input as {
		"subject": {"type": "user", "id": subject},
		"action": {"name": action},
		"resource": {"type": "todo", "id": "7240d0db", "properties": {"ownerID": owner}},
	}
}

test_everyone_reads if {
	_ask(_beth, "can_read_todos", "") == {"decision": true}
	_ask(_beth, "can_read_user", "") == {"decision": true}
}

test_viewer_cannot_create if {
	_ask(_beth, "can_create_todo", "") == {"decision": false}
	_ask(_morty, "can_create_todo", "") == {"decision": true}
}

test_editor_updates_and_deletes_only_own if {
	_ask(_morty, "can_update_todo", "morty@the-citadel.com") == {"decision": true}
	_ask(_morty, "can_update_todo", "rick@the-citadel.com") == {"decision": false}
	_ask(_morty, "can_delete_todo", "morty@the-citadel.com") == {"decision": true}
	_ask(_morty, "can_delete_todo", "rick@the-citadel.com") == {"decision": false}
}

test_admin_deletes_and_evil_genius_updates_any if {
	_ask(_rick, "can_delete_todo", "morty@the-citadel.com") == {"decision": true}
	_ask(_rick, "can_update_todo", "morty@the-citadel.com") == {"decision": true}
}

test_unknown_user_and_action_deny if {
	_ask("nobody", "can_read_todos", "") == {"decision": false}
	_ask(_rick, "can_fly", "") == {"decision": false}
}
